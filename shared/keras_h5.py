"""Keras Applications' weight files <-> canonical weights, with h5py alone (no Keras import).

So a PyTorch or Flax user can read ``resnet50_weights_tf_dim_ordering_tf_kernels.h5`` or
``resnet50v2_weights_tf_dim_ordering_tf_kernels.h5`` (with or without top) and anyone can write a
file that ``keras.applications.ResNet50(...)`` or ``ResNet50V2(...)``'s ``load_weights`` takes
unchanged. The layout is Keras' legacy HDF5 one: a root attribute ``layer_names`` listing
every layer in ``model.layers`` order, and per layer a group whose attribute ``weight_names``
lists its datasets (``conv1_conv/kernel:0``) in the order Keras loads them: kernel, bias; gamma,
beta, moving_mean, moving_variance. A full-model file (``model.save("x.h5")``) holds the same
under ``model_weights``. Keras loads such a file by position, not by name, so the writer lists
layers in exactly the order a Keras functional model lists them (``keras_layer_names``).
Kernels are HWIO / (in, out) in Keras as in the canonical format: nothing is transposed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from shared.spec import Block, Conv, MaxPool, ResNetSpec
from shared.weights import DTYPE, WeightsError, atomic_path, validate

# canonical param -> Keras variable name
KERAS_PARAM = {"kernel": "kernel", "bias": "bias", "gamma": "gamma", "beta": "beta",
               "mean": "moving_mean", "var": "moving_variance"}
_CANONICAL_PARAM = {v: k for k, v in KERAS_PARAM.items()}
INPUT_LAYER = "input_layer"
SPEC_ATTR = "resnet_parity_spec"  # our addition to the root attributes; Keras ignores it
_HDF5_OBJECT_HEADER_LIMIT = 64512  # bytes per attribute (Keras splits longer lists in chunks)
_STAGE = re.compile(r"conv(\d+)_block(\d+)_")


# ----------------------------------------------------------------------------- layer order

def keras_explicit_padding(spec: ResNetSpec) -> bool:
    """Whether Keras Applications writes a ZeroPadding2D before every padded layer of this kind
    of ResNet: V2 (``residual_block_v2``'s ``_2_pad`` at every stride) does, V1 writes 'same'
    where that pads the same pixels."""
    return spec.block == "preact"


def keras_padding(layer: Conv | MaxPool, explicit: bool = False) -> str:
    """How Keras expresses a layer's explicit padding: ``"valid"`` (none), ``"same"`` (stride 1,
    odd kernel, symmetric (k-1)/2: the same pixels; not with ``explicit``), or ``"pad"`` (a
    ZeroPadding2D then valid). Never 'same' on a strided layer: TF and XLA put the odd pixel at
    the bottom/right there."""
    k = layer.kernel_size if isinstance(layer, Conv) else layer.size
    if not any(layer.padding):
        return "valid"
    if not explicit and layer.stride == 1 and k % 2 == 1 and layer.padding == ((k - 1) // 2,) * 4:
        return "same"
    return "pad"


def pad_name(layer: Conv | MaxPool) -> str:
    """``conv1_conv`` -> ``conv1_pad``, ``pool1_pool`` -> ``pool1_pad`` (Keras Applications' names)."""
    return layer.name.rsplit("_", 1)[0] + "_pad"


def _expanded(layers: Iterable, explicit: bool) -> list[str]:
    names = []
    for layer in layers:
        if isinstance(layer, (Conv, MaxPool)) and keras_padding(layer, explicit) == "pad":
            names.append(pad_name(layer))
        names.append(layer.name)
    return names


def _block_order(block: Block, explicit: bool) -> list[str]:
    # A Keras functional model lists layers by decreasing depth (the longest path to the
    # output), ties in the order a depth-first walk from the output meets them; the block's Add
    # takes [shortcut, main], so the shortcut branch wins ties: ... 2_relu, 0_conv, 3_conv, 0_bn,
    # 3_bn (V1); ... 2_relu, 0_conv or the shortcut's pool, 3_conv (V2). The pre-activation
    # feeds both branches (or the main one only): it lies deeper than either.
    pre, main, shortcut = (_expanded(part, explicit) for part in (block.pre, block.main, block.shortcut))
    ranked = [(len(shortcut) - i, 0, n) for i, n in enumerate(shortcut)]
    ranked += [(len(main) - i, 1, n) for i, n in enumerate(main)]
    below = max(len(main), len(shortcut) if block.shortcut_from == "pre" else 0)
    ranked += [(below + len(pre) - i, 2, n) for i, n in enumerate(pre)]
    ordered = [n for _, _, n in sorted(ranked, key=lambda r: (-r[0], r[1]))]
    return ordered + [block.add.name, *_expanded(block.out, explicit)]


def keras_layer_names(spec: ResNetSpec) -> list[str]:
    """Every layer name in the order ``model.layers`` lists them for ``resnet_keras.build(spec)``
    (and, for the keras style, ``keras.applications.ResNet50/101/152`` and ResNet50V2/101V2/152V2,
    whose shortcut max pools Keras names itself, ``max_pooling2d_N``, where the spec says
    ``{block}_0_pool``), input layer first."""
    explicit = keras_explicit_padding(spec)
    names = [INPUT_LAYER, *_expanded(spec.stem(), explicit)]
    for block in spec.blocks():
        names += _block_order(block, explicit)
    return names + _expanded(spec.head(), explicit)


def _weighted_layers(spec: ResNetSpec) -> dict:
    return {layer.name: layer for layer in spec.layers() if layer.params}


# ----------------------------------------------------------------------------- writing

def _string_attr(group, name: str, values: list[str]) -> None:
    """Keras' ``save_attributes_to_hdf5_group``: a bytes array, split into ``name0``, ``name1``...
    when it would pass HDF5's object-header limit."""
    data = np.asarray([v.encode("utf8") for v in values])
    chunks = 1
    while any(c.nbytes > _HDF5_OBJECT_HEADER_LIMIT for c in np.array_split(data, chunks)):
        chunks += 1
    if chunks == 1:
        group.attrs[name] = data
    else:
        for i, chunk in enumerate(np.array_split(data, chunks)):
            group.attrs[f"{name}{i}"] = chunk


def _write_layer(f, name: str, layer, weights: Mapping[str, np.ndarray]) -> None:
    group = f.create_group(name)
    params = list(layer.params) if layer is not None else []
    weight_names = [f"{name}/{KERAS_PARAM[p]}:0" for p in params]
    _string_attr(group, "weight_names", weight_names)
    for param, weight_name in zip(params, weight_names):
        group.create_dataset(weight_name, data=weights[f"{name}.{param}"])


def to_keras_applications_h5(spec: ResNetSpec, weights: Mapping[str, np.ndarray],
                             path: str | os.PathLike) -> None:
    """Write canonical weights as a Keras Applications legacy HDF5 weights file, which
    ``model.load_weights(path)`` of ``keras.applications.ResNet50/101/152`` and
    ``ResNet50V2/101V2/152V2`` (keras style, same top) and of ``resnet_keras.build(spec)`` load
    unchanged. The spec travels in the root
    attribute ``resnet_parity_spec``, so any spec reads back exactly. Written to a temporary
    file beside ``path`` and renamed: a failed write leaves no file and never touches ``path``."""
    import h5py

    validate(spec, weights)
    path = Path(path)
    layers = _weighted_layers(spec)
    names = keras_layer_names(spec)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        _string_attr(f, "layer_names", names)
        f.attrs[SPEC_ATTR] = json.dumps(spec.to_dict())
        for name in sorted(names):  # as Keras: groups in name order
            _write_layer(f, name, layers.get(name), weights)


# ----------------------------------------------------------------------------- reading

def _string_list(attrs, name: str) -> list[str]:
    if name in attrs:
        values = list(attrs[name])
    else:
        values, i = [], 0
        while f"{name}{i}" in attrs:
            values += list(attrs[f"{name}{i}"])
            i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _param(weight_name: str) -> str:
    """``conv1_conv/kernel:0`` (Keras 2) or ``conv1_conv/kernel`` (Keras 3) -> ``kernel``."""
    return weight_name.rsplit("/", 1)[-1].split(":", 1)[0]


def open_h5(path: Path):
    """``h5py.File(path, "r")``, or an error naming the file: missing, or not HDF5."""
    import h5py

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise WeightsError(f"{path}: not a readable HDF5 file ({e})") from None


def _read_h5(path: Path) -> tuple[list[str], dict[str, dict[str, np.ndarray]], ResNetSpec | None]:
    with open_h5(path) as f:
        root = f
        if "layer_names" not in f.attrs and "layer_names0" not in f.attrs and "model_weights" in f:
            root = f["model_weights"]  # a full-model file: model.save("x.h5")
        layer_names = _string_list(root.attrs, "layer_names")
        if not layer_names:
            hint = " (a Keras 3 .weights.h5 file? save with model.save('x.h5') instead)" if "layers" in f else ""
            raise WeightsError(f"{path}: not a Keras legacy HDF5 weights file: no 'layer_names' "
                               f"attribute at the root or under 'model_weights'{hint}")
        arrays: dict[str, dict[str, np.ndarray]] = {}
        for name in layer_names:
            if name not in root:
                raise WeightsError(f"{path}: layer {name} is listed in layer_names but has no group")
            group = root[name]
            values = {}
            for weight_name in _string_list(group.attrs, "weight_names"):
                if weight_name not in group:
                    raise WeightsError(f"{path}: layer {name}: dataset {weight_name} listed in weight_names is missing")
                values[_param(weight_name)] = np.asarray(group[weight_name][()])
            if values:
                arrays[name] = values
        stored = f.attrs.get(SPEC_ATTR, root.attrs.get(SPEC_ATTR))
    spec = None
    if stored is not None:
        try:
            spec = ResNetSpec.from_dict(json.loads(stored.decode("utf8") if isinstance(stored, bytes) else stored))
        except (TypeError, ValueError, KeyError) as e:
            raise WeightsError(f"{path}: attribute {SPEC_ATTR} is not a valid ResNetSpec ({e})") from None
    return layer_names, arrays, spec


def _read_model(model) -> tuple[list[str], dict[str, dict[str, np.ndarray]]]:
    """A live ``keras.Model``'s weights by layer name, in Keras' legacy (file) order."""
    arrays = {}
    for layer in model.layers:
        variables = list(layer.trainable_weights) + list(layer.non_trainable_weights)
        if variables:
            arrays[layer.name] = {
                _param(str(getattr(v, "path", v.name))): np.asarray(v.numpy()) for v in variables
            }
    return [layer.name for layer in model.layers], arrays


def _kernel(arrays, name: str, source: str, why: str = "") -> np.ndarray:
    kernel = arrays.get(name, {}).get("kernel")
    if kernel is None:
        raise WeightsError(f"{source}: no layer {name} with a kernel{why}")
    return kernel


def spec_from_keras_layers(layer_names: list[str], arrays: Mapping[str, Mapping[str, np.ndarray]],
                           source: str = "Keras model") -> ResNetSpec:
    """The structure read off Keras layers (whose names are the canonical layer names) by the one
    inference, ``shared.interop.spec_from_canonical``, with Keras Applications' conventions for
    the block kind (v1: stride on the 1x1 conv; V2 its own); the pooling of a model without a
    top from the layers present."""
    from shared.interop import spec_from_canonical

    _kernel(arrays, "conv1_conv", source, " (is this a Keras Applications ResNet?)")
    stages = sorted({int(m[1]) for m in map(_STAGE.match, arrays) if m})
    if not stages:
        raise WeightsError(f"{source}: no conv{{stage}}_block{{n}}_* layers found")
    if stages != list(range(2, 2 + len(stages))):
        found = [f"conv{s}" for s in stages]
        raise WeightsError(f"{source}: stages must be conv2, conv3, ... without gaps, got {found}")
    by_native = {native: param for param, native in KERAS_PARAM.items()}
    canonical = {f"{layer}.{by_native.get(name, name)}": value
                 for layer, variables in arrays.items() for name, value in variables.items()}
    spec = spec_from_canonical(canonical, style="keras", source=source,
                               named=lambda key: f"layer {key.split('.')[0]}")
    if spec.include_top:
        pooling = "max" if "max_pool" in layer_names else "avg"
    else:
        pooling = "avg" if "avg_pool" in layer_names else "max" if "max_pool" in layer_names else None
    return spec.replace(pooling=pooling)


def canonical_from_keras_layers(spec: ResNetSpec, arrays: Mapping[str, Mapping[str, np.ndarray]],
                                source: str = "Keras model") -> dict[str, np.ndarray]:
    """Keras layer -> {variable: array} to canonical weights; WeightsError names every missing
    or unexpected layer and variable, and (via ``validate``) every shape that differs."""
    layers = _weighted_layers(spec)
    problems = [f"layer {name}: unexpected (not in the spec)" for name in arrays if name not in layers]
    weights = {}
    for name, layer in layers.items():
        found = arrays.get(name)
        if found is None:
            problems.append(f"layer {name}: missing (expected {', '.join(KERAS_PARAM[p] for p in layer.params)})")
            continue
        for param in layer.params:
            if KERAS_PARAM[param] not in found:
                problems.append(f"layer {name}: missing weight {KERAS_PARAM[param]} (for {name}.{param})")
            else:
                weights[f"{name}.{param}"] = np.ascontiguousarray(found[KERAS_PARAM[param]], dtype=DTYPE)
        extra = set(found) - {KERAS_PARAM[p] for p in layer.params}
        if extra:
            problems.append(f"layer {name}: unexpected weight(s) {sorted(extra)}")
    if problems:
        raise WeightsError(f"{source}: {len(problems)} problem(s) against the spec:\n  " + "\n  ".join(problems))
    validate(spec, weights, source=source)
    return weights


def from_keras_applications(model_or_h5_path, spec: ResNetSpec | None = None,
                            ) -> tuple[ResNetSpec, dict[str, np.ndarray]]:
    """A Keras Applications ResNet50/101/152 or ResNet50V2/101V2/152V2 (a legacy ``.h5`` weights
    or full-model file, or a live ``keras.Model``), or any model ``resnet_keras`` builds ->
    (spec, canonical weights). The structure is read off the file (``spec_from_keras_layers``);
    pass ``spec`` to impose one (e.g. a torchvision-style spec)."""
    if isinstance(model_or_h5_path, (str, os.PathLike)):
        path = Path(model_or_h5_path)
        layer_names, arrays, stored = _read_h5(path)
        source = str(path)
    elif hasattr(model_or_h5_path, "layers") and hasattr(model_or_h5_path, "get_layer"):
        layer_names, arrays = _read_model(model_or_h5_path)
        stored, source = getattr(model_or_h5_path, "spec", None), f"keras model {model_or_h5_path.name!r}"
    else:
        raise TypeError("from_keras_applications: expected a .h5 path or a keras.Model, "
                        f"got {type(model_or_h5_path).__name__}")
    spec = spec or stored or spec_from_keras_layers(layer_names, arrays, source)
    return spec, canonical_from_keras_layers(spec, arrays, source)
