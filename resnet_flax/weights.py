"""Canonical weights <-> the nnx model, by name: ``{layer}.{param}`` is
``getattr(model, layer)``'s ``NATIVE_PARAM`` attribute. Conv kernels are HWIO and dense kernels
(in, out) in Flax as in the canonical format, so no array is transposed; only BatchNorm's names
differ (gamma/beta <-> scale/bias)."""

from __future__ import annotations

from typing import Mapping

import jax.numpy as jnp
import numpy as np

from shared.weights import DTYPE, validate
from resnet_flax.model import NATIVE_PARAM, ResNet


def _variables(model: ResNet):
    """(canonical key, nnx.Variable) for every weight, in the spec's order."""
    for layer in model.spec.layers():
        native = getattr(model, layer.name, None) if layer.params else None
        for param in layer.params:
            yield f"{layer.name}.{param}", getattr(native, NATIVE_PARAM[layer.kind][param])


def load_weights(model: ResNet, weights: Mapping[str, np.ndarray]) -> None:
    """Copy canonical float32 weights into ``model`` (cast to its parameter dtype).

    Raises ``shared.weights.WeightsError`` (a ValueError) naming every missing, unexpected,
    mis-shaped or wrongly typed key before any parameter is touched.
    """
    validate(model.spec, weights)
    for key, variable in _variables(model):
        # A whole new value (also fills a model made by nnx.eval_shape). The numpy copy is ours:
        # on the CPU, XLA may alias a suitably aligned numpy buffer instead of copying it, and
        # the caller's array must not be able to change the model afterwards.
        private = np.array(weights[key], dtype=variable.get_value().dtype, copy=True)
        variable.set_value(jnp.asarray(private))


def export_weights(model: ResNet) -> dict[str, np.ndarray]:
    """The model's weights as a canonical dict of float32 numpy arrays (fresh copies)."""
    return {key: np.array(variable[...], dtype=DTYPE) for key, variable in _variables(model)}
