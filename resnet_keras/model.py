"""``build(spec)`` / ``keras_model(spec, ...)``: walk the spec's layers and express each one as a Keras layer of the same name.

Layer for layer what ``keras.applications`` ResNet50/101/152 builds (keras/src/applications/
resnet.py): ZeroPadding2D + valid conv/pool wherever the padding is not plain 'same', a block's
shortcut created before its main path and added as ``Add()([shortcut, main])`` (which fixes the
order ``model.layers`` lists them in, and so the order of ``get_weights()`` and of legacy
``.h5`` files), BatchNormalization on the last axis. Always channels_last, whatever
``keras.config.image_data_format()`` says, because the canonical layout is NHWC.
"""

from __future__ import annotations

import keras
from keras import layers

from shared.keras_h5 import INPUT_LAYER, keras_padding, pad_name
from shared.fold import refuse_training
from shared.parity import depth_name
from shared.spec import Block, ResNetSpec

_NHWC = "channels_last"


def _padded(layer, x):
    """Explicit (top, bottom, left, right) zero padding as its own layer, when 'same' won't do."""
    mode = keras_padding(layer)
    if mode == "pad":
        t, b, l, r = layer.padding
        x = layers.ZeroPadding2D(((t, b), (l, r)), data_format=_NHWC, name=pad_name(layer))(x)
        mode = "valid"
    return x, mode


def _conv(layer, x, _):
    x, padding = _padded(layer, x)
    return layers.Conv2D(layer.out_channels, layer.kernel_size, strides=layer.stride, padding=padding,
                         use_bias=layer.bias, data_format=_NHWC, name=layer.name)(x)


def _bn(layer, x, _):
    # Keras' momentum is the weight of the old running value; the spec's is PyTorch's.
    return layers.BatchNormalization(axis=-1, epsilon=layer.epsilon, momentum=1.0 - layer.momentum,
                                     gamma_initializer="zeros" if layer.zero_init else "ones",
                                     name=layer.name)(x)


def _relu(layer, x, _):
    return layers.Activation("relu", name=layer.name)(x)


def _maxpool(layer, x, _):
    # Zero padding where the spec pads with -inf: equal because a ReLU comes first (x >= 0).
    x, padding = _padded(layer, x)
    return layers.MaxPooling2D(layer.size, strides=layer.stride, padding=padding, data_format=_NHWC,
                               name=layer.name)(x)


def _globalpool(layer, x, _):
    pool = layers.GlobalAveragePooling2D if layer.mode == "avg" else layers.GlobalMaxPooling2D
    return pool(data_format=_NHWC, name=layer.name)(x)


def _dense(layer, x, classifier_activation):
    return layers.Dense(layer.out_features, activation=classifier_activation, name=layer.name)(x)


_APPLY = {"conv": _conv, "bn": _bn, "relu": _relu, "maxpool": _maxpool, "globalpool": _globalpool,
          "dense": _dense}


def _chain(spec_layers, x, classifier_activation=None):
    for layer in spec_layers:
        x = _APPLY[layer.kind](layer, x, classifier_activation)
    return x


def _block(block: Block, x):
    shortcut = _chain(block.shortcut, x)  # first, as Keras Applications creates it
    main = _chain(block.main, x)
    x = layers.Add(name=block.add.name)([shortcut, main])
    return _chain((block.out,), x)


def _input_shape(spec: ResNetSpec, input_shape) -> tuple:
    if input_shape is None:
        return (None, None, spec.image_channels)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != spec.image_channels:
        raise ValueError(f"input_shape: expected (height, width, {spec.image_channels}) (channels last), "
                         f"got {input_shape}")
    m = spec.min_input_size
    spec.check_input_size(input_shape[0] or m, input_shape[1] or m)
    return input_shape


def build(spec: ResNetSpec) -> keras.Model:
    """The contract's ``build``: ``keras_model(spec)``, any input size, logits."""
    return keras_model(spec)


def keras_model(spec: ResNetSpec, input_shape=None, classifier_activation=None, name: str | None = None,
                ) -> keras.Model:
    """A randomly initialised functional ``keras.Model`` for ``spec`` (``model.spec`` keeps it),
    with the options a Keras user expects of an application.

    ``input_shape``: (height, width, channels), either side may be None (the default: any size
    of at least ``spec.min_input_size``). ``classifier_activation``: None gives logits (the
    contract's ``predict``); pass "softmax" for keras.applications' probabilities. Layers take
    the current ``keras.config.dtype_policy()``, e.g. "mixed_bfloat16". Inference needs
    ``training=False`` (or ``predict``), as for any Keras model with BatchNormalization.
    """
    inputs = keras.Input(shape=_input_shape(spec, input_shape), name=INPUT_LAYER)
    x = _chain(spec.stem(), inputs)
    for block in spec.blocks():
        x = _block(block, x)
    x = _chain(spec.head(), x, classifier_activation)
    model = keras.Model(inputs, x, name=name or depth_name(spec.depths) or "resnet")
    model.spec = spec
    if spec.folded:  # eval only: Keras' training entry points refuse, before touching any state
        model.fit = _refuses("fit()", spec)
        model.train_on_batch = _refuses("train_on_batch()", spec)
    return model


def _refuses(what: str, spec: ResNetSpec):
    def refuse(*args, **kwargs):
        refuse_training(spec, what)

    return refuse


def spec_of(model) -> ResNetSpec:
    """The spec a model was built from; ValueError for a model ``build`` did not make."""
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ResNetSpec):
        raise ValueError(
            f"model {getattr(model, 'name', model)!r}: has no ResNetSpec in .spec; build it with "
            "resnet_keras.build(spec), or read a keras.applications model with "
            "shared.interop.from_keras_applications(model)"
        )
    return spec
