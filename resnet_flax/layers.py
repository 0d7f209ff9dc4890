"""One spec layer -> one Flax NNX layer, with torchvision's initialisation.

This is the only place that says how a Conv, BatchNorm, Dense, ReLU or max pool of the spec is
expressed in Flax (explicit symmetric padding, never 'SAME'; a max pool padded with the spec's
pad value); the model file only walks the spec. ``override`` is the public hook for building
models with other ReLU or BatchNorm code (the tools' broken ports of ``shared.mutants``, or a
user's experiment), the same in resnet_torch and resnet_keras.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from shared import contract
from shared.spec import BatchNorm, Conv, Dense

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
    raise TypeError(f"resnet_flax: no parameterised layer for {layer!r}")


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
