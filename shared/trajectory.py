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

``Follow``: where a port's float32 arithmetic, not the recipe, decides an update. Adam's step
``m_hat / (sqrt(v_hat) + eps)`` normalizes each element by its own history: an element whose
gradient lies within rounding of 0 (within a few epsilon) steps by up to the whole rate either
way, whichever side of 0 the rounding put it. ``run(..., follow=)`` lets the float64 trajectory
take such an element the port's way: at an element whose update varies, over the gradient
window the caller gives (the rounding a float32 pass may make), by more than ``spread``, the
gradient in the window whose update is nearest the port's own weight change replaces the
float64 gradient, and is carried through ``m`` and ``v`` from then on, for at most
``FOLLOWED`` elements an update, those nearest to 0 of the ones the port took the other way;
after an update at rate 0, whose gradient no weight shows, that gradient is chosen in its own
window too (``check_fit``'s rule).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from shared import backprop, parity, reference
from shared.recipe import Recipe
from shared.spec import ResNetSpec, is_statistic


@dataclasses.dataclass(frozen=True)
class Follow:
    """One tensor of a port at one update, for ``Optimizer.step``'s ``follow``: the gradient
    window's half-width, the least spread of an element's update over that window (in weight
    units) that makes it a tie, and the port's weights before and after the update."""

    window: float
    spread: float
    before: np.ndarray
    after: np.ndarray


def gradient_window(peer_grad, grad) -> float:
    """The half-width of an Adam tie's gradient window in one tensor: ``MARGIN`` x the float32
    peer's largest gradient error there (the layer-wide window of the ReLU rule)."""
    return parity.MARGIN * float(np.abs(np.asarray(peer_grad, np.float64) - grad).max())


GRID = 17  # points across the window where an element's spread is read
FINE = 1025  # points where the port's update is looked for, then bisected
BISECT = 40
FOLLOWED = 4  # the most Adam ties followed per update, nearest to 0 first (as check_fit's TIE_NEAREST)


class Optimizer:
    """The recipe's update in numpy, in the dtype of the weights it is given."""

    def __init__(self, recipe: Recipe, decayed: Mapping[str, bool], lr=None):
        self.recipe = recipe
        self.lr = lr or recipe.lr_at  # the rate of update t
        self.decayed = dict(decayed)
        self.state: dict[str, dict] = {}
        self.t = 0  # updates done
        self.followed: list[dict] = []  # per update followed: the Adam ties taken the port's way
        self.pending: dict = {}  # key -> (gradient, window) of the update before, at rate 0

    def step(self, weights: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray],
             follow: Mapping[str, Follow] | None = None, replay: dict | None = None) -> dict[str, np.ndarray]:
        """The weights after one update (``weights``: the learnable ones, a new dict).
        ``follow``: key -> the port's update of that tensor (module docstring; AdamW only: an
        SGD update is linear in the gradient, its rounding the tensor's own). ``replay``: an
        entry of ``followed`` from an earlier run of the same update, its gradients used as they were."""
        r, lr = self.recipe, self.lr(self.t)
        decays = {key: r.weight_decay if self.decayed[key] else 0.0 for key in grads}
        seen = {key: g + decays[key] * weights[key] if decays[key] and r.decay == "coupled" else g
                for key, g in grads.items()}  # what the momentum or Adam sees
        if replay is not None:
            for e in replay["followed"]:
                self._set(seen, e)
            self.followed.append(replay)
        elif r.optimizer == "adamw" and follow and lr:
            seen = self._follow(seen, grads, follow, lr, decays if r.decay == "decoupled" else {})
        # An update at rate 0 moves no weight, so it shows nothing of the port's gradient, yet
        # Adam's m and v take it in: the next update's ties re-choose it in its own window.
        self.pending = ({k: (np.array(seen[k], np.float64).reshape(-1), follow[k].window) for k in follow}
                        if r.optimizer == "adamw" and follow and not lr else {})
        out = {}
        for key, g in seen.items():
            w, decay = weights[key], decays[key]
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

    def _moments(self, m0, v0, g):
        """Adam's ``m`` and ``v`` after gradient(s) ``g`` from ``m0``, ``v0``."""
        b1, b2 = self.recipe.betas
        return b1 * m0 + (1.0 - b1) * g, b2 * v0 + (1.0 - b2) * g * g

    def _adam_at(self, m0, v0, g):
        """Adam's step at this update for gradient(s) ``g`` from the state ``m0``, ``v0``."""
        (b1, b2), t = self.recipe.betas, self.t + 1
        m, v = self._moments(m0, v0, g)
        return (m / (1.0 - b1**t)) / (np.sqrt(v / (1.0 - b2**t)) + self.recipe.eps)

    def _adam(self, state: dict, g: np.ndarray) -> np.ndarray:
        m0, v0 = state.get("m", 0.0), state.get("v", 0.0)
        state["m"], state["v"] = self._moments(m0, v0, g)
        return self._adam_at(m0, v0, g)

    def _set(self, seen: dict, e: dict) -> None:
        """Apply one followed element ``e`` (``_follow``'s record): its gradient in ``seen``
        and, where the update before had rate 0, that update's gradient in Adam's state."""
        seen[e["key"]] = np.array(seen[e["key"]])
        seen[e["key"]].reshape(-1)[e["index"]] = e["g_port"]
        if "g_before_port" in e:
            (b1, b2), state = self.recipe.betas, self.state[e["key"]]
            state["m"], state["v"] = np.array(state["m"]), np.array(state["v"])
            old, new = e["g_before"], e["g_before_port"]
            state["m"].reshape(-1)[e["index"]] += (1.0 - b1) * (new - old)
            state["v"].reshape(-1)[e["index"]] += (1.0 - b2) * (new * new - old * old)

    def _explain(self, m0: np.ndarray, v0: np.ndarray, g: np.ndarray, window: np.ndarray,
                 target: np.ndarray) -> np.ndarray:
        """Per element (Adam state ``m0``, ``v0``), the gradient in ``g +- window`` whose step is
        nearest ``target``: the nearest of ``FINE`` points, bisected where the step crosses it."""
        cand = g[:, None] + window[:, None] * np.linspace(-1.0, 1.0, FINE)
        miss = self._adam_at(m0[:, None], v0[:, None], cand) - target[:, None]
        rows = np.arange(g.size)
        best = np.abs(miss).argmin(axis=1)
        sign = np.sign(miss[rows, best])
        left, right = np.clip(best - 1, 0, FINE - 1), np.clip(best + 1, 0, FINE - 1)
        use_left = np.sign(miss[rows, left]) * sign < 0
        use_right = ~use_left & (np.sign(miss[rows, right]) * sign < 0)
        lo = np.where(use_left, cand[rows, left], cand[rows, best])
        hi = np.where(use_left, cand[rows, best], np.where(use_right, cand[rows, right], cand[rows, best]))
        lo_sign = np.sign(self._adam_at(m0, v0, lo) - target)
        for _ in range(BISECT):
            mid = 0.5 * (lo + hi)
            same = np.sign(self._adam_at(m0, v0, mid) - target) == lo_sign
            lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
        return np.where(use_left | use_right, 0.5 * (lo + hi), cand[rows, best])

    def _history(self, key: str, index: np.ndarray, before: np.ndarray | None = None):
        """Adam's ``m`` and ``v`` at the flat elements ``index`` (as arrays); with ``before``
        (candidates for the pending rate-0 update's gradient, a trailing axis), the state each
        would have left instead of the pending gradient."""
        state, (b1, b2) = self.state.get(key, {}), self.recipe.betas
        m0 = np.broadcast_to(state.get("m", 0.0), self.shapes[key]).reshape(-1)[index]
        v0 = np.broadcast_to(state.get("v", 0.0), self.shapes[key]).reshape(-1)[index]
        if before is None:
            return m0, v0
        old = self.pending[key][0][index][:, None]
        return (m0[:, None] + (1.0 - b1) * (before - old), v0[:, None] + (1.0 - b2) * (before * before - old * old))

    def _follow(self, seen: dict, grads: Mapping[str, np.ndarray], follow: Mapping[str, Follow], lr: float,
                decoupled: Mapping[str, float]) -> dict:
        """``seen`` (what Adam sees, per key) with the port's Adam ties followed: a tie is an
        element whose step over ``seen +- window`` (and, after an update at rate 0, over that
        update's gradient window too: ``pending``) spreads by more than ``spread`` (a gradient
        of exactly 0 has no rounding to spread: zero padding, a dead unit); the port took it the
        other way where its own update (from its weights) differs from this one by more than
        ``spread``. Of those, the ``FOLLOWED`` nearest to 0 (``|g| / window``) take the
        gradient(s) in the window(s) whose step is nearest the port's (``_explain``); the others
        stay, and are judged."""
        self.shapes = {k: np.shape(v) for k, v in seen.items()}
        taken, ties = [], 0
        line = np.linspace(-1.0, 1.0, GRID)
        for key, f in follow.items():
            g = np.asarray(seen[key], np.float64).reshape(-1)
            every = np.arange(g.size)
            grid = g[:, None] + f.window * line
            if key in self.pending:  # (element, gradient before, gradient now)
                base, window = self.pending[key]
                m0, v0 = self._history(key, every, base[:, None] + window * line[::4])
                steps = self._adam_at(m0[:, :, None], v0[:, :, None], grid[:, None, :]).reshape(g.size, -1)
            else:
                steps = self._adam_at(*(x[:, None] for x in self._history(key, every)), grid)
            tie = (lr * (steps.max(axis=1) - steps.min(axis=1)) > f.spread) & (np.asarray(grads[key]).reshape(-1) != 0)
            index = np.nonzero(tie)[0]
            if not index.size:
                continue
            ties += index.size
            before = np.asarray(f.before, np.float64).reshape(-1)[index]
            after = np.asarray(f.after, np.float64).reshape(-1)[index]
            target = (before * (1.0 - lr * decoupled.get(key, 0.0)) - after) / lr  # the port's Adam step
            other = lr * np.abs(self._adam_at(*self._history(key, index), g[index]) - target) > f.spread
            taken += [(abs(g[i]) / f.window, key, int(i), float(t)) for i, t in zip(index[other], target[other])]
        taken.sort()
        out, followed = dict(seen), []
        for _, key, i, target in taken[:FOLLOWED]:  # the others: counted, not followed
            g0 = float(np.asarray(seen[key]).reshape(-1)[i])
            e = {"key": key, "index": i, "g": g0}
            index = np.array([i])
            if key in self.pending:  # each candidate gradient before, the best gradient now
                base, window = self.pending[key]
                prior = base[i] + window * np.linspace(-1.0, 1.0, FINE // 8 + 1)
                m0, v0 = (x[0] for x in self._history(key, index, prior[None, :]))
                now = self._explain(m0, v0, np.full(prior.size, g0), np.full(prior.size, follow[key].window),
                                    np.full(prior.size, target))
                miss = np.abs(self._adam_at(m0, v0, now) - target)
                exact = miss <= miss.min() + 1e-9 * abs(target)  # of the exact ones, the nearest to the float64's
                pick = int(np.argmin(np.where(exact, np.abs(prior - base[i]), np.inf)))
                e.update(g_port=float(now[pick]), g_before=float(base[i]), g_before_port=float(prior[pick]),
                         unexplained=float(lr * miss[pick]))
            else:
                m0, v0 = self._history(key, index)
                value = self._explain(m0, v0, np.array([g0]), np.array([follow[key].window]), np.array([target]))
                e.update(g_port=float(value[0]),
                         unexplained=float(lr * abs(self._adam_at(m0, v0, value)[0] - target)))
            self._set(out, e)
            followed.append(e)
        self.followed.append({"update": self.t, "ties": ties, "other_way": len(taken), "followed": followed})
        return out


@dataclasses.dataclass
class Trajectory:
    losses: list[float]  # the loss of update t (the forward before it)
    lrs: list[float]  # the learning rate of update t
    weights: list[dict]  # learnable weights before update 0, then after each update
    stats: dict[str, list[dict]]  # variance rule -> running statistics before update 0, then after each
    steps: list = dataclasses.field(default_factory=list, repr=False)  # backprop.Step of each update (keep_steps)
    followed: list = dataclasses.field(default_factory=list)  # Adam ties taken a port's way (run's follow)

    def state(self, t: int, rule: str) -> dict[str, np.ndarray]:
        """Every canonical weight (learnable and statistic) after ``t`` updates."""
        return {**self.weights[t], **self.stats[rule][t]}


def run(spec: ResNetSpec, recipe: Recipe, weights: Mapping[str, np.ndarray],
        batches: Sequence[tuple[np.ndarray, np.ndarray]], *, dtype=np.float64, keep_steps: bool = False,
        relu_flip: Mapping[int, Mapping[str, np.ndarray]] | None = None, start: "Trajectory | None" = None,
        from_step: int = 0, lr=None, follow: Mapping[int, Mapping[str, Follow]] | None = None) -> Trajectory:
    """``len(batches)`` updates of ``recipe`` from ``weights`` (canonical, statistics included),
    in ``dtype``. ``relu_flip``: update index -> ``backprop.step``'s ``relu_flip`` for that
    update's pass (a ReLU tie taken the other way). ``start``/``from_step``: continue
    ``start`` (a trajectory of the same run) from its state after ``from_step`` updates, its
    optimizer state replayed, so only the later updates are recomputed. ``lr``: update index ->
    rate, instead of ``recipe.lr_at`` (a rate rounded as a framework rounds it). ``follow``:
    update index -> ``Optimizer.step``'s ``follow`` (a port's Adam ties, module docstring);
    ``Trajectory.followed`` lists the elements followed."""
    spec = recipe.train_spec(spec)
    decayed = recipe.decayed(spec)
    classes = spec.num_classes
    learn = {k: np.asarray(v, dtype) for k, v in weights.items() if not is_statistic(k)}
    running0 = {k: np.asarray(v, dtype) for k, v in weights.items() if is_statistic(k)}
    traj = Trajectory([], [], [learn], {rule: [running0] for rule in reference.VARIANCES})
    opt = Optimizer(recipe, decayed, lr)
    opt.followed = traj.followed
    flips, follows = relu_flip or {}, follow or {}
    replayed = {f["update"]: f for f in start.followed} if start is not None and follow else {}
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
            opt.step(traj.weights[-1], {k: np.asarray(g, dtype) for k, g in res.grads.items()}, follows.get(t),
                     replay=replayed.get(t))
            traj.weights.append(start.weights[t + 1])
            for rule in reference.VARIANCES:
                traj.stats[rule].append(start.stats[rule][t + 1])
            continue
        traj.weights.append(opt.step(traj.weights[-1], {k: np.asarray(g, dtype) for k, g in res.grads.items()},
                                     follows.get(t)))
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
    against the shadow is the rounding of its arithmetic alone, carried along the trajectory.
    Under AdamW the shadow takes the peer's Adam ties too (``Follow``: the peer's gradient
    error as the window, the least budget's share as the spread; ``shadow.followed``)."""
    spec = recipe.train_spec(spec)
    peer = run(spec, recipe, weights, batches, dtype=np.float32, keep_steps=True)
    decayed = recipe.decayed(spec)
    learn = {k: np.asarray(v, np.float64) for k, v in weights.items() if not is_statistic(k)}
    running0 = {k: np.asarray(v, np.float64) for k, v in weights.items() if is_statistic(k)}
    shadow = Trajectory([], [], [learn], {rule: [running0] for rule in reference.VARIANCES})
    opt, flips = Optimizer(recipe, decayed), []
    opt.followed = shadow.followed
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
        follow = None
        if recipe.optimizer == "adamw":  # the peer's Adam ties, as its ReLU decisions (the least spread: the floor's)
            follow = {k: Follow(gradient_window(peer.steps[t].grads[k], g),
                                parity.FP32_FLOOR / parity.MARGIN * float(np.linalg.norm(shadow.weights[-1][k])),
                                peer.weights[t][k], peer.weights[t + 1][k]) for k, g in res.grads.items()}
        shadow.weights.append(opt.step(shadow.weights[-1], res.grads, follow))
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
