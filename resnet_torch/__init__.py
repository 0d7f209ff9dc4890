"""ResNet-50/101/152 in PyTorch, built from ``shared.spec``; torchvision-compatible state_dicts.

Imports torch and ``shared`` only (never TensorFlow, Keras or JAX)::

    from resnet_torch import build, load_weights, predict
    model = load_weights(build(spec), weights)   # canonical weights, eval mode
    logits = predict(model, images_nhwc)         # numpy in, numpy out

The module itself is plain PyTorch: NCHW tensors in, ``model.load_state_dict(torchvision_sd)``.
"""

from resnet_torch.model import Bottleneck, ResNet, ResNet50, ResNet101, ResNet152, build
from resnet_torch.predict import predict
from resnet_torch.weights import export_weights, load_checkpoint, load_weights

__all__ = [
    "Bottleneck", "ResNet", "ResNet50", "ResNet101", "ResNet152", "build",
    "export_weights", "load_checkpoint", "load_weights", "predict",
]
