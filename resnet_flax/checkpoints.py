"""Orbax checkpoints of ``nnx.state(model)`` <-> canonical weights, for resnet_flax models.

What a Flax user writes (the Flax NNX checkpointing guide)::

    ocp.StandardCheckpointer().save(path, nnx.state(model))   # a directory

The tree is ``{layer: {native param: {"value": array}}}`` (``nnx.to_pure_dict`` drops the
``value`` level; both are read). Reading takes the tree's shapes from the checkpoint's metadata,
reads the spec off them (as for any weights-only file: ``style`` for stride placement, epsilon
and momentum; default: biased convs mean Keras Applications, unbiased torchvision), checks every
array against the tree that spec's model has (an error names the first key that does not fit,
with both shapes, before any array is read), restores that tree with Orbax and renames it to
canonical weights. Writing saves the very tree ``nnx.state`` of a loaded model holds (same
keys, the ``value`` level, jax arrays: the same checkpoint metadata, which a test restores into
a model's state as the guide does). Both work on trees named by ``NATIVE_PARAM``, never on a
model, so this module needs neither ``resnet_flax.model`` nor ``resnet_flax.weights`` (whose
``load_weights`` reads these files through ``READERS``).

``READERS``/``WRITERS`` are what this package hands the core's dispatcher (``shared.formats``), so
``load_weights`` and the constructors read these files; ``read_checkpoint`` reads any checkpoint
``resnet_flax`` takes (the core's formats, these, or a ``shared.hub`` name). The tools reach them
through their adapter (``resnet-parity convert``, ``check --weights``).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from shared import checkpoint
from shared.spec import ResNetSpec
from shared.weights import DTYPE, WeightsError, validate
from resnet_flax.layers import NATIVE_PARAM


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def _check_parts(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such Orbax checkpoint directory")
    if not path.is_dir():
        raise WeightsError(f"{path}: an Orbax checkpoint is a directory, this is a file")
    if not (path / "_METADATA").is_file():
        hint = ""
        items = [p.name for p in path.iterdir() if p.is_dir() and (p / "_METADATA").is_file()]
        if items:
            hint = f" (it holds the checkpoint item(s) {sorted(items)}: pass one of those)"
        raise WeightsError(f"{path}: not a complete Orbax checkpoint: its _METADATA file (the tree of "
                           f"arrays) is missing{hint}")
    if not (path / "manifest.ocdbt").is_file() and not any(path.glob("ocdbt.process_*")):
        raise WeightsError(f"{path}: not a complete Orbax checkpoint: its array store (manifest.ocdbt, "
                           "ocdbt.process_*/) is missing")


def _shapes(path: Path) -> tuple[dict[str, tuple[int, ...]], bool]:
    """(native key ``layer/param`` -> shape, whether leaves sit under a ``value`` level)."""
    try:
        with _checkpointer() as checkpointer:
            meta = checkpointer.metadata(path)
        meta = meta.item_metadata if hasattr(meta, "item_metadata") else meta
        if meta is None:
            raise WeightsError(f"{path}: not a complete Orbax checkpoint: Orbax finds no tree of arrays in it "
                               "(its _METADATA or the array index beside it is damaged or missing)")
        tree = meta.tree
    except WeightsError:
        raise
    except Exception as e:
        raise WeightsError(f"{path}: Orbax could not read the checkpoint's metadata "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    shapes, wrapped = {}, False
    if not isinstance(tree, dict):
        raise WeightsError(f"{path}: expected the tree of nnx.state(model), got {type(tree).__name__}")
    for layer, params in tree.items():
        if not isinstance(params, dict):
            raise WeightsError(f"{path}: entry {layer!r} is not a layer of parameters (got {type(params).__name__})")
        for param, leaf in params.items():
            if isinstance(leaf, dict) and set(leaf) == {"value"}:
                leaf, wrapped = leaf["value"], True
            shape = getattr(leaf, "shape", None)
            if shape is None:
                raise WeightsError(f"{path}: {layer}/{param} is not an array")
            shapes[f"{layer}/{param}"] = tuple(shape)
    return shapes, wrapped


def _native_keys(spec: ResNetSpec) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Native ``layer/attr`` -> (canonical key, shape), in the spec's order."""
    out = {}
    for layer in spec.layers():
        for param, shape in layer.params.items():
            out[f"{layer.name}/{NATIVE_PARAM[layer.kind][param]}"] = (f"{layer.name}.{param}", shape)
    return out


def _canonical_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Native shapes -> canonical keys (zero-size stand-ins, for ``spec_from_canonical``)."""
    bn_layers = {k.split("/")[0] for k in shapes if k.endswith("/scale")}
    back = {kind: {v: k for k, v in names.items()} for kind, names in NATIVE_PARAM.items()}
    out = {}
    for key, shape in shapes.items():
        layer, attr = key.split("/")
        param = back["bn" if layer in bn_layers else "conv"].get(attr, attr)
        out[f"{layer}.{param}"] = np.broadcast_to(np.float32(0), shape)
    return out


def spec_from_orbax(path: str | os.PathLike, style: str | None = None) -> ResNetSpec:
    """The spec of an Orbax checkpoint of a resnet_flax model, read off its shapes."""
    from shared.interop import spec_from_canonical

    path = Path(path)
    _check_parts(path)
    shapes, _ = _shapes(path)
    try:
        return spec_from_canonical(_canonical_shapes(shapes), style=style)
    except KeyError as e:
        raise WeightsError(f"{path}: no {e} in the checkpoint: not a resnet_flax model's state") from None


def read_orbax(path: str | os.PathLike, spec: ResNetSpec | None = None,
               style: str | None = None) -> tuple[ResNetSpec, dict[str, np.ndarray]]:
    """An Orbax checkpoint directory of ``nnx.state(model)`` -> (spec, canonical weights)."""
    path = Path(path).absolute()
    _check_parts(path)
    shapes, wrapped = _shapes(path)
    spec = spec or spec_from_orbax(path, style)
    expected = _native_keys(spec)
    problems = []
    for key, (canonical, shape) in expected.items():
        if key not in shapes:
            problems.append(f"{key} (for {canonical}): missing in the checkpoint (expected shape {shape})")
        elif shapes[key] != shape:
            problems.append(f"{key} (for {canonical}): expected shape {shape}, the checkpoint has {shapes[key]}")
    problems += [f"{key}: in the checkpoint, but not in the model" for key in shapes if key not in expected]
    if problems:
        raise WeightsError(f"{path}: does not fit {spec.style} spec {spec.depths}, {spec.num_classes} classes: "
                           f"{problems[0]}" + (f" (and {len(problems) - 1} more:\n  " + "\n  ".join(problems[1:]) + ")" if len(problems) > 1 else ""))
    target = _tree(spec, lambda key, shape: jax.ShapeDtypeStruct(shape, DTYPE), wrapped)
    try:
        with _checkpointer() as checkpointer:
            restored = checkpointer.restore(path, target)
    except Exception as e:
        raise WeightsError(f"{path}: Orbax could not restore the arrays, the checkpoint is damaged or incomplete "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    weights = {}
    for native, (key, _) in expected.items():
        layer, attr = native.split("/")
        leaf = restored[layer][attr]
        weights[key] = np.array(leaf["value"] if wrapped else leaf, dtype=DTYPE)
    return spec, weights


def _tree(spec: ResNetSpec, leaf, wrapped: bool = True) -> dict:
    """``{layer: {native param: {"value": leaf(key, shape)}}}``: the tree of ``nnx.state`` of a
    resnet_flax model (``wrapped=False``: of ``nnx.to_pure_dict``, no ``value`` level)."""
    tree: dict = {}
    for native, (key, shape) in _native_keys(spec).items():
        layer, attr = native.split("/")
        value = leaf(key, shape)
        tree.setdefault(layer, {})[attr] = {"value": value} if wrapped else value
    return tree


def write_orbax(spec: ResNetSpec, weights, path: str | os.PathLike) -> None:
    """Canonical weights -> ``StandardCheckpointer().save(path, nnx.state(model))`` of a
    resnet_flax model: what a Flax user restores with ``nnx.state`` of ``resnet_flax.build(spec)``."""
    validate(spec, weights)
    tree = _tree(spec, lambda key, shape: jnp.asarray(np.array(weights[key], dtype=DTYPE)))
    with _checkpointer() as checkpointer:
        checkpointer.save(Path(path).absolute(), tree)
        checkpointer.wait_until_finished()


READERS = {"orbax": read_orbax}
WRITERS = {"orbax": write_orbax}


def read_checkpoint(source: str | os.PathLike, spec: ResNetSpec | None = None,
                    style: str | None = None) -> tuple[ResNetSpec, dict[str, np.ndarray]]:
    """(spec, canonical weights) of a checkpoint file or ``shared.hub`` name, in any format this
    package reads (``shared.checkpoint.read`` with this package's ``READERS``); with ``spec`` a
    file that does not fit it is refused, naming the key."""
    return checkpoint.read(source, spec=spec, style=style, readers=READERS)
