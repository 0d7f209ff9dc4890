"""One spec layer -> one Keras layer of the same name, with Keras Applications' conventions.

This is the only place that says how a Conv, BatchNorm, ReLU, pool or Dense of the spec is
expressed in Keras (ZeroPadding2D + valid conv/pool wherever the padding is not plain 'same';
a max pool that pads with -inf where no ReLU comes first: ``ConstantPadding2D``; grouped convs as
``Conv2D(groups=...)``), and the family's layers: an average pool as ``AveragePooling2D`` where
Keras' 'valid' or 'same' is PyTorch's rule (keras-hub's avg-down pool is 'same'), else
``TorchAveragePooling2D``; the blur (``Blur2D``, a fixed depthwise filter: no weights) and
ECA's ``ChannelConv1D``; gates as activations, the attention's product as ``Multiply``. The
model file only walks the spec. ``override`` is the public hook for
building models with other ReLU or BatchNorm code (the tools' broken ports of ``shared.mutants``,
or a user's experiment), the same in resnet_torch and resnet_flax.
"""

from __future__ import annotations

import math
from typing import Callable

import keras
from keras import layers as klayers
from keras import ops

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


@keras.saving.register_keras_serializable(package="resnet_parity")
class TorchAveragePooling2D(klayers.Layer):
    """PyTorch's ``AvgPool2d`` (NHWC) where no Keras padding is the same function: explicit zero
    padding, ``ceil_mode``'s last window cut at the padded input's end, ``count_include_pad``.
    Each window's mean is its sum over the count of positions that count (an average pool of the
    input over one of a 0/1 mask: both divide by the window's area, which cancels)."""

    def __init__(self, size, stride, padding, ceil_mode, count_include_pad, **kwargs):
        super().__init__(**kwargs)
        self.size, self.stride = int(size), int(stride)
        self.padding = tuple(int(p) for p in padding)
        self.ceil_mode, self.count_include_pad = bool(ceil_mode), bool(count_include_pad)

    def call(self, x):
        t, b, l, r = self.padding
        extra = self.stride - 1 if self.ceil_mode else 0  # room for ceil_mode's last window
        pads = ((0, 0), (t, b + extra), (l, r + extra), (0, 0))
        inside = ops.ones_like(x[..., :1])  # 1 where a window's divisor counts the position
        if self.count_include_pad:  # the explicit padding counts, ceil_mode's overhang never does
            inside = ops.pad(inside, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=1.0)
            mask = ops.pad(inside, ((0, 0), (0, extra), (0, extra), (0, 0)))
        else:
            mask = ops.pad(inside, pads)
        pool = lambda v: ops.average_pool(v, self.size, self.stride, "valid", _NHWC)  # noqa: E731
        out = pool(ops.pad(x, pads)) / pool(mask)
        if self.ceil_mode:  # drop a last window that starts past the input (PyTorch's rule)
            shape = ops.shape(x)
            out = out[:, : self._starts_inside(shape[1], t), : self._starts_inside(shape[2], l)]
        return out

    def _starts_inside(self, n, before):
        """How many windows start inside the input or its padding before it (a tensor for a
        dynamic side under TensorFlow)."""
        return (n + before + self.stride - 1) // self.stride

    def compute_output_shape(self, shape):
        t, b, l, r = self.padding
        k, s = self.size, self.stride

        def length(n, before, after):
            if n is None:
                return None
            out = -(-(n + before + after - k) // s) + 1 if self.ceil_mode else (n + before + after - k) // s + 1
            return out - 1 if self.ceil_mode and (out - 1) * s >= n + before else out

        return (shape[0], length(shape[1], t, b), length(shape[2], l, r), shape[3])

    def get_config(self):
        return {**super().get_config(), "size": self.size, "stride": self.stride, "padding": self.padding,
                "ceil_mode": self.ceil_mode, "count_include_pad": self.count_include_pad}


@keras.saving.register_keras_serializable(package="resnet_parity")
class Blur2D(klayers.Layer):
    """Anti-aliased downsampling (NHWC): ``pad_mode`` padding, then every channel convolved with
    the fixed ``taps`` at ``stride`` (a depthwise conv). The filter is a constant, not a weight."""

    def __init__(self, taps, stride, padding, pad_mode, **kwargs):
        super().__init__(**kwargs)
        self.taps = tuple(tuple(float(v) for v in row) for row in taps)
        self.stride, self.padding, self.pad_mode = int(stride), tuple(int(p) for p in padding), str(pad_mode)

    def call(self, x):
        t, b, l, r = self.padding
        x = ops.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), mode=self.pad_mode)
        taps = ops.convert_to_tensor(self.taps, dtype=x.dtype)[:, :, None, None]
        kernel = ops.tile(taps, (1, 1, x.shape[-1], 1))
        return ops.depthwise_conv(x, kernel, strides=self.stride, padding="valid", data_format=_NHWC)

    def compute_output_shape(self, shape):
        t, b, l, r = self.padding
        k = len(self.taps)
        grow = lambda n, pads: None if n is None else (n + pads - k) // self.stride + 1  # noqa: E731
        return (shape[0], grow(shape[1], t + b), grow(shape[2], l + r), shape[3])

    def get_config(self):
        return {**super().get_config(), "taps": self.taps, "stride": self.stride, "padding": self.padding,
                "pad_mode": self.pad_mode}


@keras.saving.register_keras_serializable(package="resnet_parity")
class ChannelConv1D(klayers.Layer):
    """ECA's 1-D convolution across the channels of an (N, 1, 1, C) squeeze: one ``kernel`` of
    shape (k,), zero ``padding`` (before, after) on the channel axis, no bias. Initialised as
    PyTorch's Conv1d (uniform, bound 1/sqrt(k))."""

    def __init__(self, kernel_size, padding, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size, self.padding = int(kernel_size), tuple(int(p) for p in padding)

    def build(self, shape):
        bound = 1.0 / math.sqrt(self.kernel_size)
        self.kernel = self.add_weight(shape=(self.kernel_size,), name="kernel",
                                      initializer=keras.initializers.RandomUniform(-bound, bound))

    def call(self, x):
        channels = x.shape[-1]
        y = ops.pad(ops.reshape(x, (-1, channels, 1)), ((0, 0), self.padding, (0, 0)))
        y = ops.conv(y, ops.reshape(ops.cast(self.kernel, y.dtype), (self.kernel_size, 1, 1)), padding="valid",
                     data_format=_NHWC)
        return ops.reshape(y, (-1, 1, 1, channels))

    def compute_output_shape(self, shape):
        return shape

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size, "padding": self.padding}


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


def _avgpool(layer, x, _):
    padding = _keras_avg_padding(layer)
    if padding is not None:
        return klayers.AveragePooling2D(layer.size, strides=layer.stride, padding=padding, data_format=_NHWC,
                                        name=layer.name)(x)
    return TorchAveragePooling2D(layer.size, layer.stride, layer.padding, layer.ceil_mode, layer.count_include_pad,
                                 name=layer.name)(x)


def _keras_avg_padding(layer) -> str | None:
    """The Keras padding that is PyTorch's ``AvgPool2d`` rule for this pool, if one is: without
    explicit padding ``count_include_pad`` changes nothing (``ceil_mode``'s overhang never counts);
    'valid' is the floor; 'same' (Keras divides by the positions inside the input) is the ceil
    where it pads nothing before the input: a size of at most 2."""
    if any(layer.padding):
        return None
    if not layer.ceil_mode:
        return "valid"
    return "same" if layer.size <= 2 else None


def _blur(layer, x, _):
    return Blur2D(layer.taps(), layer.stride, layer.padding, layer.pad_mode, name=layer.name)(x)


def _globalpool(layer, x, _):
    pool = klayers.GlobalAveragePooling2D if layer.mode == "avg" else klayers.GlobalMaxPooling2D
    return pool(data_format=_NHWC, keepdims=layer.keepdims, name=layer.name)(x)


def _channelconv(layer, x, _):
    return ChannelConv1D(layer.kernel_size, layer.padding, name=layer.name)(x)


def _gate(layer, x, _):
    # keras.activations.hard_sigmoid is relu6(x + 3) / 6 on the tensorflow, jax and torch backends
    # (its docstring's x / 6 + 0.5 is the numpy backend's); measured on Keras 3.15 against that
    # formula written with keras.ops: equal on every float32 tried, on each backend.
    return klayers.Activation(layer.function, name=layer.name)(x)


def _dense(layer, x, opts):
    return klayers.Dense(layer.out_features, activation=opts.classifier_activation, name=layer.name)(x)


_APPLY = {"conv": _conv, "bn": _bn, "relu": _relu, "maxpool": _maxpool, "avgpool": _avgpool, "blur": _blur,
          "globalpool": _globalpool, "channelconv": _channelconv, "gate": _gate, "dense": _dense}


def apply(layer, x, options):
    """The Keras layer of one spec layer, applied to ``x`` (``options``: the model's padding rule,
    classifier activation and the previous layer's kind)."""
    return _APPLY[layer.kind](layer, x, options)
