"""Every ResNet of ``shared.spec.PRESETS`` as a Keras 3 functional ``keras.Model``, built from
the spec: the Keras third of resnet-parity. Runs on the tensorflow, jax and torch backends
(chosen, as Keras wants, by ``KERAS_BACKEND`` before keras is imported). Imports keras and
``shared`` only.

The contract, identical in resnet_torch and resnet_flax (``shared.contract``): one constructor
per preset (``ResNet18`` .. ``ResNeXt50_32x4d`` .. ``ResNet152V2``), ``build``,
``load_weights``, ``export_weights``, ``predict``, ``features``. Keras-native:
``keras_model(spec, input_shape=..., classifier_activation=...)`` and
``feature_extractor(model)`` (one output per stage). With ``style="keras"`` the model is layer
for layer ``keras.applications.ResNet50/101/152`` or ``ResNet50V2/101V2/152V2`` (names, order,
shapes), so their weight files and ``get_weights()`` load unchanged."""

from resnet_keras.api import CONSTRUCTORS, feature_extractor, features, predict
from resnet_keras.model import build, keras_model, spec_of
from resnet_keras.preprocess import preprocess_input
from resnet_keras.weights import export_weights, load_weights

globals().update(CONSTRUCTORS)  # ResNet18 .. ResNet152V2, one per preset (shared.contract)

__all__ = [*CONSTRUCTORS, "build", "export_weights", "feature_extractor", "features", "keras_model",
           "load_weights", "predict", "preprocess_input", "spec_of"]
