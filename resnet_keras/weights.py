"""Canonical weights <-> the Keras model, by name: ``{layer}.{param}`` is
``model.get_layer(layer)``'s ``KERAS_PARAM[param]`` variable (``kernel``, ``bias``, ``gamma``,
``beta``, ``moving_mean``, ``moving_variance``; ECA's channel conv: ``kernel``, (k,)). Keras kernels
are HWIO and (in, out) like the canonical ones, so no array is transposed.

``load_weights`` reads checkpoint files through ``resnet_keras.checkpoints.READERS``; that module
builds its models with ``resnet_keras.model`` and never imports this one."""

from __future__ import annotations

import os
from typing import Mapping

import keras
import numpy as np

from shared import checkpoint
from shared.weights import DTYPE, WeightsError, validate
from resnet_keras.checkpoints import READERS
from resnet_keras.model import spec_of, variables

__all__ = ["export_weights", "load_weights", "variables"]


def load_weights(model: keras.Model, weights: Mapping[str, np.ndarray] | str | os.PathLike) -> keras.Model:
    """Copy canonical float32 weights into ``model`` (cast to its variables' dtype) and return it.
    ``weights``: a canonical dict, or a checkpoint file or ``shared.hub`` name (``shared.checkpoint``).

    Raises ``shared.weights.WeightsError`` (a ValueError) naming every missing, unexpected,
    mis-shaped or wrongly typed key, and any model variable whose shape differs from the
    spec's, before any variable is touched.
    """
    weights = checkpoint.canonical(spec_of(model), weights, READERS)
    validate(spec_of(model), weights)
    pairs = list(variables(model))
    wrong = [f"{key}: model variable {v.path} has shape {tuple(v.shape)}, the weights {weights[key].shape}"
             for key, v in pairs if tuple(v.shape) != weights[key].shape]
    if wrong:
        raise WeightsError("model does not match its spec:\n  " + "\n  ".join(wrong))
    for key, variable in pairs:
        variable.assign(weights[key])
    return model


def export_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """The model's weights as a canonical dict of float32 numpy arrays (fresh copies)."""
    return {key: np.array(keras.ops.convert_to_numpy(v), dtype=DTYPE) for key, v in variables(model)}

