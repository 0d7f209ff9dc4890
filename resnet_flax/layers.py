"""One spec layer -> one Flax NNX layer, with torchvision's initialisation.

This is the only place that says how each layer kind of the spec is expressed in Flax (explicit
padding, never 'SAME'; a max pool padded with the spec's pad value; PyTorch's average-pool
divisor; the blur as a fixed depthwise conv; ECA's channel conv); the model file only walks the
spec. ``override`` is the public hook for building models with other ReLU or BatchNorm code (the
tools' broken ports of ``shared.mutants``, or a user's experiment), the same in resnet_torch and
resnet_keras.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from shared import contract
from shared.spec import BatchNorm, ChannelConv, Conv, Dense, out_size

_OVERRIDES = contract.LayerOverrides(nnx.BatchNorm)


def override(*, relu: Callable | None = None, batchnorm: type | None = None):
    """Models built while the context is open use ``relu`` (a function of an array) for every
    ReLU and ``batchnorm`` (a subclass of ``nnx.BatchNorm``) for every BatchNorm; models built
    before or after are untouched, and so is Flax."""
    return _OVERRIDES.override(relu=relu, batchnorm=batchnorm)


def relu() -> Callable:
    """The ReLU a model built now applies."""
    return _OVERRIDES.get("relu", nnx.relu)


# Canonical param -> attribute of the nnx layer, per layer kind.
NATIVE_PARAM = {
    "conv": {"kernel": "kernel", "bias": "bias"},
    "dense": {"kernel": "kernel", "bias": "bias"},
    "bn": {"gamma": "scale", "beta": "bias", "mean": "mean", "var": "var"},
    "channelconv": {"kernel": "kernel"},
}

# torchvision's initialisation: He normal over fan_out for convs, torch.nn.Linear's uniform for
# the classifier (kernel and bias within 1/sqrt(fan_in)).
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
_dense_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _dense_bias_init(fan_in: int):
    bound = fan_in**-0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _placeholder(key, shape, dtype=jnp.float32):
    """Zeros made in numpy: no RNG and no XLA program per shape (those cost seconds per model
    on a CPU); the shell that ``load_weights`` fills."""
    return jnp.asarray(np.zeros(shape, dtype))


def native_layer(layer, rngs: nnx.Rngs, draw: bool, dtype, param_dtype) -> nnx.Module:
    def init(initializer):
        return initializer if draw else _placeholder

    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if isinstance(layer, Conv):
        t, b, l, r = layer.padding
        return nnx.Conv(
            layer.in_channels, layer.out_channels, (layer.kernel_size, layer.kernel_size),
            strides=layer.stride, padding=((t, b), (l, r)), use_bias=layer.bias,
            feature_group_count=layer.groups,  # kernel (k, k, in / groups, out): canonical HWIO
            kernel_init=init(_conv_init), bias_init=init(nnx.initializers.zeros_init()), **common,
        )
    if isinstance(layer, BatchNorm):
        return _OVERRIDES.get("batchnorm", nnx.BatchNorm)(
            layer.channels,
            use_running_average=True,
            momentum=1.0 - layer.momentum,  # Flax weighs the old running value (spec module doc)
            epsilon=layer.epsilon,
            # Two-pass variance, E[(x - E[x])^2]: E[x^2] - E[x]^2 cancels digits in train mode.
            use_fast_variance=False,
            scale_init=init(nnx.initializers.zeros_init() if layer.zero_init else nnx.initializers.ones_init()),
            bias_init=init(nnx.initializers.zeros_init()),
            # Mixed precision normalises in float32, as torch autocast and Keras' mixed_bfloat16 do:
            # in bf16, x - mean loses the digits that matter (measured: 2.3e-2 off the emulated
            # bf16 reference against a budget of 1.2e-2).
            dtype=None if dtype is None else jnp.float32, param_dtype=param_dtype, rngs=rngs,
        )
    if isinstance(layer, Dense):
        return nnx.Linear(
            layer.in_features, layer.out_features,
            kernel_init=init(_dense_init), bias_init=init(_dense_bias_init(layer.in_features)), **common,
        )
    if isinstance(layer, ChannelConv):
        return ChannelConvLayer(layer, init(_channel_conv_init(layer.kernel_size)), dtype, param_dtype, rngs)
    raise TypeError(f"resnet_flax: no parameterised layer for {layer!r}")


def _channel_conv_init(taps: int):
    """torch.nn.Conv1d's default for one input channel: uniform within 1/sqrt(taps)."""
    bound = taps**-0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class ChannelConvLayer(nnx.Module):
    """ECA's 1-D cross-correlation over the channel axis of an (N, 1, 1, C) squeeze: one kernel
    of k taps (canonical shape (k,)), the channel axis zero padded by the spec, no bias."""

    def __init__(self, layer: ChannelConv, kernel_init, dtype, param_dtype, rngs: nnx.Rngs):
        self.padding = layer.padding
        self.dtype = dtype
        self.kernel = nnx.Param(kernel_init(rngs.params(), (layer.kernel_size,), param_dtype))

    def __call__(self, x):
        kernel = self.kernel[...]
        if self.dtype is not None:
            x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        padded = jnp.pad(x, ((0, 0), (0, 0), (0, 0), self.padding))
        channels = x.shape[-1]
        return sum(kernel[j] * padded[..., j : j + channels] for j in range(kernel.shape[0]))


def max_pool(x, layer):
    """Pads with the spec's pad value: -inf (PyTorch's and Flax's rule) never wins the max; 0
    (Keras' ZeroPadding2D) wins over a negative input, as in ResNet V2's stem."""
    t, b, l, r = layer.padding
    if layer.pad_value != float("-inf"):
        x = jnp.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=layer.pad_value)
        t = b = l = r = 0
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max,  # a Python scalar: an array init value makes the pool non-differentiable under jit
        (1, layer.size, layer.size, 1), (1, layer.stride, layer.stride, 1),
        ((0, 0), (t, b), (l, r), (0, 0)),
    )


def _window_sum(x, layer, padding):
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, layer.size, layer.size, 1),
                                 (1, layer.stride, layer.stride, 1), padding)


def avg_pool(x, layer):
    """PyTorch's AvgPool2d: window sums over the zero-padded input divided by each window's
    count, both computed by the same reduction. ``ceil_mode``'s last window reaches past the
    padded input; those positions are zeros and never count; the explicit padding counts only
    with ``count_include_pad``."""
    t, b, l, r = layer.padding
    h, w = x.shape[1], x.shape[2]
    ho, wo = out_size(h, w, layer)
    extra_h = max(0, (ho - 1) * layer.stride + layer.size - (h + t + b))
    extra_w = max(0, (wo - 1) * layer.stride + layer.size - (w + l + r))
    padding = ((0, 0), (t, b + extra_h), (l, r + extra_w), (0, 0))
    inside = np.ones((1, h, w, 1), np.float32)
    if layer.count_include_pad:
        inside = np.pad(inside, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=1.0)
        count_padding = ((0, 0), (0, extra_h), (0, extra_w), (0, 0))
    else:
        count_padding = padding
    counts = _window_sum(jnp.asarray(inside, x.dtype), layer, count_padding)
    return _window_sum(x, layer, padding) / counts


def blur(x, layer):
    """The spec's fixed filter on every channel (a depthwise conv: ``feature_group_count`` = C),
    after reflect (the edge pixel not repeated, as numpy's and torch's) or zero padding."""
    t, b, l, r = layer.padding
    pad = ((0, 0), (t, b), (l, r), (0, 0))
    x = jnp.pad(x, pad, mode="reflect") if layer.pad_mode == "reflect" else jnp.pad(x, pad)
    channels = x.shape[-1]
    taps = np.asarray(layer.taps(), np.float32)[:, :, None, None]
    kernel = jnp.asarray(np.broadcast_to(taps, (*taps.shape[:2], 1, channels)), x.dtype)  # HWIO
    return jax.lax.conv_general_dilated(x, kernel, (layer.stride, layer.stride), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels)


def gate(x, layer):
    """An attention's gate: sigmoid, or hard sigmoid ``relu6(x + 3) / 6``."""
    if layer.function == "hard_sigmoid":
        return jax.nn.relu6(x + 3.0) / 6.0
    return jax.nn.sigmoid(x)


def global_pool(x, layer):
    reduce = jnp.mean if layer.mode == "avg" else jnp.max
    return reduce(x, axis=(1, 2), keepdims=layer.keepdims)
