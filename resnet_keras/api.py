"""The contract (``shared.contract``), identical in resnet_torch, resnet_keras and resnet_flax:
one constructor per preset of ``shared.spec.PRESETS`` (``ResNet18`` .. ``ResNet152V2``),
``predict`` and ``features``; and the Keras-native way
to the stage features, ``feature_extractor(model)``: a ``keras.Model`` with one output per stage."""

from __future__ import annotations

import weakref

import keras
import numpy as np

from shared import checkpoint, contract
from resnet_keras.model import keras_model, spec_of
from resnet_keras.weights import load_weights

_EXTRACTORS: "weakref.WeakKeyDictionary[keras.Model, keras.Model]" = weakref.WeakKeyDictionary()


def _images(model: keras.Model, images) -> np.ndarray:
    images = contract.as_images(spec_of(model), images)
    built_for = tuple(model.input_shape[1:3])
    if any(b is not None and b != s for b, s in zip(built_for, images.shape[1:3])):
        raise ValueError(f"images: this model was built for {built_for[0]}x{built_for[1]} inputs, "
                         f"got {images.shape[1]}x{images.shape[2]} (build with input_shape=None for any size)")
    return np.asarray(images, dtype=keras.backend.standardize_dtype(model.inputs[0].dtype))


def _numpy(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float32)


def predict(model: keras.Model, images_nhwc: np.ndarray) -> np.ndarray:
    """Eval-mode outputs (logits unless built with a classifier activation) as float32 numpy,
    for an NHWC batch of floating images (integer images are refused: ``shared.contract``)."""
    return _numpy(model(_images(model, images_nhwc), training=False))


def feature_extractor(model: keras.Model) -> keras.Model:
    """A functional ``keras.Model`` sharing ``model``'s layers and weights whose outputs are a dict
    ``{"stem": pool1_pool, "stage1": conv2_block{n}_out, ...}`` (as keras-hub's pyramid outputs).
    Made once per model."""
    if model not in _EXTRACTORS:
        outputs = {k: model.get_layer(name).output for k, name in contract.feature_layers(spec_of(model)).items()}
        _EXTRACTORS[model] = keras.Model(model.inputs[0], outputs, name=f"{model.name}_features")
    return _EXTRACTORS[model]


def features(model: keras.Model, images_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    """``{"stem", "stage1", ...}``: the stem's and each stage's output, NHWC float32 numpy, eval mode."""
    out = feature_extractor(model)(_images(model, images_nhwc), training=False)
    return {k: _numpy(out[k]) for k in contract.feature_layers(spec_of(model))}


def _constructed(arch, img_channel, num_classes, style, weights, include_top, pooling,
                 classifier_activation) -> keras.Model:
    spec = contract.constructor_spec(arch, img_channel, num_classes, style, include_top, pooling,
                                     classifier_activation)
    found = None if weights is None else checkpoint.canonical(spec, weights)  # refused before building
    model = keras_model(spec, classifier_activation=contract.activation(spec, classifier_activation))
    return model if found is None else load_weights(model, found)


# ResNet18 .. ResNet152V2: one per preset of shared.spec.PRESETS, the signature and docs from
# shared.contract (identical in the three packages); a new preset needs no code here.
CONSTRUCTORS = contract.constructors(_constructed)
globals().update(CONSTRUCTORS)
