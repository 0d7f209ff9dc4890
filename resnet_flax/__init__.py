"""The bottleneck ResNet as a ``flax.nnx.Module``, built from ``shared.spec``: the Flax NNX
third of resnet-parity. Imports jax, flax and ``shared`` only (no torch, no TensorFlow).

The contract, identical in resnet_torch and resnet_keras (``shared.contract``): ``ResNet50/101/152``,
``build``, ``load_weights``, ``export_weights``, ``predict``, ``features``. Flax-native:
``ResNet(spec, rngs=..., dtype=...)`` and ``model.features(x)``."""

from resnet_flax.api import ResNet50, ResNet101, ResNet152, build, features, predict
from resnet_flax.model import ResNet
from resnet_flax.weights import export_weights, load_weights

__all__ = ["ResNet", "ResNet50", "ResNet101", "ResNet152", "build", "export_weights", "features",
           "load_weights", "predict"]
