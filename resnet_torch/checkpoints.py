"""torchvision ``.pth``/``.pt`` files (``torch.save`` of a state_dict) <-> canonical weights: the
one ``.pth`` reader of resnet-parity, and the package's door to every format it reads.

Reading goes through ``torch.load(weights_only=True)`` only (no pickle runs), unwraps
``{"state_dict": ...}`` (what training scripts save beside their optimiser state), and maps
torchvision's keys by the core's one rule (``shared.formats.from_torchvision_state``): timm's
``resnet.py`` family has those keys (``conv1.0``, ``downsample.2``, ``se.fc1``), and timm's
``resnetv2`` keys are renamed to them (``shared.interop``).
``READERS``/``WRITERS`` are what this package hands the core's dispatcher
(``shared.formats``); ``read_checkpoint`` reads any checkpoint ``resnet_torch`` takes: the
core's formats, ``.pth``, or a ``shared.hub`` name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from shared import checkpoint, formats, interop
from shared.spec import ResNetSpec
from shared.weights import WeightsError


def _load_state(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; all mean "unreadable"
        first = (str(e).splitlines() or [""])[0]
        first = first if len(first) <= 120 else first[:117] + "..."
        raise WeightsError(f"{path}: not a weights-only torch checkpoint ({type(e).__name__}: {first})") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state_dict (a mapping of names to tensors), got {type(state).__name__}")
    return state


def read_pth(path: str | os.PathLike, spec: ResNetSpec | None = None,
             style: str | None = None) -> tuple[ResNetSpec, dict[str, np.ndarray]]:
    """A torchvision- or timm-keyed ``.pth``/``.pt`` -> (spec, canonical weights); the spec read
    off the keys and shapes unless given (``style`` for the conventions shapes cannot show;
    anti-aliasing and the blur or avg stem pools have no weights: a model's own spec says them)."""
    return formats.from_torchvision_state(_load_state(Path(path)), spec, style)


def write_pth(spec: ResNetSpec, weights: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Canonical weights -> ``torch.save`` of the torchvision state_dict (``shared.formats.write``
    renames it into place)."""
    state = interop.to_torchvision(spec, weights)
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, path)


READERS = {"pth": read_pth}
WRITERS = {"pth": write_pth}


def read_checkpoint(source: str | os.PathLike, spec: ResNetSpec | None = None,
                    style: str | None = None) -> tuple[ResNetSpec, dict[str, np.ndarray]]:
    """(spec, canonical weights) of a checkpoint file or ``shared.hub`` name, in any format this
    package reads (``shared.checkpoint.read`` with this package's ``READERS``); with ``spec`` a
    file that does not fit it is refused, naming the key."""
    return checkpoint.read(source, spec=spec, style=style, readers=READERS)
