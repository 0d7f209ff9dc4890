"""The bottleneck ResNet as a ``flax.nnx.Module``, built from ``shared.spec``: the Flax NNX
third of resnet-parity. Imports jax, flax and ``shared`` only (no torch, no TensorFlow)."""

from resnet_flax.api import ResNet50, ResNet101, ResNet152, build, predict
from resnet_flax.model import ResNet
from resnet_flax.weights import export_weights, load_weights

__all__ = ["ResNet", "ResNet50", "ResNet101", "ResNet152", "build", "export_weights", "load_weights", "predict"]
