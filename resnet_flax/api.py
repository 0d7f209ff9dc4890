"""The contract (``shared.contract``), identical in resnet_torch, resnet_keras and resnet_flax:
``build``, ``predict``, ``features`` and one constructor per preset (``ResNet18`` .. ``ResNet152V2``,
``ResNeXt50_32x4d``, ``WideResNet50_2``: ``shared.contract.CONSTRUCTORS``). Flax-native options
(an ``nnx.Rngs``, a compute dtype) are the ``resnet_flax.ResNet`` class's."""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from shared import checkpoint, contract
from shared.spec import ResNetSpec
from resnet_flax.model import ResNet
from resnet_flax.weights import load_weights


def build(spec: ResNetSpec) -> ResNet:
    """A model with the canonical random initialisation ``shared.weights.init(spec, 0)``, in eval
    mode (``ResNet(spec, rngs=seed_or_nnx_rngs, dtype=...)`` for other seeds or dtypes)."""
    return ResNet(spec, rngs=0)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _forward(graphdef, method, state, images):
    model = nnx.merge(graphdef, state)
    model.eval()  # a copy inside the trace: the caller's model keeps its mode
    return model(images) if method == "__call__" else model.features(images)


def _run(model: ResNet, images, method: str):
    images = contract.as_images(model.spec, images)
    graphdef, state = nnx.split(model)
    return _forward(graphdef, method, state, np.asarray(images, dtype=np.float32))


def predict(model: ResNet, images_nhwc: np.ndarray) -> np.ndarray:
    """Logits (float32 numpy) for NHWC floating images (integer images are refused:
    ``shared.contract``), in eval mode whatever the model's mode.

    Compiled once per model structure, dtype and image shape (any model of the same spec
    shares it); a shape seen before reuses its compiled program.
    """
    return np.asarray(_run(model, images_nhwc, "__call__"), dtype=np.float32)


def features(model: ResNet, images_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    """``{"stem", "stage1", ...}``: the stem's and each stage's output, NHWC float32 numpy, eval
    mode (the native way: ``model.features(x)``, jit-able)."""
    out = _run(model, images_nhwc, "features")  # a pytree: its keys come back sorted
    return {k: np.asarray(out[k], dtype=np.float32) for k in contract.feature_points(model.spec)}


def _constructed(arch, img_channel, num_classes, style, weights, include_top, pooling,
                 classifier_activation) -> ResNet:
    spec = contract.constructor_spec(arch, img_channel, num_classes, style, include_top, pooling,
                                     classifier_activation)
    found = None if weights is None else checkpoint.canonical(spec, weights)  # refused before building
    model = ResNet(spec, rngs=0 if found is None else None, classifier_activation=classifier_activation)
    return model if found is None else load_weights(model, found)


# ResNet18 .. ResNet152V2: one per preset of shared.spec.PRESETS, the signature and docs from
# shared.contract (identical in the three packages); a new preset needs no code here.
CONSTRUCTORS = contract.constructors(_constructed)
globals().update(CONSTRUCTORS)
