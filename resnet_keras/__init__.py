"""The bottleneck ResNet as a Keras 3 functional ``keras.Model``, built from ``shared.spec``: the
Keras third of resnet-parity. Runs on the tensorflow, jax and torch backends (chosen, as Keras
wants, by ``KERAS_BACKEND`` before keras is imported). Imports keras and ``shared`` only.

With ``style="keras"`` the model is layer for layer ``keras.applications.ResNet50/101/152``
(names, order, shapes), so their weight files and ``get_weights()`` load unchanged."""

from resnet_keras.api import ResNet50, ResNet101, ResNet152, predict
from resnet_keras.model import build, spec_of
from resnet_keras.preprocess import preprocess_input
from resnet_keras.weights import export_weights, load_weights

__all__ = ["ResNet50", "ResNet101", "ResNet152", "build", "export_weights", "load_weights", "predict",
           "preprocess_input", "spec_of"]
