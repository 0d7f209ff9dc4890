"""Canonical weights <-> the torch module, and checkpoint files.

The name and layout mapping is ``shared.interop``'s torchvision mapping (the module's
state_dict *is* a torchvision-style state_dict); nothing here knows a layer name.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import torch
from torch import nn

from shared import checkpoint, interop
from shared import weights as canonical
from shared.spec import ResNetSpec
from resnet_torch.checkpoints import READERS
from shared.weights import WeightsError


def _spec_of(model: nn.Module) -> ResNetSpec:
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ResNetSpec):
        raise TypeError(f"model: expected a resnet_torch model (with a .spec), got {type(model).__name__}")
    return spec


def _check_fits(model: nn.Module, state: Mapping[str, np.ndarray]) -> None:
    """The model's own state_dict must take ``state`` whole (a user may have swapped a module)."""
    current = model.state_dict()
    found = [f"{k}: missing in the model (expected shape {tuple(v.shape)})" for k, v in state.items() if k not in current]
    found += [f"{k}: unexpected in the model (not in its spec)" for k in current if k not in state]
    found += [
        f"{k}: the model holds shape {tuple(current[k].shape)}, the weights give {tuple(v.shape)}"
        for k, v in state.items() if k in current and tuple(current[k].shape) != v.shape
    ]
    if found:
        raise WeightsError(f"model: {len(found)} module(s) differ from its spec:\n  " + "\n  ".join(found))


def load_weights(model: nn.Module, weights: Mapping[str, np.ndarray] | str | os.PathLike) -> nn.Module:
    """Copy canonical weights into ``model`` (in place, keeping its device, dtype and memory
    format) and return it. ``weights``: a canonical dict, or a checkpoint file or ``shared.hub``
    name (``shared.checkpoint``). Everything is checked before any tensor is touched, so a bad
    dict raises a WeightsError (a ValueError) naming each key and leaves the model as it was."""
    spec = _spec_of(model)
    weights = checkpoint.canonical(spec, weights, READERS)
    canonical.validate(spec, weights)
    state = interop.to_torchvision(spec, weights)
    _check_fits(model, state)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    return model


def export_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's parameters and BatchNorm statistics as canonical float32 weights (copies)."""
    spec = _spec_of(model)
    state = {
        k: v.detach().cpu().float().numpy().copy()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    return interop.from_torchvision(state, spec=spec)[1]


def variables(model: nn.Module):
    """(canonical key, the model's own parameter or buffer tensor) for every weight, in the
    spec's order. torch keeps conv kernels OIHW and dense kernels (out, in): ``export_weights``
    gives the canonical HWIO / (in, out) copies."""
    spec = _spec_of(model)
    state = model.state_dict(keep_vars=True)
    for layer in spec.layers():
        module = interop.torchvision_module(layer.name)
        for param in layer.params:
            yield f"{layer.name}.{param}", state[f"{module}.{interop.torchvision_param(layer, param)}"]
