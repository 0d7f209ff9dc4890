"""The layer spec: every architectural number of a bottleneck ResNet, in one frozen dataclass.

The framework packages hold no architecture numbers of their own. They walk
``ResNetSpec.stem()``, ``ResNetSpec.blocks()`` and ``ResNetSpec.head()`` (or the flat
``ResNetSpec.layers()``) and say how to express one conv, one BatchNorm, one pool in their
framework. Adding a variant touches this file and nothing else.

Names follow Keras Applications (``conv2_block1_1_conv``) because they are predictable and
documented; a canonical weight is ``f"{layer.name}.{param}"``, e.g. ``conv2_block1_1_bn.gamma``.
``shared.interop`` maps them to torchvision's names by rule.

BatchNorm momentum convention: ``bn_momentum`` is the weight of the *new batch statistic*
in the running-average update, which is PyTorch's meaning::

    running = (1 - bn_momentum) * running + bn_momentum * batch_statistic

Keras (``BatchNormalization(momentum=...)``) and Flax (``nnx.BatchNorm(momentum=...)``) use the
weight of the *old running value*: pass them ``1 - bn_momentum``. torchvision's 0.1 is Keras'
0.9; Keras Applications' 0.99 is our 0.01.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, Union

Padding = tuple[int, int, int, int]  # (top, bottom, left, right)

STYLES = ("torchvision", "keras")
POOLINGS = ("avg", "max", None)
STRIDE_ON = ("3x3", "1x1")
NO_PARAMS = MappingProxyType({})  # layers without weights


@dataclass(frozen=True)
class Conv:
    """A 2-D convolution; ``padding`` is explicit zero padding (top, bottom, left, right)."""

    name: str
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    padding: Padding
    bias: bool

    kind = "conv"

    @property
    def params(self) -> dict[str, tuple[int, ...]]:
        k = self.kernel_size
        shapes = {"kernel": (k, k, self.in_channels, self.out_channels)}  # HWIO
        if self.bias:
            shapes["bias"] = (self.out_channels,)
        return shapes


@dataclass(frozen=True)
class BatchNorm:
    """BatchNorm over the channel axis; ``momentum`` in PyTorch's meaning (see module doc)."""

    name: str
    channels: int
    epsilon: float
    momentum: float
    zero_init: bool = False  # gamma starts at 0 (zero_init_residual on a block's last BN)

    kind = "bn"

    @property
    def params(self) -> dict[str, tuple[int, ...]]:
        c = (self.channels,)
        return {"gamma": c, "beta": c, "mean": c, "var": c}


@dataclass(frozen=True)
class ReLU:
    name: str

    kind = "relu"
    params = NO_PARAMS


@dataclass(frozen=True)
class MaxPool:
    """Max pool; its padding holds ``pad_value``: -inf (PyTorch's and Flax's rule), or 0 (Keras'
    ZeroPadding2D, equal to -inf here only because a ReLU comes first, so the input is >= 0)."""

    name: str
    size: int
    stride: int
    padding: Padding
    pad_value: float = float("-inf")

    kind = "maxpool"
    params = NO_PARAMS


@dataclass(frozen=True)
class GlobalPool:
    name: str
    mode: Literal["avg", "max"]

    kind = "globalpool"
    params = NO_PARAMS


@dataclass(frozen=True)
class Dense:
    name: str
    in_features: int
    out_features: int

    kind = "dense"

    @property
    def params(self) -> dict[str, tuple[int, ...]]:
        return {"kernel": (self.in_features, self.out_features), "bias": (self.out_features,)}


@dataclass(frozen=True)
class Add:
    """Residual sum of a block's main path and shortcut."""

    name: str

    kind = "add"
    params = NO_PARAMS


Layer = Union[Conv, BatchNorm, ReLU, MaxPool, GlobalPool, Dense, Add]


@dataclass(frozen=True)
class Block:
    """One bottleneck block: ``relu(main(x) + shortcut(x))``.

    ``main`` is conv/bn/relu, conv/bn/relu, conv/bn (eight layers); ``shortcut`` is
    (conv, bn) or empty for the identity. In a folded spec the BNs are absent (five layers;
    shortcut (conv,)).
    """

    name: str  # e.g. "conv2_block1"
    stage: int  # 0-based
    index: int  # 0-based within the stage
    in_channels: int
    width: int
    out_channels: int
    stride: int
    main: tuple[Layer, ...]
    shortcut: tuple[Layer, ...]
    add: Add
    out: ReLU

    @property
    def layers(self) -> tuple[Layer, ...]:
        # Keras Applications order: the shortcut conv comes first, its BN after the main path's
        # last conv. Any order that keeps data dependencies computes the same function.
        return (*self.main, *self.shortcut, self.add, self.out)


def _symmetric(p: int) -> Padding:
    return (p, p, p, p)


@dataclass(frozen=True)
class ResNetSpec:
    """Every choice that makes two bottleneck ResNets differ.

    depths: blocks per stage, any number of stages. width: stem channels; stage ``i`` has
    bottleneck width ``width * 2**i`` and output ``width * 2**i * expansion``. stride_on: where
    the first block of stages 2.. puts its stride: ``"3x3"`` (torchvision v1.5, the seed) or
    ``"1x1"`` (Keras Applications v1). pooling: global pooling after the last stage (required
    with include_top; ``None`` leaves the feature map).
    """

    depths: tuple[int, ...] = (3, 4, 6, 3)
    width: int = 64
    expansion: int = 4
    stride_on: Literal["3x3", "1x1"] = "3x3"
    conv_bias: bool = False
    bn_epsilon: float = 1e-5
    bn_momentum: float = 0.1
    image_channels: int = 3
    num_classes: int = 1000
    include_top: bool = True
    pooling: Literal["avg", "max", None] = "avg"
    zero_init_residual: bool = False
    # Eval-only: every BatchNorm folded into the conv before it (``shared.fold``). The BN layers
    # are absent from the enumeration and every conv has a bias; training is refused.
    folded: bool = False

    def __post_init__(self):
        object.__setattr__(self, "depths", tuple(self.depths))
        errors = []
        if len(self.depths) < 1:
            errors.append("depths: needs at least one stage, got ()")
        for i, d in enumerate(self.depths):
            if not isinstance(d, int) or isinstance(d, bool) or d < 1:
                errors.append(f"depths[{i}]: every stage needs at least 1 block, got {d!r}")
        for field in ("width", "expansion", "image_channels"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                errors.append(f"{field}: must be an integer >= 1, got {value!r}")
        if self.include_top and (
            not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool)
            or self.num_classes < 1
        ):
            errors.append(f"num_classes: must be an integer >= 1 with include_top, got {self.num_classes!r}")
        if self.stride_on not in STRIDE_ON:
            errors.append(f"stride_on: must be one of {STRIDE_ON}, got {self.stride_on!r}")
        if not (isinstance(self.bn_epsilon, (int, float)) and self.bn_epsilon > 0):
            errors.append(f"bn_epsilon: must be > 0, got {self.bn_epsilon!r}")
        if not (isinstance(self.bn_momentum, (int, float)) and 0 < self.bn_momentum <= 1):
            errors.append(
                f"bn_momentum: must be in (0, 1] (weight of the new batch statistic, "
                f"PyTorch's meaning), got {self.bn_momentum!r}"
            )
        if self.pooling not in POOLINGS:
            errors.append(f"pooling: must be one of {POOLINGS}, got {self.pooling!r}")
        if self.include_top and self.pooling is None:
            errors.append("pooling: include_top=True needs 'avg' or 'max' pooling, got None")
        for field in ("conv_bias", "include_top", "zero_init_residual", "folded"):
            if not isinstance(getattr(self, field), bool):
                errors.append(f"{field}: must be a bool, got {getattr(self, field)!r}")
        if errors:
            raise ValueError("invalid ResNetSpec: " + "; ".join(errors))

    # ----------------------------------------------------------------- derived facts

    @property
    def style(self) -> str:
        """'torchvision' or 'keras' when the conventions are exactly one preset's, else 'custom'."""
        for style in STYLES:
            conv = _STYLE_CONVENTIONS[style]
            if all(getattr(self, k) == v for k, v in conv.items()):
                return style
        return "custom"

    @property
    def total_stride(self) -> int:
        """Downsampling factor from the input to the last feature map."""
        return 4 * 2 ** (len(self.depths) - 1)

    @property
    def min_input_size(self) -> int:
        """Smallest input side: every stride-2 layer must see at least two pixels."""
        return self.total_stride

    @property
    def feature_channels(self) -> int:
        return self.width * 2 ** (len(self.depths) - 1) * self.expansion

    def output_shape(self, height: int, width: int | None = None) -> tuple[int, ...]:
        """Shape of one image's output (no batch axis); raises ValueError for a too-small input."""
        width = height if width is None else width
        self.check_input_size(height, width)
        if self.include_top:
            return (self.num_classes,)
        if self.pooling is not None:
            return (self.feature_channels,)
        h, w = height, width
        main_path = [*self.stem()] + [layer for block in self.blocks() for layer in block.main]
        for layer in main_path:
            if isinstance(layer, (Conv, MaxPool)):
                h, w = _out_size(h, w, layer)
        return (h, w, self.feature_channels)

    def check_input_size(self, height: int, width: int) -> None:
        m = self.min_input_size
        if height < m or width < m:
            raise ValueError(
                f"input size: this spec ({len(self.depths)} stages, total stride "
                f"{self.total_stride}) needs images of at least {m}x{m} pixels, got {height}x{width}"
            )

    # ----------------------------------------------------------------- enumeration

    def _conv(self, name, cin, cout, k, stride) -> Conv:
        bias = self.conv_bias or self.folded  # a folded BN leaves its shift in the conv's bias
        return Conv(f"{name}_conv", cin, cout, k, stride, _symmetric((k - 1) // 2), bias)

    def _bn(self, name, c, zero_init=False) -> BatchNorm | None:
        if self.folded:
            return None
        return BatchNorm(f"{name}_bn", c, self.bn_epsilon, self.bn_momentum, zero_init)

    def stem(self) -> tuple[Layer, ...]:
        """7x7/2 conv (padding 3), BN, ReLU, 3x3/2 max pool (padding 1)."""
        return _present(
            self._conv("conv1", self.image_channels, self.width, 7, 2),
            self._bn("conv1", self.width),
            ReLU("conv1_relu"),
            MaxPool("pool1_pool", 3, 2, _symmetric(1)),
        )

    def blocks(self) -> tuple[Block, ...]:
        blocks = []
        cin = self.width
        for stage, depth in enumerate(self.depths):
            width = self.width * 2**stage
            cout = width * self.expansion
            for index in range(depth):
                stride = 2 if (stage > 0 and index == 0) else 1
                name = f"conv{stage + 2}_block{index + 1}"
                s1, s3 = (1, stride) if self.stride_on == "3x3" else (stride, 1)
                main = _present(
                    self._conv(f"{name}_1", cin, width, 1, s1),
                    self._bn(f"{name}_1", width),
                    ReLU(f"{name}_1_relu"),
                    self._conv(f"{name}_2", width, width, 3, s3),
                    self._bn(f"{name}_2", width),
                    ReLU(f"{name}_2_relu"),
                    self._conv(f"{name}_3", width, cout, 1, 1),
                    self._bn(f"{name}_3", cout, zero_init=self.zero_init_residual),
                )
                shortcut = ()
                if stride != 1 or cin != cout:
                    shortcut = _present(self._conv(f"{name}_0", cin, cout, 1, stride), self._bn(f"{name}_0", cout))
                blocks.append(
                    Block(name, stage, index, cin, width, cout, stride, main, shortcut,
                          Add(f"{name}_add"), ReLU(f"{name}_out"))
                )
                cin = cout
        return tuple(blocks)

    def head(self) -> tuple[Layer, ...]:
        if self.pooling is None:
            return ()
        pool = GlobalPool("avg_pool" if self.pooling == "avg" else "max_pool", self.pooling)
        if not self.include_top:
            return (pool,)
        return (pool, Dense("predictions", self.feature_channels, self.num_classes))

    def layers(self) -> tuple[Layer, ...]:
        """Every layer in forward order (blocks expanded, shortcut after the main path)."""
        out = list(self.stem())
        for block in self.blocks():
            out.extend(block.layers)
        out.extend(self.head())
        return tuple(out)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical weight name -> shape, in forward order."""
        return {
            f"{layer.name}.{p}": shape for layer in self.layers() for p, shape in layer.params.items()
        }

    def num_params(self, include_bn_statistics: bool = False) -> int:
        """Learnable parameters; with ``include_bn_statistics`` also BatchNorm mean and var
        (Keras' ``count_params()`` counts those)."""
        total = 0
        for name, shape in self.param_shapes().items():
            if name.endswith((".mean", ".var")) and not include_bn_statistics:
                continue
            n = 1
            for s in shape:
                n *= s
            total += n
        return total

    def replace(self, **changes) -> "ResNetSpec":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> "ResNetSpec":
        """Inverse of ``to_dict`` (JSON turns the depths tuple into a list)."""
        return cls(**{**fields, "depths": tuple(fields["depths"])})


def _present(*layers) -> tuple[Layer, ...]:
    """The layers that exist in this spec (a folded spec has no BatchNorm)."""
    return tuple(layer for layer in layers if layer is not None)


def _out_size(h: int, w: int, layer: Conv | MaxPool) -> tuple[int, int]:
    k = layer.kernel_size if isinstance(layer, Conv) else layer.size
    t, b, l, r = layer.padding
    return (h + t + b - k) // layer.stride + 1, (w + l + r - k) // layer.stride + 1


_STYLE_CONVENTIONS = {
    # torchvision v1.5 (and the seed article): stride on the 3x3 conv, no conv bias.
    "torchvision": dict(stride_on="3x3", conv_bias=False, bn_epsilon=1e-5, bn_momentum=0.1),
    # Keras Applications v1: stride on the first 1x1 conv, biased convs, Keras momentum 0.99.
    "keras": dict(stride_on="1x1", conv_bias=True, bn_epsilon=1.001e-5, bn_momentum=0.01),
}

_DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3)}


def preset_spec(style: str = "torchvision", **fields) -> ResNetSpec:
    """A spec with one style's conventions (stride placement, bias, epsilon, momentum) and
    ``fields`` on top."""
    if style not in STYLES:
        raise ValueError(f"style: unknown style {style!r}, expected one of {STYLES}")
    unknown = set(fields) - {f.name for f in dataclasses.fields(ResNetSpec)}
    if unknown:
        raise ValueError(f"overrides: unknown ResNetSpec field(s) {sorted(unknown)}")
    return ResNetSpec(**{**_STYLE_CONVENTIONS[style], **fields})


def preset(arch: str, style: str = "torchvision", **overrides) -> ResNetSpec:
    """``preset("resnet50", style="keras", num_classes=10)``."""
    if arch not in _DEPTHS:
        raise ValueError(f"arch: unknown architecture {arch!r}, expected one of {tuple(_DEPTHS)}")
    return preset_spec(style, **{"depths": _DEPTHS[arch], **overrides})


def resnet50(style: str = "torchvision", **overrides) -> ResNetSpec:
    return preset("resnet50", style, **overrides)


def resnet101(style: str = "torchvision", **overrides) -> ResNetSpec:
    return preset("resnet101", style, **overrides)


def resnet152(style: str = "torchvision", **overrides) -> ResNetSpec:
    return preset("resnet152", style, **overrides)


ARCHS = tuple(_DEPTHS)
