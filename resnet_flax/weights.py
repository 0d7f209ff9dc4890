"""Canonical weights <-> the nnx model, by name: ``{layer}.{param}`` is
``getattr(model, layer)``'s ``NATIVE_PARAM`` attribute. Conv kernels are HWIO, dense kernels
(in, out) and ECA's channel conv (k,) in Flax as in the canonical format, so no array is
transposed; only BatchNorm's names differ (gamma/beta <-> scale/bias).

The model is reached through its spec and attributes only: ``resnet_flax.model`` imports this
module (a seeded model starts from ``load_weights``), and ``resnet_flax.checkpoints`` (the Orbax
reader ``load_weights`` takes) needs neither."""

from __future__ import annotations

import os
from typing import Mapping

import jax.numpy as jnp
import numpy as np

from shared import checkpoint
from shared.weights import DTYPE, WeightsError, validate
from resnet_flax.checkpoints import READERS
from resnet_flax.layers import NATIVE_PARAM


def variables(model):
    """(canonical key, nnx.Variable) for every weight of a ``resnet_flax.ResNet``, in the spec's
    order."""
    for layer in model.spec.layers():
        native = getattr(model, layer.name, None) if layer.params else None
        for param in layer.params:
            yield f"{layer.name}.{param}", getattr(native, NATIVE_PARAM[layer.kind][param])


def _check_fits(model) -> list:
    """(key, variable) pairs; WeightsError naming every layer or variable of the model that differs
    from its spec (a user may have swapped a submodule)."""
    pairs, found = [], []
    shapes = model.spec.param_shapes()
    for layer in model.spec.layers():
        if not layer.params:
            continue
        native = getattr(model, layer.name, None)
        for param in layer.params:
            key = f"{layer.name}.{param}"
            variable = getattr(native, NATIVE_PARAM[layer.kind][param], None) if native is not None else None
            if variable is None:
                found.append(f"{key}: the model has no {layer.name}.{NATIVE_PARAM[layer.kind][param]}")
            elif tuple(variable.get_value().shape) != shapes[key]:
                found.append(f"{key}: the model holds shape {tuple(variable.get_value().shape)}, its spec {shapes[key]}")
            else:
                pairs.append((key, variable))
    if found:
        raise WeightsError(f"model: {len(found)} variable(s) differ from its spec:\n  " + "\n  ".join(found))
    return pairs


def load_weights(model, weights: Mapping[str, np.ndarray] | str | os.PathLike):
    """Copy canonical float32 weights into ``model`` (a ``resnet_flax.ResNet``, cast to its
    parameter dtype) and return it.
    ``weights``: a canonical dict, or a checkpoint file or ``shared.hub`` name (``shared.checkpoint``).

    Raises ``shared.weights.WeightsError`` (a ValueError) naming every missing, unexpected,
    mis-shaped or wrongly typed key, and any model variable that differs from the spec, before
    any parameter is touched.
    """
    weights = checkpoint.canonical(model.spec, weights, READERS)
    validate(model.spec, weights)
    for key, variable in _check_fits(model):
        # A whole new value (also fills a model made by nnx.eval_shape). The numpy copy is ours:
        # on the CPU, XLA may alias a suitably aligned numpy buffer instead of copying it, and
        # the caller's array must not be able to change the model afterwards.
        private = np.array(weights[key], dtype=variable.get_value().dtype, copy=True)
        variable.set_value(jnp.asarray(private))
    return model


def export_weights(model) -> dict[str, np.ndarray]:
    """The model's weights as a canonical dict of float32 numpy arrays (fresh copies)."""
    return {key: np.array(variable[...], dtype=DTYPE) for key, variable in variables(model)}
