"""``build(spec)`` / ``keras_model(spec, ...)``: walk the spec (``stem()``, each block through
``Block.walk``, ``head()``) and express each layer as a Keras layer of the same name.

Layer for layer what ``keras.applications`` ResNet50/101/152 and ResNet50V2/101V2/152V2 build
(keras/src/applications/resnet.py, resnet_v2.py), and keras-hub's ``ResNetBackbone`` (vd and
V2 blocks: ``timm`` style): ZeroPadding2D + valid conv/pool wherever the padding is not plain
'same' (in Keras Applications' V2 wherever a layer pads; a max pool that pads with -inf where no
ReLU comes first: ``ConstantPadding2D``), grouped convs as ``Conv2D(groups=...)``, a block's
paths added as ``Add()([shortcut, main])`` and an attention's gate applied as
``Multiply()([main, gate])`` (which fix the order ``model.layers`` lists them in, and so the
order of ``get_weights()`` and of legacy ``.h5`` files: ``shared.keras_h5.keras_layer_names``),
BatchNormalization on the last axis. Always channels_last, whatever
``keras.config.image_data_format()`` says, because the canonical layout is NHWC.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import keras
from shared.keras_h5 import INPUT_LAYER, KERAS_PARAM, keras_explicit_padding
from shared.fold import refuse_training
from shared.spec import ResNetSpec
from shared.weights import WeightsError
from resnet_keras import layers

@dataclass(frozen=True)
class _Options:
    explicit_padding: bool  # a ZeroPadding2D before every padded layer (Keras' V2)
    classifier_activation: str | None
    previous: str | None = None  # the kind of the layer before, within one chain


def _chainer(spec: ResNetSpec, classifier_activation):
    """``chain(layers, x)``, ``add(layer, main, shortcut)`` and ``scale(layer, main, gate)`` for
    ``Block.walk``."""
    options = _Options(keras_explicit_padding(spec), classifier_activation)

    def chain(spec_layers, x):
        previous = None
        for layer in spec_layers:
            x = layers.apply(layer, x, replace(options, previous=previous))
            previous = layer.kind
        return x

    def add(layer, main, shortcut):
        # [shortcut, main], as Keras Applications: the order model.layers lists the branches in
        return keras.layers.Add(name=layer.name)([shortcut, main])

    def scale(layer, main, gate):
        return keras.layers.Multiply(name=layer.name)([main, gate])  # (N, 1, 1, C) broadcast

    return chain, add, scale


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
    chain, add, scale = _chainer(spec, classifier_activation)
    x = chain(spec.stem(), inputs)
    for block in spec.blocks():
        x = block.walk(x, chain, add, scale)
    x = chain(spec.head(), x)
    model = keras.Model(inputs, x, name=name or spec.arch or "resnet")
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
            "shared.keras_h5.from_keras_applications(model)"
        )
    return spec


def variables(model: keras.Model):
    """(canonical key, Keras variable) for every weight, in the spec's order:
    ``{layer}.{param}`` is ``model.get_layer(layer)``'s ``KERAS_PARAM[param]`` variable."""
    by_name = {layer.name: layer for layer in model.layers}
    for layer in spec_of(model).layers():
        if not layer.params:
            continue
        native = by_name.get(layer.name)
        if native is None:
            raise WeightsError(f"{layer.name}: the model has no layer of this name (was it built from its .spec?)")
        for param in layer.params:
            yield f"{layer.name}.{param}", getattr(native, KERAS_PARAM[param])
