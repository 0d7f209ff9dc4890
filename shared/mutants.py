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
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from shared.spec import BatchNorm, Block, Conv, MaxPool, ReLU, ResNetSpec, _out_size

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

    def applies(self, spec: ResNetSpec, mode: str, precision: str) -> bool:
        return mode in self.modes and precision in self.precisions and not (self.excluded and self.excluded(spec))

    def why_not(self, spec: ResNetSpec, mode: str, precision: str) -> str:
        if mode not in self.modes:
            return f"changes nothing in {mode} mode"
        if precision not in self.precisions:
            return f"changes nothing at {precision}"
        return (self.excluded and self.excluded(spec)) or ""


def _pool_after_relu(spec: ResNetSpec) -> str | None:
    stem = spec.stem()
    for before, layer in zip(stem, stem[1:]):
        if isinstance(layer, MaxPool) and isinstance(before, ReLU):
            return "the max pool follows a ReLU: its input is >= 0, so 0 and -inf padding agree"
    return None


def _no_conv_bias(spec: ResNetSpec) -> str | None:
    biased = any(isinstance(layer, Conv) and layer.bias for layer in spec.layers())
    return None if biased else "the spec has no conv biases to drop"


def _no_batchnorm(spec: ResNetSpec) -> str | None:
    return None if any(isinstance(layer, BatchNorm) for layer in spec.layers()) else "the spec has no BatchNorm"


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


CATALOGUE = {m.name: m for m in (
    Mutant("bn_epsilon", "BatchNorm epsilon 1e-3 instead of the spec's", "spec", excluded=_no_batchnorm),
    Mutant("stride_on", "a strided block's stride on its other conv (bottleneck 1x1 <-> 3x3, basic: the "
           "second 3x3, V2: the first 1x1)", "layers", excluded=_no_strided_block),
    Mutant("stride_block", "the other block of each stage downsamples (V1: the last, V2: the first)", "spec",
           excluded=_stride_block_excluded),
    Mutant("same_padding", "'SAME' padding on strided convs and the pool (odd pixel bottom/right)", "layers"),
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
)}


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
    layer_fn, block_fn = {
        "stride_on": (None, _move_stride),
        "same_padding": (_same_padding, None),
        "pool_zero_pad": (_pad_swapped, None),
        "missing_relu": (None, _drop_relu),
        "shortcut_from_input": (None, _shortcut_from_input),
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

    def chain(layers, size):
        for layer in layers:
            if isinstance(layer, (Conv, MaxPool)):
                size = _out_size(*size, layer)
            elif isinstance(layer, BatchNorm):
                counts[layer.name] = batch * size[0] * size[1]
        return size

    size = chain(spec.stem(), (height, width))
    for block in spec.blocks():
        size = block.walk(size, chain, lambda add, main, shortcut: main)
    chain(spec.head(), size)
    return counts
