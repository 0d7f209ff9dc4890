"""``preprocess_input(x, style=...)``: what each style's ImageNet weights were trained on.

keras style (Keras Applications' 'caffe' mode, ResNet50/101/152): RGB -> BGR, then minus the BGR
ImageNet mean, no scaling. A pre-activation spec (ResNet50V2/101V2/152V2, Keras' 'tf' mode): /127.5
- 1, to [-1, 1]. torchvision style: /255, then minus mean and over std per RGB channel. Images
are NHWC (channels last), RGB, 0-255.
"""

from __future__ import annotations

import keras
import numpy as np

from shared.spec import ResNetSpec

_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCHVISION_MEAN = (0.485, 0.456, 0.406)
_TORCHVISION_STD = (0.229, 0.224, 0.225)


def preprocess_input(x, *, style: str | ResNetSpec):
    """``x``: numpy array (returns a new float array, the input untouched) or backend tensor
    (returns a tensor). ``style``: "keras", "torchvision", or a spec (its ``.style``; a
    pre-activation spec: V2's [-1, 1], e.g. ``preprocess_input(x, style=spec_of(model))``)."""
    mode = _mode(style)
    if isinstance(x, (np.ndarray, list, tuple, int, float)):
        x = np.asarray(x)
        x = x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)
        ops, dtype = np, x.dtype
    else:
        ops = keras.ops
        x = ops.convert_to_tensor(x)
        x = x if keras.backend.is_float_dtype(x.dtype) else ops.cast(x, "float32")
        dtype = keras.backend.standardize_dtype(x.dtype)
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "caffe":
        return ops.flip(x, axis=-1) - ops.array(_CAFFE_BGR_MEAN, dtype=dtype)
    return (x / 255.0 - ops.array(_TORCHVISION_MEAN, dtype=dtype)) / ops.array(_TORCHVISION_STD, dtype=dtype)


def _mode(style: str | ResNetSpec) -> str:
    """Keras' name for what a style's (or a spec's) weights were trained on."""
    if isinstance(style, ResNetSpec):
        if style.block == "preact":
            return "tf"
        style = style.style
    if style not in ("keras", "torchvision"):
        raise ValueError(f"style: expected 'keras' or 'torchvision' (or a spec of one), got {style!r}")
    return "caffe" if style == "keras" else "torch"
