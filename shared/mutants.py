"""Broken ports, injected on purpose: the proof that ``resnet-parity check`` can fail.

Each mutant is a port bug seen in the wild. ``check(..., mutant=NAME)`` injects it into every
framework it runs; the verdict must then be FAIL wherever the mutant changes the function and
pass wherever it does not (a wrong BatchNorm momentum changes nothing in eval mode). Whether a
mutant changes the function is decided here from the spec, mode and precision (``applies``),
never from the check's own verdict.

How each is injected, so the same bug reaches all three frameworks:
- ``spec``: the framework is built from a spec with other field values (epsilon, stride, momentum);
- ``layers``: the framework walks a spec whose layers were altered (a ReLU gone, 'SAME'
  padding, a max pool padded with 0): every framework builds what the spec enumerates;
- ``weights``: the framework loads altered weights (two kernels swapped, conv biases dropped);
- ``stats``: the running statistics the framework returns are those of the other variance rule;
- ``native``: framework code swapped in the worker (``resnet_*/runner.py``: a ReLU whose
  backward is scaled, BatchNorm statistics reduced in bf16).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from shared.spec import Block, Conv, MaxPool, ReLU, ResNetSpec

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
    return None if spec.conv_bias else "the spec has no conv biases to drop"


CATALOGUE = {m.name: m for m in (
    Mutant("bn_epsilon", "BatchNorm epsilon 1e-3 instead of the spec's", "spec"),
    Mutant("stride_on", "stride on the other conv of the bottleneck (1x1 <-> 3x3)", "spec"),
    Mutant("same_padding", "'SAME' padding on strided convs and the pool (odd pixel bottom/right)", "layers"),
    Mutant("pool_zero_pad", "max pool padded with 0 instead of -inf", "layers", excluded=_pool_after_relu),
    Mutant("missing_relu", "the first block's middle ReLU left out", "layers"),
    Mutant("swapped_weights", "two kernels of the same shape swapped", "weights"),
    Mutant("conv_bias_dropped", "conv biases dropped (keras style)", "weights", excluded=_no_conv_bias),
    Mutant("bn_momentum", "BatchNorm momentum 0.5 instead of the spec's", "spec", modes=("train",)),
    Mutant("variance_rule", "running variance updated with the other rule (biased <-> unbiased)", "stats",
           modes=("train",)),
    Mutant("relu_backward", "every ReLU's backward scaled by 1.5 (forward unchanged)", "native", modes=("train",)),
    Mutant("bn_stats_bf16", "BatchNorm batch statistics reduced in bf16", "native", modes=("train",),
           precisions=("bf16",)),
)}


class MutatedSpec(ResNetSpec):
    """A spec whose stem and blocks pass through ``layer_fn`` (and blocks through
    ``block_fn``): what a framework builds when its port has the bug."""

    def __init__(self, base: ResNetSpec, layer_fn=None, block_fn=None):
        super().__init__(**{f.name: getattr(base, f.name) for f in dataclasses.fields(ResNetSpec)})
        object.__setattr__(self, "_layer_fn", layer_fn or (lambda layer: layer))
        object.__setattr__(self, "_block_fn", block_fn or (lambda block: block))

    def stem(self):
        return tuple(self._layer_fn(layer) for layer in super().stem())

    def blocks(self):
        out = []
        for block in super().blocks():
            block = dataclasses.replace(block, main=tuple(map(self._layer_fn, block.main)),
                                        shortcut=tuple(map(self._layer_fn, block.shortcut)))
            out.append(self._block_fn(block))
        return tuple(out)

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
    if block.stage == 0 and block.index == 0:
        return dataclasses.replace(block, main=tuple(l for l in block.main if l.name != f"{block.name}_2_relu"))
    return block


def mutate_spec(name: str, spec: ResNetSpec) -> ResNetSpec:
    """The spec a framework with mutant ``name`` builds (the spec itself for other kinds)."""
    if name == "bn_epsilon":
        return spec.replace(bn_epsilon=1e-3)
    if name == "stride_on":
        return spec.replace(stride_on="1x1" if spec.stride_on == "3x3" else "3x3")
    if name == "bn_momentum":
        return spec.replace(bn_momentum=0.5 if spec.bn_momentum != 0.5 else 0.3)
    if name == "same_padding":
        return MutatedSpec(spec, layer_fn=_same_padding)
    if name == "pool_zero_pad":
        return MutatedSpec(spec, layer_fn=lambda l: dataclasses.replace(l, pad_value=0.0) if isinstance(l, MaxPool) else l)
    if name == "missing_relu":
        return MutatedSpec(spec, block_fn=_drop_relu)
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
    from shared.spec import BatchNorm, _out_size

    counts, h, w = {}, height, width

    def walk(layers, h, w):
        for layer in layers:
            if isinstance(layer, (Conv, MaxPool)):
                h, w = _out_size(h, w, layer)
            elif isinstance(layer, BatchNorm):
                counts[layer.name] = batch * h * w
        return h, w

    h, w = walk(spec.stem(), h, w)
    for block in spec.blocks():
        walk(block.shortcut, h, w)
        h, w = walk(block.main, h, w)
    return counts
