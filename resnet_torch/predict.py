"""``predict`` and ``features``: the numpy entry points the parity suite, the tools and users
who do not want tensors call. Input policy (``shared.contract.as_images``): floating NHWC images
of any precision, cast to the model's dtype; integer images are refused."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from shared.contract import as_images


def _run(model: nn.Module, images_nhwc, method):
    images = as_images(model.spec, images_nhwc)
    param = next(model.parameters())
    x = torch.from_numpy(np.ascontiguousarray(images)).to(param.device, param.dtype).permute(0, 3, 1, 2)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return method(x.contiguous())
    finally:
        model.train(was_training)


def _numpy(out: torch.Tensor) -> np.ndarray:
    if out.ndim == 4:
        out = out.permute(0, 2, 3, 1)
    return np.ascontiguousarray(out.float().cpu().numpy())


def predict(model: nn.Module, images_nhwc: np.ndarray) -> np.ndarray:
    """NHWC numpy images -> numpy float32 logits (or features; a feature map comes back NHWC),
    run in eval mode without grad on the model's device and dtype. The model's mode is restored."""
    return _numpy(_run(model, images_nhwc, model))


def features(model: nn.Module, images_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    """``{"stem", "stage1", ...}``: the stem's and each stage's output as NHWC float32 numpy, in
    eval mode (the native way: ``model.forward_features(nchw_tensor)``)."""
    return {k: _numpy(v) for k, v in _run(model, images_nhwc, model.forward_features).items()}
