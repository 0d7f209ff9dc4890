"""The contract's constructors, one per architecture of ``shared.spec.PRESETS`` (``ResNet18``,
``ResNet50``, ``ResNeXt50_32x4d``, ``WideResNet50_2``, ``ResNet50V2``, ...), each
``(img_channel=3, num_classes=1000, *, style, weights, include_top, pooling,
classifier_activation)``: made by ``shared.contract.constructors``, so the signatures and
documentation are identical in resnet_torch, resnet_keras and resnet_flax and a new preset
needs no code here."""

from __future__ import annotations

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


CONSTRUCTORS = contract.constructors(_constructed)
globals().update(CONSTRUCTORS)
__all__ = list(CONSTRUCTORS)
