"""Gradients of the numpy reference, derived by hand: the oracle no framework wrote.

``step(spec, weights, images, labels)`` runs the train-mode forward pass of ``shared.reference``
(BatchNorm on batch statistics), the mean softmax cross-entropy, and its backward pass layer by
layer in plain numpy; it returns the loss, the logits, the gradient of every learnable weight and
the batch statistics each BatchNorm normalised with. ``loss_and_grads`` is the same pass as a
tuple. In float64 it is the oracle for every framework's gradients, on one device here and per
replica in ``shared.reference_dp``; in float32 the same arithmetic is the peer whose error sets
the budget, as ``reference.forward(..., dtype=np.float32)`` does for the logits.
The forward walks each block through ``Block.walk`` and the backward reverses it: the sum's
gradient goes to both paths and adds up where the shortcut starts (the block input, or V2's
pre-activation output); an attention's product ``main * gate(main)`` sends the main path a
gradient through both factors, added up the same way. ``tests/test_verdict.py`` and
``tests/test_backprop_family.py`` (every block kind and every layer kind: avg pools with
``ceil_mode``, blur, SE, ECA, both gates) prove it against central finite differences of the
float64 forward; ``tests/test_backprop_family.py`` and ``tests/test_reference_family.py``
against torchvision's and timm's float64 autograd.

A ReLU's derivative is a step: where a pre-activation lies within rounding of 0, a legitimate
float32 implementation may take it on the other side. ``relu_ties`` finds those units (within
``margin`` x a float32 peer's own error there) and ``step(..., relu_flip={name: mask})`` is the
float64 pass with the derivative of the masked units taken the other way: the gradients such an
implementation computes (``shared.tools.check``'s train oracle admits them).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from shared import reference as R
from shared.fold import refuse_training
from shared import spec as S
from shared.spec import (AvgPool, BatchNorm, Blur, ChannelConv, Conv, Dense, Gate, GlobalPool, MaxPool, ReLU,
                         ResNetSpec)


def _unpad(x: np.ndarray, padding) -> np.ndarray:
    t, b, l, r = padding
    return x[:, t:x.shape[1] - b, l:x.shape[2] - r]


def _scatter_windows(shape, k: int, s: int, dwin, dtype) -> np.ndarray:
    """The transpose of taking every k x k window at stride ``s``: ``dwin(i, j)`` is the
    gradient reaching tap (i, j) of every window, (N, Ho, Wo, C); each lands on the position of
    the padded input (of ``shape``) that tap read."""
    dxp = np.zeros(shape, dtype)
    for i in range(k):
        for j in range(k):
            d = dwin(i, j)
            ho, wo = d.shape[1:3]
            dxp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :] += d
    return dxp


def _conv_backward(layer: Conv, x: np.ndarray, kernel: np.ndarray, dy: np.ndarray, grads: dict):
    """Kernel (and bias) gradient into ``grads``; returns the input gradient. A grouped conv is
    ``groups`` independent convs on channel slices (``reference.grouped_matmul``), so each
    group's kernel gradient and input gradient are its own matmuls."""
    k, s, g = layer.kernel_size, layer.stride, layer.groups
    cin, cout = layer.in_channels, layer.out_channels
    cg, og = cin // g, cout // g
    xp = R._pad(x, layer.padding)
    n, ho, wo = dy.shape[:3]
    m = n * ho * wo
    if layer.bias:
        grads[f"{layer.name}.bias"] = dy.sum(axis=(0, 1, 2))
    cols = R.im2col(xp, k, s)[:, :ho, :wo].reshape(m, k * k, g, cg).transpose(2, 0, 1, 3).reshape(g, m, k * k * cg)
    d = dy.reshape(m, g, og).transpose(1, 0, 2)  # (G, M, O/G)
    kern = kernel.reshape(k * k, cg, g, og).transpose(2, 0, 1, 3).reshape(g, k * k * cg, og)
    dkernel = cols.transpose(0, 2, 1) @ d  # (G, k*k*C/G, O/G)
    grads[f"{layer.name}.kernel"] = dkernel.reshape(g, k * k, cg, og).transpose(1, 2, 0, 3).reshape(k, k, cg, cout)
    dcols = (d @ kern.transpose(0, 2, 1)).reshape(g, n, ho, wo, k, k, cg).transpose(1, 2, 3, 4, 5, 0, 6)
    dcols = dcols.reshape(n, ho, wo, k, k, cin)  # channel c = group * C/G + c within the group
    return _unpad(_scatter_windows(xp.shape, k, s, lambda i, j: dcols[:, :, :, i, j, :], xp.dtype), layer.padding)


def _maxpool_backward(layer: MaxPool, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """The gradient goes to the first maximum of each window, as every framework's pool does;
    where that maximum is the padding (a pad value of 0 over negative inputs) it goes nowhere."""
    k, s = layer.size, layer.stride
    xp = R._pad(x, layer.padding, layer.pad_value)
    n, ho, wo, c = dy.shape
    win = R._windows(xp, k, s)[:, :ho, :wo].reshape(n, ho, wo, c, k * k)
    arg = win.argmax(axis=-1)
    dxp = _scatter_windows(xp.shape, k, s, lambda i, j: np.where(arg == i * k + j, dy, 0.0), xp.dtype)
    return _unpad(dxp, layer.padding)


def _window_counts(n: int, before: int, after: int, out: int, layer: AvgPool) -> np.ndarray:
    """Along one axis: how many of each window's positions its divisor counts (those in the
    input, or with ``count_include_pad`` in the padded input; never past it)."""
    lo, hi = (-before, n + after) if layer.count_include_pad else (0, n)
    start = np.arange(out) * layer.stride - before
    return np.minimum(start + layer.size, hi) - np.maximum(start, lo)


def _avgpool_backward(layer: AvgPool, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Each window's gradient divided by its divisor (rows counted x columns counted) and spread
    over its positions; what lands on the padding (explicit, or past it from ``ceil_mode``) is
    dropped."""
    t, b, l, r = layer.padding
    n, h, w, c = x.shape
    ho, wo = dy.shape[1:3]
    k, s = layer.size, layer.stride
    counts = np.outer(_window_counts(h, t, b, ho, layer), _window_counts(w, l, r, wo, layer)).astype(dy.dtype)
    share = dy / counts[None, :, :, None]
    shape = (n, max(h + t + b, (ho - 1) * s + k), max(w + l + r, (wo - 1) * s + k), c)
    return _scatter_windows(shape, k, s, lambda i, j: share, dy.dtype)[:, t:t + h, l:l + w]


def _padding_matrix(n: int, before: int, after: int, mode: str, dtype) -> np.ndarray:
    """(n + before + after, n): row p is the one-hot of the input position padded position p
    copies (numpy's ``reflect``: the edge not repeated), all zero for a constant pad. Padding
    is this matrix applied along one axis; its gradient, the transpose."""
    positions = np.arange(n)
    if mode == "reflect":
        source = np.pad(positions, (before, after), mode="reflect")
    else:
        source = np.pad(positions, (before, after), constant_values=-1)
    return (source[:, None] == positions[None, :]).astype(dtype)


def _blur_backward(layer: Blur, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """The fixed filter transposed (each output's gradient times each tap, back onto the pixel
    that tap read), then the padding's gradient: a mirrored pixel's share added to its source."""
    t, b, l, r = layer.padding
    n, h, w, c = x.shape
    taps = np.asarray(layer.taps(), dtype=dy.dtype)
    k, s = layer.kernel_size, layer.stride
    dxp = _scatter_windows((n, h + t + b, w + l + r, c), k, s, lambda i, j: dy * taps[i, j], dy.dtype)
    rows = _padding_matrix(h, t, b, layer.pad_mode, dy.dtype)
    cols = _padding_matrix(w, l, r, layer.pad_mode, dy.dtype)
    return np.einsum("nhwc,hi,wj->nijc", dxp, rows, cols)


def _channel_conv_backward(layer: ChannelConv, x: np.ndarray, kernel: np.ndarray, dy: np.ndarray, grads: dict):
    """ECA's 1-D cross-correlation over channels, ``y[c] = sum_j xp[c + j] k[j]``: the kernel's
    gradient correlates the padded input with ``dy``; the input's puts ``dy[c] k[j]`` back on
    ``xp[c + j]`` and drops the zero padding."""
    before, after = layer.padding
    k, c = layer.kernel_size, x.shape[-1]
    xp = np.pad(x, ((0, 0), (0, 0), (0, 0), (before, after)))
    grads[f"{layer.name}.kernel"] = np.array([(xp[..., j:j + c] * dy).sum() for j in range(k)])
    dxp = np.zeros_like(xp)
    for j in range(k):
        dxp[..., j:j + c] += dy * kernel[j]
    return dxp[..., before:before + c]


def _gate_backward(layer: Gate, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """sigmoid' = s (1 - s); hard_sigmoid = relu6(x + 3) / 6 has slope 1/6 strictly inside
    (-3, 3) and 0 outside and at the kinks (torch's ``hardsigmoid_backward``)."""
    if layer.function == "hard_sigmoid":
        return dy * ((x > -3.0) & (x < 3.0)) / 6.0
    g = 1.0 / (1.0 + np.exp(-x))
    return dy * g * (1.0 - g)


def _bn_backward(layer: BatchNorm, x, gamma, dy, grads, stats=None):
    """Train-mode BatchNorm: x normalised with its own mean and biased variance (``stats``: the
    (mean, var) the forward normalised with, where it did not use numpy's two-pass ones)."""
    axes = (0, 1, 2)
    n = x.size // x.shape[-1]
    mean, var = stats if stats is not None else (x.mean(axis=axes), x.var(axis=axes))
    inv = 1.0 / np.sqrt(var + layer.epsilon)
    xhat = (x - mean) * inv
    grads[f"{layer.name}.gamma"] = (dy * xhat).sum(axis=axes)
    grads[f"{layer.name}.beta"] = dy.sum(axis=axes)
    return (gamma * inv / n) * (n * dy - dy.sum(axis=axes) - xhat * (dy * xhat).sum(axis=axes))


VARIANCE_FORMULAS = ("two_pass", "one_pass")


def one_pass_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, biased variance) over every axis but the channels as a synchronized BatchNorm
    computes them: from the sum and the sum of squares (what its replicas all-reduce),
    ``var = max(E[x^2] - E[x]^2, 0)``, in ``x``'s dtype. Mathematically numpy's two-pass
    ``x.var()``; in float32 it cancels, losing up to ``mean^2 / var`` ulps."""
    axes = tuple(range(x.ndim - 1))
    n = x.dtype.type(x.size // x.shape[-1])
    mean = x.sum(axis=axes) / n
    return mean, np.maximum((x * x).sum(axis=axes) / n - mean * mean, x.dtype.type(0))


class _Tape:
    """The train-mode forward of ``reference``, remembering each layer's input. ``variance``:
    how BatchNorm's batch variance is computed, ``"two_pass"`` (numpy's ``x.var()``, as
    ``reference`` does) or ``"one_pass"`` (``one_pass_moments``)."""

    def __init__(self, w: Mapping[str, np.ndarray], variance: str = "two_pass",
                 relu_flip: Mapping[str, np.ndarray] | None = None):
        if variance not in VARIANCE_FORMULAS:
            raise ValueError(f"variance_formula: expected one of {VARIANCE_FORMULAS}, got {variance!r}")
        self.w = w
        self.stats: dict = {}
        self.variance = variance
        self.relu_flip = relu_flip or {}
        self.relu_inputs: dict[str, np.ndarray] = {}

    def forward(self, layer, x, record: list):
        record.append((layer, x))
        if isinstance(layer, ReLU):
            self.relu_inputs[layer.name] = x
        if isinstance(layer, BatchNorm) and self.variance == "one_pass":
            mean, var = one_pass_moments(x)
            self.stats[layer.name] = (mean, var, x.size // x.shape[-1])
            return R.batchnorm(x, self.w[f"{layer.name}.gamma"], self.w[f"{layer.name}.beta"], mean, var,
                               layer.epsilon)
        return R._apply(layer, x, self.w, self.stats)

    def backward(self, layer, x, dy, grads):
        w = self.w
        if isinstance(layer, Conv):
            return _conv_backward(layer, x, w[f"{layer.name}.kernel"], dy, grads)
        if isinstance(layer, BatchNorm):
            stats = self.stats[layer.name][:2] if self.variance == "one_pass" else None
            return _bn_backward(layer, x, w[f"{layer.name}.gamma"], dy, grads, stats)
        if isinstance(layer, ReLU):
            flip = self.relu_flip.get(layer.name)
            return dy * ((x > 0) if flip is None else (x > 0) ^ flip)
        if isinstance(layer, MaxPool):
            return _maxpool_backward(layer, x, dy)
        if isinstance(layer, GlobalPool):
            dy = dy.reshape(x.shape[0], 1, 1, x.shape[-1])  # (N, C), or (N, 1, 1, C) with keepdims
            if layer.mode == "avg":
                return np.broadcast_to(dy / (x.shape[1] * x.shape[2]), x.shape).copy()
            flat = x.reshape(x.shape[0], -1, x.shape[-1])
            mask = np.zeros_like(flat)
            np.put_along_axis(mask, flat.argmax(axis=1)[:, None, :], 1.0, axis=1)
            return mask.reshape(x.shape) * dy
        if isinstance(layer, AvgPool):
            return _avgpool_backward(layer, x, dy)
        if isinstance(layer, Blur):
            return _blur_backward(layer, x, dy)
        if isinstance(layer, ChannelConv):
            return _channel_conv_backward(layer, x, w[f"{layer.name}.kernel"], dy, grads)
        if isinstance(layer, Gate):
            return _gate_backward(layer, x, dy)
        if isinstance(layer, Dense):
            grads[f"{layer.name}.kernel"] = x.T @ dy
            grads[f"{layer.name}.bias"] = dy.sum(axis=0)
            return dy @ w[f"{layer.name}.kernel"].T
        raise TypeError(f"backprop: no rule for layer {layer!r}")


def _chain_backward(tape: _Tape, record: list, dy, grads):
    for layer, x in reversed(record):
        dy = tape.backward(layer, x, dy, grads)
    return dy


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """(mean softmax cross-entropy, its gradient with respect to the logits)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    batch = logits.shape[0]
    loss = -logp[np.arange(batch), labels].mean()
    dy = np.exp(logp)
    dy[np.arange(batch), labels] -= 1.0
    return float(loss), dy / batch


def soft_cross_entropy(logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """(mean softmax cross-entropy against soft ``targets`` (B, K), rows summing to 1, as label
    smoothing makes them; its gradient with respect to the logits, ``(softmax - targets) / B``)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    targets = np.asarray(targets, logits.dtype)
    return float(-(targets * logp).sum(axis=1).mean()), (np.exp(logp) - targets) / logits.shape[0]


@dataclasses.dataclass
class Step:
    """One train-mode forward and backward pass on one device (or one data-parallel replica)."""

    loss: float  # mean softmax cross-entropy over the batch
    logits: np.ndarray
    grads: dict[str, np.ndarray]  # every learnable weight, in the spec's order
    stats: dict[str, tuple[np.ndarray, np.ndarray, int]]  # bn name -> (mean, biased var, count) it normalised with
    relu_inputs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)  # ReLU name -> its input


def relu_ties(peer: Step, full: Step, margin: float) -> list[tuple[str, tuple[int, ...], float]]:
    """(ReLU name, unit index, |x| / (margin x the peer's error in that layer)) of every
    pre-activation of the float64 pass ``full`` that lies within ``margin`` x the float32
    ``peer``'s largest error in its layer of 0: the units a float32 pass may round to either
    side. The layer's largest error, not the unit's own: another float32 pass errs by other
    amounts unit by unit (a correct Flax resnetaa50d put a unit 1.5e-6 from 0 on the other side,
    4.7x the reference's float32 error at that unit, 0.016x its largest in that layer). Nearest
    to 0 (relative) first."""
    ties = []
    for name, x in full.relu_inputs.items():
        err = margin * float(np.abs(np.asarray(peer.relu_inputs[name], np.float64) - x).max())
        for index in zip(*np.nonzero(np.abs(x) <= err)):  # err 0: only an x of exactly 0
            ties.append((name, tuple(int(i) for i in index), float(abs(x[index]) / err) if err else 0.0))
    return sorted(ties, key=lambda t: t[2])


def step(spec: ResNetSpec, weights: Mapping[str, np.ndarray], images: np.ndarray, labels: np.ndarray,
         dtype=np.float64, variance_formula: str = "two_pass",
         relu_flip: Mapping[str, np.ndarray] | None = None, targets: np.ndarray | None = None) -> Step:
    """The train-mode forward pass, its loss and its backward pass (module docstring). BatchNorm
    running statistics get no gradient; their update is the caller's, from ``Step.stats``.
    ``variance_formula``: ``"two_pass"`` (the default, ``reference``'s ``x.var()``) or
    ``"one_pass"`` (``one_pass_moments``, a synchronized BatchNorm's): two legitimate float32
    peers, the same function in exact arithmetic. ``relu_flip``: ReLU name -> a boolean mask of its
    input's shape, the units whose derivative is taken the other way (module docstring).
    ``targets``: (B, K) soft targets (``soft_cross_entropy``: label smoothing) instead of ``labels``."""
    refuse_training(spec, "backprop")
    if not (spec.include_top and spec.head()):
        raise ValueError("backprop: the loss needs a classifier head (include_top=True, pooling set)")
    R.check_images(spec, images)
    labels = np.asarray(labels)
    if labels.shape != (images.shape[0],) or labels.min() < 0 or labels.max() >= spec.num_classes:
        raise ValueError(f"labels: expected {images.shape[0]} class indices in [0, {spec.num_classes}), "
                         f"got shape {labels.shape}")
    w = {k: np.asarray(v, dtype=dtype) for k, v in weights.items()}
    tape = _Tape(w, variance_formula, relu_flip)
    records: dict = {}  # the layers of one chain -> what the tape recorded along it

    def chain(layers, x):
        record = records.setdefault(layers, [])
        for layer in layers:
            x = tape.forward(layer, x, record)
        return x

    scaled: dict[str, tuple] = {}  # an attention's scale -> (main path, gate) it multiplied

    def scale(layer, main, gate):
        scaled[layer.name] = (main, gate)
        return main * gate

    x = chain(spec.stem(), np.asarray(images, dtype=dtype))
    blocks = spec.blocks()
    for block in blocks:
        x = block.walk(x, chain, lambda _, main, shortcut: main + shortcut, scale)
    logits = chain(spec.head(), x)
    if targets is not None and np.shape(targets) != logits.shape:
        raise ValueError(f"targets: expected shape {logits.shape}, got {np.shape(targets)}")
    loss, dy = (cross_entropy(logits, labels.astype(int)) if targets is None
                else soft_cross_entropy(logits, targets))

    grads: dict[str, np.ndarray] = {}

    def back(layers, dy):
        return _chain_backward(tape, records.get(layers, []), dy, grads)

    dy = back(spec.head(), dy)
    for block in reversed(blocks):
        # Block.walk reversed: the sum passes its gradient to both paths; where the shortcut
        # starts (the block input or the pre-activation's output) the two gradients add up.
        d_sum = back(block.out, dy)
        d_source = back(block.shortcut, d_sum)
        d_main = d_sum
        if block.attention:
            # main * gate(main): the product's gradient to each factor (the gate's summed over
            # the positions it was broadcast to), and the main path's two routes added up.
            main, gate = scaled[block.scale.name]
            d_gate = (d_sum * main).sum(axis=(1, 2), keepdims=True)
            d_main = d_sum * gate + back(block.attention, d_gate)
        d_pre = back(block.main, d_main)
        if block.shortcut_from == "pre":
            dy = back(block.pre, d_pre + d_source)
        else:
            dy = back(block.pre, d_pre) + d_source
    back(spec.stem(), dy)
    learnable = [k for k in spec.param_shapes() if not S.is_statistic(k)]
    return Step(loss, logits, {k: grads[k] for k in learnable}, tape.stats, tape.relu_inputs)


def loss_and_grads(spec: ResNetSpec, weights: Mapping[str, np.ndarray], images: np.ndarray,
                   labels: np.ndarray, dtype=np.float64) -> tuple[float, np.ndarray, dict[str, np.ndarray]]:
    """(mean softmax cross-entropy, logits, gradient of every learnable weight) of ``step``."""
    result = step(spec, weights, images, labels, dtype)
    return result.loss, result.logits, result.grads
