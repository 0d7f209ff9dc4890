"""One spec layer -> one Keras layer of the same name, with Keras Applications' conventions.

This is the only place that says how a Conv, BatchNorm, ReLU, pool or Dense of the spec is
expressed in Keras (ZeroPadding2D + valid conv/pool wherever the padding is not plain 'same';
a max pool that pads with -inf where no ReLU comes first: ``ConstantPadding2D``; grouped convs as
``Conv2D(groups=...)``); the model file only walks the spec. ``override`` is the public hook for
building models with other ReLU or BatchNorm code (the tools' broken ports of ``shared.mutants``,
or a user's experiment), the same in resnet_torch and resnet_flax.
"""

from __future__ import annotations

from typing import Callable

import keras
from keras import layers as klayers

from shared import contract
from shared.keras_h5 import keras_padding, pad_name

_NHWC = "channels_last"
_OVERRIDES = contract.LayerOverrides(klayers.BatchNormalization)


def override(*, relu: Callable | None = None, batchnorm: type | None = None):
    """Models built while the context is open use ``relu`` (a function of a tensor) for every
    ReLU and ``batchnorm`` (a subclass of ``keras.layers.BatchNormalization``) for every
    BatchNorm; models built before or after are untouched, and so is Keras."""
    return _OVERRIDES.override(relu=relu, batchnorm=batchnorm)


def _padded(layer, x, explicit, value=0.0):
    """Explicit (top, bottom, left, right) padding as its own layer, when 'same' won't do (or,
    in Keras' V2, wherever a layer pads: ``keras_padding``): Keras' ZeroPadding2D, or for
    another value ``ConstantPadding2D``."""
    mode = keras_padding(layer, explicit)
    if mode == "pad":
        t, b, l, r = layer.padding
        if value == 0.0:
            x = klayers.ZeroPadding2D(((t, b), (l, r)), data_format=_NHWC, name=pad_name(layer))(x)
        else:
            x = ConstantPadding2D(((t, b), (l, r)), value, name=pad_name(layer))(x)
        mode = "valid"
    return x, mode


@keras.saving.register_keras_serializable(package="resnet_parity")
class ConstantPadding2D(klayers.Layer):
    """ZeroPadding2D with another value (NHWC): a max pool's -inf where its input may be
    negative (no ReLU before it). Registered, so ``.keras`` files that hold it load."""

    def __init__(self, padding, value, **kwargs):
        super().__init__(**kwargs)
        self.padding = tuple(tuple(int(p) for p in pair) for pair in padding)
        self.value = float(value)

    def call(self, x):
        (t, b), (l, r) = self.padding
        return keras.ops.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=self.value)

    def compute_output_shape(self, shape):
        (t, b), (l, r) = self.padding
        grow = lambda n, extra: None if n is None else n + extra  # noqa: E731
        return (shape[0], grow(shape[1], t + b), grow(shape[2], l + r), shape[3])

    def get_config(self):
        return {**super().get_config(), "padding": self.padding, "value": self.value}


def _conv(layer, x, opts):
    x, padding = _padded(layer, x, opts.explicit_padding)
    return klayers.Conv2D(layer.out_channels, layer.kernel_size, strides=layer.stride, padding=padding,
                         groups=layer.groups, use_bias=layer.bias, data_format=_NHWC, name=layer.name)(x)


def _bn(layer, x, _):
    # Keras' momentum is the weight of the old running value; the spec's is PyTorch's.
    batchnorm = _OVERRIDES.get("batchnorm", klayers.BatchNormalization)
    return batchnorm(axis=-1, epsilon=layer.epsilon, momentum=1.0 - layer.momentum,
                                     gamma_initializer="zeros" if layer.zero_init else "ones",
                                     name=layer.name)(x)


def _relu(layer, x, _):
    return klayers.Activation(_OVERRIDES.get("relu", "relu"), name=layer.name)(x)


def _maxpool(layer, x, opts):
    # Keras' ZeroPadding2D where the spec pads with 0 (V2's stem) and where it pads with -inf
    # after a ReLU (V1's stem, as keras.applications: the input is >= 0, so the two agree).
    value = 0.0 if opts.previous == "relu" else layer.pad_value
    x, padding = _padded(layer, x, opts.explicit_padding, value)
    return klayers.MaxPooling2D(layer.size, strides=layer.stride, padding=padding, data_format=_NHWC,
                               name=layer.name)(x)


def _globalpool(layer, x, _):
    pool = klayers.GlobalAveragePooling2D if layer.mode == "avg" else klayers.GlobalMaxPooling2D
    return pool(data_format=_NHWC, name=layer.name)(x)


def _dense(layer, x, opts):
    return klayers.Dense(layer.out_features, activation=opts.classifier_activation, name=layer.name)(x)


_APPLY = {"conv": _conv, "bn": _bn, "relu": _relu, "maxpool": _maxpool, "globalpool": _globalpool,
          "dense": _dense}


def apply(layer, x, options):
    """The Keras layer of one spec layer, applied to ``x`` (``options``: the model's padding rule,
    classifier activation and the previous layer's kind)."""
    return _APPLY[layer.kind](layer, x, options)
