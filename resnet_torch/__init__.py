"""Every ResNet of ``shared.spec.PRESETS`` in PyTorch, built from the spec, torchvision state_dicts.

Imports torch and ``shared`` only (never TensorFlow, Keras or JAX). The contract, identical in
resnet_keras and resnet_flax (``shared.contract``)::

    from resnet_torch import ResNet50, build, load_weights, predict, features
    model = ResNet50(weights="torchvision/resnet50.IMAGENET1K_V2")   # or build(spec)
    model = load_weights(build(spec), weights)   # canonical dict, file or hub name; eval mode
    logits = predict(model, images_nhwc)         # numpy in, numpy out
    feats = features(model, images_nhwc)         # {"stem", "stage1".."stage4"}, NHWC numpy

The module itself is plain PyTorch: NCHW tensors in, ``model.load_state_dict(torchvision_sd)``,
``model.forward_features(x)`` for the stage outputs as tensors.
"""

from resnet_torch.api import CONSTRUCTORS
from resnet_torch.model import ResidualBlock, ResNet, build
from resnet_torch.predict import features, predict
from resnet_torch.weights import export_weights, load_checkpoint, load_weights

globals().update(CONSTRUCTORS)  # ResNet18 .. ResNet152V2: one per preset (shared.contract)

__all__ = [
    *CONSTRUCTORS, "ResidualBlock", "ResNet", "build",
    "export_weights", "features", "load_checkpoint", "load_weights", "predict",
]
