"""The layer spec: every architectural number of a ResNet, in one frozen dataclass.

The framework packages hold no architecture numbers and no block structure of their own. They
walk ``ResNetSpec.stem()``, ``ResNetSpec.blocks()`` (each block through ``Block.walk``: where the
shortcut starts, what is added, what follows) and ``ResNetSpec.head()`` (or the flat
``ResNetSpec.layers()``) and say how to express one conv, one BatchNorm, one pool in their
framework. The block kinds: torchvision's basic and bottleneck blocks (with groups and width per
group: ResNeXt, Wide ResNet) and the pre-activation bottleneck (Keras Applications' ResNet V2,
timm's and keras-hub's ``resnetv2``). The family timm and keras-hub ship is spec data too: deep
stems (``stem_convs``), the stem pool (``stem_pool``), avg-down shortcuts (``shortcut``),
channel attention after a block's last BatchNorm (``attention``: SE or ECA, its width or kernel
computed here by the peer's rule and stored in the layer), anti-aliased strided convs
(``anti_alias``). ``PRESETS`` names every architecture; adding one touches this file and nothing
else.

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
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, Union

Padding = tuple[int, int, int, int]  # (top, bottom, left, right)

STYLES = ("torchvision", "keras", "timm")
POOLINGS = ("avg", "max", None)
STRIDE_ON = ("3x3", "1x1")
STRIDE_BLOCK = ("first", "last")
BLOCK_KINDS = ("basic", "bottleneck", "preact")
SHORTCUT_FROM = ("input", "pre")
STEM_POOLS = ("max", "max_blur", "avg", "conv", "none")
SHORTCUTS = ("conv", "avg_down")
ATTENTIONS = (None, "se", "eca")
ANTI_ALIAS = (None, "avg", "blur")
GATES = ("sigmoid", "hard_sigmoid")
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
class AvgPool:
    """Average pool, PyTorch's ``AvgPool2d`` rule. ``padding`` is explicit zero padding;
    ``ceil_mode`` adds a last window where the input leaves a partial one (it starts inside the
    input or its left/top padding and is cut at the padded input's end); ``count_include_pad``:
    whether the explicit padding counts in a window's divisor (positions past the padded input,
    from ``ceil_mode``, never count). timm's avg-down shortcut: size 2, ceil_mode, padding not
    counted; keras-hub's ``AveragePooling2D(2, padding="same")`` is the same function."""

    name: str
    size: int
    stride: int
    padding: Padding = (0, 0, 0, 0)
    ceil_mode: bool = False
    count_include_pad: bool = True

    kind = "avgpool"
    params = NO_PARAMS


@dataclass(frozen=True)
class Blur:
    """Anti-aliased downsampling (timm's ``BlurPool2d``): each channel convolved with the fixed
    filter ``outer(f, f)``, divided by ``sum(f) ** 2`` when ``normalize``, at ``stride``, after
    padding with ``pad_mode`` (numpy's and torch's ``reflect``: the edge pixel not repeated)."""

    name: str
    channels: int
    stride: int = 2
    filter: tuple[float, ...] = (1.0, 2.0, 1.0)
    padding: Padding = (1, 1, 1, 1)
    pad_mode: Literal["reflect", "constant"] = "reflect"
    normalize: bool = True

    kind = "blur"
    params = NO_PARAMS

    @property
    def kernel_size(self) -> int:
        return len(self.filter)

    def taps(self) -> tuple[tuple[float, ...], ...]:
        """The 2-D filter, as numbers (what every framework convolves each channel with)."""
        total = sum(self.filter) ** 2 if self.normalize else 1.0
        return tuple(tuple(a * b / total for b in self.filter) for a in self.filter)


@dataclass(frozen=True)
class GlobalPool:
    """Global average or max pool; ``keepdims`` keeps (N, 1, 1, C) (an attention's squeeze)."""

    name: str
    mode: Literal["avg", "max"]
    keepdims: bool = False

    kind = "globalpool"
    params = NO_PARAMS


@dataclass(frozen=True)
class ChannelConv:
    """ECA's 1-D convolution across the channels of an (N, 1, 1, C) squeeze: one kernel of
    ``kernel_size`` taps, zero ``padding`` (before, after) on the channel axis, no bias."""

    name: str
    kernel_size: int
    padding: tuple[int, int]

    kind = "channelconv"

    @property
    def params(self) -> dict[str, tuple[int, ...]]:
        return {"kernel": (self.kernel_size,)}


@dataclass(frozen=True)
class Gate:
    """An attention's gate: ``sigmoid`` or ``hard_sigmoid`` (``relu6(x + 3) / 6``, timm's and
    Keras 3's)."""

    name: str
    function: Literal["sigmoid", "hard_sigmoid"] = "sigmoid"

    kind = "gate"
    params = NO_PARAMS


@dataclass(frozen=True)
class Scale:
    """A block's main path times its attention's gate (broadcast over height and width)."""

    name: str

    kind = "scale"
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


Layer = Union[Conv, BatchNorm, ReLU, MaxPool, AvgPool, Blur, GlobalPool, ChannelConv, Gate, Dense, Add, Scale]


@dataclass(frozen=True)
class Block:
    """One residual block, in full: ``out(add(attend(main(pre(x))), shortcut(source)))`` where
    ``source`` is ``x`` (``shortcut_from="input"``) or ``pre(x)`` (``"pre"``, ResNet V2) and
    ``attend(m) = scale(m, attention(m))`` when the block has an attention (SE, ECA), else ``m``.

    - ``pre``: the pre-activation (V2: BatchNorm, ReLU); empty otherwise.
    - ``main``: the residual path (basic: conv/bn/relu/conv/bn; bottleneck: three convs; V2:
      conv/bn/relu, conv/bn/relu, conv). In a folded spec the BNs after convs are absent.
    - ``shortcut``: (conv, bn), (conv,), (maxpool,), avg-down's (avgpool, conv, bn) or
      (conv, bn) at stride 1, or empty for the identity.
    - ``add``: the residual sum; ``out``: what follows it ((ReLU,) in V1, empty in V2).
    - ``attention``: the gate computed from the main path's output (SE: squeeze, 1x1 conv, ReLU,
      1x1 conv, gate; ECA: squeeze, channel conv, gate), empty for none; ``scale`` multiplies.

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
    attention: tuple[Layer, ...] = ()
    scale: Scale | None = None

    @property
    def layers(self) -> tuple[Layer, ...]:
        # Forward order, main path before shortcut (``shared.keras_h5`` writes Keras' own order,
        # shortcut first). Any order that keeps data dependencies computes the same function.
        scale = (self.scale,) if self.scale is not None else ()
        return (*self.pre, *self.main, *self.attention, *scale, *self.shortcut, self.add, *self.out)

    @property
    def output(self) -> Layer:
        """The layer whose output is the block's output (V1: the ReLU, V2: the add)."""
        return self.out[-1] if self.out else self.add

    def walk(self, x, chain, add, scale=None):
        """The block's dataflow for any framework. ``chain(layers, x)`` applies layers in order
        (and returns ``x`` for none); ``add(layer, main, shortcut)`` sums the two paths;
        ``scale(layer, main, gate)`` multiplies the main path by its attention's gate (needed
        only where the block has an attention)."""
        pre = chain(self.pre, x)
        shortcut = chain(self.shortcut, pre if self.shortcut_from == "pre" else x)
        main = chain(self.main, pre)
        if self.attention:
            if scale is None:
                raise TypeError(f"{self.name}: this block has an attention ({self.scale.name}); "
                                "walk needs a scale(layer, main, gate) function")
            main = scale(self.scale, main, chain(self.attention, main))
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

    The family (timm ``resnet.py``/``resnetv2.py``, keras-hub ``ResNetBackbone``):

    - stem_convs: the stem's convs as (kernel, width, stride), BN+ReLU after each (V2: between
      them only); None is ``((7, width, 2),)``. timm's deep stem ``((3, 32, 2), (3, 32, 1),
      (3, 64, 1))``, tiered ``((3, 24, 2), (3, 32, 1), (3, 64, 1))``. Stage 1 reads the last
      width (timm's ``resnet50s``: 128).
    - stem_pool: ``"max"`` (3x3/2, padding 1, ``pool_pad_value``), ``"max_blur"`` (the max pool
      at stride 1, then a stride-2 blur: ``resnetblur``), ``"avg"`` (2x2/2: ``resnetaa``),
      ``"conv"`` (3x3/2 conv + BN + ReLU: ResNet-RS) or ``"none"``.
    - shortcut: ``"conv"`` (a strided conv of ``shortcut_kernel``, padding ``(k - 1) // 2``, and
      BN) or ``"avg_down"`` (ResNet-D: a 2x2 average pool at the stride, with
      ``avg_down_ceil_mode`` and ``avg_down_count_include_pad``, then a 1x1 conv at stride 1 and
      BN; no pool at stride 1). project_first: the first block of every stage gets the
      projection even at stride 1 with equal channels (keras-hub's and PaddleClas' vd basic
      block; timm's ``resnet18d`` has the identity there).
    - attention: after a block's last BN, on the main path. ``"se"``: squeeze, biased 1x1 conv
      to ``make_divisible(C * se_ratio, se_divisor)`` channels (timm's rule, at least
      ``se_divisor``: ``_se_width``), ReLU, biased 1x1 conv back to C, ``attention_gate``.
      ``"eca"``: squeeze, a 1-D conv over the channels of the kernel ECA's rule gives for C
      (``_eca_kernel``: 5 for 256..1024 channels, 7 for 2048), zero padded, no bias, gate.
    - anti_alias: a strided 3x3 conv (the basic block's first, the bottleneck's second) runs at
      stride 1 and the downsampling moves after its BN and ReLU: ``"avg"`` (2x2/2 average pool)
      or ``"blur"`` (``Blur``: [1, 2, 1], reflect padding, stride 2).
    - preact_bias: in a pre-activation block, a bias on the convs no BN follows (the last conv
      and the shortcut): Keras Applications' V2 has one, timm's and keras-hub's V2 none.
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
    # The family timm and keras-hub ship (defaults: torchvision's ResNet).
    stem_convs: tuple[tuple[int, int, int], ...] | None = None
    stem_pool: Literal["max", "max_blur", "avg", "conv", "none"] = "max"
    shortcut: Literal["conv", "avg_down"] = "conv"
    shortcut_kernel: int = 1
    avg_down_ceil_mode: bool = True
    avg_down_count_include_pad: bool = False
    project_first: bool = False
    attention: Literal[None, "se", "eca"] = None
    se_ratio: float = 1 / 16
    se_divisor: int = 8
    attention_gate: Literal["sigmoid", "hard_sigmoid"] = "sigmoid"
    anti_alias: Literal[None, "avg", "blur"] = None
    preact_bias: bool = True
    # Eval-only: every BatchNorm folded into the conv before it (``shared.fold``). The BN layers
    # are absent from the enumeration and every conv has a bias; training is refused.
    folded: bool = False

    def __post_init__(self):
        object.__setattr__(self, "depths", tuple(self.depths))
        if self.stem_convs is not None:
            object.__setattr__(self, "stem_convs", tuple(tuple(c) for c in self.stem_convs))
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
        errors.extend(self._family_errors())
        for field in ("conv_bias", "include_top", "zero_init_residual", "folded", "project_first",
                      "avg_down_ceil_mode", "avg_down_count_include_pad", "preact_bias"):
            if not isinstance(getattr(self, field), bool):
                errors.append(f"{field}: must be a bool, got {getattr(self, field)!r}")
        if not errors:
            for stage in range(len(self.depths)):
                if self._inner_width(stage) < 1:
                    errors.append(f"width_per_group: stage {stage + 1} has {self.width * 2**stage} planes, "
                                  f"so width_per_group={self.width_per_group} gives an inner width of 0")
        if errors:
            raise ValueError("invalid ResNetSpec: " + "; ".join(errors))

    def _family_errors(self) -> list[str]:
        errors = []
        for i, conv in enumerate(self.stem_convs or ()):
            if len(conv) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in conv):
                errors.append(f"stem_convs[{i}]: expected (kernel, width, stride) of integers >= 1, got {conv!r}")
        if self.stem_convs is not None and len(self.stem_convs) < 1:
            errors.append("stem_convs: needs at least one conv (None for the 7x7 stem), got ()")
        choices = (("stem_pool", STEM_POOLS), ("shortcut", SHORTCUTS), ("attention", ATTENTIONS),
                   ("anti_alias", ANTI_ALIAS), ("attention_gate", GATES))
        for field, allowed in choices:
            if getattr(self, field) not in allowed:
                errors.append(f"{field}: must be one of {allowed}, got {getattr(self, field)!r}")
        for field in ("shortcut_kernel", "se_divisor"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                errors.append(f"{field}: must be an integer >= 1, got {value!r}")
        if isinstance(self.shortcut_kernel, int) and self.shortcut_kernel % 2 == 0:
            errors.append(f"shortcut_kernel: must be odd (symmetric padding), got {self.shortcut_kernel}")
        if not (isinstance(self.se_ratio, (int, float)) and 0 < self.se_ratio <= 1):
            errors.append(f"se_ratio: must be in (0, 1], got {self.se_ratio!r}")
        if self.block == "preact" and (self.attention or self.anti_alias or self.shortcut != "conv"
                                       or self.stem_pool != "max" or self.project_first):
            errors.append("preact: a pre-activation block takes no attention, anti-aliasing, avg-down, "
                          "project_first or other stem pool (no peer has one)")
        if self.anti_alias and self.stride_on != "3x3":
            errors.append("anti_alias: moves the stride off a strided 3x3 conv; needs stride_on='3x3'")
        return errors

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
        structure = STRUCTURE
        for name, p in PRESETS.items():
            if all(getattr(self, f) == getattr(p.spec(p.styles[0]), f) for f in structure):
                return name
        return None

    @property
    def total_stride(self) -> int:
        """Downsampling factor from the input to the last feature map."""
        stem = 1
        for _, _, stride in self._stem_convs:
            stem *= stride
        return stem * (1 if self.stem_pool == "none" else 2) * 2 ** (len(self.depths) - 1)

    @property
    def _stem_convs(self) -> tuple[tuple[int, int, int], ...]:
        return self.stem_convs if self.stem_convs is not None else ((7, self.width, 2),)

    @property
    def stem_channels(self) -> int:
        """The stem's output channels, what stage 1 reads."""
        return self._stem_convs[-1][1]

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
            if isinstance(layer, SPATIAL):
                h, w = out_size(h, w, layer)
        return (h, w, self.feature_channels)

    def check_input_size(self, height: int, width: int) -> None:
        """ValueError for an input this spec cannot take: smaller than ``min_input_size``, or a
        size where a block's two paths disagree (a 2x2 pool without ``ceil_mode`` drops an odd
        row that the strided 3x3 keeps: timm's model fails there too)."""
        m = self.min_input_size
        if height < m or width < m:
            raise ValueError(
                f"input size: this spec ({len(self.depths)} stages, total stride "
                f"{self.total_stride}) needs images of at least {m}x{m} pixels, got {height}x{width}"
            )
        size = (height, width)

        def chain(layers, hw):
            for layer in layers:
                if isinstance(layer, SPATIAL):
                    hw = out_size(*hw, layer)
            return hw

        size = chain(self.stem(), size)
        for block in self.blocks():
            main, shortcut = chain(block.main, chain(block.pre, size)), chain(block.shortcut, size)
            if main != shortcut:
                raise ValueError(
                    f"input size: {height}x{width} gives {block.name} a {main[0]}x{main[1]} main path and a "
                    f"{shortcut[0]}x{shortcut[1]} shortcut (a pool without ceil_mode drops an odd row); use a "
                    f"size divisible by {self.total_stride}")
            size = main

    # ----------------------------------------------------------------- enumeration

    def _inner_width(self, stage: int) -> int:
        planes = self.width * 2**stage
        return int(planes * self.width_per_group / 64) * self.groups

    def _conv(self, name, cin, cout, k, stride, groups=1, bn_follows=True, preact=False) -> Conv:
        # A folded BN leaves its shift in the conv's bias; a conv no BN follows has one, except
        # a pre-activation block's where preact_bias is False (timm's and keras-hub's V2).
        bias = self.folded or (not bn_follows and (self.preact_bias or not preact)) or self.conv_bias
        return Conv(f"{name}_conv", cin, cout, k, stride, _symmetric((k - 1) // 2), bias, groups)

    def _bn(self, name, c, zero_init=False, after_conv=True) -> BatchNorm | None:
        """A BatchNorm; absent in a folded spec where a conv precedes it (only there is folding
        exact: a pre-activation BN comes after an add and before a ReLU, and stays)."""
        if self.folded and after_conv:
            return None
        return BatchNorm(f"{name}_bn", c, self.bn_epsilon, self.bn_momentum, zero_init)

    def stem(self) -> tuple[Layer, ...]:
        """The stem convs (7x7/2, padding 3, by default), each followed by BN and ReLU (V2: only
        between them: the first block pre-activates), then the stem pool. One conv is named
        ``conv1``; a deep stem's are ``conv1_1``.. with the last BN and ReLU ``conv1_bn`` and
        ``conv1_relu``, as timm's ``bn1`` after ``conv1.0``.."""
        convs = self._stem_convs
        out, cin = [], self.image_channels
        for i, (k, c, stride) in enumerate(convs, 1):
            last = i == len(convs)
            name = "conv1" if len(convs) == 1 else f"conv1_{i}"
            after = "conv1" if last else name
            if last and self.block == "preact":
                out.append(self._conv(name, cin, c, k, stride, bn_follows=False, preact=True))
            else:
                out.extend(_present(self._conv(name, cin, c, k, stride), self._bn(after, c), ReLU(f"{after}_relu")))
            cin = c
        return (*out, *self._stem_pool(cin))

    def _stem_pool(self, c: int) -> tuple[Layer, ...]:
        pool = self.stem_pool
        if pool == "max":
            return (MaxPool("pool1_pool", 3, 2, _symmetric(1), float(self.pool_pad_value)),)
        if pool == "max_blur":
            return (MaxPool("pool1_max", 3, 1, _symmetric(1), float(self.pool_pad_value)), Blur("pool1_blur", c))
        if pool == "avg":
            return (AvgPool("pool1_pool", 2, 2),)
        if pool == "conv":
            return _present(self._conv("pool1", c, c, 3, 2), self._bn("pool1", c), ReLU("pool1_relu"))
        return ()

    def _stride(self, stage: int, index: int) -> int:
        last_stage = len(self.depths) - 1
        if self.stride_block == "first":
            return 2 if (stage > 0 and index == 0) else 1
        return 2 if (stage < last_stage and index == self.depths[stage] - 1) else 1

    def blocks(self) -> tuple[Block, ...]:
        blocks = []
        cin = self.stem_channels
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

    def _projection(self, name, index, cin, cout, stride) -> tuple[Layer, ...]:
        """V1's shortcut where the shape changes (or on each stage's first block with
        ``project_first``), else the identity: a strided conv and BN, or avg-down's pool (absent at
        stride 1), 1x1 conv at stride 1 and BN (named ``_down_pool``, ``_down_conv``,
        ``_down_bn``: timm's ``downsample.0/1/2``)."""
        if stride == 1 and cin == cout and not (self.project_first and index == 0):
            return ()
        if self.shortcut == "avg_down":
            pool = None
            if stride > 1:
                pool = AvgPool(f"{name}_down_pool", 2, stride, (0, 0, 0, 0), self.avg_down_ceil_mode,
                               self.avg_down_count_include_pad)
            return _present(pool, self._conv(f"{name}_down", cin, cout, 1, 1), self._bn(f"{name}_down", cout))
        return _present(self._conv(f"{name}_0", cin, cout, self.shortcut_kernel, stride), self._bn(f"{name}_0", cout))

    def _anti_alias(self, name, channels) -> Layer:
        if self.anti_alias == "avg":
            return AvgPool(f"{name}_aa", 2, 2)
        return Blur(f"{name}_aa", channels)

    def _strided(self, name, cin, cout, stride, groups=1) -> tuple[Layer, ...]:
        """A block's strided 3x3 conv, its BN and ReLU; anti-aliased: the conv at stride 1 and
        the downsampling after the ReLU (timm's ``aa``)."""
        aa = self.anti_alias is not None and stride > 1
        layers = _present(
            self._conv(name, cin, cout, 3, 1 if aa else stride, groups),
            self._bn(name, cout),
            ReLU(f"{name}_relu"),
        )
        return (*layers, self._anti_alias(name.rsplit("_", 1)[0], cout)) if aa else layers

    def _se_width(self, channels: int) -> int:
        """timm's ``make_divisible(channels * se_ratio, se_divisor, round_limit=0)``: the nearest
        multiple of the divisor, at least the divisor (8, not 4, for 64 channels at 1/16)."""
        d = self.se_divisor
        return max(d, int(channels * self.se_ratio + d / 2) // d * d)

    @staticmethod
    def _eca_kernel(channels: int) -> int:
        """ECA's adaptive kernel (gamma 2, beta 1): ``t = int(|log2(C) + 1| / 2)``, made odd
        upwards, at least 3."""
        t = int(abs(math.log2(channels) + 1) / 2)
        return max(t if t % 2 else t + 1, 3)

    def _attention(self, name, channels) -> tuple[tuple[Layer, ...], Scale | None]:
        if self.attention == "se":
            hidden = self._se_width(channels)
            return (
                GlobalPool(f"{name}_se_pool", "avg", keepdims=True),
                Conv(f"{name}_se_1_conv", channels, hidden, 1, 1, (0, 0, 0, 0), True),
                ReLU(f"{name}_se_relu"),
                Conv(f"{name}_se_2_conv", hidden, channels, 1, 1, (0, 0, 0, 0), True),
                Gate(f"{name}_se_gate", self.attention_gate),
            ), Scale(f"{name}_se_scale")
        if self.attention == "eca":
            k = self._eca_kernel(channels)
            return (
                GlobalPool(f"{name}_eca_pool", "avg", keepdims=True),
                ChannelConv(f"{name}_eca_conv", k, ((k - 1) // 2, (k - 1) // 2)),
                Gate(f"{name}_eca_gate", self.attention_gate),
            ), Scale(f"{name}_eca_scale")
        return (), None

    def _v1_block(self, name, stage, index, cin, width, cout, stride, main) -> Block:
        """``relu(attend(main(x)) + projection(x))``: what the basic and bottleneck blocks share."""
        attention, scale = self._attention(name, cout)
        return Block(name, stage, index, cin, width, cout, stride, (), main,
                     self._projection(name, index, cin, cout, stride), "input", Add(f"{name}_add"),
                     (ReLU(f"{name}_out"),), attention, scale)

    def _basic(self, name, stage, index, cin, width, cout, stride) -> Block:
        """torchvision's BasicBlock: 3x3 (stride), 3x3."""
        main = (
            *self._strided(f"{name}_1", cin, width, stride),
            *_present(self._conv(f"{name}_2", width, cout, 3, 1),
                      self._bn(f"{name}_2", cout, zero_init=self.zero_init_residual)),
        )
        return self._v1_block(name, stage, index, cin, width, cout, stride, main)

    def _bottleneck(self, name, stage, index, cin, width, cout, stride) -> Block:
        s1, s3 = (1, stride) if self.stride_on == "3x3" else (stride, 1)
        main = (
            *_present(self._conv(f"{name}_1", cin, width, 1, s1), self._bn(f"{name}_1", width),
                      ReLU(f"{name}_1_relu")),
            *self._strided(f"{name}_2", width, width, s3, self.groups),
            *_present(self._conv(f"{name}_3", width, cout, 1, 1),
                      self._bn(f"{name}_3", cout, zero_init=self.zero_init_residual)),
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
            self._conv(f"{name}_3", width, cout, 1, 1, bn_follows=False, preact=True),
        )
        if index == 0 or cin != cout:
            shortcut, source = (self._conv(f"{name}_0", cin, cout, 1, stride, bn_follows=False, preact=True),), "pre"
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


# The fields that make two architectures differ (what ``ResNetSpec.arch`` compares); the rest
# are conventions, the head, and the folded flag.
STRUCTURE = ("depths", "width", "expansion", "block", "groups", "width_per_group", "stride_block", "stem_convs",
             "stem_pool", "shortcut", "shortcut_kernel", "project_first", "attention", "se_ratio",
             "se_divisor", "anti_alias")


def is_statistic(weight_name: str) -> bool:
    """Whether a canonical weight is a BatchNorm running statistic (``..._bn.mean``/``.var``):
    a buffer training updates by averaging, not a parameter gradients update."""
    layer, _, param = weight_name.rpartition(".")
    return layer.endswith("_bn") and param in BatchNorm.STATISTICS


def _present(*layers) -> tuple[Layer, ...]:
    """The layers that exist in this spec (a folded spec has no BatchNorm)."""
    return tuple(layer for layer in layers if layer is not None)


SPATIAL = (Conv, MaxPool, AvgPool, Blur)  # the layers that change the height and width


def out_size(h: int, w: int, layer: Conv | MaxPool | AvgPool | Blur) -> tuple[int, int]:
    """(height, width) after ``layer``, as PyTorch computes them (its padding, stride, ceil_mode)."""
    k = layer.size if isinstance(layer, (MaxPool, AvgPool)) else layer.kernel_size
    t, b, l, r = layer.padding
    return _out_len(h, t, b, k, layer), _out_len(w, l, r, k, layer)


def _out_len(n: int, before: int, after: int, k: int, layer) -> int:
    """PyTorch's output length: floor, or with ``ceil_mode`` the extra window that starts
    inside the input or its left padding."""
    if not getattr(layer, "ceil_mode", False):
        return (n + before + after - k) // layer.stride + 1
    out = -(-(n + before + after - k) // layer.stride) + 1
    if (out - 1) * layer.stride >= n + before:
        out -= 1
    return out


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
                  stride_block="last", pool_pad_value=0.0, preact_bias=True),
    # timm's ``resnetv2`` (and keras-hub's ``use_pre_activation=True``): the stride on the 3x3
    # of each stage's first block, no conv bias anywhere, the stem's max pool pads with -inf.
    "timm": dict(stride_on="3x3", conv_bias=False, bn_epsilon=1e-5, bn_momentum=0.1,
                 stride_block="first", pool_pad_value=float("-inf"), preact_bias=False),
}
# timm's ResNet V1 family (``resnet.py``) keeps torchvision's conventions.
_STYLE_CONVENTIONS["timm"] = _STYLE_CONVENTIONS["torchvision"]


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


# timm's stems (``resnet.py``: stem_width 32, ``deep`` or ``deep_tiered``; ``resnet*s``: 64).
DEEP_STEM = ((3, 32, 2), (3, 32, 1), (3, 64, 1))
TIERED_STEM = ((3, 24, 2), (3, 32, 1), (3, 64, 1))
WIDE_DEEP_STEM = ((3, 64, 2), (3, 64, 1), (3, 128, 1))
_D = dict(stem_convs=DEEP_STEM, shortcut="avg_down")  # ResNet-D: deep stem, avg-down
_T = dict(stem_convs=TIERED_STEM, shortcut="avg_down")  # timm's ``t``: tiered stem, avg-down
_R50, _R26, _R101 = (3, 4, 6, 3), (2, 2, 2, 2), (3, 4, 23, 3)
_TIMM = ("torchvision",)  # timm's V1 family: torchvision's conventions


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
    # timm's family (timm/models/resnet.py, resnetv2.py; counts from timm 1.0.31's models).
    _p("resnet26", "ResNet26", _TIMM, "timm.resnet26", 15_995_176, depths=_R26),
    _p("resnet200", "ResNet200", _TIMM, "timm.resnet200", 64_673_832, depths=(3, 24, 36, 3)),
    _p("resnet10t", "ResNet10T", _TIMM, "timm.resnet10t", 5_435_488, block="basic", depths=(1, 1, 1, 1), **_T),
    _p("resnet18d", "ResNet18D", _TIMM, "timm.resnet18d", 11_708_744, block="basic", depths=_R26, **_D),
    _p("resnet26d", "ResNet26D", _TIMM, "timm.resnet26d", 16_014_408, depths=_R26, **_D),
    _p("resnet26t", "ResNet26T", _TIMM, "timm.resnet26t", 16_011_872, depths=_R26, **_T),
    _p("resnet50c", "ResNet50C", _TIMM, "timm.resnet50c", 25_576_264, depths=_R50, stem_convs=DEEP_STEM),
    _p("resnet50d", "ResNet50D", _TIMM, "timm.resnet50d", 25_576_264, depths=_R50, **_D),
    _p("resnet50s", "ResNet50S", _TIMM, "timm.resnet50s", 25_680_808, depths=_R50, stem_convs=WIDE_DEEP_STEM),
    _p("resnet50t", "ResNet50T", _TIMM, "timm.resnet50t", 25_573_728, depths=_R50, **_T),
    _p("resnet101d", "ResNet101D", _TIMM, "timm.resnet101d", 44_568_392, depths=_R101, **_D),
    _p("resnext50d_32x4d", "ResNeXt50D_32x4d", _TIMM, "timm.resnext50d_32x4d", 25_048_136, depths=_R50,
       groups=32, width_per_group=4, **_D),
    _p("seresnet18", "SEResNet18", _TIMM, "timm.seresnet18", 11_779_624, block="basic", depths=_R26,
       attention="se"),
    _p("seresnet50", "SEResNet50", _TIMM, "timm.seresnet50", 28_088_024, depths=_R50, attention="se"),
    _p("seresnext26d_32x4d", "SEResNeXt26D_32x4d", _TIMM, "timm.seresnext26d_32x4d", 16_809_512, depths=_R26,
       groups=32, width_per_group=4, attention="se", **_D),
    _p("seresnext50_32x4d", "SEResNeXt50_32x4d", _TIMM, "timm.seresnext50_32x4d", 27_559_896, depths=_R50,
       groups=32, width_per_group=4, attention="se"),
    _p("ecaresnet26t", "ECAResNet26T", _TIMM, "timm.ecaresnet26t", 16_011_916, depths=_R26, attention="eca", **_T),
    _p("ecaresnet50d", "ECAResNet50D", _TIMM, "timm.ecaresnet50d", 25_576_350, depths=_R50, attention="eca", **_D),
    _p("resnetrs50", "ResNetRS50", _TIMM, "timm.resnetrs50", 35_691_912, depths=_R50, stem_pool="conv",
       attention="se", se_ratio=0.25, **_D),
    _p("resnetaa50", "ResNetAA50", _TIMM, "timm.resnetaa50", 25_557_032, depths=_R50, stem_pool="avg",
       anti_alias="avg"),
    _p("resnetaa50d", "ResNetAA50D", _TIMM, "timm.resnetaa50d", 25_576_264, depths=_R50, stem_pool="avg",
       anti_alias="avg", **_D),
    _p("resnetblur18", "ResNetBlur18", _TIMM, "timm.resnetblur18", 11_689_512, block="basic", depths=_R26,
       stem_pool="max_blur", anti_alias="blur"),
    _p("resnetblur50", "ResNetBlur50", _TIMM, "timm.resnetblur50", 25_557_032, depths=_R50,
       stem_pool="max_blur", anti_alias="blur"),
    _p("resnetv2_50", "ResNetV2_50", ("timm",), "timm.resnetv2_50", 25_549_352, block="preact", depths=_R50),
    _p("resnetv2_101", "ResNetV2_101", ("timm",), "timm.resnetv2_101", 44_541_480, block="preact", depths=_R101),
    # keras-hub's vd basic blocks (``basic_block_vd``): ResNet-D with a projection on stage 1's
    # first block too. Its bottleneck vd presets are timm's resnet*d; its V2, timm's resnetv2.
    # Counts: keras-hub 0.32's ResNetImageClassifier, 1000 classes (Keras counts BN statistics).
    _p("resnet_vd_18", "ResNetVD18", _TIMM, "keras_hub.resnet_vd_18", 11_722_824, True, block="basic", depths=_R26,
       project_first=True, **_D),
    _p("resnet_vd_34", "ResNetVD34", _TIMM, "keras_hub.resnet_vd_34", 21_838_408, True, block="basic",
       depths=(3, 4, 6, 3), project_first=True, **_D),
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
