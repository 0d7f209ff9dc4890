"""The contract's constructors: ``ResNet50/101/152(img_channel=3, num_classes=1000, *, ...)``,
identical in resnet_torch, resnet_keras and resnet_flax (``shared.contract``)."""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from shared import checkpoint, contract
from resnet_torch.model import ResNet
from resnet_torch.weights import load_weights


def _constructed(arch, img_channel, num_classes, style, weights, include_top, pooling,
                 classifier_activation) -> ResNet:
    spec = contract.constructor_spec(arch, img_channel, num_classes, style, include_top, pooling,
                                     classifier_activation)
    found = None if weights is None else checkpoint.canonical(spec, weights)  # refused before building
    model = ResNet(spec, classifier_activation).eval()
    return model if found is None else load_weights(model, found)


def ResNet50(img_channel: int = 3, num_classes: int = 1000, *, style: str = "torchvision",
             weights: str | os.PathLike | Mapping[str, np.ndarray] | None = None, include_top: bool = True,
             pooling: str | None = None, classifier_activation: str | None = None) -> ResNet:
    """The seed article's ResNet-50 (torchvision v1.5 by default; ``style="keras"`` for Keras
    Applications v1), in eval mode. ``weights``: None (torchvision's random init), a canonical
    dict, a ``.safetensors``/``.pth``/``.h5`` file or a ``shared.hub`` name such as
    ``"torchvision/resnet50.IMAGENET1K_V2"``; a checkpoint of another architecture, style or
    class count is a ValueError. ``include_top``, ``pooling``, ``classifier_activation``: Keras
    Applications' meaning (see ``shared.contract.constructor_spec``); None gives logits."""
    return _constructed("resnet50", img_channel, num_classes, style, weights, include_top, pooling,
                        classifier_activation)


def ResNet101(img_channel: int = 3, num_classes: int = 1000, *, style: str = "torchvision",
              weights: str | os.PathLike | Mapping[str, np.ndarray] | None = None, include_top: bool = True,
              pooling: str | None = None, classifier_activation: str | None = None) -> ResNet:
    """ResNet-101; the arguments as for ``ResNet50``."""
    return _constructed("resnet101", img_channel, num_classes, style, weights, include_top, pooling,
                        classifier_activation)


def ResNet152(img_channel: int = 3, num_classes: int = 1000, *, style: str = "torchvision",
              weights: str | os.PathLike | Mapping[str, np.ndarray] | None = None, include_top: bool = True,
              pooling: str | None = None, classifier_activation: str | None = None) -> ResNet:
    """ResNet-152; the arguments as for ``ResNet50``."""
    return _constructed("resnet152", img_channel, num_classes, style, weights, include_top, pooling,
                        classifier_activation)
