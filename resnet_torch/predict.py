"""``predict``: the framework-free entry point the parity suite and tools call."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from shared.reference import check_images


def predict(model: nn.Module, images_nhwc: np.ndarray) -> np.ndarray:
    """NHWC numpy images -> numpy float32 logits (or features; a feature map comes back NHWC),
    run in eval mode without grad on the model's device and dtype. The model's mode is restored."""
    images = np.asarray(images_nhwc)
    check_images(model.spec, images)
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(
            f"images: expected float32 (preprocessed) images, got dtype {images.dtype}; "
            f"scale and normalise integer images first"
        )
    param = next(model.parameters())
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    x = x.to(param.device, param.dtype).permute(0, 3, 1, 2).contiguous()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        model.train(was_training)
    if out.ndim == 4:
        out = out.permute(0, 2, 3, 1)
    return out.float().cpu().numpy()
