"""The float64 numpy reference forward pass: the oracle every framework is compared against.

Eval-mode BatchNorm, NHWC images, convolution as im2col + one BLAS matmul per layer (per group
for a grouped conv). Every block goes through ``Block.walk``, so the reference holds no block
structure of its own. It reads the same spec as the frameworks, but shares no code with them.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from shared.fold import refuse_training
from shared.spec import (AvgPool, BatchNorm, Blur, ChannelConv, Conv, Dense, Gate, GlobalPool, MaxPool, ReLU,
                         ResNetSpec, out_size)
from shared.weights import DTYPE, init, randomize_batchnorm, validate


def check_images(spec: ResNetSpec, images: np.ndarray) -> None:
    """ValueError naming rank, channels or size when an NHWC batch does not fit the spec."""
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(
            f"images: expected a 4-D NHWC batch (N, H, W, {spec.image_channels}), got "
            f"{'shape ' + str(tuple(shape)) if shape is not None else type(images).__name__}"
        )
    if shape[-1] != spec.image_channels:
        raise ValueError(
            f"images: expected {spec.image_channels} channels on the last axis (NHWC), got shape {tuple(shape)}"
        )
    spec.check_input_size(shape[1], shape[2])


def _pad(x: np.ndarray, padding, value: float = 0.0) -> np.ndarray:
    t, b, l, r = padding
    if not any(padding):
        return x
    return np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=value)


def _windows(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    """(N, H, W, C) -> view (N, Ho, Wo, C, k, k) of every k x k window at the stride."""
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))
    return win[:, ::stride, ::stride]


def im2col(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    """(N, H, W, C) already padded -> (N, Ho, Wo, k * k, C): each output pixel's k x k window,
    in HWIO's (kh, kw) order."""
    if k == 1:
        cols = x[:, ::stride, ::stride, :]
        return cols.reshape(*cols.shape[:3], 1, cols.shape[3])
    win = _windows(x, k, stride)  # (N, Ho, Wo, C, kh, kw)
    n, ho, wo, c = win.shape[:4]
    return np.ascontiguousarray(win.transpose(0, 1, 2, 4, 5, 3)).reshape(n, ho, wo, k * k, c)


def grouped_matmul(cols: np.ndarray, kernel: np.ndarray, groups: int) -> np.ndarray:
    """(M, k * k, C) windows times an HWIO kernel (k, k, C / groups, O): (M, O). Group ``g`` sees
    input channels ``g * C/groups ..`` and makes output channels ``g * O/groups ..`` (torch's
    and XLA's grouped-convolution rule); one BLAS matmul per group."""
    m, kk, cin = cols.shape
    cout = kernel.shape[-1]
    if groups == 1:
        return cols.reshape(m, kk * cin) @ kernel.reshape(kk * cin, cout)
    cg, og = cin // groups, cout // groups
    a = cols.reshape(m, kk, groups, cg).transpose(2, 0, 1, 3).reshape(groups, m, kk * cg)
    b = kernel.reshape(kk, cg, groups, og).transpose(2, 0, 1, 3).reshape(groups, kk * cg, og)
    return (a @ b).transpose(1, 0, 2).reshape(m, cout)


def conv(x: np.ndarray, kernel: np.ndarray, stride: int, padding, bias=None, groups: int = 1) -> np.ndarray:
    k, cout = kernel.shape[0], kernel.shape[-1]
    cols = im2col(_pad(x, padding), k, stride)  # (N, Ho, Wo, k * k, C)
    n, ho, wo, kk, c = cols.shape
    y = grouped_matmul(cols.reshape(n * ho * wo, kk, c), kernel, groups).reshape(n, ho, wo, cout)
    if bias is not None:
        y += bias
    return y


def batchnorm(x, gamma, beta, mean, var, epsilon):
    scale = gamma / np.sqrt(var + epsilon)
    return x * scale + (beta - mean * scale)


def maxpool(x: np.ndarray, size: int, stride: int, padding, pad_value: float = -np.inf) -> np.ndarray:
    return _windows(_pad(x, padding, pad_value), size, stride).max(axis=(4, 5))


def avgpool(x: np.ndarray, layer: AvgPool) -> np.ndarray:
    """PyTorch's AvgPool2d: explicit zero padding, then windows at the stride; with ceil_mode a
    last window cut at the padded input's end. The divisor counts the window's positions inside
    the padded input (``count_include_pad``) or inside the input only."""
    t, b, l, r = layer.padding
    n, h, w, c = x.shape
    ho, wo = out_size(h, w, layer)
    # room for the last window: zeros past the padded input, never counted
    extra_h = max(0, (ho - 1) * layer.stride + layer.size - (h + t + b))
    extra_w = max(0, (wo - 1) * layer.stride + layer.size - (w + l + r))
    padded = np.pad(x, ((0, 0), (t, b + extra_h), (l, r + extra_w), (0, 0)))
    inside = np.zeros((1, h + t + b + extra_h, w + l + r + extra_w, 1), x.dtype)  # float32 stays float32
    if layer.count_include_pad:
        inside[:, : h + t + b, : w + l + r] = 1.0
    else:
        inside[:, t : t + h, l : l + w] = 1.0
    sums = _windows(padded, layer.size, layer.stride)[:, :ho, :wo].sum(axis=(4, 5))
    counts = _windows(inside, layer.size, layer.stride)[:, :ho, :wo].sum(axis=(4, 5))
    return sums / counts


def blur(x: np.ndarray, layer: Blur) -> np.ndarray:
    """The fixed filter on every channel (a depthwise conv), after ``pad_mode`` padding."""
    t, b, l, r = layer.padding
    mode = "reflect" if layer.pad_mode == "reflect" else "constant"
    padded = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), mode=mode)
    taps = np.asarray(layer.taps(), dtype=x.dtype)
    return np.einsum("nhwcij,ij->nhwc", _windows(padded, layer.kernel_size, layer.stride), taps)


def channel_conv(x: np.ndarray, kernel: np.ndarray, padding: tuple[int, int]) -> np.ndarray:
    """ECA's 1-D cross-correlation over the channel axis of an (N, 1, 1, C) squeeze."""
    before, after = padding
    padded = np.pad(x, ((0, 0), (0, 0), (0, 0), (before, after)))
    win = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[0], axis=3)
    return win @ kernel


def gate(x: np.ndarray, function: str) -> np.ndarray:
    if function == "hard_sigmoid":
        return np.clip(x + 3.0, 0.0, 6.0) / 6.0
    return 1.0 / (1.0 + np.exp(-x))


# Low precision, emulated: what a framework's bf16 (autocast / mixed_bfloat16) or TF32 path
# rounds, applied to float64 arithmetic. ``bits`` is how many low mantissa bits of a float32 are
# dropped (round to nearest even): bf16 keeps 7 of 23, TF32 keeps 10.
ROUNDING = {
    # autocast: conv and dense inputs and weights in bf16, every layer's output stored in bf16
    "bf16": dict(bits=16, outputs=True),
    # the other end of legitimate bf16 practice: only the matmul operands rounded (a fused
    # conv + BN + ReLU that keeps float32 between them)
    "bf16-operands": dict(bits=16, outputs=False),
    # TF32 tensor cores: conv and matmul operands rounded, float32 accumulation and outputs
    "tf32": dict(bits=13, outputs=False),
    # TF32 with every layer's output rounded too: the other end for TF32
    "tf32-outputs": dict(bits=13, outputs=True),
}


def round_mantissa(x: np.ndarray, bits: int) -> np.ndarray:
    """``x`` rounded to float32 with its ``bits`` lowest mantissa bits cleared (nearest, ties
    to even), returned as float64: bf16 is ``bits=16``, TF32 ``bits=13``."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + ((1 << (bits - 1)) - 1) + ((u >> bits) & 1)) & ~np.uint64((1 << bits) - 1)
    return u.astype(np.uint32).view(np.float32).astype(np.float64)


Hook = Callable[[str, np.ndarray], None]


def _apply(layer, x, w: Mapping[str, np.ndarray], batch_stats: dict | None, rounding: dict | None = None):
    y = _apply_exact(layer, x, w, batch_stats, rounding)
    return round_mantissa(y, rounding["bits"]) if rounding and rounding["outputs"] else y


def _apply_exact(layer, x, w: Mapping[str, np.ndarray], batch_stats: dict | None, rounding: dict | None = None):
    operand = (lambda a: round_mantissa(a, rounding["bits"])) if rounding else (lambda a: a)
    if isinstance(layer, Conv):
        bias = w[f"{layer.name}.bias"] if layer.bias else None
        return conv(operand(x), operand(w[f"{layer.name}.kernel"]), layer.stride, layer.padding, bias, layer.groups)
    if isinstance(layer, BatchNorm):
        p = {k: w[f"{layer.name}.{k}"] for k in ("gamma", "beta", "mean", "var")}
        if batch_stats is not None:
            # Train mode: normalise with this batch's mean and biased variance, and record them.
            p["mean"] = x.mean(axis=(0, 1, 2))
            p["var"] = x.var(axis=(0, 1, 2))
            batch_stats[layer.name] = (p["mean"], p["var"], x.size // x.shape[-1])
        return batchnorm(x, p["gamma"], p["beta"], p["mean"], p["var"], layer.epsilon)
    if isinstance(layer, ReLU):
        return np.maximum(x, 0.0)
    if isinstance(layer, MaxPool):
        return maxpool(x, layer.size, layer.stride, layer.padding, layer.pad_value)
    if isinstance(layer, GlobalPool):
        reduce = np.mean if layer.mode == "avg" else np.max
        return reduce(x, axis=(1, 2), keepdims=layer.keepdims)
    if isinstance(layer, Dense):
        return operand(x) @ operand(w[f"{layer.name}.kernel"]) + w[f"{layer.name}.bias"]
    if isinstance(layer, AvgPool):
        return avgpool(x, layer)
    if isinstance(layer, Blur):
        return blur(x, layer)
    if isinstance(layer, ChannelConv):
        return channel_conv(operand(x), operand(w[f"{layer.name}.kernel"]), layer.padding)
    if isinstance(layer, Gate):
        return gate(x, layer.function)
    raise TypeError(f"reference: no rule for layer {layer!r}")


def _rounding(precision: str | None) -> dict | None:
    if precision in (None, "fp32", "fp64"):
        return None
    if precision not in ROUNDING:
        raise ValueError(f"precision: expected one of fp32, {', '.join(ROUNDING)}, got {precision!r}")
    return ROUNDING[precision]


def _run(spec: ResNetSpec, weights, images, hook: Hook | None, batch_stats: dict | None,
         dtype=np.float64, precision: str | None = None) -> np.ndarray:
    validate(spec, weights)
    check_images(spec, images)
    rounding = _rounding(precision)
    w = {k: np.asarray(v, dtype=dtype) for k, v in weights.items()}
    x = np.asarray(images, dtype=dtype)
    outputs = bool(rounding and rounding["outputs"])
    if outputs:
        x = round_mantissa(x, rounding["bits"])

    def chain(layers, h):
        for layer in layers:
            h = _apply(layer, h, w, batch_stats, rounding)
        return h

    def add(layer, main, shortcut):
        total = main + shortcut
        return round_mantissa(total, rounding["bits"]) if outputs else total

    def scale(layer, main, gate):
        product = main * gate
        return round_mantissa(product, rounding["bits"]) if outputs else product

    x = chain(spec.stem(), x)
    if hook:
        hook("stem", x)
    for block in spec.blocks():
        x = block.walk(x, chain, add, scale)
        if hook:
            hook(block.name, x)
    head = spec.head()
    x = chain(head, x)
    if hook and head:
        hook("head", x)
    return x


def forward(spec: ResNetSpec, weights: Mapping[str, np.ndarray], images_nhwc: np.ndarray,
            hook: Hook | None = None, dtype=np.float64, precision: str | None = None) -> np.ndarray:
    """Eval-mode float64 forward pass: logits (or features without the top).

    ``hook(name, activation)`` is called after the stem, after every block (``conv3_block2``)
    and after the head, for layer-by-layer comparisons. ``dtype=np.float32`` runs the same
    arithmetic in float32: the rounding-error scale of any fp32 implementation, a peer for
    specs no framework's own model covers. ``precision`` ("bf16", "bf16-operands", "tf32";
    ``ROUNDING``) emulates where a low-precision path rounds, in float64 otherwise.
    """
    return _run(spec, weights, images_nhwc, hook, None, dtype, precision)


def calibrate(spec: ResNetSpec, weights: Mapping[str, np.ndarray], images_nhwc: np.ndarray,
              ) -> dict[str, np.ndarray]:
    """Weights whose BatchNorm mean/var are the statistics each BN sees on ``images``, so
    activations stay O(1) through any depth (random He-init weights alone blow up or vanish).
    Every BatchNorm of the spec, wherever it sits (after a conv in V1; V2's pre-activations
    and ``post_bn`` normalise a residual sum), is calibrated on what reaches it in one pass."""
    stats: dict[str, tuple] = {}
    _run(spec, weights, images_nhwc, None, stats)
    calibrated = dict(weights)
    for name, (mean, var, _) in stats.items():
        calibrated[f"{name}.mean"] = mean.astype(DTYPE)
        calibrated[f"{name}.var"] = var.astype(DTYPE)
    return calibrated


VARIANCES = ("unbiased", "biased")  # the batch variance a running-variance update uses


def _check_variance(variance: str) -> None:
    if variance not in VARIANCES:
        raise ValueError(f"variance: expected one of {VARIANCES}, got {variance!r}")


def train_statistics(spec: ResNetSpec, weights: Mapping[str, np.ndarray], images_nhwc: np.ndarray,
                     dtype=np.float64, precision: str | None = None) -> tuple[np.ndarray, dict[str, tuple]]:
    """Train-mode forward (BatchNorm on batch statistics): the logits, and for every BatchNorm
    the (mean, biased variance, count) it normalised with."""
    refuse_training(spec, "forward_train")
    stats: dict[str, tuple] = {}
    return _run(spec, weights, images_nhwc, None, stats, dtype, precision), stats


def running_update(spec: ResNetSpec, weights: Mapping[str, np.ndarray], stats: Mapping[str, tuple],
                   variance: str) -> dict[str, np.ndarray]:
    """The running statistics after one update from batch ``stats`` (``train_statistics``),
    ``running = (1 - m) * running + m * batch`` with ``m = spec.bn_momentum``. ``variance`` is
    the batch variance that update uses: PyTorch ``"unbiased"`` (n / (n - 1) times the biased
    one it normalises with), Keras and Flax ``"biased"``."""
    _check_variance(variance)
    m = spec.bn_momentum
    updated = {}
    for name, (mean, var, n) in stats.items():
        if variance == "unbiased":
            var = var * n / max(n - 1, 1)
        updated[f"{name}.mean"] = (1 - m) * np.asarray(weights[f"{name}.mean"], np.float64) + m * mean
        updated[f"{name}.var"] = (1 - m) * np.asarray(weights[f"{name}.var"], np.float64) + m * var
    return updated


def forward_train(spec: ResNetSpec, weights: Mapping[str, np.ndarray], images_nhwc: np.ndarray,
                  variance: str = "unbiased", dtype=np.float64, precision: str | None = None,
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Train-mode float64 forward: the logits and the running statistics after one update
    (``running_update`` with ``variance``)."""
    _check_variance(variance)
    logits, stats = train_statistics(spec, weights, images_nhwc, dtype, precision)
    return logits, running_update(spec, weights, stats, variance)


def random_images(spec: ResNetSpec, batch: int = 2, size: int = 64, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal NHWC float32 images (never zeros: zeros hide layout bugs)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.standard_normal((batch, size, size, spec.image_channels)).astype(DTYPE)


def calibrated_weights(spec: ResNetSpec, seed: int = 0, size: int | None = None) -> dict[str, np.ndarray]:
    """Seeded random weights with randomised BatchNorm parameters and statistics calibrated on
    seeded images, so logits are O(1): what the parity suite and ``resnet-parity check`` use."""
    size = size or max(spec.min_input_size, 64)
    weights = randomize_batchnorm(spec, init(spec, seed), seed)
    return calibrate(spec, weights, random_images(spec, 4, size, seed + 1000))
