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

keras-hub's ResNet (``ResNetBackbone``, ``ResNetImageClassifier``) saves Keras 3 ``.weights.h5``
files, keyed by object path (``layers/conv2d_3/vars/0``) with each layer's name stored beside its
variables; ``from_keras_hub`` reads them by those names (or, in a file without them, by position).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping

import numpy as np

from shared.spec import BatchNorm, Conv, Dense, MaxPool, ResNetSpec
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
    """Whether this kind of ResNet gets a ZeroPadding2D before every padded layer: Keras
    Applications' V2 (``residual_block_v2``'s ``_2_pad`` at every stride; its biased convs,
    ``preact_bias``) does; V1 and keras-hub's V2 (timm's conventions) write 'same' where that
    pads the same pixels."""
    return spec.block == "preact" and spec.preact_bias


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


def _graph(spec: ResNetSpec, explicit: bool) -> tuple[dict[str, tuple[str, ...]], str]:
    """The Keras functional graph ``resnet_keras.build(spec)`` makes, as layer name -> the names
    of its inputs in call order (a padded conv or pool is a ZeroPadding2D then the layer; an
    ``Add`` takes [shortcut, main], a ``Multiply`` [main, gate]), and the output layer's name."""
    graph: dict[str, tuple[str, ...]] = {INPUT_LAYER: ()}

    def chain(layers, x):
        for layer in layers:
            if isinstance(layer, (Conv, MaxPool)) and keras_padding(layer, explicit) == "pad":
                graph[pad_name(layer)], x = (x,), pad_name(layer)
            graph[layer.name], x = (x,), layer.name
        return x

    def join(layer, *inputs):
        graph[layer.name] = inputs
        return layer.name

    x = chain(spec.stem(), INPUT_LAYER)
    for block in spec.blocks():
        x = block.walk(x, chain, lambda layer, main, shortcut: join(layer, shortcut, main), join)
    return graph, chain(spec.head(), x)


def _keras_order(graph: dict[str, tuple[str, ...]], output: str) -> list[str]:
    """The order ``model.layers`` lists a functional graph's layers in (keras/src/ops/function.py,
    ``map_graph``): by decreasing depth (the longest path to the output), ties in the order a
    depth-first walk from the output first meets them, each layer's inputs in call order."""
    seen: dict[str, int] = {}
    finished: list[str] = []  # inputs first
    stack = [(output, iter(graph[output]))]
    seen[output] = 0
    while stack:
        name, inputs = stack[-1]
        parent = next(inputs, None)
        if parent is None:
            finished.append(stack.pop()[0])
        elif parent not in seen:
            seen[parent] = len(seen)
            stack.append((parent, iter(graph[parent])))
    depth: dict[str, int] = {}
    for name in reversed(finished):
        d = depth.setdefault(name, 0)
        for parent in graph[name]:
            depth[parent] = max(d + 1, depth.get(parent, 0))
    return sorted(finished, key=lambda name: (-depth[name], seen[name]))


def keras_layer_names(spec: ResNetSpec, explicit: bool | None = None) -> list[str]:
    """Every layer name in the order ``model.layers`` lists them for ``resnet_keras.build(spec)``
    (and, for the keras style, ``keras.applications.ResNet50/101/152`` and ResNet50V2/101V2/152V2,
    whose shortcut max pools Keras names itself, ``max_pooling2d_N``, where the spec says
    ``{block}_0_pool``), input layer first. ``explicit``: another padding rule than the spec's
    own (``keras_explicit_padding``)."""
    return _keras_order(*_graph(spec, keras_explicit_padding(spec) if explicit is None else explicit))


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


# ----------------------------------------------------------------------------- keras-hub

_HUB_BACKBONE = "res_net_backbone"  # where ResNetImageClassifier's file keeps its ResNetBackbone
_HUB_STEM = re.compile(r"conv(\d+)_(conv|bn)$")
_HUB_BLOCK = re.compile(r"stack(\d+)_block(\d+)_(.+)$")
_NUMBERED = re.compile(r"^(.*?)(?:_(\d+))?$")
# Keras' variables of each layer class, in the order it saves them (vars/0, vars/1, ...)
_HUB_VARIABLES = {"conv2d": ("kernel", "bias"), "dense": ("kernel", "bias"),
                  "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance")}
_KIND = {"conv2d": Conv, "batch_normalization": BatchNorm, "dense": Dense}


def _hub_groups(layers) -> list[tuple[str, int, str | None, list[np.ndarray]]]:
    """(class in snake case, its number, the layer name Keras stored or None, the arrays) of each
    group under a Keras 3 file's ``layers``, by class then number (``model.layers`` order)."""
    out = []
    for key, group in layers.items():
        base, number = _NUMBERED.match(key).groups()
        variables = group.get("vars")
        name = None if variables is None else variables.attrs.get("name")
        arrays = [] if variables is None else [np.asarray(variables[k][()]) for k in sorted(variables, key=int)]
        out.append((base, int(number or 0), name.decode() if isinstance(name, bytes) else name, arrays))
    return sorted(out, key=lambda g: g[:2])


def is_keras_hub(f) -> bool:
    """Whether an open Keras 3 ``.weights.h5`` holds keras-hub's ResNet: a classifier's nested
    ``ResNetBackbone``, or the layer names keras-hub gives (``stack0_block0_1_conv``)."""
    layers = f.get("layers")
    if layers is None:
        return False
    return _HUB_BACKBONE in layers or any(_HUB_BLOCK.match(g[2] or "") for g in _hub_groups(layers))


def keras_hub_layer_name(name: str, stem_convs: int, avg_down: bool) -> str:
    """keras-hub's layer name -> the spec's: its stem ``conv{i}_conv``/``conv{i}_bn`` (the last BN
    is ``conv1_bn``), ``stack{s}_block{b}_*`` (0-based) is ``conv{s+2}_block{b+1}_*``, its
    ``_pre_activation_bn`` our ``_preact_bn``, a vd block's ``_0_conv``/``_0_bn`` (after the
    average pool) our ``_down_conv``/``_down_bn``; ``post_bn`` and ``predictions`` as ours."""
    stem = _HUB_STEM.match(name)
    if stem:
        i, kind = int(stem[1]), stem[2]
        last = kind == "bn" and i == stem_convs
        return f"conv1_{kind}" if stem_convs == 1 or last else f"conv1_{i}_{kind}"
    block = _HUB_BLOCK.match(name)
    if block:
        rest = {"pre_activation_bn": "preact_bn"}.get(block[3], block[3])
        if avg_down and rest in ("0_conv", "0_bn"):
            rest = "down_" + rest[2:]
        return f"conv{int(block[1]) + 2}_block{int(block[2]) + 1}_{rest}"
    return name


def _hub_by_structure(spec: ResNetSpec, groups, source: str) -> dict[str, dict[str, np.ndarray]]:
    """Arrays of a file without stored names, by position: Keras numbers the layers of each class
    in ``model.layers`` order, which keras-hub's graph shares with ``resnet_keras.build(spec)``
    where padding is written as V1 writes it (keras-hub's V2 too)."""
    layers = {layer.name: layer for layer in spec.layers()}
    order = [layers[n] for n in keras_layer_names(spec, explicit=False) if n in layers]
    arrays = {}
    for base, kind in (("conv2d", Conv), ("batch_normalization", BatchNorm)):  # the classifier's Dense: apart
        ours = [layer for layer in order if isinstance(layer, kind)]
        theirs = [g for g in groups if g[0] == base]
        if len(ours) != len(theirs):
            raise WeightsError(f"{source}: {len(theirs)} {base} layers, the {spec.style} spec {spec.depths} has "
                               f"{len(ours)} (a file without layer names is read by position: pass its spec)")
        for layer, (_, _, _, values) in zip(ours, theirs):
            arrays[layer.name] = dict(zip(_HUB_VARIABLES[base], values))
    return arrays


def from_keras_hub(path: str | os.PathLike, spec: ResNetSpec | None = None, style: str | None = None,
                   ) -> tuple[ResNetSpec, dict[str, np.ndarray]]:
    """keras-hub's ``ResNetBackbone`` or ``ResNetImageClassifier`` ``.weights.h5`` (its
    ``save_weights``) -> (spec, canonical weights), with h5py alone. Keras stores each layer's
    name beside its variables: the names are renamed (``keras_hub_layer_name``); a file without
    them is read by position against ``spec``. Without ``spec`` the structure is read off the
    renamed arrays by ``shared.interop.spec_from_canonical`` with ``style`` (default "timm":
    keras-hub's BatchNorm conventions are timm's), the head off the classifier's layers."""
    from shared.interop import spec_from_canonical

    path, source = Path(path), str(path)
    with open_h5(path) as f:
        if not is_keras_hub(f):
            raise WeightsError(f"{path}: not a keras-hub ResNet .weights.h5 (no {_HUB_BACKBONE} group, "
                               "no stack{i}_block{j}_* layer names)")
        classifier = _HUB_BACKBONE in f["layers"]
        backbone = _hub_groups(f[f"layers/{_HUB_BACKBONE}/layers"] if classifier else f["layers"])
        head = _hub_groups(f["layers"]) if classifier else []
    dense = [g for g in head if g[0] == "dense"]
    if classifier and len(dense) != 1:
        raise WeightsError(f"{path}: expected one Dense classifier beside the backbone, found {len(dense)}")
    pooling = next((mode for base, _, _, _ in head for mode, cls in (("avg", "global_average_pooling2d"),
                    ("max", "global_max_pooling2d")) if base == cls), None)
    weighted = [g for g in backbone if g[0] in _KIND]
    if all(name is not None for _, _, name, _ in weighted):
        stem_convs = sum(bool(_HUB_STEM.match(name) and name.endswith("_conv")) for _, _, name, _ in weighted)
        avg_down = spec.shortcut == "avg_down" if spec else any(g[0] == "average_pooling2d" for g in backbone)
        arrays = {keras_hub_layer_name(name, stem_convs, avg_down): dict(zip(_HUB_VARIABLES[base], values))
                  for base, _, name, values in weighted}
    elif spec is None:
        raise WeightsError(f"{path}: Keras stored no layer names in this file; pass the spec it was saved from")
    else:
        arrays = _hub_by_structure(spec, weighted, source)
    if dense:
        arrays["predictions"] = dict(zip(_HUB_VARIABLES["dense"], dense[0][3]))
    if spec is None:
        shapes = {f"{layer}.{_CANONICAL_PARAM[v]}": np.broadcast_to(np.float32(0), a.shape)
                  for layer, variables in arrays.items() for v, a in variables.items()}
        spec = spec_from_canonical(shapes, style=style or "timm", source=source)
        spec = spec.replace(pooling=pooling) if classifier else spec.replace(include_top=False, pooling=None)
    return spec, canonical_from_keras_layers(spec, arrays, source)
