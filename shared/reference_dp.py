"""The float64 oracle for one data-parallel training step, with its own analytic backward.

No framework computes any number here: the forward reuses ``shared.reference``'s layers
(im2col convolution, -inf padded max pool, BatchNorm), the backward is derived by hand for each
of them, and ``directional_check`` proves it against central finite differences in float64.

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

from shared import reference
from shared.spec import BatchNorm, Conv, Dense, GlobalPool, MaxPool, ReLU, ResNetSpec
from shared.weights import validate

BN_MODES = ("global", "per_replica")
VARIANCES = ("unbiased", "biased")


# ----------------------------------------------------------------------------- layers

def _pad(x, padding, value=0.0):
    t, b, l, r = padding
    if not any(padding):
        return x
    return np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=value)


def _unpad(x, padding):
    t, b, l, r = padding
    return x[:, t:x.shape[1] - b, l:x.shape[2] - r, :]


def _conv_backward(x, kernel, layer: Conv, dy):
    """(dx, dkernel, dbias) of ``reference.conv``: dkernel = cols^T dy, dx = col2im(dy K^T)."""
    k, _, cin, cout = kernel.shape
    s = layer.stride
    xp = _pad(x, layer.padding)
    n, ho, wo, _ = dy.shape
    dy2 = dy.reshape(-1, cout)
    dxp = np.zeros_like(xp)
    if k == 1:
        cols = xp[:, ::s, ::s, :][:, :ho, :wo, :]
        dkernel = (cols.reshape(-1, cin).T @ dy2).reshape(kernel.shape)
        dxp[:, ::s, ::s, :][:, :ho, :wo, :] += (dy2 @ kernel.reshape(cin, cout).T).reshape(n, ho, wo, cin)
    else:
        win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::s, ::s]
        cols = np.ascontiguousarray(win.transpose(0, 1, 2, 4, 5, 3)).reshape(n * ho * wo, k * k * cin)
        dkernel = (cols.T @ dy2).reshape(kernel.shape)
        dcols = (dy2 @ kernel.reshape(k * k * cin, cout).T).reshape(n, ho, wo, k, k, cin)
        for i in range(k):
            for j in range(k):
                dxp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :] += dcols[:, :, :, i, j, :]
    dbias = dy2.sum(axis=0) if layer.bias else None
    return _unpad(dxp, layer.padding), dkernel, dbias


def _maxpool_backward(x, layer: MaxPool, dy):
    """Gradient to the first maximum of each window (ties only occur between ReLU zeros, whose
    gradient the ReLU stops anyway)."""
    k, s = layer.size, layer.stride
    xp = _pad(x, layer.padding, -np.inf)
    n, ho, wo, c = dy.shape
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::s, ::s][:, :ho, :wo]
    best = win.max(axis=(4, 5))
    taken = np.zeros(best.shape, bool)
    dxp = np.zeros_like(xp)
    for i in range(k):
        for j in range(k):
            hit = (win[..., i, j] == best) & ~taken
            taken |= hit
            dxp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :] += np.where(hit, dy, 0.0)
    return _unpad(dxp, layer.padding)


def _bn_train(x, gamma, beta, epsilon):
    mean = x.mean(axis=(0, 1, 2))
    var = x.var(axis=(0, 1, 2))
    inv = 1.0 / np.sqrt(var + epsilon)
    xhat = (x - mean) * inv
    return xhat * gamma + beta, (xhat, inv, mean, var)


def _bn_backward(cache, gamma, dy):
    xhat, inv = cache[:2]
    dgamma = (dy * xhat).sum(axis=(0, 1, 2))
    dbeta = dy.sum(axis=(0, 1, 2))
    dx = gamma * inv * (dy - dy.mean(axis=(0, 1, 2)) - xhat * (dy * xhat).mean(axis=(0, 1, 2)))
    return dx, dgamma, dbeta


# ----------------------------------------------------------------------------- one replica

@dataclasses.dataclass
class Step:
    """One train-mode forward and backward of one replica (or of one device)."""

    loss: float
    logits: np.ndarray
    grads: dict[str, np.ndarray]  # every trainable canonical weight
    stats: dict[str, tuple[np.ndarray, np.ndarray, int]]  # bn name -> (mean, biased var, count)


def _forward(layer, x, w, tape, stats):
    if isinstance(layer, Conv):
        bias = w[f"{layer.name}.bias"] if layer.bias else None
        y = reference.conv(x, w[f"{layer.name}.kernel"], layer.stride, layer.padding, bias)
        tape.append((layer, x))
        return y
    if isinstance(layer, BatchNorm):
        y, cache = _bn_train(x, w[f"{layer.name}.gamma"], w[f"{layer.name}.beta"], layer.epsilon)
        stats[layer.name] = (cache[2], cache[3], x.size // x.shape[-1])
        tape.append((layer, cache))
        return y
    if isinstance(layer, ReLU):
        tape.append((layer, x > 0))
        return np.maximum(x, 0.0)
    if isinstance(layer, MaxPool):
        tape.append((layer, x))
        return reference.maxpool(x, layer.size, layer.stride, layer.padding)
    if isinstance(layer, GlobalPool):
        tape.append((layer, x))
        return x.mean(axis=(1, 2)) if layer.mode == "avg" else x.max(axis=(1, 2))
    if isinstance(layer, Dense):
        tape.append((layer, x))
        return x @ w[f"{layer.name}.kernel"] + w[f"{layer.name}.bias"]
    raise TypeError(f"reference_dp: no rule for layer {layer!r}")


def _backward(tape, w, dy, grads):
    for layer, saved in reversed(tape):
        if isinstance(layer, Conv):
            dy, dk, db = _conv_backward(saved, w[f"{layer.name}.kernel"], layer, dy)
            grads[f"{layer.name}.kernel"] = dk
            if db is not None:
                grads[f"{layer.name}.bias"] = db
        elif isinstance(layer, BatchNorm):
            dy, grads[f"{layer.name}.gamma"], grads[f"{layer.name}.beta"] = _bn_backward(
                saved, w[f"{layer.name}.gamma"], dy)
        elif isinstance(layer, ReLU):
            dy = np.where(saved, dy, 0.0)
        elif isinstance(layer, MaxPool):
            dy = _maxpool_backward(saved, layer, dy)
        elif isinstance(layer, GlobalPool):
            n, h, wd, c = saved.shape
            if layer.mode == "avg":
                dy = np.broadcast_to(dy[:, None, None, :] / (h * wd), saved.shape).copy()
            else:
                flat = saved.reshape(n, h * wd, c)
                hit = np.zeros_like(flat)
                np.put_along_axis(hit, flat.argmax(axis=1)[:, None, :], 1.0, axis=1)
                dy = (hit * dy[:, None, :]).reshape(saved.shape)
        elif isinstance(layer, Dense):
            grads[f"{layer.name}.kernel"] = saved.T @ dy
            grads[f"{layer.name}.bias"] = dy.sum(axis=0)
            dy = dy @ w[f"{layer.name}.kernel"].T
    return dy


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """(mean softmax cross-entropy, its gradient with respect to the logits)."""
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = len(labels)
    loss = -logp[np.arange(n), labels].mean()
    d = np.exp(logp)
    d[np.arange(n), labels] -= 1.0
    return float(loss), d / n


def train_step(spec: ResNetSpec, weights: Mapping[str, np.ndarray], images: np.ndarray,
               labels: np.ndarray, dtype=np.float64) -> Step:
    """Train-mode forward (batch statistics), mean cross-entropy and its analytic gradient for
    every trainable weight, on one device. ``dtype=np.float32`` runs the same arithmetic in
    float32: the rounding scale of any fp32 implementation (the peer of the budgets)."""
    if not spec.include_top:
        raise ValueError("train_step: the loss needs logits; got a spec with include_top=False")
    validate(spec, weights)
    return _train_step(spec, weights, images, labels, dtype)


def _train_step(spec, weights, images, labels, dtype=np.float64) -> Step:
    reference.check_images(spec, images)
    labels = np.asarray(labels)
    if labels.shape != (images.shape[0],) or labels.min() < 0 or labels.max() >= spec.num_classes:
        raise ValueError(f"labels: expected {images.shape[0]} class indices in [0, {spec.num_classes}), "
                         f"got shape {labels.shape}")
    w = {k: np.asarray(v, dtype=dtype) for k, v in weights.items()}
    x = np.asarray(images, dtype=dtype)
    tape: list = []
    stats: dict = {}
    for layer in spec.stem():
        x = _forward(layer, x, w, tape, stats)
    for block in spec.blocks():
        main_tape, short_tape = [], []
        h = x
        for layer in block.main:
            h = _forward(layer, h, w, main_tape, stats)
        s = x
        for layer in block.shortcut:
            s = _forward(layer, s, w, short_tape, stats)
        out = h + s
        tape.append(("block", main_tape, short_tape, out > 0))
        x = np.maximum(out, 0.0)
    for layer in spec.head():
        x = _forward(layer, x, w, tape, stats)
    loss, dy = cross_entropy(x, labels)

    grads: dict[str, np.ndarray] = {}
    for i in range(len(tape) - 1, -1, -1):
        entry = tape[i]
        if isinstance(entry, tuple) and entry[0] == "block":
            _, main_tape, short_tape, positive = entry
            dy = np.where(positive, dy, 0.0)
            d_main = _backward(main_tape, w, dy, grads)
            d_short = _backward(short_tape, w, dy, grads) if short_tape else dy
            dy = d_main + d_short
        else:
            dy = _backward([entry], w, dy, grads)
    trainable = [k for k in spec.param_shapes() if not k.endswith((".mean", ".var"))]
    return Step(loss, x, {k: grads[k] for k in trainable}, stats)


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


def running_update(spec: ResNetSpec, weights, stats, variance: str) -> dict[str, np.ndarray]:
    if variance not in VARIANCES:
        raise ValueError(f"variance: expected one of {VARIANCES}, got {variance!r}")
    m = spec.bn_momentum
    out = {}
    for name, (mean, var, n) in stats.items():
        if variance == "unbiased":
            var = var * n / max(n - 1, 1)
        out[f"{name}.mean"] = (1 - m) * np.asarray(weights[f"{name}.mean"], np.float64) + m * mean
        out[f"{name}.var"] = (1 - m) * np.asarray(weights[f"{name}.var"], np.float64) + m * var
    return out


def replica_steps(spec: ResNetSpec, weights, images, labels, replicas: int, bn: str,
                  dtype=np.float64) -> list[Step]:
    """The single-device steps a data-parallel step is made of: one on the global batch
    (global statistics) or one per shard (per-replica statistics)."""
    if bn not in BN_MODES:
        raise ValueError(f"bn: expected one of {BN_MODES}, got {bn!r}")
    parts = shards(len(images), replicas)
    if bn == "global":
        return [train_step(spec, weights, images, labels, dtype)]
    return [train_step(spec, weights, images[p], labels[p], dtype) for p in parts]


def dp_step(spec: ResNetSpec, weights: Mapping[str, np.ndarray], images: np.ndarray, labels: np.ndarray,
            replicas: int, bn: str, variance: str, lr: float = 0.1, momentum: float = 0.9,
            dtype=np.float64, steps: list[Step] | None = None) -> DPStep:
    """The oracle of one data-parallel SGD step (module docstring). ``momentum`` is recorded by
    the engines; from a zero velocity it does not change the first step. ``steps``: the
    ``replica_steps`` of the same arguments, when already computed (the variance rule only
    changes the running statistics)."""
    if steps is None:
        steps = replica_steps(spec, weights, images, labels, replicas, bn, dtype)
    if variance not in VARIANCES:
        raise ValueError(f"variance: expected one of {VARIANCES}, got {variance!r}")
    steps = replica_steps(spec, weights, images, labels, replicas, bn, dtype)
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
