"""One spec layer -> one torch module, with torchvision's initialisation.

This is the only place that says how a Conv, BatchNorm, ReLU, pool or Dense of the spec is
expressed in PyTorch; the model files only decide where each module lives. ``override`` is the
public hook for building models with other ReLU or BatchNorm code (the tools' broken ports of
``shared.mutants``, or a user's experiment), the same in resnet_keras and resnet_flax.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from shared import contract
from shared.spec import Add, BatchNorm, Conv, Dense, GlobalPool, Layer, MaxPool, ReLU


_OVERRIDES = contract.LayerOverrides(nn.BatchNorm2d)


def override(*, relu: Callable | None = None, batchnorm: type | None = None):
    """Models built while the context is open use ``relu`` (a function of a tensor) for every
    ReLU and ``batchnorm`` (a subclass of ``nn.BatchNorm2d``) for every BatchNorm; models built
    before or after are untouched, and so is torch."""
    return _OVERRIDES.override(relu=relu, batchnorm=batchnorm)


class Activation(nn.Module):
    """A ReLU given as a function (``override(relu=...)``)."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class PaddedConv2d(nn.Conv2d):
    """A conv whose zero padding is asymmetric (top != bottom or left != right): F.pad first.
    A subclass of nn.Conv2d, so its parameters keep the names ``weight`` and ``bias``."""

    def __init__(self, *args, pad: tuple[int, int, int, int], **kwargs):
        super().__init__(*args, padding=0, **kwargs)
        t, b, l, r = pad
        self.pad = (l, r, t, b)  # F.pad order: last axis first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))


class PaddedMaxPool2d(nn.MaxPool2d):
    """A max pool with asymmetric padding, or padding of another value than nn.MaxPool2d's
    -inf (the spec's ``MaxPool.pad_value``)."""

    def __init__(self, *args, pad: tuple[int, int, int, int], value: float = float("-inf"), **kwargs):
        super().__init__(*args, padding=0, **kwargs)
        t, b, l, r = pad
        self.pad = (l, r, t, b)
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad, value=self.value))


class GlobalPool2d(nn.Module):
    """Global average or max pool, flattened to (N, C) as torchvision's avgpool + flatten."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode
        self.pool = nn.AdaptiveAvgPool2d((1, 1)) if mode == "avg" else nn.AdaptiveMaxPool2d((1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(x), 1)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


def _symmetric(pad: tuple[int, int, int, int]) -> bool:
    t, b, l, r = pad
    return t == b and l == r


def conv(layer: Conv) -> nn.Conv2d:
    args = (layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride)
    t, _, l, _ = layer.padding
    if _symmetric(layer.padding):
        module = nn.Conv2d(*args, padding=(t, l), groups=layer.groups, bias=layer.bias)
    else:
        module = PaddedConv2d(*args, pad=layer.padding, groups=layer.groups, bias=layer.bias)
    # torchvision's init; a conv bias (Keras style) starts at zero, as in Keras.
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module


def batchnorm(layer: BatchNorm) -> nn.BatchNorm2d:
    # layer.momentum already has torch's meaning (weight of the new batch statistic).
    module = _OVERRIDES.get("batchnorm", nn.BatchNorm2d)(layer.channels, eps=layer.epsilon,
                                                                momentum=layer.momentum)
    nn.init.constant_(module.weight, 0.0 if layer.zero_init else 1.0)
    nn.init.zeros_(module.bias)
    return module


def maxpool(layer: MaxPool) -> nn.MaxPool2d:
    if _symmetric(layer.padding) and layer.pad_value == float("-inf"):
        t, _, l, _ = layer.padding
        return nn.MaxPool2d(layer.size, layer.stride, padding=(t, l))
    return PaddedMaxPool2d(layer.size, layer.stride, pad=layer.padding, value=layer.pad_value)


def module(layer: Layer) -> nn.Module:
    """The torch module for one parameterised or pooling layer of the spec."""
    if isinstance(layer, Conv):
        return conv(layer)
    if isinstance(layer, BatchNorm):
        return batchnorm(layer)
    if isinstance(layer, ReLU):
        relu = _OVERRIDES.get("relu", None)
        return nn.ReLU(inplace=True) if relu is None else Activation(relu)
    if isinstance(layer, MaxPool):
        return maxpool(layer)
    if isinstance(layer, GlobalPool):
        return GlobalPool2d(layer.mode)
    if isinstance(layer, Dense):
        return nn.Linear(layer.in_features, layer.out_features)  # torch's default init, as torchvision
    if isinstance(layer, Add):
        raise TypeError(f"{layer.name}: a residual add is part of a block's forward, not a module")
    raise TypeError(f"{layer.name}: no torch module for layer kind {type(layer).__name__}")
