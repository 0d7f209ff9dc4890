"""The bottleneck ResNet as a Keras 3 functional ``keras.Model``, built from ``shared.spec``: the
Keras third of resnet-parity. Runs on the tensorflow, jax and torch backends (chosen, as Keras
wants, by ``KERAS_BACKEND`` before keras is imported). Imports keras and ``shared`` only.

The contract, identical in resnet_torch and resnet_flax (``shared.contract``): ``ResNet50/101/152``,
``build``, ``load_weights``, ``export_weights``, ``predict``, ``features``. Keras-native:
``keras_model(spec, input_shape=..., classifier_activation=...)`` and ``feature_extractor(model)``
(one output per stage). With ``style="keras"`` the model is layer for layer
``keras.applications.ResNet50/101/152`` (names, order, shapes), so their weight files and
``get_weights()`` load unchanged."""

from resnet_keras.api import ResNet50, ResNet101, ResNet152, feature_extractor, features, predict
from resnet_keras.model import build, keras_model, spec_of
from resnet_keras.preprocess import preprocess_input
from resnet_keras.weights import export_weights, load_weights

__all__ = ["ResNet50", "ResNet101", "ResNet152", "build", "export_weights", "feature_extractor", "features",
           "keras_model", "load_weights", "predict", "preprocess_input", "spec_of"]
