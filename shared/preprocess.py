"""``preprocess_input(x, style=...)``: the input each published weight set was trained on, in numpy.

One rule per weight set, framework-free, re-exported by resnet_torch, resnet_keras and
resnet_flax (Keras' version also takes backend tensors). Images are NHWC (channels last), RGB,
0-255, as ``PIL.Image`` or ``keras.utils.load_img`` decode them:

| style | weights | what it does (Keras' mode name) |
| --- | --- | --- |
| ``"torchvision"`` | torchvision's ImageNet sets | /255, minus mean (0.485, 0.456, 0.406), over std (0.229, 0.224, 0.225) per RGB channel ('torch') |
| ``"keras"`` | Keras Applications ResNet50/101/152 | RGB -> BGR, minus the BGR mean (103.939, 116.779, 123.68), no scaling ('caffe') |
| a pre-activation spec | Keras Applications ResNet50V2/101V2/152V2 | /127.5 - 1, to [-1, 1] ('tf') |

``style`` may be a spec: its style, and V2's [-1, 1] for a pre-activation spec
(``preprocess_input(x, style=model.spec)``).
"""

from __future__ import annotations

import numpy as np

from shared.spec import ResNetSpec

CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
MODES = ("torch", "caffe", "tf")


def mode(style: str | ResNetSpec) -> str:
    """Keras' name for what a style's (or a spec's) weights were trained on."""
    if isinstance(style, ResNetSpec):
        if style.block == "preact":
            return "tf"
        style = style.style
    if style not in ("keras", "torchvision"):
        raise ValueError(f"style: expected 'keras' or 'torchvision' (or a spec of one), got {style!r}")
    return "caffe" if style == "keras" else "torch"


def apply(x, mode_name: str, ops=np, dtype=None):
    """The arithmetic of one mode on an NHWC array of ``ops`` (numpy, or a backend's ops)."""
    dtype = dtype or x.dtype
    if mode_name == "tf":
        return x / 127.5 - 1.0
    if mode_name == "caffe":
        return ops.flip(x, axis=-1) - ops.array(CAFFE_BGR_MEAN, dtype=dtype)
    if mode_name == "torch":
        return (x / 255.0 - ops.array(TORCHVISION_MEAN, dtype=dtype)) / ops.array(TORCHVISION_STD, dtype=dtype)
    raise ValueError(f"mode: expected one of {MODES}, got {mode_name!r}")


def preprocess_input(x, *, style: str | ResNetSpec) -> np.ndarray:
    """NHWC RGB 0-255 images (any array-like; integers become float32) -> a new float array,
    preprocessed for ``style``'s weights (module doc); the input is untouched."""
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[-1] != 3:
        raise ValueError(f"images: expected channels last with 3 (RGB) channels, got shape {x.shape}")
    x = x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)
    return apply(x, mode(style))
