"""The layer spec: every architectural number of a ResNet, in one frozen dataclass.

The framework packages hold no architecture numbers and no block structure of their own. They
walk ``ResNetSpec.stem()``, ``ResNetSpec.blocks()`` (each block through ``Block.walk``: where the
shortcut starts, what is added, what follows) and ``ResNetSpec.head()`` (or the flat
``ResNetSpec.layers()``) and say how to express one conv, one BatchNorm, one pool in their
framework. The block kinds: torchvision's basic and bottleneck blocks (with groups and width per
group: ResNeXt, Wide ResNet) and Keras Applications' pre-activation bottleneck (ResNet V2).
``PRESETS`` names every architecture; adding one touches this file and nothing else.

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
STRIDE_BLOCK = ("first", "last")
BLOCK_KINDS = ("basic", "bottleneck", "preact")
SHORTCUT_FROM = ("input", "pre")
NO_PARAMS = MappingProxyType({})  # layers without weights


@dataclass(frozen=True)
class Conv:
    """A 2-D convolution; ``padding`` is explicit zero padding (top, bottom, left, right);
    ``groups`` splits the channels into that many independent convolutions (ResNeXt)."""

    name: str
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    padding: Padding
    bias: bool
    groups: int = 1

    kind = "conv"

    @property
    def params(self) -> dict[str, tuple[int, ...]]:
        k = self.kernel_size
        shapes = {"kernel": (k, k, self.in_channels // self.groups, self.out_channels)}  # HWIO
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
    STATISTICS = ("mean", "var")  # running statistics: updated by training, not by gradients

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
    """One residual block, in full: ``out(add(main(pre(x)), shortcut(source)))`` where
    ``source`` is ``x`` (``shortcut_from="input"``) or ``pre(x)`` (``"pre"``, ResNet V2).

    - ``pre``: the pre-activation (V2: BatchNorm, ReLU); empty otherwise.
    - ``main``: the residual path (basic: conv/bn/relu/conv/bn; bottleneck: three convs; V2:
      conv/bn/relu, conv/bn/relu, conv). In a folded spec the BNs after convs are absent.
    - ``shortcut``: (conv, bn), (conv,), (maxpool,) or empty for the identity.
    - ``add``: the residual sum; ``out``: what follows it ((ReLU,) in V1, empty in V2).

    ``walk`` is the one statement of that dataflow; every implementation calls it (or, for a
    backward pass, reverses it) instead of writing its own.
    """

    name: str  # e.g. "conv2_block1"
    stage: int  # 0-based
    index: int  # 0-based within the stage
    in_channels: int
    width: int
    out_channels: int
    stride: int
    pre: tuple[Layer, ...]
    main: tuple[Layer, ...]
    shortcut: tuple[Layer, ...]
    shortcut_from: Literal["input", "pre"]
    add: Add
    out: tuple[Layer, ...]

    @property
    def layers(self) -> tuple[Layer, ...]:
        # Forward order, main path before shortcut (``shared.keras_h5`` writes Keras' own order,
        # shortcut first). Any order that keeps data dependencies computes the same function.
        return (*self.pre, *self.main, *self.shortcut, self.add, *self.out)

    @property
    def output(self) -> Layer:
        """The layer whose output is the block's output (V1: the ReLU, V2: the add)."""
        return self.out[-1] if self.out else self.add

    def walk(self, x, chain, add):
        """The block's dataflow for any framework. ``chain(layers, x)`` applies layers in order
        (and returns ``x`` for none); ``add(layer, main, shortcut)`` sums the two paths."""
        pre = chain(self.pre, x)
        shortcut = chain(self.shortcut, pre if self.shortcut_from == "pre" else x)
        main = chain(self.main, pre)
        return chain(self.out, add(self.add, main, shortcut))


def _symmetric(p: int) -> Padding:
    return (p, p, p, p)


@dataclass(frozen=True)
class ResNetSpec:
    """Every choice that makes two ResNets differ.

    block: ``"basic"`` (ResNet-18/34), ``"bottleneck"`` (ResNet-50.., ResNeXt, Wide) or
    ``"preact"`` (Keras Applications' ResNet V2: pre-activation, BN+ReLU before the head).
    depths: blocks per stage, any number of stages. width: stem channels; stage ``i`` has
    ``planes = width * 2**i``, an inner width ``int(planes * width_per_group / 64) * groups``
    (torchvision's rule; groups on the 3x3 conv) and output ``planes * expansion`` (expansion
    None: 1 for basic blocks, 4 otherwise). stride_block: which block of a stage downsamples:
    ``"first"`` of stages 2.. (V1) or ``"last"`` of every stage but the last (Keras' V2).
    stride_on: which conv of a bottleneck takes the stride: ``"3x3"`` (torchvision v1.5, the
    seed, V2) or ``"1x1"`` (Keras Applications v1). conv_bias: bias on the convs a BatchNorm
    follows (a conv with no BatchNorm after it always has one, as in Keras' V2).
    pool_pad_value: what the stem's max pool pads with (-inf; V2 pools a conv output after
    Keras' ZeroPadding2D: 0). pooling: global pooling after the last stage (required with
    include_top; ``None`` leaves the feature map).
    """

    depths: tuple[int, ...] = (3, 4, 6, 3)
    width: int = 64
    expansion: int | None = None
    block: Literal["basic", "bottleneck", "preact"] = "bottleneck"
    groups: int = 1
    width_per_group: int = 64
    stride_block: Literal["first", "last"] = "first"
    pool_pad_value: float = float("-inf")
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
        if self.expansion is None:
            object.__setattr__(self, "expansion", 1 if self.block == "basic" else 4)
        errors = []
        if len(self.depths) < 1:
            errors.append("depths: needs at least one stage, got ()")
        for i, d in enumerate(self.depths):
            if not isinstance(d, int) or isinstance(d, bool) or d < 1:
                errors.append(f"depths[{i}]: every stage needs at least 1 block, got {d!r}")
        for field in ("width", "expansion", "image_channels", "groups", "width_per_group"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                errors.append(f"{field}: must be an integer >= 1, got {value!r}")
        if self.include_top and (
            not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool)
            or self.num_classes < 1
        ):
            errors.append(f"num_classes: must be an integer >= 1 with include_top, got {self.num_classes!r}")
        if self.block not in BLOCK_KINDS:
            errors.append(f"block: must be one of {BLOCK_KINDS}, got {self.block!r}")
        if self.block == "basic" and (self.groups, self.width_per_group) != (1, 64):
            errors.append(
                f"groups/width_per_group: a basic block has groups=1 and width_per_group=64 (as "
                f"torchvision's BasicBlock), got {self.groups} and {self.width_per_group}"
            )
        if self.block == "preact" and self.zero_init_residual:
            errors.append("zero_init_residual: a pre-activation block's main path ends in a conv, not a BatchNorm")
        if self.stride_block not in STRIDE_BLOCK:
            errors.append(f"stride_block: must be one of {STRIDE_BLOCK}, got {self.stride_block!r}")
        if not isinstance(self.pool_pad_value, (int, float)) or self.pool_pad_value != self.pool_pad_value:
            errors.append(f"pool_pad_value: must be a number or -inf, got {self.pool_pad_value!r}")
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
        if not errors:
            for stage in range(len(self.depths)):
                if self._inner_width(stage) < 1:
                    errors.append(f"width_per_group: stage {stage + 1} has {self.width * 2**stage} planes, "
                                  f"so width_per_group={self.width_per_group} gives an inner width of 0")
        if errors:
            raise ValueError("invalid ResNetSpec: " + "; ".join(errors))

    # ----------------------------------------------------------------- derived facts

    @property
    def style(self) -> str:
        """'torchvision' or 'keras' when the conventions are exactly one preset's, else 'custom'."""
        for style in STYLES:
            conv = conventions(style, self.block)
            if conv is not None and all(getattr(self, k) == v for k, v in conv.items()):
                return style
        return "custom"

    @property
    def arch(self) -> str | None:
        """The preset this spec is (any style, classes, channels, top), else None."""
        structure = ("depths", "width", "expansion", "block", "groups", "width_per_group")
        for name, p in PRESETS.items():
            if all(getattr(self, f) == getattr(p.spec(p.styles[0]), f) for f in structure):
                return name
        return None

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

    def _inner_width(self, stage: int) -> int:
        planes = self.width * 2**stage
        return int(planes * self.width_per_group / 64) * self.groups

    def _conv(self, name, cin, cout, k, stride, groups=1, bn_follows=True) -> Conv:
        # A folded BN leaves its shift in the conv's bias; a conv no BN follows always has one.
        bias = self.folded or not bn_follows or self.conv_bias
        return Conv(f"{name}_conv", cin, cout, k, stride, _symmetric((k - 1) // 2), bias, groups)

    def _bn(self, name, c, zero_init=False, after_conv=True) -> BatchNorm | None:
        """A BatchNorm; absent in a folded spec where a conv precedes it (only there is folding
        exact: a pre-activation BN comes after an add and before a ReLU, and stays)."""
        if self.folded and after_conv:
            return None
        return BatchNorm(f"{name}_bn", c, self.bn_epsilon, self.bn_momentum, zero_init)

    def stem(self) -> tuple[Layer, ...]:
        """7x7/2 conv (padding 3), BN, ReLU, 3x3/2 max pool (padding 1); V2: no BN and ReLU (the
        first block pre-activates)."""
        pool = MaxPool("pool1_pool", 3, 2, _symmetric(1), float(self.pool_pad_value))
        if self.block == "preact":
            return (self._conv("conv1", self.image_channels, self.width, 7, 2, bn_follows=False), pool)
        return _present(
            self._conv("conv1", self.image_channels, self.width, 7, 2),
            self._bn("conv1", self.width),
            ReLU("conv1_relu"),
            pool,
        )

    def _stride(self, stage: int, index: int) -> int:
        last_stage = len(self.depths) - 1
        if self.stride_block == "first":
            return 2 if (stage > 0 and index == 0) else 1
        return 2 if (stage < last_stage and index == self.depths[stage] - 1) else 1

    def blocks(self) -> tuple[Block, ...]:
        blocks = []
        cin = self.width
        for stage, depth in enumerate(self.depths):
            width = self._inner_width(stage)
            cout = self.width * 2**stage * self.expansion
            for index in range(depth):
                stride = self._stride(stage, index)
                name = f"conv{stage + 2}_block{index + 1}"
                make = {"basic": self._basic, "bottleneck": self._bottleneck, "preact": self._preact}[self.block]
                blocks.append(make(name, stage, index, cin, width, cout, stride))
                cin = cout
        return tuple(blocks)

    def _projection(self, name, cin, cout, stride) -> tuple[Layer, ...]:
        """V1's shortcut: a strided 1x1 conv and BN where the shape changes, else the identity."""
        if stride == 1 and cin == cout:
            return ()
        return _present(self._conv(f"{name}_0", cin, cout, 1, stride), self._bn(f"{name}_0", cout))

    def _v1_block(self, name, stage, index, cin, width, cout, stride, main) -> Block:
        """``relu(main(x) + projection(x))``: what the basic and bottleneck blocks share."""
        return Block(name, stage, index, cin, width, cout, stride, (), main,
                     self._projection(name, cin, cout, stride), "input", Add(f"{name}_add"),
                     (ReLU(f"{name}_out"),))

    def _basic(self, name, stage, index, cin, width, cout, stride) -> Block:
        """torchvision's BasicBlock: 3x3 (stride), 3x3."""
        main = _present(
            self._conv(f"{name}_1", cin, width, 3, stride),
            self._bn(f"{name}_1", width),
            ReLU(f"{name}_1_relu"),
            self._conv(f"{name}_2", width, cout, 3, 1),
            self._bn(f"{name}_2", cout, zero_init=self.zero_init_residual),
        )
        return self._v1_block(name, stage, index, cin, width, cout, stride, main)

    def _bottleneck(self, name, stage, index, cin, width, cout, stride) -> Block:
        s1, s3 = (1, stride) if self.stride_on == "3x3" else (stride, 1)
        main = _present(
            self._conv(f"{name}_1", cin, width, 1, s1),
            self._bn(f"{name}_1", width),
            ReLU(f"{name}_1_relu"),
            self._conv(f"{name}_2", width, width, 3, s3, self.groups),
            self._bn(f"{name}_2", width),
            ReLU(f"{name}_2_relu"),
            self._conv(f"{name}_3", width, cout, 1, 1),
            self._bn(f"{name}_3", cout, zero_init=self.zero_init_residual),
        )
        return self._v1_block(name, stage, index, cin, width, cout, stride, main)

    def _preact(self, name, stage, index, cin, width, cout, stride) -> Block:
        """Keras Applications' ``residual_block_v2``: BN, ReLU, then 1x1, 3x3 (stride, groups),
        1x1 (biased); the first block's shortcut is a biased 1x1 conv of the pre-activated input,
        a strided block's a 1x1 max pool of the raw input, else the identity. Names as Keras'
        (the add is ``_out``; Keras auto-names the shortcut pool, here ``_0_pool``)."""
        pre = (self._bn(f"{name}_preact", cin, after_conv=False), ReLU(f"{name}_preact_relu"))
        main = _present(
            self._conv(f"{name}_1", cin, width, 1, 1),
            self._bn(f"{name}_1", width),
            ReLU(f"{name}_1_relu"),
            self._conv(f"{name}_2", width, width, 3, stride, self.groups),
            self._bn(f"{name}_2", width),
            ReLU(f"{name}_2_relu"),
            self._conv(f"{name}_3", width, cout, 1, 1, bn_follows=False),
        )
        if index == 0 or cin != cout:
            shortcut, source = (self._conv(f"{name}_0", cin, cout, 1, stride, bn_follows=False),), "pre"
        elif stride > 1:
            shortcut, source = (MaxPool(f"{name}_0_pool", 1, stride, (0, 0, 0, 0)),), "input"
        else:
            shortcut, source = (), "input"
        return Block(name, stage, index, cin, width, cout, stride, pre, main, shortcut, source,
                     Add(f"{name}_out"), ())

    def head(self) -> tuple[Layer, ...]:
        """V2's final BN and ReLU (present with or without the top, as in Keras), the global
        pool, the classifier."""
        post = ()
        if self.block == "preact":
            post = (self._bn("post", self.feature_channels, after_conv=False), ReLU("post_relu"))
        if self.pooling is None:
            return post
        pool = GlobalPool("avg_pool" if self.pooling == "avg" else "max_pool", self.pooling)
        if not self.include_top:
            return (*post, pool)
        return (*post, pool, Dense("predictions", self.feature_channels, self.num_classes))

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
            if not include_bn_statistics and is_statistic(name):
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


def is_statistic(weight_name: str) -> bool:
    """Whether a canonical weight is a BatchNorm running statistic (``..._bn.mean``/``.var``):
    a buffer training updates by averaging, not a parameter gradients update."""
    layer, _, param = weight_name.rpartition(".")
    return layer.endswith("_bn") and param in BatchNorm.STATISTICS


def _present(*layers) -> tuple[Layer, ...]:
    """The layers that exist in this spec (a folded spec has no BatchNorm)."""
    return tuple(layer for layer in layers if layer is not None)


def _out_size(h: int, w: int, layer: Conv | MaxPool) -> tuple[int, int]:
    k = layer.kernel_size if isinstance(layer, Conv) else layer.size
    t, b, l, r = layer.padding
    return (h + t + b - k) // layer.stride + 1, (w + l + r - k) // layer.stride + 1


_STYLE_CONVENTIONS = {
    # torchvision v1.5 (and the seed article): stride on the 3x3 conv, no conv bias.
    "torchvision": dict(stride_on="3x3", conv_bias=False, bn_epsilon=1e-5, bn_momentum=0.1,
                        stride_block="first", pool_pad_value=float("-inf")),
    # Keras Applications v1: stride on the first 1x1 conv, biased convs, Keras momentum 0.99.
    "keras": dict(stride_on="1x1", conv_bias=True, bn_epsilon=1.001e-5, bn_momentum=0.01,
                  stride_block="first", pool_pad_value=float("-inf")),
}
# Keras Applications v2 (``ResNet50V2``): pre-activation, stride on the 3x3 conv of each stage's
# last block, unbiased convs before a BN, the stem's pool pads its (not ReLU'd) input with 0.
_PREACT_CONVENTIONS = {
    "keras": dict(stride_on="3x3", conv_bias=False, bn_epsilon=1.001e-5, bn_momentum=0.01,
                  stride_block="last", pool_pad_value=0.0),
}


def conventions(style: str, block: str = "bottleneck") -> dict | None:
    """The fields one style fixes for one block kind; None where that style has no such model
    (torchvision has no pre-activation ResNet)."""
    if style not in STYLES:
        raise ValueError(f"style: unknown style {style!r}, expected one of {STYLES}")
    return (_PREACT_CONVENTIONS if block == "preact" else _STYLE_CONVENTIONS).get(style)


@dataclass(frozen=True)
class Preset:
    """One named architecture: its structure, the styles it exists in (the first is the
    default), the constructor each framework package offers, and its peer's published
    parameter count (torchvision's weights metadata; Keras' summaries count BN statistics)."""

    arch: str
    constructor: str
    fields: MappingProxyType
    styles: tuple[str, ...]
    peer: str
    params: int
    params_count_bn_statistics: bool = False
    keras_applications: str | None = None  # the keras.applications class of this architecture

    @property
    def torchvision(self) -> str | None:
        """The torchvision.models builder of this architecture, if torchvision has one."""
        return self.arch if self.peer.startswith("torchvision.") else None

    def spec(self, style: str | None = None, **overrides) -> "ResNetSpec":
        style = self.styles[0] if style is None else style
        if style not in self.styles:
            raise ValueError(f"style: {self.arch} exists in style(s) {self.styles}, got {style!r}")
        return preset_spec(style, **{**self.fields, **overrides})


def _p(arch, constructor, styles, peer, params, counts_stats=False, keras_applications=None, **fields) -> Preset:
    return Preset(arch, constructor, MappingProxyType(fields), styles, peer, params, counts_stats, keras_applications)


_TV = ("torchvision", "keras")
PRESETS: dict[str, Preset] = {p.arch: p for p in (
    _p("resnet18", "ResNet18", _TV, "torchvision.models.resnet18", 11_689_512, block="basic", depths=(2, 2, 2, 2)),
    _p("resnet34", "ResNet34", _TV, "torchvision.models.resnet34", 21_797_672, block="basic", depths=(3, 4, 6, 3)),
    _p("resnet50", "ResNet50", _TV, "torchvision.models.resnet50", 25_557_032, keras_applications="ResNet50",
       depths=(3, 4, 6, 3)),
    _p("resnet101", "ResNet101", _TV, "torchvision.models.resnet101", 44_549_160, keras_applications="ResNet101",
       depths=(3, 4, 23, 3)),
    _p("resnet152", "ResNet152", _TV, "torchvision.models.resnet152", 60_192_808, keras_applications="ResNet152",
       depths=(3, 8, 36, 3)),
    _p("resnext50_32x4d", "ResNeXt50_32x4d", _TV, "torchvision.models.resnext50_32x4d", 25_028_904,
       depths=(3, 4, 6, 3), groups=32, width_per_group=4),
    _p("resnext101_32x8d", "ResNeXt101_32x8d", _TV, "torchvision.models.resnext101_32x8d", 88_791_336,
       depths=(3, 4, 23, 3), groups=32, width_per_group=8),
    _p("resnext101_64x4d", "ResNeXt101_64x4d", _TV, "torchvision.models.resnext101_64x4d", 83_455_272,
       depths=(3, 4, 23, 3), groups=64, width_per_group=4),
    _p("wide_resnet50_2", "WideResNet50_2", _TV, "torchvision.models.wide_resnet50_2", 68_883_240,
       depths=(3, 4, 6, 3), width_per_group=128),
    _p("wide_resnet101_2", "WideResNet101_2", _TV, "torchvision.models.wide_resnet101_2", 126_886_696,
       depths=(3, 4, 23, 3), width_per_group=128),
    _p("resnet50v2", "ResNet50V2", ("keras",), "keras.applications.ResNet50V2", 25_613_800, True, "ResNet50V2",
       block="preact", depths=(3, 4, 6, 3)),
    _p("resnet101v2", "ResNet101V2", ("keras",), "keras.applications.ResNet101V2", 44_675_560, True, "ResNet101V2",
       block="preact", depths=(3, 4, 23, 3)),
    _p("resnet152v2", "ResNet152V2", ("keras",), "keras.applications.ResNet152V2", 60_380_648, True, "ResNet152V2",
       block="preact", depths=(3, 8, 36, 3)),
)}
ARCHS = tuple(PRESETS)
# Keras Applications' own counts of the V1 models (with BN statistics), for the keras style.
KERAS_V1_PARAMS = {"resnet50": 25_636_712, "resnet101": 44_707_176, "resnet152": 60_419_944}


def preset_spec(style: str = "torchvision", **fields) -> ResNetSpec:
    """A spec with one style's conventions for its block kind (stride placement, bias, epsilon,
    momentum, pool padding) and ``fields`` on top."""
    unknown = set(fields) - {f.name for f in dataclasses.fields(ResNetSpec)}
    if unknown:
        raise ValueError(f"overrides: unknown ResNetSpec field(s) {sorted(unknown)}")
    block = fields.get("block", "bottleneck")
    conv = conventions(style, block)
    if conv is None:
        raise ValueError(f"style: {style!r} has no {block!r} ResNet; use one of "
                         f"{tuple(s for s in STYLES if conventions(s, block) is not None)}")
    return ResNetSpec(**{**conv, **fields})


def preset(arch: str, style: str | None = None, **overrides) -> ResNetSpec:
    """``preset("resnet50", style="keras", num_classes=10)``; style None: the arch's first."""
    if arch not in PRESETS:
        raise ValueError(f"arch: unknown architecture {arch!r}, expected one of {ARCHS}")
    return PRESETS[arch].spec(style, **overrides)


def resnet50(style: str = "torchvision", **overrides) -> ResNetSpec:
    return preset("resnet50", style, **overrides)


def resnet101(style: str = "torchvision", **overrides) -> ResNetSpec:
    return preset("resnet101", style, **overrides)


def resnet152(style: str = "torchvision", **overrides) -> ResNetSpec:
    return preset("resnet152", style, **overrides)
