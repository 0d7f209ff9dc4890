"""The float64 oracle for one data-parallel training step.

No framework computes any number here: each replica's (or the global batch's) train-mode
forward, loss, analytic backward and BatchNorm batch statistics are ``shared.backprop.step``,
the hand-derived numpy backward of ``shared.reference``; this module shards the batch, picks
the BatchNorm semantics, averages the replicas' gradients, updates the running statistics and
takes the SGD step. ``directional_check`` proves the gradients against central finite
differences in float64.

A data-parallel step with ``replicas`` N splits the global batch into N equal, contiguous
shards (replica r gets images ``r*B/N .. (r+1)*B/N``, as every engine here shards the batch
axis). BatchNorm then normalises with either

- ``"global"`` statistics: mean and biased variance over the whole global batch (JAX sharding
  under jit, keras.distribution on jax, SyncBatchNorm, Keras ``synchronized=True``): the step
  is the single-device step on the global batch;
- ``"per_replica"`` statistics: each replica over its own shard (torch DDP, MirroredStrategy
  without synchronisation): each replica runs the single-device step on its shard, its loss is
  the mean over its shard, and the engine averages the replicas' gradients.

Running statistics are updated from the statistics each replica normalised with,
``running = (1 - m) * running + m * batch`` (``m = spec.bn_momentum``), the variance under the
engine's rule: torch's ``"unbiased"`` (n / (n - 1) times the biased one), Keras' and Flax'
``"biased"``. With per-replica statistics every replica keeps its own running statistics
(``DPStep.running[r]``); which of them an engine keeps (torch: each rank its own until rank 0's
are broadcast at the next forward) is the engine's business, and the check names it.

The optimiser is SGD with momentum ``mu`` (torch, optax and Keras agree): ``v = mu * v + g``,
``w = w - lr * v``. From a zero velocity the first step is ``w - lr * g`` whatever ``mu`` is.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from shared import backprop
from shared.backprop import Step
from shared.reference import running_update
from shared.spec import ResNetSpec
from shared.weights import validate

BN_MODES = ("global", "per_replica")


# ----------------------------------------------------------------------------- one replica

def train_step(spec: ResNetSpec, weights: Mapping[str, np.ndarray], images: np.ndarray,
               labels: np.ndarray, dtype=np.float64, variance_formula: str = "two_pass") -> Step:
    """Train-mode forward (batch statistics), mean cross-entropy and its analytic gradient for
    every trainable weight, on one device: ``shared.backprop.step`` on validated weights.
    ``dtype=np.float32`` runs the same arithmetic in float32: the rounding scale of any fp32
    implementation (the peer of the budgets); ``variance_formula="one_pass"`` computes
    BatchNorm's batch variance as a synchronized BatchNorm does (``backprop.one_pass_moments``),
    another such peer."""
    if not spec.include_top:
        raise ValueError("train_step: the loss needs logits; got a spec with include_top=False")
    validate(spec, weights)
    return _train_step(spec, weights, images, labels, dtype, variance_formula)


# Unvalidated: the finite differences' perturbed float64 weights.
_train_step = backprop.step


# ----------------------------------------------------------------------------- data parallel

@dataclasses.dataclass
class DPStep:
    """One data-parallel step under one BatchNorm semantics."""

    bn: str  # "global" or "per_replica"
    replicas: int
    loss: float  # mean over replicas of each replica's mean loss (= global mean loss)
    grads: dict[str, np.ndarray]  # averaged over replicas
    running: list[dict[str, np.ndarray]]  # running mean/var after the step: one dict per replica
    updated: dict[str, np.ndarray]  # trainable weights after one SGD step
    logits: np.ndarray  # the global batch's logits, in replica order


def shards(n_images: int, replicas: int) -> list[slice]:
    """Equal contiguous shards of the batch axis; ValueError when they cannot be equal."""
    if not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"replicas: expected an integer >= 1, got {replicas!r}")
    if replicas > n_images:
        raise ValueError(f"replicas: {replicas} replicas need at least {replicas} images, the batch has {n_images}")
    if n_images % replicas:
        raise ValueError(f"replicas: the batch of {n_images} images does not split into {replicas} equal shards")
    per = n_images // replicas
    return [slice(r * per, (r + 1) * per) for r in range(replicas)]


def replica_steps(spec: ResNetSpec, weights, images, labels, replicas: int, bn: str,
                  dtype=np.float64, variance_formula: str = "two_pass") -> list[Step]:
    """The single-device steps a data-parallel step is made of: one on the global batch
    (global statistics) or one per shard (per-replica statistics). ``variance_formula``: as
    ``train_step``'s."""
    if bn not in BN_MODES:
        raise ValueError(f"bn: expected one of {BN_MODES}, got {bn!r}")
    parts = shards(len(images), replicas)
    if bn == "global":
        return [train_step(spec, weights, images, labels, dtype, variance_formula)]
    return [train_step(spec, weights, images[p], labels[p], dtype, variance_formula) for p in parts]


def dp_step(spec: ResNetSpec, weights: Mapping[str, np.ndarray], images: np.ndarray, labels: np.ndarray,
            replicas: int, bn: str, variance: str, lr: float = 0.1, momentum: float = 0.9,
            dtype=np.float64, steps: list[Step] | None = None, variance_formula: str = "two_pass") -> DPStep:
    """The oracle of one data-parallel SGD step (module docstring). ``momentum`` is recorded by
    the engines; from a zero velocity it does not change the first step. ``steps``: the
    ``replica_steps`` of the same arguments, when already computed (the variance rule only
    changes the running statistics). ``variance_formula``: how BatchNorm's batch variance is
    computed (``train_step``)."""
    if steps is None:
        steps = replica_steps(spec, weights, images, labels, replicas, bn, dtype, variance_formula)
    grads = {k: sum(s.grads[k] for s in steps) / len(steps) for k in steps[0].grads}
    loss = float(np.mean([s.loss for s in steps]))
    running = [running_update(spec, weights, s.stats, variance) for s in steps]
    if bn == "global":
        running = running * replicas
    updated = {k: np.asarray(weights[k], dtype) - dtype(lr) * g for k, g in grads.items()}
    logits = np.concatenate([s.logits for s in steps])
    return DPStep(bn, replicas, loss, grads, running, updated, logits)


# ----------------------------------------------------------------------------- proof

def directional_check(spec: ResNetSpec, weights, images, labels, directions: int = 3, h: float = 1e-4,
                      seed: int = 0) -> list[tuple[float, float]]:
    """(analytic, central finite-difference) directional derivatives of the float64 loss along
    ``directions`` random unit directions over every trainable weight at once."""
    step = train_step(spec, weights, images, labels)
    rng = np.random.Generator(np.random.PCG64(seed))
    w64 = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    out = []
    for _ in range(directions):
        d = {k: rng.standard_normal(g.shape) for k, g in step.grads.items()}
        norm = np.sqrt(sum(float((v * v).sum()) for v in d.values()))
        d = {k: v / norm for k, v in d.items()}
        analytic = sum(float((step.grads[k] * d[k]).sum()) for k in d)
        plus = _train_step(spec, {**w64, **{k: w64[k] + h * d[k] for k in d}}, images, labels).loss
        minus = _train_step(spec, {**w64, **{k: w64[k] - h * d[k] for k in d}}, images, labels).loss
        out.append((analytic, (plus - minus) / (2 * h)))
    return out
