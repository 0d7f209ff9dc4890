"""One spec layer -> one torch module, with torchvision's initialisation.

This is the only place that says how a Conv, BatchNorm, ReLU, pool or Dense of the spec is
expressed in PyTorch; the model files only decide where each module lives. timm's family uses
timm's own ops (so its models and ours agree to the bit): ``nn.AvgPool2d`` for avg-down and
``resnetaa``, reflect ``F.pad`` and a depthwise ``F.conv2d`` for the blur, ``x.mean((2, 3),
keepdim=True)`` for an attention's squeeze, ``nn.Conv1d`` over the channels for ECA, and for
timm's ``resnetv2`` head a 1x1 conv. ``override`` is the
public hook for building models with other ReLU or BatchNorm code (the tools' broken ports of
``shared.mutants``, or a user's experiment), the same in resnet_keras and resnet_flax.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from shared import contract
from shared.spec import (Add, AvgPool, BatchNorm, Blur, ChannelConv, Conv, Dense, Gate, GlobalPool, Layer, MaxPool,
                         ReLU, Scale)


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


class Squeeze(nn.Module):
    """An attention's global pool, kept (N, C, 1, 1): timm's ``x.mean((2, 3), keepdim=True)``."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True) if self.mode == "avg" else x.amax((2, 3), keepdim=True)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class Blur2d(nn.Module):
    """timm's ``BlurPool2d``: pad (reflect), then every channel convolved with the spec's fixed
    filter (``Blur.taps``) at the stride, as one depthwise ``F.conv2d``. The filter is a
    non-persistent buffer (no state_dict entry, as in timm); it follows the model's dtype."""

    def __init__(self, layer: Blur):
        super().__init__()
        k = layer.kernel_size
        taps = torch.tensor(layer.taps(), dtype=torch.float32)
        self.register_buffer("filt", taps.expand(layer.channels, 1, k, k).contiguous(), persistent=False)
        t, b, l, r = layer.padding
        self.pad, self.mode, self.stride, self.channels = (l, r, t, b), layer.pad_mode, layer.stride, layer.channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.pad, mode=self.mode), self.filt, stride=self.stride, groups=self.channels)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, stride={self.stride}, pad={self.pad}, mode={self.mode!r}"


class ChannelConv1d(nn.Conv1d):
    """ECA's 1-D conv across the channels (timm's ``nn.Conv1d(1, 1, k)`` on the squeeze viewed
    (N, 1, C)); takes and gives (N, C, 1, 1). Its weight is Conv1d's (1, 1, k)."""

    def __init__(self, layer: ChannelConv):
        before, after = layer.padding
        super().__init__(1, 1, layer.kernel_size, padding=before if before == after else 0, bias=False)
        self.pad = None if before == after else (before, after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        y = x.reshape(n, 1, -1)
        return super().forward(y if self.pad is None else F.pad(y, self.pad)).reshape(n, -1, 1, 1)


class ConvClassifier(nn.Linear):
    """A dense layer computed as timm's ``resnetv2`` head (``ClassifierHead(use_conv=True)``)
    computes it: a 1x1 ``F.conv2d`` on the pooled (N, C, 1, 1) map. torch's conv sums in another
    order than nn.Linear's matmul (4.9e-7 apart on a 2048-wide head), so only this is timm's
    function to the bit. Its weight keeps nn.Linear's (out, in) shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x[:, :, None, None], self.weight[:, :, None, None], self.bias).flatten(1)


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


class PaddedAvgPool2d(nn.Module):
    """An average pool whose padding nn.AvgPool2d cannot take (asymmetric, or more than half
    the window): F.pad with zeros, then the pool; without ``count_include_pad`` each window's
    mean is rescaled to its positions inside the input (the same pool of a 0/1 mask)."""

    def __init__(self, layer: AvgPool):
        super().__init__()
        t, b, l, r = layer.padding
        self.pad = (l, r, t, b)
        self.args = (layer.size, layer.stride, 0, layer.ceil_mode, True)
        self.count_include_pad = layer.count_include_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.avg_pool2d(F.pad(x, self.pad), *self.args)
        if not self.count_include_pad:
            y = y / F.avg_pool2d(F.pad(torch.ones_like(x[:1, :1]), self.pad), *self.args)
        return y


def avgpool(layer: AvgPool) -> nn.Module:
    t, b, l, r = layer.padding
    if not _symmetric(layer.padding) or max(t, l) > layer.size // 2:
        return PaddedAvgPool2d(layer)
    return nn.AvgPool2d(layer.size, layer.stride, padding=(t, l), ceil_mode=layer.ceil_mode,
                        count_include_pad=layer.count_include_pad)


def module(layer: Layer, conv_classifier: bool = False) -> nn.Module:
    """The torch module for one parameterised, pooling or gating layer of the spec;
    ``conv_classifier``: a Dense as timm's ``resnetv2`` computes it (``ConvClassifier``)."""
    if isinstance(layer, Conv):
        return conv(layer)
    if isinstance(layer, BatchNorm):
        return batchnorm(layer)
    if isinstance(layer, ReLU):
        relu = _OVERRIDES.get("relu", None)
        return nn.ReLU(inplace=True) if relu is None else Activation(relu)
    if isinstance(layer, MaxPool):
        return maxpool(layer)
    if isinstance(layer, AvgPool):
        return avgpool(layer)
    if isinstance(layer, Blur):
        return Blur2d(layer)
    if isinstance(layer, GlobalPool):
        return Squeeze(layer.mode) if layer.keepdims else GlobalPool2d(layer.mode)
    if isinstance(layer, ChannelConv):
        return ChannelConv1d(layer)  # torch's default Conv1d init (shared.weights.init draws the same way)
    if isinstance(layer, Gate):
        return nn.Sigmoid() if layer.function == "sigmoid" else nn.Hardsigmoid()
    if isinstance(layer, Dense):
        # torch's default init, as torchvision
        return (ConvClassifier if conv_classifier else nn.Linear)(layer.in_features, layer.out_features)
    if isinstance(layer, (Add, Scale)):
        raise TypeError(f"{layer.name}: a residual add or an attention's scale is part of a block's forward, "
                        "not a module")
    raise TypeError(f"{layer.name}: no torch module for layer kind {type(layer).__name__}")
