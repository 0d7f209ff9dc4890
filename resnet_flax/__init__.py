"""Every ResNet of ``shared.spec.PRESETS`` as a ``flax.nnx.Module``, built from the spec: the
Flax NNX third of resnet-parity. Imports jax, flax and ``shared`` only (no torch, no TensorFlow).

The contract, identical in resnet_torch and resnet_keras (``shared.contract``): one constructor
per preset (``ResNet18`` .. ``ResNet152V2``), ``build``, ``load_weights``, ``export_weights``,
``predict``, ``features``. Flax-native: ``ResNet(spec, rngs=..., dtype=...)`` and
``model.features(x)``."""

from resnet_flax.api import CONSTRUCTORS, build, features, predict
from resnet_flax.model import ResNet
from resnet_flax.weights import export_weights, load_weights

globals().update(CONSTRUCTORS)  # ResNet18 .. ResNet152V2, one per preset (shared.contract)

__all__ = ["ResNet", *CONSTRUCTORS, "build", "export_weights", "features", "load_weights", "predict"]
