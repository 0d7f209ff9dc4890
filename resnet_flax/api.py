"""The contract every framework package keeps: ``build``, ``predict`` and the seed's
constructors ``ResNet50/101/152(img_channel=3, num_classes=1000)``."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from shared import spec as specs
from shared.reference import check_images
from shared.spec import ResNetSpec
from shared.weights import init
from resnet_flax.model import ResNet
from resnet_flax.weights import load_weights


def build(spec: ResNetSpec, *, rngs: nnx.Rngs | int | None = None, dtype=None,
          param_dtype=jnp.float32) -> ResNet:
    """A randomly initialised model in eval mode.

    ``rngs``: an integer seed (default 0) gives the canonical initialisation
    ``shared.weights.init(spec, seed)`` (torchvision's distributions, drawn in numpy: no XLA
    program per parameter shape to compile, which costs seconds per model on a CPU); an
    ``nnx.Rngs`` draws the same distributions with Flax's initialisers (``ResNet(spec, rngs=...)``).
    ``dtype``: compute dtype (None: the parameters'), e.g. ``jnp.bfloat16`` for bf16 compute
    with ``param_dtype=jnp.float32`` parameters.
    """
    if isinstance(rngs, nnx.Rngs):
        return ResNet(spec, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    model = ResNet(spec, rngs=None, dtype=dtype, param_dtype=param_dtype)
    load_weights(model, init(spec, 0 if rngs is None else rngs))
    return model


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, images):
    model = nnx.merge(graphdef, state)
    model.eval()  # a copy inside the trace: the caller's model keeps its mode
    return model(images)


def predict(model: ResNet, images: np.ndarray) -> np.ndarray:
    """Logits (float32 numpy) for NHWC float32 images, in eval mode whatever the model's mode.

    Compiled once per model structure, dtype and image shape (any model of the same spec
    shares it); a shape seen before reuses its compiled program.
    """
    check_images(model.spec, images)
    graphdef, state = nnx.split(model)
    out = _forward(graphdef, state, np.asarray(images, dtype=np.float32))
    return np.asarray(out, dtype=np.float32)


def ResNet50(img_channel: int = 3, num_classes: int = 1000, **build_kwargs) -> ResNet:
    """The seed's ResNet-50 (torchvision style); ``build_kwargs`` go to ``build``."""
    return build(specs.resnet50(image_channels=img_channel, num_classes=num_classes), **build_kwargs)


def ResNet101(img_channel: int = 3, num_classes: int = 1000, **build_kwargs) -> ResNet:
    """The seed's ResNet-101 (torchvision style); ``build_kwargs`` go to ``build``."""
    return build(specs.resnet101(image_channels=img_channel, num_classes=num_classes), **build_kwargs)


def ResNet152(img_channel: int = 3, num_classes: int = 1000, **build_kwargs) -> ResNet:
    """The seed's ResNet-152 (torchvision style); ``build_kwargs`` go to ``build``."""
    return build(specs.resnet152(image_channels=img_channel, num_classes=num_classes), **build_kwargs)
