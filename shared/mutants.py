"""Broken ports, injected on purpose: the proof that ``resnet-parity check`` can fail.

Each mutant is a port bug seen in the wild. ``check(..., mutant=NAME)`` injects it into every
framework it runs; the verdict must then be FAIL wherever the mutant changes the function and
pass wherever it does not (a wrong BatchNorm momentum changes nothing in eval mode). Whether a
mutant changes the function is decided here from the spec, mode and precision (``applies``),
never from the check's own verdict.

How each is injected, so the same bug reaches all three frameworks:
- ``spec``: the framework is built from a spec with other field values (epsilon, which block
  downsamples, momentum);
- ``layers``: the framework walks a spec whose layers or blocks were altered (a ReLU gone, a
  stride moved, 'SAME' padding, the other pool padding, a V2 shortcut from the raw input): every
  framework builds what the spec enumerates, so every framework can be caught;
- ``weights``: the framework loads altered weights (two kernels swapped, conv biases dropped,
  grouped filters in the wrong group order);
- ``stats``: the running statistics the framework returns are those of the other variance rule;
- ``native``: framework code swapped in the worker (``shared/tools/adapters/*.py``: a ReLU whose
  backward is scaled, BatchNorm statistics reduced in bf16).

The family's ports (``FAMILY``) follow the same kinds. A port whose arrays have other shapes
than the spec's (SE's width without timm's minimum, ECA's kernel size) cannot hold the spec's
weights: every framework's load refuses them, naming the key and both shapes. What it computes
once it holds what fits is a weights change of the spec's own shapes (the hidden units or taps
it lacks zeroed), so the verdict judges it like any other. The
vd first-block projection present where the spec has none (or absent where it has one) is a
checkpoint loaded non-strictly: the port's extra projection keeps its initialisation, or the
checkpoint's is dropped. Some ports change the function only at some input sizes (the avg-down
pool's last window overhangs only an odd size): ``applies`` takes the size where it is known.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from shared.spec import (SPATIAL, AvgPool, BatchNorm, Block, Blur, ChannelConv, Conv, Gate, GlobalPool, MaxPool,
                         ReLU, ResNetSpec, out_size)
from shared.weights import init

MODES = ("eval", "train")


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    how: str  # "spec", "layers", "weights", "stats", "native"
    modes: tuple[str, ...] = MODES  # where it can change the function
    precisions: tuple[str, ...] = ("fp32", "tf32", "bf16")
    # Extra condition on the spec: None, or a function returning why it does not apply.
    excluded: Callable[[ResNetSpec], str | None] | None = None
    # On the input size, where the caller knows it (a pool's window overhangs only odd sizes).
    size_excluded: Callable[[ResNetSpec, int], str | None] | None = None
    # Where it applies, the port cannot run at all (shapes that cannot be added): its catch is
    # that error, not a verdict.
    fails_to_run: str = ""

    def applies(self, spec: ResNetSpec, mode: str, precision: str, size: int | None = None) -> bool:
        return not self.why_not(spec, mode, precision, size)

    def why_not(self, spec: ResNetSpec, mode: str, precision: str, size: int | None = None) -> str:
        if mode not in self.modes:
            return f"changes nothing in {mode} mode"
        if precision not in self.precisions:
            return f"changes nothing at {precision}"
        return ((self.excluded and self.excluded(spec))
                or (size is not None and self.size_excluded and self.size_excluded(spec, size)) or "")


def _pool_after_relu(spec: ResNetSpec) -> str | None:
    stem = spec.stem()
    padded = [(before, layer) for before, layer in zip(stem, stem[1:])
              if isinstance(layer, MaxPool) and any(layer.padding)]
    if not padded:
        return "the stem has no padded max pool"
    if all(isinstance(before, ReLU) for before, _ in padded):
        return "the max pool follows a ReLU: its input is >= 0, so 0 and -inf padding agree"
    return None


def _no_conv_bias(spec: ResNetSpec) -> str | None:
    biased = any(isinstance(layer, Conv) and layer.bias for layer in spec.layers())
    return None if biased else "the spec has no conv biases to drop"


def _no_batchnorm(spec: ResNetSpec) -> str | None:
    return None if any(isinstance(layer, BatchNorm) for layer in spec.layers()) else "the spec has no BatchNorm"


def _stride_on_excluded(spec: ResNetSpec) -> str | None:
    reason = _no_strided_block(spec)
    if reason is None and all(_move_stride(b) == b for b in spec.blocks()):
        return "anti-aliased: a strided block's convs all run at stride 1 (its aa layer downsamples)"
    return reason


def _no_strided_block(spec: ResNetSpec) -> str | None:
    return None if any(b.stride > 1 for b in spec.blocks()) else "no block downsamples (one stage)"


def _other_stride_block(spec: ResNetSpec) -> ResNetSpec:
    return spec.replace(stride_block="last" if spec.stride_block == "first" else "first")


def _stride_block_excluded(spec: ResNetSpec) -> str | None:
    reason = _no_strided_block(spec)
    if reason:
        return reason
    if _other_stride_block(spec).param_shapes() != spec.param_shapes():
        return ("moving the stride changes which blocks need a projection shortcut: such a port fails "
                "to load the weights instead of computing another function")
    return None


def _no_preact_shortcut(spec: ResNetSpec) -> str | None:
    if any(b.shortcut and b.shortcut_from == "pre" for b in spec.blocks()):
        return None
    return "no shortcut starts from a pre-activation (V1 blocks have none)"


def _grouped(spec: ResNetSpec) -> list[Conv]:
    """The grouped convs with more than one output channel per group (others have no order)."""
    return [layer for layer in spec.layers()
            if isinstance(layer, Conv) and layer.groups > 1 and layer.out_channels > layer.groups]


def _no_groups(spec: ResNetSpec) -> str | None:
    return None if _grouped(spec) else "the spec has no grouped conv with several channels per group"


# ----------------------------------------------------------------- the family's conventions

def _walk_sizes(spec: ResNetSpec, height: int, width: int, visit) -> None:
    """``visit(layer, (h, w))`` for every layer, with the spatial size of its input."""
    def chain(layers, size):
        for layer in layers:
            visit(layer, size)
            if isinstance(layer, SPATIAL):
                size = out_size(*size, layer)
            elif isinstance(layer, GlobalPool):
                size = (1, 1)
        return size

    size = chain(spec.stem(), (height, width))
    for block in spec.blocks():
        size = block.walk(size, chain, lambda add, main, shortcut: main, lambda scale, main, gate: main)
    chain(spec.head(), size)


def _down_pools(spec: ResNetSpec) -> list[AvgPool]:
    return [layer for block in spec.blocks() for layer in block.shortcut if isinstance(layer, AvgPool)]


def _no_down_pool(spec: ResNetSpec) -> str | None:
    return None if _down_pools(spec) else "no avg-down shortcut pools (no strided avg-down block)"


def _no_overhang(spec: ResNetSpec, size: int) -> str | None:
    """Whether some avg-down pool's last window overhangs its input at ``size`` px (odd sizes)."""
    inputs = {}
    _walk_sizes(spec, size, size, lambda layer, hw: inputs.__setitem__(layer.name, hw))
    if any((n - pool.size) % pool.stride for pool in _down_pools(spec) for n in inputs[pool.name]):
        return None
    return f"at {size} px no avg-down pool's window overhangs its input (only odd sizes do)"


def _count_pad(layer):
    """The avg-down pool of a port that pads the bottom/right explicitly and pools 'valid'
    (Keras' ZeroPadding2D + AveragePooling2D): the padding counts in every divisor."""
    if isinstance(layer, AvgPool) and layer.name.endswith("_down_pool"):
        p = layer.size - 1
        return dataclasses.replace(layer, padding=(0, p, 0, p), ceil_mode=False, count_include_pad=True)
    return layer


def _floor_mode(layer):
    if isinstance(layer, AvgPool) and layer.name.endswith("_down_pool"):
        return dataclasses.replace(layer, ceil_mode=False)
    return layer


def _conv_before_pool(block: Block) -> Block:
    """The avg-down shortcut as (conv, pool, bn): a 1x1 conv without bias and an average pool
    are both linear, one over channels, one over pixels, so they commute."""
    if block.shortcut and isinstance(block.shortcut[0], AvgPool):
        pool, conv, *rest = block.shortcut
        return dataclasses.replace(block, shortcut=(conv, pool, *rest))
    return block


def _commutes(spec: ResNetSpec) -> str:
    return "harmless: the same function with another order of sums (conv and pool commute)"


def _no_attention(spec: ResNetSpec) -> str | None:
    return None if spec.attention else "no attention (SE or ECA) to gate"


def _gate_swapped(layer):
    if isinstance(layer, Gate):
        return dataclasses.replace(layer, function="hard_sigmoid" if layer.function == "sigmoid" else "sigmoid")
    return layer


def _se_narrow(spec: ResNetSpec) -> dict[str, int]:
    """Block name -> SE hidden width of a port without timm's rounding and minimum
    (``int(C * se_ratio)``, at least 1), where narrower than the spec's."""
    out = {}
    for block in spec.blocks():
        first = next((layer for layer in block.attention if isinstance(layer, Conv)), None)
        if first is not None:
            port = max(1, int(first.in_channels * spec.se_ratio))
            if port < first.out_channels:
                out[block.name] = port
    return out


def _se_not_narrower(spec: ResNetSpec) -> str | None:
    if spec.attention != "se":
        return "no SE"
    return None if _se_narrow(spec) else "every SE width is already int(C * se_ratio): timm's minimum never acts"


def _eca_convs(spec: ResNetSpec) -> list[ChannelConv]:
    return [layer for layer in spec.layers() if isinstance(layer, ChannelConv)]


def _no_eca(spec: ResNetSpec) -> str | None:
    return None if _eca_convs(spec) else "no ECA"


def _one_sided(layer):
    if isinstance(layer, ChannelConv):
        return dataclasses.replace(layer, padding=(layer.kernel_size - 1, 0))
    return layer


def _no_blur(spec: ResNetSpec) -> str | None:
    return None if any(isinstance(layer, Blur) for layer in spec.layers()) else "no blur"


def _unnormalised(layer):
    return dataclasses.replace(layer, normalize=False) if isinstance(layer, Blur) else layer


def _first_toggled(spec: ResNetSpec) -> ResNetSpec:
    return spec.replace(project_first=not spec.project_first)


def _vd_excluded(spec: ResNetSpec) -> str | None:
    if spec.shortcut != "avg_down":
        return "not a vd spec (no avg-down shortcut): its first blocks are torchvision's"
    if _first_toggled(spec).param_shapes().keys() == spec.param_shapes().keys():
        return "every stage's first block changes its channels or stride: it has a projection either way"
    return None


CATALOGUE = {m.name: m for m in (
    Mutant("bn_epsilon", "BatchNorm epsilon 1e-3 instead of the spec's", "spec", excluded=_no_batchnorm),
    Mutant("stride_on", "a strided block's stride on its other conv (bottleneck 1x1 <-> 3x3, basic: the "
           "second 3x3, V2: the first 1x1)", "layers", excluded=_stride_on_excluded),
    Mutant("stride_block", "the other block of each stage downsamples (V1: the last, V2: the first)", "spec",
           excluded=_stride_block_excluded),
    Mutant("same_padding", "'SAME' padding on strided convs and the pool (odd pixel bottom/right)", "layers"),
    Mutant("same_padding_flax", "'SAME' padding on the strided 3x3 convs and the stem pool, the stem conv padded "
           "as the spec (the Flax ImageNet example's ResNet, flax#963: odd pixel bottom/right)", "layers"),
    Mutant("pool_zero_pad", "max pool padded with the other value (0 <-> -inf)", "layers", excluded=_pool_after_relu),
    Mutant("missing_relu", "the first block's last inner ReLU left out", "layers"),
    Mutant("shortcut_from_input", "V2's projection shortcut fed the raw block input, not the pre-activation",
           "layers", excluded=_no_preact_shortcut),
    Mutant("groups_interleaved", "grouped convs' filters in interleaved group order (the output axis read as "
           "(per group, groups), a converter's reshape the wrong way round)", "weights", excluded=_no_groups),
    Mutant("swapped_weights", "two kernels of the same shape swapped", "weights"),
    Mutant("conv_bias_dropped", "conv biases dropped (keras style, V2's unnormalised convs)", "weights",
           excluded=_no_conv_bias),
    Mutant("bn_momentum", "BatchNorm momentum 0.5 instead of the spec's", "spec", modes=("train",)),
    Mutant("variance_rule", "running variance updated with the other rule (biased <-> unbiased)", "stats",
           modes=("train",)),
    Mutant("relu_backward", "every ReLU's backward scaled by 1.5 (forward unchanged)", "native", modes=("train",)),
    Mutant("bn_stats_bf16", "BatchNorm batch statistics reduced in bf16", "native", modes=("train",),
           precisions=("bf16",)),
    # the family's conventions (timm, keras-hub)
    Mutant("avg_down_count_pad", "the avg-down pool's overhanging last window averaged with zeros (bottom/right "
           "zero padding counted, count_include_pad=True over it: divided by 4 where timm divides by 2 or 1); "
           "differs only at odd sizes", "layers", excluded=_no_down_pool, size_excluded=_no_overhang),
    Mutant("avg_down_floor", "the avg-down pool with ceil_mode=False: at odd sizes the shortcut loses its last "
           "row and column, so it cannot be added to the main path; at even sizes it is the same function",
           "layers", excluded=_no_down_pool, size_excluded=_no_overhang,
           fails_to_run="the shortcut has one row and column fewer than the main path: the add fails"),
    Mutant("avg_down_conv_first", "the avg-down shortcut's 1x1 conv before its pool (both linear: another order "
           "of sums, the same function)", "layers", excluded=_commutes),
    Mutant("se_no_min", "SE hidden width int(C * se_ratio), not timm's make_divisible (4, not 8, for 64 "
           "channels): a port holding the spec's first hidden units, the others zeroed", "weights",
           excluded=_se_not_narrower),
    Mutant("se_hard_sigmoid", "the attention's gate hard-sigmoid instead of sigmoid (and the reverse)", "layers",
           excluded=_no_attention),
    Mutant("eca_kernel", "ECA's kernel 2 taps shorter (3 where ECA's rule gives 5): a port holding the spec's "
           "middle taps, the outer two zeroed", "weights", excluded=_no_eca),
    Mutant("eca_padding", "ECA's channel conv padded on one side, (k - 1, 0), not centred", "layers",
           excluded=_no_eca),
    Mutant("blur_unnormalised", "the blur filter not divided by its sum (taps summing to 16; in train mode the "
           "BatchNorm after it undoes the scale only up to its epsilon)", "layers", excluded=_no_blur),
    Mutant("vd_first_shortcut", "the vd first-block projection toggled (keras-hub's basic_block_vd <-> timm's "
           "resnet18d), the checkpoint loaded non-strictly: an extra projection left at its initialisation, or "
           "the checkpoint's dropped", "spec", excluded=_vd_excluded),
)}
# The family's ports (issue 29): tables of V1 runs made before them do not list them.
# Conventions met in ports written outside the project after the V1 and block-kind catch tables
# were recorded (2026-11-27): their own table, docs/results/mutants-cpu-ports.md.
PORTS_FOUND = ("same_padding_flax",)
FAMILY = ("avg_down_count_pad", "avg_down_floor", "avg_down_conv_first", "se_no_min", "se_hard_sigmoid",
          "eca_kernel", "eca_padding", "blur_unnormalised", "vd_first_shortcut")


class MutatedSpec(ResNetSpec):
    """A spec whose layers (stem, every part of every block, head) pass through ``layer_fn``
    and whose blocks then pass through ``block_fn``: what a framework builds when its port has
    the bug."""

    def __init__(self, base: ResNetSpec, layer_fn=None, block_fn=None):
        super().__init__(**{f.name: getattr(base, f.name) for f in dataclasses.fields(ResNetSpec)})
        object.__setattr__(self, "_layer_fn", layer_fn or (lambda layer: layer))
        object.__setattr__(self, "_block_fn", block_fn or (lambda block: block))

    def stem(self):
        return tuple(map(self._layer_fn, super().stem()))

    def blocks(self):
        out = []
        for block in super().blocks():
            parts = {part: tuple(map(self._layer_fn, getattr(block, part))) for part in ("pre", "main", "shortcut", "out", "attention")}
            out.append(self._block_fn(dataclasses.replace(block, **parts)))
        return tuple(out)

    def head(self):
        return tuple(map(self._layer_fn, super().head()))

    def replace(self, **fields) -> "MutatedSpec":
        """The same bug on the spec with ``fields`` changed (so mutants compose in any order)."""
        base = ResNetSpec(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ResNetSpec)})
        return MutatedSpec(base.replace(**fields), self._layer_fn, self._block_fn)

    def __hash__(self):
        return hash((ResNetSpec.__hash__(self), id(self._layer_fn), id(self._block_fn)))


def _same_padding(layer):
    """TF/XLA 'SAME' on an even input: total padding k - s, the odd pixel at the bottom/right."""
    if isinstance(layer, (Conv, MaxPool)) and layer.stride > 1:
        k = layer.kernel_size if isinstance(layer, Conv) else layer.size
        total = max(k - layer.stride, 0)
        return dataclasses.replace(layer, padding=(total // 2, total - total // 2, total // 2, total - total // 2))
    return layer


def _same_padding_after_stem(layer):
    """The Flax ImageNet example's padding: its stem conv padded explicitly (as torchvision),
    'SAME' on every strided layer after it."""
    return layer if isinstance(layer, Conv) and layer.name.startswith("conv1_") else _same_padding(layer)


def _drop_relu(block: Block) -> Block:
    """The last ReLU of the first block's main path (bottleneck and V2: ``_2_relu``, basic: ``_1_relu``)."""
    if block.stage == 0 and block.index == 0:
        last = [layer for layer in block.main if isinstance(layer, ReLU)][-1]
        return dataclasses.replace(block, main=tuple(layer for layer in block.main if layer is not last))
    return block


def _move_stride(block: Block) -> Block:
    """A strided block's stride on the other of its first two convs (the padding stays each conv's)."""
    if block.stride == 1:
        return block
    first, second = (layer for layer in block.main if layer.name in (f"{block.name}_1_conv", f"{block.name}_2_conv"))
    moved = {first.name: dataclasses.replace(first, stride=second.stride),
             second.name: dataclasses.replace(second, stride=first.stride)}
    return dataclasses.replace(block, main=tuple(moved.get(layer.name, layer) for layer in block.main))


def _shortcut_from_input(block: Block) -> Block:
    return dataclasses.replace(block, shortcut_from="input") if block.shortcut else block


def _pad_swapped(layer):
    if isinstance(layer, MaxPool):
        return dataclasses.replace(layer, pad_value=0.0 if layer.pad_value == float("-inf") else float("-inf"))
    return layer


def mutate_spec(name: str, spec: ResNetSpec) -> ResNetSpec:
    """The spec a framework with mutant ``name`` builds (the spec itself for other kinds)."""
    if name == "bn_epsilon":
        return spec.replace(bn_epsilon=1e-3 if spec.bn_epsilon != 1e-3 else 1e-5)
    if name == "stride_block":
        return spec if _stride_block_excluded(spec) else _other_stride_block(spec)
    if name == "bn_momentum":
        return spec.replace(bn_momentum=0.5 if spec.bn_momentum != 0.5 else 0.3)
    if name == "vd_first_shortcut":
        return spec if _vd_excluded(spec) else _first_toggled(spec)
    layer_fn, block_fn = {
        "stride_on": (None, _move_stride),
        "same_padding": (_same_padding, None),
        "same_padding_flax": (_same_padding_after_stem, None),
        "pool_zero_pad": (_pad_swapped, None),
        "missing_relu": (None, _drop_relu),
        "shortcut_from_input": (None, _shortcut_from_input),
        "avg_down_count_pad": (_count_pad, None),
        "avg_down_floor": (_floor_mode, None),
        "avg_down_conv_first": (None, _conv_before_pool),
        "se_hard_sigmoid": (_gate_swapped, None),
        "eca_padding": (_one_sided, None),
        "blur_unnormalised": (_unnormalised, None),
    }.get(name, (None, None))
    if layer_fn or block_fn:
        return MutatedSpec(spec, layer_fn=layer_fn, block_fn=block_fn)
    return spec


def mutate_weights(name: str, spec: ResNetSpec, weights: dict) -> dict:
    if name == "swapped_weights":
        kernels = [k for k in weights if k.endswith(".kernel") and weights[k].ndim == 4]
        for i, a in enumerate(kernels):
            for b in kernels[i + 1:]:
                if weights[a].shape == weights[b].shape:
                    return {**weights, a: weights[b], b: weights[a]}
        raise ValueError("swapped_weights: no two conv kernels of the same shape in this spec")
    if name == "conv_bias_dropped":
        return {k: (np.zeros_like(v) if k.endswith(".bias") and not k.startswith("predictions") else v)
                for k, v in weights.items()}
    if name == "groups_interleaved":  # output axis read as (per group, groups) instead of (groups, per group)
        out = dict(weights)
        for conv in _grouped(spec):
            kernel = weights[f"{conv.name}.kernel"]
            out[f"{conv.name}.kernel"] = np.ascontiguousarray(
                kernel.reshape(*kernel.shape[:3], conv.groups, -1).swapaxes(3, 4).reshape(kernel.shape))
        return out
    if name == "se_no_min":  # the hidden units past the port's width contribute nothing
        out = dict(weights)
        for block, port in _se_narrow(spec).items():
            for key, index in ((f"{block}_se_1_conv.kernel", (..., slice(port, None))),
                               (f"{block}_se_1_conv.bias", slice(port, None)),
                               (f"{block}_se_2_conv.kernel", (slice(None), slice(None), slice(port, None)))):
                out[key] = out[key].copy()
                out[key][index] = 0.0
        return out
    if name == "eca_kernel":
        out = dict(weights)
        for conv in _eca_convs(spec):
            kernel = out[f"{conv.name}.kernel"].copy()
            kernel[[0, -1]] = 0.0
            out[f"{conv.name}.kernel"] = kernel
        return out
    if name == "vd_first_shortcut" and not _vd_excluded(spec):
        other = _first_toggled(spec)
        fresh = init(other, seed=0)  # the port's own projection, as its framework initialises it
        return {key: weights[key] if key in weights else fresh[key] for key in other.param_shapes()}
    return weights


def mutate_stats(name: str, stats: dict[str, np.ndarray], weights: dict, counts: dict[str, int],
                 momentum: float, variance: str) -> dict[str, np.ndarray]:
    """``variance_rule``: the running variances a port with the other rule returns. ``counts``:
    values per channel each BatchNorm averaged over (batch x height x width)."""
    if name != "variance_rule":
        return stats
    out = dict(stats)
    for key, new in stats.items():
        if not key.endswith(".var"):
            continue
        layer = key[: -len(".var")]
        n, old = counts[layer], np.asarray(weights[key], np.float64)
        batch_var = (np.asarray(new, np.float64) - (1 - momentum) * old) / momentum
        other = batch_var * (n - 1) / n if variance == "unbiased" else batch_var * n / (n - 1)
        out[key] = ((1 - momentum) * old + momentum * other).astype(np.float32)
    return out


def bn_counts(spec: ResNetSpec, batch: int, height: int, width: int) -> dict[str, int]:
    """For every BatchNorm: how many values per channel its batch statistics average over."""
    counts = {}

    def visit(layer, size):
        if isinstance(layer, BatchNorm):
            counts[layer.name] = batch * size[0] * size[1]

    _walk_sizes(spec, height, width, visit)
    return counts
