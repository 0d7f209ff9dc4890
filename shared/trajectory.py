"""The float64 trajectory oracle: N updates of a ``shared.recipe.Recipe`` in numpy, on
``shared.backprop``'s hand-derived gradients and the spec's BatchNorm (batch statistics in the
forward, running statistics updated with each framework's variance rule).

``run(spec, recipe, weights, batches)`` returns every update's loss and learning rate, the
learnable weights after every update, and the running statistics after every update under both
variance rules (``reference.VARIANCES``: torch updates with the unbiased batch variance, Keras
and Flax with the biased one). ``Optimizer`` is the recipe's update rule in numpy
(``shared.recipe``'s module docstring states it); ``tests/test_recipe.py`` proves it against
torch.optim and optax run in float64. In float32 the same arithmetic is the peer whose
trajectory error sets ``check --mode fit``'s budgets.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from shared import backprop, reference
from shared.recipe import Recipe
from shared.spec import ResNetSpec, is_statistic


class Optimizer:
    """The recipe's update in numpy, in the dtype of the weights it is given."""

    def __init__(self, recipe: Recipe, decayed: Mapping[str, bool], lr=None):
        self.recipe = recipe
        self.lr = lr or recipe.lr_at  # the rate of update t
        self.decayed = dict(decayed)
        self.state: dict[str, dict] = {}
        self.t = 0  # updates done

    def step(self, weights: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The weights after one update (``weights``: the learnable ones, a new dict)."""
        r, lr = self.recipe, self.lr(self.t)
        out = {}
        for key, g in grads.items():
            w = weights[key]
            decay = r.weight_decay if self.decayed[key] else 0.0
            if decay and r.decay == "coupled":
                g = g + decay * w
            state = self.state.setdefault(key, {})
            step = self._sgd(state, g) if r.optimizer == "sgd" else self._adam(state, g)
            if decay and r.decay == "decoupled":
                w = w - lr * decay * w
            out[key] = w - lr * step
        self.t += 1
        return out

    def _sgd(self, state: dict, g: np.ndarray) -> np.ndarray:
        r = self.recipe
        if not r.momentum:
            return g
        buf = g.copy() if "buf" not in state else r.momentum * state["buf"] + (1.0 - r.dampening) * g
        state["buf"] = buf
        return g + r.momentum * buf if r.nesterov else buf

    def _adam(self, state: dict, g: np.ndarray) -> np.ndarray:
        (b1, b2), t = self.recipe.betas, self.t + 1
        m = b1 * state.get("m", 0.0) + (1.0 - b1) * g
        v = b2 * state.get("v", 0.0) + (1.0 - b2) * g * g
        state.update(m=m, v=v)
        return (m / (1.0 - b1**t)) / (np.sqrt(v / (1.0 - b2**t)) + self.recipe.eps)


@dataclasses.dataclass
class Trajectory:
    losses: list[float]  # the loss of update t (the forward before it)
    lrs: list[float]  # the learning rate of update t
    weights: list[dict]  # learnable weights before update 0, then after each update
    stats: dict[str, list[dict]]  # variance rule -> running statistics before update 0, then after each
    steps: list = dataclasses.field(default_factory=list, repr=False)  # backprop.Step of each update (keep_steps)

    def state(self, t: int, rule: str) -> dict[str, np.ndarray]:
        """Every canonical weight (learnable and statistic) after ``t`` updates."""
        return {**self.weights[t], **self.stats[rule][t]}


def run(spec: ResNetSpec, recipe: Recipe, weights: Mapping[str, np.ndarray],
        batches: Sequence[tuple[np.ndarray, np.ndarray]], *, dtype=np.float64, keep_steps: bool = False,
        relu_flip: Mapping[int, Mapping[str, np.ndarray]] | None = None, start: "Trajectory | None" = None,
        from_step: int = 0, lr=None) -> Trajectory:
    """``len(batches)`` updates of ``recipe`` from ``weights`` (canonical, statistics included),
    in ``dtype``. ``relu_flip``: update index -> ``backprop.step``'s ``relu_flip`` for that
    update's pass (a ReLU tie taken the other way). ``start``/``from_step``: continue
    ``start`` (a trajectory of the same run) from its state after ``from_step`` updates, its
    optimizer state replayed, so only the later updates are recomputed. ``lr``: update index ->
    rate, instead of ``recipe.lr_at`` (a rate rounded as a framework rounds it)."""
    spec = recipe.train_spec(spec)
    decayed = recipe.decayed(spec)
    classes = spec.num_classes
    learn = {k: np.asarray(v, dtype) for k, v in weights.items() if not is_statistic(k)}
    running0 = {k: np.asarray(v, dtype) for k, v in weights.items() if is_statistic(k)}
    traj = Trajectory([], [], [learn], {rule: [running0] for rule in reference.VARIANCES})
    opt = Optimizer(recipe, decayed, lr)
    flips = relu_flip or {}
    for t, (images, labels) in enumerate(batches):
        if start is not None and t < from_step:  # replay: the same updates, the optimizer state rebuilt
            res = start.steps[t]
        else:
            targets = recipe.targets(labels, classes, dtype) if recipe.label_smoothing else None
            res = backprop.step(spec, {**traj.weights[-1], **traj.stats["biased"][-1]}, images, labels, dtype=dtype,
                                relu_flip=flips.get(t), targets=targets)
        traj.losses.append(res.loss)
        traj.lrs.append(recipe.lr_at(t))
        if keep_steps:
            traj.steps.append(res)
        if start is not None and t < from_step:
            opt.step(traj.weights[-1], {k: np.asarray(g, dtype) for k, g in res.grads.items()})
            traj.weights.append(start.weights[t + 1])
            for rule in reference.VARIANCES:
                traj.stats[rule].append(start.stats[rule][t + 1])
            continue
        traj.weights.append(opt.step(traj.weights[-1], {k: np.asarray(g, dtype) for k, g in res.grads.items()}))
        for rule in reference.VARIANCES:
            updated = reference.running_update(spec, traj.stats[rule][-1], res.stats, rule)
            traj.stats[rule].append({k: np.asarray(v, dtype) for k, v in updated.items()})
    return traj


def lockstep(spec: ResNetSpec, recipe: Recipe, weights: Mapping[str, np.ndarray],
             batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[Trajectory, Trajectory, list[dict]]:
    """(the float32 peer's trajectory, its float64 shadow, the ReLU units the shadow took the
    peer's way at each update). The shadow is the float64 trajectory that takes every ReLU
    decision the float32 peer took: where a pre-activation's sign differs between the two
    passes of one update (a tie, within rounding of 0), the float64 derivative is taken the
    peer's way (``backprop.step``'s ``relu_flip``). Without it one tie rounded the other way
    moves a small network's weights by 100x the rounding error at once, and a budget derived
    from the peer would be set by which ties it happened to meet; with it the peer's error
    against the shadow is the rounding of its arithmetic alone, carried along the trajectory."""
    spec = recipe.train_spec(spec)
    peer = run(spec, recipe, weights, batches, dtype=np.float32, keep_steps=True)
    decayed = recipe.decayed(spec)
    learn = {k: np.asarray(v, np.float64) for k, v in weights.items() if not is_statistic(k)}
    running0 = {k: np.asarray(v, np.float64) for k, v in weights.items() if is_statistic(k)}
    shadow = Trajectory([], [], [learn], {rule: [running0] for rule in reference.VARIANCES})
    opt, flips = Optimizer(recipe, decayed), []
    for t, (images, labels) in enumerate(batches):
        targets = recipe.targets(labels, spec.num_classes) if recipe.label_smoothing else None
        state = {**shadow.weights[-1], **shadow.stats["biased"][-1]}
        res = backprop.step(spec, state, images, labels, targets=targets)
        masks = {n: (x > 0) != (np.asarray(peer.steps[t].relu_inputs[n]) > 0) for n, x in res.relu_inputs.items()}
        masks = {n: m for n, m in masks.items() if m.any()}
        if masks:
            res = backprop.step(spec, state, images, labels, relu_flip=masks, targets=targets)
        flips.append(masks)
        shadow.losses.append(res.loss)
        shadow.lrs.append(recipe.lr_at(t))
        shadow.steps.append(res)
        shadow.weights.append(opt.step(shadow.weights[-1], res.grads))
        for rule in reference.VARIANCES:
            shadow.stats[rule].append(reference.running_update(spec, shadow.stats[rule][-1], res.stats, rule))
    return peer, shadow, flips


def batches(spec: ResNetSpec, steps: int, batch: int, size: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The seeded batches a fit check trains on: update t's images and labels from seed + t."""
    out = []
    for t in range(steps):
        images = reference.random_images(spec, batch, size, seed + 1 + t)
        labels = np.random.Generator(np.random.PCG64(seed + 1 + t)).integers(0, spec.num_classes, batch)
        out.append((images, labels))
    return out
