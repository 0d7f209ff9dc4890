"""BatchNorm folded into the conv before it, as a spec transform: the fast, eval-only network.

``fold_batchnorm(spec, weights)`` returns ``spec.replace(folded=True)`` (no BatchNorm directly
after a conv, every conv biased: 0 where no BatchNorm was folded into an unbiased one) and
weights where each conv followed by a BatchNorm is one conv::

    scale  = gamma / sqrt(var + epsilon)
    kernel = kernel * scale                      (per output channel, HWIO's last axis)
    bias   = (bias - mean) * scale + beta        (bias 0 for an unbiased conv)

computed in float64 and cast to float32 once. This is exact in real arithmetic wherever a
BatchNorm directly follows a conv and sees its whole output: every BatchNorm of the basic and
bottleneck blocks, and the two inside a pre-activation (V2) block's main path. A grouped conv
folds the same way: each output channel belongs to one group and is scaled alone. The family's
BatchNorms all follow a conv too: a deep stem's after each of its convs, ResNet-RS's stem pool
conv, avg-down's 1x1 conv (after its pool, which the fold leaves where it is). An attention (SE,
ECA) has no BatchNorm; its layers come through unchanged.

The other BatchNorms stay (``kept_batchnorms``, ``fold_note``): a V2 block's pre-activation BN
and the head's ``post_bn`` come after an add (or the stem's pool), so no single conv computes
their input (an identity shortcut has none), and a ReLU stands between them and the next conv,
whose zero padding would moreover see the shifted value instead of 0. ``spec.replace(folded=True)``
enumerates exactly the BatchNorms that stay (``ResNetSpec._bn(after_conv=False)``).

Every framework builds the folded spec with no code of its own: it is just a spec. Its error
against the *unfolded* float64 reference is judged by ``resnet-parity check --fold``.
"""

from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np

from shared.spec import BatchNorm, Conv, ResNetSpec
from shared.weights import DTYPE, WeightsError, validate


class NothingToFold(UserWarning):
    """``fold_batchnorm`` was given a spec that has no BatchNorm left to fold."""


def _chains(spec: ResNetSpec):
    """Every chain of layers in forward order within which each layer feeds the next."""
    yield spec.stem()
    for block in spec.blocks():
        yield from (block.pre, block.main, block.shortcut, block.out)
    yield spec.head()


def _batchnorms(spec: ResNetSpec) -> list[BatchNorm]:
    return [layer for layer in spec.layers() if isinstance(layer, BatchNorm)]


def kept_batchnorms(spec: ResNetSpec) -> list[BatchNorm]:
    """The BatchNorms of ``spec`` that its folded spec keeps (none in V1; V2: every block's
    pre-activation BN and ``post_bn``)."""
    kept = {bn.name for bn in _batchnorms(spec.replace(folded=True))}
    return [bn for bn in _batchnorms(spec) if bn.name in kept]


def fold_note(spec: ResNetSpec) -> str:
    """One line saying which BatchNorms a fold of ``spec`` leaves, and why."""
    kept = kept_batchnorms(spec)
    if not kept:
        return "every BatchNorm folded into the conv before it"
    names = [bn.name for bn in kept]
    shown = ", ".join(names if len(names) <= 4 else [*names[:3], "...", names[-1]])
    return (f"BatchNorms after convs folded; {len(kept)} kept ({shown}): each follows an add or a pool, "
            "so no single conv computes its input, and a ReLU comes between it and the next (zero-"
            "padded) conv, so neither conv can absorb it exactly")


def foldable_pairs(spec: ResNetSpec) -> list[tuple[Conv, BatchNorm]]:
    """(conv, the BatchNorm right after it) for every BatchNorm the folded spec drops;
    ValueError naming one that does not directly follow a conv of its width (it could not be
    folded exactly: the spec's ``after_conv`` and its layer order disagree)."""
    kept = {bn.name for bn in kept_batchnorms(spec)}
    pairs = []
    for chain in _chains(spec):
        for i, layer in enumerate(chain):
            if not isinstance(layer, BatchNorm) or layer.name in kept:
                continue
            before = chain[i - 1] if i else None
            if not (isinstance(before, Conv) and before.out_channels == layer.channels):
                raise ValueError(
                    f"{layer.name}: cannot be folded exactly: it does not directly follow a conv of "
                    f"{layer.channels} channels (it follows {getattr(before, 'name', 'the block input')})")
            pairs.append((before, layer))
    return pairs


def fold_batchnorm(spec: ResNetSpec, weights: Mapping[str, np.ndarray], dtype=DTYPE,
                   ) -> tuple[ResNetSpec, dict[str, np.ndarray]]:
    """(eval-only folded spec, its float32 weights): every BatchNorm right after a conv folded
    into it, the others kept as they are (``fold_note`` says which). Weights that do not fit ``spec`` raise
    ``WeightsError`` naming each bad key; a spec that is already folded comes back unchanged,
    with a ``NothingToFold`` warning. ``dtype=np.float64`` keeps the fold unrounded (the exact
    function, for float64 analysis; checkpoints and frameworks take the float32 default)."""
    if not isinstance(spec, ResNetSpec):
        raise TypeError(f"spec: expected a shared.spec.ResNetSpec, got {type(spec).__name__}")
    validate(spec, weights)
    pairs = foldable_pairs(spec)
    if spec.folded or not pairs:
        warnings.warn("fold_batchnorm: the spec has no BatchNorm to fold (already folded); "
                      "returned unchanged", NothingToFold, stacklevel=2)
        return spec, dict(weights)
    folded_spec = spec.replace(folded=True)
    out = {k: v for k, v in weights.items()}
    for conv, bn in pairs:
        p = {k: np.asarray(weights[f"{bn.name}.{k}"], np.float64) for k in ("gamma", "beta", "mean", "var")}
        negative = p["var"] + bn.epsilon <= 0
        if negative.any():
            raise WeightsError(f"{bn.name}.var: {int(negative.sum())} channel(s) with var + epsilon <= 0; "
                               "cannot fold a BatchNorm whose variance is not positive")
        scale = p["gamma"] / np.sqrt(p["var"] + bn.epsilon)
        kernel = np.asarray(weights[f"{conv.name}.kernel"], np.float64) * scale  # HWIO: scales O
        bias = np.asarray(weights[f"{conv.name}.bias"], np.float64) if conv.bias else 0.0
        out[f"{conv.name}.kernel"] = kernel
        out[f"{conv.name}.bias"] = (bias - p["mean"]) * scale + p["beta"]
        for k in ("gamma", "beta", "mean", "var"):
            del out[f"{bn.name}.{k}"]
    for conv in folded_spec.layers():
        # A conv no BatchNorm follows that had no bias (timm's V2: the stem, each block's last
        # conv and its shortcut) is biased in the folded spec too: its bias is 0.
        if isinstance(conv, Conv) and conv.bias and f"{conv.name}.bias" not in out:
            out[f"{conv.name}.bias"] = np.zeros(conv.out_channels)
    out = {k: np.ascontiguousarray(out[k], dtype=dtype) for k in folded_spec.param_shapes()}
    # e.g. a huge gamma over a tiny var -> inf in float32
    validate(folded_spec, {k: v.astype(DTYPE, copy=False) for k, v in out.items()}, source="folded weights")
    return folded_spec, out


def refuse_training(spec: ResNetSpec, what: str = "training") -> None:
    """ValueError for ``what`` on a folded spec: its BatchNorms are gone, so a training step
    would compute a different function from the network the weights came from."""
    if getattr(spec, "folded", False):
        raise ValueError(
            f"{what}: this spec is folded (BatchNorm merged into the convs, eval only); train the "
            "unfolded spec and fold its weights afterwards with shared.fold.fold_batchnorm")
