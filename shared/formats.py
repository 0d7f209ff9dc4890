"""Every checkpoint format resnet-parity reads and writes, behind one dispatcher by file type.

``read(path) -> (spec, canonical weights)`` and ``write(spec, weights, path)`` for:

| format | file | read/write by |
| --- | --- | --- |
| ``safetensors`` | canonical ``.safetensors`` (spec in its metadata) | the core (numpy) |
| ``torchvision-safetensors`` | ``.safetensors`` with torchvision's state_dict keys | the core (numpy) |
| ``keras-h5`` | Keras Applications' legacy ``.h5`` | the core (h5py) |
| ``pth`` | torchvision state_dict, ``torch.save`` ``.pth``/``.pt`` | ``resnet_torch.checkpoints`` |
| ``keras-weights-h5`` | Keras 3 ``model.save_weights`` ``.weights.h5`` | ``resnet_keras.checkpoints`` |
| ``keras`` | Keras 3 ``model.save`` ``.keras`` | ``resnet_keras.checkpoints`` |
| ``orbax`` | a directory: Orbax checkpoint of ``nnx.state(model)`` | ``resnet_flax.checkpoints`` |

The core stays framework-free by any means: it imports no framework and no framework package.
A format that needs a framework is read by a function the caller hands in (``readers``:
format -> ``read(path, spec=None, style=None) -> (spec, weights)``; ``writers``: format ->
``write(spec, weights, path)``): each framework package passes its own native ones, and the
tools (``shared.tools.convert``) reach every format through the adapters. A format with no
reader says which package reads it (``FrameworkMissing``). Every write goes to a temporary name
beside the destination and is renamed into place only when it succeeded, so a failed conversion
leaves nothing new at the destination and never touches an existing file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from shared import interop
from shared.spec import ResNetSpec
from shared.weights import WeightsError, atomic_path

FORMATS = ("safetensors", "torchvision-safetensors", "pth", "keras-h5", "keras-weights-h5", "keras", "orbax")
# A framework's format -> (the package that reads and writes it, the pip extra that brings its framework)
OWNER = {"pth": ("resnet_torch", "torch"), "keras-weights-h5": ("resnet_keras", "keras"),
         "keras": ("resnet_keras", "keras"), "orbax": ("resnet_flax", "flax")}
# The suffixes a checkpoint file may have (a directory is an Orbax checkpoint)
SUFFIXES = (".safetensors", ".pth", ".pt", ".h5", ".hdf5", ".weights.h5", ".keras")


class FrameworkMissing(ImportError):
    """A format needs a framework's reader or writer that the caller did not hand in (or whose
    framework is not installed); the message names the package and the extra."""


def _handler(table, fmt: str, path: Path, verb: str):
    found = (table or {}).get(fmt)
    if found is None:
        package, extra = OWNER[fmt]
        raise FrameworkMissing(
            f"{path.name}: a {fmt} checkpoint is {verb} by {package} (pip install 'resnet-parity[{extra}]'); "
            f"load it with {package}, or convert it: resnet-parity convert SOURCE DEST.safetensors")
    return found


# ------------------------------------------------------------------------------ detection

def _is_torchvision_safetensors(path: Path) -> bool:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "np") as f:
            return interop.is_torch_state_dict(f.keys())
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

Readers = Mapping[str, Callable[..., "tuple[ResNetSpec, dict[str, np.ndarray]]"]]
Writers = Mapping[str, Callable[..., None]]


def read(path: str | os.PathLike, spec: ResNetSpec | None = None, style: str | None = None,
         format: str | None = None, readers: Readers | None = None) -> tuple[ResNetSpec, dict[str, np.ndarray]]:
    """Any supported checkpoint -> (spec, canonical weights).

    The spec comes from ``spec`` when given (a file that does not fit it is refused, naming the
    first layer or key and both shapes), else from the file: stored in it (canonical
    safetensors, our .h5), read off a ``.keras`` config, or read off the names and shapes, with
    ``style`` (default: biased convs mean Keras Applications, unbiased torchvision) for the
    conventions weights cannot show (stride placement, BatchNorm epsilon and momentum).
    ``readers``: the framework formats' readers (module docstring)."""
    from shared import keras_h5, weights as W

    path = Path(path)
    fmt = format or detect(path)
    if fmt == "safetensors":
        weights = W.load(path)  # a truncated or foreign file fails here, by name
        spec = spec or W.read_spec(path) or interop.spec_from_canonical(weights, style=style)
        W.validate(spec, weights, source=str(path))
        return spec, weights
    if fmt == "torchvision-safetensors":
        return from_torchvision_state(_load_safetensors(path), spec, style)
    if fmt == "keras-h5":
        return keras_h5.from_keras_applications(str(path), spec=spec)
    if fmt in OWNER:
        return _handler(readers, fmt, path, "read")(path, spec=spec, style=style)
    raise ValueError(f"format: unknown {fmt!r}; expected one of {', '.join(FORMATS)}")


def from_torchvision_state(state: Mapping[str, object], spec: ResNetSpec | None = None,
                           style: str | None = None) -> tuple[ResNetSpec, dict[str, np.ndarray]]:
    """A torchvision-keyed state_dict (numpy arrays or tensors) -> (spec, canonical weights): the
    one rule for torchvision keys, whichever file they came in (``.safetensors`` here, ``.pth``
    in ``resnet_torch.checkpoints``). ``style`` without ``spec``: the structure read off the keys
    with that style's numeric conventions (stride placement, epsilon, momentum, pool padding;
    the conv bias stays as the weights have it)."""
    from shared import interop
    from shared.spec import conventions

    if spec is None and style is not None:
        inferred = interop.spec_from_torchvision(state)
        fields = conventions(style, inferred.block)
        if fields is None:
            raise ValueError(f"style: {style!r} has no {inferred.block!r} ResNet (the checkpoint's block kind)")
        spec = inferred.replace(**{k: v for k, v in fields.items() if k != "conv_bias"})
    return interop.from_torchvision(state, spec=spec)


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None


# ----------------------------------------------------------------------------- writing

def write(spec: ResNetSpec, weights: Mapping[str, np.ndarray], path: str | os.PathLike,
          format: str | None = None, writers: Writers | None = None) -> str:
    """Canonical weights -> ``path`` in ``format`` (default: by its type, see
    ``destination_format``); returns the format written. Validated before anything is written;
    written atomically. ``writers``: the framework formats' writers (module docstring)."""
    from shared import keras_h5, weights as W

    path = Path(path)
    fmt = destination_format(path, format)
    W.validate(spec, weights)
    writer = _handler(writers, fmt, path, "written") if fmt in OWNER else None
    needs_name = {"keras-weights-h5": ".weights.h5", "keras": ".keras"}.get(fmt)
    if needs_name and not path.name.endswith(needs_name):
        raise ValueError(f"{path}: Keras writes a {fmt} file only under a name ending in {needs_name}")
    if fmt == "safetensors":
        W.save(weights, path, spec=spec)
    elif fmt == "torchvision-safetensors":
        from safetensors.numpy import save_file

        with atomic_path(path) as tmp:
            save_file(interop.to_torchvision(spec, weights), str(tmp))
    elif fmt == "keras-h5":
        keras_h5.to_keras_applications_h5(spec, weights, path)
    else:
        with atomic_path(path) as tmp:
            writer(spec, weights, tmp)
    return fmt
