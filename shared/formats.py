"""Every checkpoint format resnet-parity reads and writes, behind one dispatcher by file type.

``read(path) -> (spec, canonical weights)`` and ``write(spec, weights, path)`` for:

| format | file | read/write needs |
| --- | --- | --- |
| ``safetensors`` | canonical ``.safetensors`` (spec in its metadata) | numpy |
| ``torchvision-safetensors`` | ``.safetensors`` with torchvision's state_dict keys | numpy |
| ``pth`` | torchvision state_dict, ``torch.save`` ``.pth``/``.pt`` | torch |
| ``keras-h5`` | Keras Applications' legacy ``.h5`` | numpy (h5py) |
| ``keras-weights-h5`` | Keras 3 ``model.save_weights`` ``.weights.h5`` | keras |
| ``keras`` | Keras 3 ``model.save`` ``.keras`` | keras |
| ``orbax`` | a directory: Orbax checkpoint of ``nnx.state(model)`` | flax (orbax) |

The core stays framework-free: a format that needs a framework imports its reader
(``resnet_keras.checkpoints``, ``resnet_flax.checkpoints``, torch) inside the call, and says
which extra to install when it is missing (``FrameworkMissing``). Every write goes to a temporary
name beside the destination and is renamed into place only when it succeeded, so a failed
conversion leaves nothing new at the destination and never touches an existing file.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from shared.spec import ResNetSpec
from shared.weights import WeightsError, atomic_path

FORMATS = ("safetensors", "torchvision-safetensors", "pth", "keras-h5", "keras-weights-h5", "keras", "orbax")
# format -> (import names it needs, the pip extra that brings them)
NEEDS = {"pth": (("torch",), "torch"), "keras-weights-h5": (("keras",), "keras"), "keras": (("keras",), "keras"),
         "orbax": (("jax", "flax", "orbax.checkpoint"), "flax")}
ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt")


class FrameworkMissing(ImportError):
    """A format needs a framework that is not installed; the message names the extra."""


def _require(fmt: str, path: Path) -> None:
    if fmt not in NEEDS:
        return
    import importlib.util

    names, extra = NEEDS[fmt]
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise FrameworkMissing(f"{path.name}: a {fmt} checkpoint needs {name.split('.')[0]}, which is not "
                                   f"installed (pip install 'resnet-parity[{extra}]')")


# ----------------------------------------------------------------------------- detection

def _is_torchvision_safetensors(path: Path) -> bool:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "np") as f:
            return "conv1.weight" in f.keys()
    except (SafetensorError, OSError, ValueError):
        return False  # unreadable: let the canonical reader name the problem


def _is_keras3_h5(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "layers" in f and "layer_names" not in f.attrs and "model_weights" not in f
    except OSError:
        return False


def detect(path: str | os.PathLike) -> str:
    """The format of an existing checkpoint, from its type and, where two formats share a
    suffix, its content. FileNotFoundError / WeightsError when there is none to read."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        return "orbax"
    name = path.name.lower()
    if name.endswith(".weights.h5"):
        return "keras-weights-h5"
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return "keras"
    if suffix in (".h5", ".hdf5"):
        return "keras-weights-h5" if _is_keras3_h5(path) else "keras-h5"
    if suffix == ".safetensors":
        return "torchvision-safetensors" if _is_torchvision_safetensors(path) else "safetensors"
    if suffix in (".pth", ".pt"):
        return "pth"
    raise WeightsError(f"{path}: unknown checkpoint type {suffix or '(no suffix, not a directory)'!r}; expected "
                       ".safetensors, .pth/.pt, .h5, .weights.h5, .keras or an Orbax checkpoint directory")


def destination_format(path: str | os.PathLike, format: str | None = None) -> str:
    """The format to write ``path`` in: ``format`` when given, else by its type. A path with no
    suffix (or ending in ``/``) is an Orbax checkpoint directory; ``.safetensors`` is canonical
    (``format="torchvision-safetensors"`` for torchvision's keys)."""
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"format: unknown {format!r}; expected one of {', '.join(FORMATS)}")
        return format
    text = os.fspath(path)
    path = Path(text)
    name = path.name.lower()
    if text.endswith(("/", os.sep)) or path.suffix == "" or path.is_dir():
        return "orbax"
    if name.endswith(".weights.h5"):
        return "keras-weights-h5"
    by_suffix = {".keras": "keras", ".h5": "keras-h5", ".hdf5": "keras-h5", ".safetensors": "safetensors",
                 ".pth": "pth", ".pt": "pth"}
    if path.suffix.lower() in by_suffix:
        return by_suffix[path.suffix.lower()]
    raise ValueError(f"{path}: unknown output type {path.suffix!r}; expected .safetensors, .pth/.pt, .h5, "
                     ".weights.h5, .keras, or a directory (no suffix) for an Orbax checkpoint")


# ----------------------------------------------------------------------------- reading

def _framework_module(name: str, fmt: str, path: Path):
    _require(fmt, path)
    return importlib.import_module(name)


def read(path: str | os.PathLike, spec: ResNetSpec | None = None, style: str | None = None,
         format: str | None = None) -> tuple[ResNetSpec, dict[str, np.ndarray]]:
    """Any supported checkpoint -> (spec, canonical weights).

    The spec comes from ``spec`` when given (a file that does not fit it is refused, naming the
    first layer or key and both shapes), else from the file: stored in it (canonical
    safetensors, our .h5), read off a ``.keras`` config, or read off the names and shapes, with
    ``style`` (default: biased convs mean Keras Applications, unbiased torchvision) for the
    conventions weights cannot show (stride placement, BatchNorm epsilon and momentum)."""
    from shared import interop, keras_h5, weights as W

    path = Path(path)
    fmt = format or detect(path)
    if fmt == "safetensors":
        weights = W.load(path)  # a truncated or foreign file fails here, by name
        spec = spec or W.read_spec(path) or interop.spec_from_canonical(weights, style=style)
        W.validate(spec, weights, source=str(path))
        return spec, weights
    if fmt in ("torchvision-safetensors", "pth"):
        state = _load_safetensors(path) if fmt == "torchvision-safetensors" else _load_pth(path)
        if spec is None and style is not None:  # torchvision's keys, another style's conventions
            spec = _with_conventions(interop.spec_from_torchvision(state), style)
        return interop.from_torchvision(state, spec=spec)
    if fmt == "keras-h5":
        return keras_h5.from_keras_applications(str(path), spec=spec)
    if fmt in ("keras-weights-h5", "keras"):
        _require(fmt, path)
        _readable_container(path, fmt)  # a truncated file is named before Keras (seconds to import) loads
        module = _framework_module("resnet_keras.checkpoints", fmt, path)
        reader = module.read_weights_h5 if fmt == "keras-weights-h5" else module.read_keras
        return reader(path, spec=spec, style=style)
    if fmt == "orbax":
        return _framework_module("resnet_flax.checkpoints", fmt, path).read_orbax(path, spec=spec, style=style)
    raise ValueError(f"format: unknown {fmt!r}; expected one of {', '.join(FORMATS)}")


def _readable_container(path: Path, fmt: str) -> None:
    """A .weights.h5 must open as HDF5, a .keras as a zip archive (both damaged when truncated)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if fmt == "keras":
        import zipfile

        if not zipfile.is_zipfile(path):
            raise WeightsError(f"{path}: not a readable .keras file (not a zip archive: truncated or another format)")
        return
    import h5py

    try:
        h5py.File(path, "r").close()
    except OSError as e:
        raise WeightsError(f"{path}: not a readable HDF5 file ({e})") from None


def _with_conventions(inferred: ResNetSpec, style: str) -> ResNetSpec:
    """The structure read off the weights, with one style's numeric conventions (stride
    placement, epsilon, momentum, pool padding); the conv bias stays as the weights have it."""
    from shared.spec import conventions

    fields = conventions(style, inferred.block)
    if fields is None:
        raise ValueError(f"style: {style!r} has no {inferred.block!r} ResNet (the checkpoint's block kind)")
    return inferred.replace(**{k: v for k, v in fields.items() if k != "conv_bias"})


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None


def _load_pth(path: Path) -> Mapping[str, object]:
    _require("pth", path)
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; all mean "unreadable"
        raise WeightsError(f"{path.name} is not a readable torch checkpoint "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path}: expected a state_dict (a mapping of names to tensors), got {type(state).__name__}")
    return state


# ----------------------------------------------------------------------------- writing

def write(spec: ResNetSpec, weights: Mapping[str, np.ndarray], path: str | os.PathLike,
          format: str | None = None) -> str:
    """Canonical weights -> ``path`` in ``format`` (default: by its type, see
    ``destination_format``); returns the format written. Validated before anything is written;
    written atomically."""
    from shared import interop, keras_h5, weights as W

    path = Path(path)
    fmt = destination_format(path, format)
    W.validate(spec, weights)
    _require(fmt, path)
    needs_name = {"keras-weights-h5": ".weights.h5", "keras": ".keras"}.get(fmt)
    if needs_name and not path.name.endswith(needs_name):
        raise ValueError(f"{path}: Keras writes a {fmt} file only under a name ending in {needs_name}")
    if fmt == "safetensors":
        W.save(weights, path, spec=spec)
    elif fmt == "torchvision-safetensors":
        from safetensors.numpy import save_file

        with atomic_path(path) as tmp:
            save_file(interop.to_torchvision(spec, weights), str(tmp))
    elif fmt == "pth":
        import torch

        with atomic_path(path) as tmp:
            torch.save({k: torch.from_numpy(v) for k, v in interop.to_torchvision(spec, weights).items()}, tmp)
    elif fmt == "keras-h5":
        keras_h5.to_keras_applications_h5(spec, weights, path)
    elif fmt in ("keras-weights-h5", "keras"):
        module = importlib.import_module("resnet_keras.checkpoints")
        writer = module.write_weights_h5 if fmt == "keras-weights-h5" else module.write_keras
        with atomic_path(path) as tmp:
            writer(spec, weights, tmp)
    elif fmt == "orbax":
        module = importlib.import_module("resnet_flax.checkpoints")
        with atomic_path(path) as tmp:
            module.write_orbax(spec, weights, tmp)
    return fmt
