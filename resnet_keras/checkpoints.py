"""Keras 3's own checkpoint files <-> canonical weights: ``model.save_weights("x.weights.h5")``
and ``model.save("x.keras")``, of resnet_keras models and of keras.applications ResNets.

Keras 3 keys a ``.weights.h5`` file by object path, not by layer name: the n-th
BatchNormalization of ``model.layers`` is ``layers/batch_normalization_n/vars/{0..3}``. keras-hub's
``ResNetBackbone``/``ResNetImageClassifier`` files (``save_weights``) are read by h5py alone,
``shared.keras_h5.from_keras_hub``. Any other file is read by building the model it belongs to (``resnet_keras.build(spec)``, whose layers are, in
keras style, keras.applications' layer for layer), checking every path's shape against that
model (an error names the first layer that does not fit, with both shapes), loading it with
Keras and exporting canonical weights. Without a spec, the file's arrays are named canonically
by their structure (Keras numbers layers per class, not by name) and the spec is read off them by
the one inference, ``shared.interop.spec_from_canonical``: conventions the shapes cannot show
(stride placement, epsilon, momentum) come from ``style`` (V2: Keras'), as for any
weights-only file. A ``.keras`` file carries its config:
Keras rebuilds the model and every convention is read off its layers.

``READERS``/``WRITERS`` are what this package hands the core's dispatcher (``shared.formats``), so
``load_weights`` and the constructors read these files; ``read_checkpoint`` reads any checkpoint
``resnet_keras`` takes (the core's formats, these, or a ``shared.hub`` name). The tools reach them
through their adapter (``resnet-parity convert``, ``check --weights``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import h5py
import keras
import numpy as np

from shared import checkpoint, keras_h5
from shared.interop import spec_from_canonical
from shared.spec import STYLES, ResNetSpec, conventions
from shared.weights import WeightsError, validate
from resnet_keras.model import build, variables

_AUTO = re.compile(r"^(.*?)(?:_(\d+))?$")


def _snake(name: str) -> str:
    """Keras' ``naming.to_snake_case``: ``BatchNormalization`` -> ``batch_normalization``."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def object_paths(model: keras.Model) -> dict[str, str]:
    """Layer name -> the path Keras 3 saves its variables under (``layers/conv2d_3``): the class
    name in snake case, numbered per class in ``model.layers`` order (saving_lib's rule)."""
    used: dict[str, int] = {}
    paths = {}
    for layer in model.layers:
        base = _snake(type(layer).__name__)
        if base in used:
            used[base] += 1
            paths[layer.name] = f"layers/{base}_{used[base]}"
        else:
            used[base] = 0
            paths[layer.name] = f"layers/{base}"
    return paths


# ----------------------------------------------------------------------------- .weights.h5

def _open_h5(path: Path) -> h5py.File:
    f = keras_h5.open_h5(path)
    if "layers" not in f:
        f.close()
        raise WeightsError(f"{path}: not a Keras 3 .weights.h5 file (no 'layers' group at the root)")
    return f


def _by_class(f: h5py.File) -> dict[str, list[list[tuple[int, ...]]]]:
    """Class (snake case) -> per layer, in model.layers order, the shapes of its vars."""
    found: dict[str, dict[int, list]] = {}
    for key, group in f["layers"].items():
        base, index = _AUTO.match(key).groups()
        variables = group.get("vars")
        shapes = [] if variables is None else [variables[str(i)].shape for i in range(len(variables))
                                                if str(i) in variables]
        found.setdefault(base, {})[int(index or 0)] = shapes
    return {base: [layers[i] for i in sorted(layers)] for base, layers in found.items()}


def _canonical_shapes(path: Path, classes: dict[str, list[list[tuple[int, ...]]]]) -> dict[str, np.ndarray]:
    """The arrays of a ``.weights.h5`` file that tell its spec, renamed to canonical keys
    (zero-size stand-ins of their shapes, for ``interop.spec_from_canonical``). Keras numbers
    layers per class in graph order, not by name, so the names come from the structure: the stem
    is the first Conv2D; the 3x3 convs are the blocks' (one per bottleneck block, two per basic
    one), a change of their output channels starts a stage; the first block's first conv follows
    the stem; its last conv is the first later 1x1 that reads the 3x3's output."""
    convs, bns = classes.get("conv2d", []), classes.get("batch_normalization", [])
    if not convs or not bns or not convs[0] or len(convs[0][0]) != 4 or convs[0][0][0] != 7:
        raise WeightsError(f"{path}: no 7x7 stem Conv2D first (layers/conv2d): not a ResNet's weights")
    if any(k.startswith(("conv1d", "conv3d", "depthwise")) for k in classes) or len(convs[0]) not in (1, 2):
        raise WeightsError(f"{path}: layers other than a ResNet's ({sorted(classes)})")
    if len(convs) < 2 or not convs[1]:
        raise WeightsError(f"{path}: no convolution after the stem: not a ResNet's weights")
    first = convs[1]
    # V2: the stem conv has a bias (no BN follows it), the blocks' first convs have none.
    preact = len(convs[0]) == 2 and len(first) == 1
    basic = not preact and first[0][:2] == (3, 3)
    names = {"conv1_conv.kernel": convs[0][0], "conv2_block1_1_conv.kernel": first[0]}
    names.update({"conv1_conv.bias": convs[0][1]} if len(convs[0]) == 2 else {})
    names.update({"conv2_block1_1_conv.bias": first[1]} if len(first) == 2 else {})
    names.update({"conv2_block1_preact_bn.gamma": bns[0][0]} if preact else {})
    names["conv2_block1_1_bn.gamma"] = bns[int(preact)][0] if len(bns) > int(preact) else bns[0][0]
    threes = [i for i, shapes in enumerate(convs) if i and shapes and shapes[0][:2] == (3, 3)]
    if not threes:
        raise WeightsError(f"{path}: no 3x3 convolutions: not a ResNet's weights")
    per_block, stage, block, last = (2 if basic else 1), 1, 0, None
    for n, i in enumerate(threes):
        if convs[i][0][3] != last:
            stage, block, last = stage + 1, 0, convs[i][0][3]
        if n % per_block == 0 or not basic:
            block += 1
        names[f"conv{stage}_block{block}_{2 if n % per_block or not basic else 1}_conv.kernel"] = convs[i][0]
    if not basic:
        inner = convs[threes[0]][0][3]
        reads = [s for s in convs[threes[0] + 1:] if s and s[0][:3] == (1, 1, inner)]
        if not reads:
            raise WeightsError(f"{path}: no 1x1 convolution reads the first 3x3's {inner} channels")
        names["conv2_block1_3_conv.kernel"] = reads[0][0]
        names.update({"conv2_block1_3_conv.bias": reads[0][1]} if len(reads[0]) == 2 else {})  # V2: Keras' or timm's
    dense = classes.get("dense", [])
    if dense and (len(dense) != 1 or not dense[0]):
        raise WeightsError(f"{path}: expected one Dense classifier, found {len(dense)}")
    if dense:
        names["predictions.kernel"] = dense[0][0]
    return {key: np.broadcast_to(np.float32(0), shape) for key, shape in names.items()}


def spec_from_weights_h5(path: str | os.PathLike, style: str | None = None) -> ResNetSpec:
    """The spec of a ``.weights.h5`` file's ResNet: its arrays named canonically
    (``_canonical_shapes``) and read by the one inference, ``interop.spec_from_canonical``;
    the pooling of a headless file from the pooling layer it holds."""
    path = Path(path)
    with _open_h5(path) as f:
        classes = _by_class(f)
    spec = spec_from_canonical(_canonical_shapes(path, classes), style=style, source=str(path))
    pooling = "avg" if "global_average_pooling2d" in classes else "max" if "global_max_pooling2d" in classes else None
    return dataclasses.replace(spec, pooling=pooling or ("avg" if spec.include_top else None))


def _fit_problems(model: keras.Model, f: h5py.File) -> list[str]:
    """Each layer of ``model`` whose variables the file does not hold with the same shapes, in
    ``model.layers`` order; then every group the model has no layer for."""
    problems, paths = [], object_paths(model)
    for layer in model.layers:
        p = paths[layer.name]
        wanted = [tuple(v.shape) for v in layer.weights]
        if p not in f:
            if wanted:
                problems.append(f"layer {layer.name} ({p}): missing in the file (expected shapes {wanted})")
            continue
        group = f[p].get("vars")
        got = [] if group is None else [tuple(group[k].shape) for k in sorted(group, key=int)]
        if got != wanted:
            problems.append(f"layer {layer.name} ({p}): expected shapes {wanted}, the file has {got}")
    extra = sorted(set(f["layers"]) - {p.split("/", 1)[1] for p in paths.values()})
    problems += [f"layers/{name}: in the file, but the model has no such layer" for name in extra]
    return problems


def read_weights_h5(path: str | os.PathLike, spec: ResNetSpec | None = None,
                    style: str | None = None) -> tuple[ResNetSpec, dict[str, np.ndarray]]:
    """A Keras 3 ``.weights.h5`` (``model.save_weights``) -> (spec, canonical weights): of a
    resnet_keras model, a keras.applications ResNet, or keras-hub's ResNet."""
    path = Path(path)
    with _open_h5(path) as f:
        hub = keras_h5.is_keras_hub(f)
    if hub:
        return keras_h5.from_keras_hub(path, spec, style)
    spec = spec or spec_from_weights_h5(path, style)
    model = build(spec)
    with _open_h5(path) as f:
        problems = _fit_problems(model, f)
    if problems:
        raise WeightsError(f"{path}: does not fit {spec.style} spec {spec.depths}, {spec.num_classes} classes: "
                           f"{problems[0]}" + (f" (and {len(problems) - 1} more:\n  " + "\n  ".join(problems[1:]) + ")" if len(problems) > 1 else ""))
    try:
        model.load_weights(str(path))
    except Exception as e:  # Keras' own reading, after our checks: a damaged dataset
        raise WeightsError(f"{path}: Keras could not load it ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return spec, keras_h5.canonical_from_keras_layers(spec, keras_h5._read_model(model)[1], source=str(path))


def _loaded(spec: ResNetSpec, weights) -> keras.Model:
    """``build(spec)`` holding canonical ``weights`` (validated first)."""
    validate(spec, weights)
    model = build(spec)
    for key, variable in variables(model):
        variable.assign(weights[key])
    return model


def write_weights_h5(spec: ResNetSpec, weights, path: str | os.PathLike) -> None:
    """Canonical weights -> ``model.save_weights(path)`` of ``resnet_keras.build(spec)``, which
    keras.applications' ResNet50/101/152 (keras style, same top) load unchanged."""
    _loaded(spec, weights).save_weights(str(path))


# ----------------------------------------------------------------------------- .keras

def spec_from_model(model: keras.Model, source: str = "Keras model") -> ResNetSpec:
    """Every convention of a ResNet ``keras.Model`` read off its layers: the structure off names
    and shapes (``shared.keras_h5.spec_from_keras_layers``); the stride placement off the first
    strided conv after the stem (its kernel: which conv; its stage: conv2 strides only where the
    last block of a stage does); epsilon and momentum off the first BatchNormalization."""
    names, arrays = keras_h5._read_model(model)
    spec = keras_h5.spec_from_keras_layers(names, arrays, source)
    fields = {}
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)][1:]
    strided = next((c for c in convs if tuple(c.strides) != (1, 1) and not c.name.endswith("_0_conv")), None)
    if strided is not None:
        if spec.block != "basic":  # a basic block has no 1x1 conv to stride
            fields["stride_on"] = "1x1" if tuple(strided.kernel_size) == (1, 1) else "3x3"
        fields["stride_block"] = "last" if strided.name.startswith("conv2_") else "first"
    bn = next((layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)), None)
    if bn is not None:
        fields["bn_epsilon"] = float(bn.epsilon)
        fields["bn_momentum"] = round(1.0 - float(bn.momentum), 12)  # Keras' momentum weighs the old value
    spec = spec.replace(**fields)
    if spec.block == "basic":  # no 1x1 conv to stride: the stride_on of the style the rest matches
        for style in STYLES:
            conv = conventions(style, spec.block)
            if all(getattr(spec, k) == v for k, v in conv.items() if k != "stride_on"):
                return spec.replace(stride_on=conv["stride_on"])
    return spec


def read_keras(path: str | os.PathLike, spec: ResNetSpec | None = None,
               style: str | None = None) -> tuple[ResNetSpec, dict[str, np.ndarray]]:
    """A Keras 3 ``.keras`` file (``model.save``) -> (spec, canonical weights). Keras rebuilds
    the model from the file's config (safe mode: no code in the file runs); the weights are read
    by layer name. ``style`` is unused: the config says everything."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    import zipfile

    if not zipfile.is_zipfile(path):
        raise WeightsError(f"{path}: not a readable .keras file (not a zip archive: truncated or another format)")
    try:
        model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as e:
        raise WeightsError(f"{path}: Keras could not load it ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    found = spec_from_model(model, source=str(path))
    spec = spec or found
    names, arrays = keras_h5._read_model(model)
    weights = keras_h5.canonical_from_keras_layers(spec, arrays, source=str(path))
    validate(spec, weights, source=str(path))
    return spec, weights


def write_keras(spec: ResNetSpec, weights, path: str | os.PathLike) -> None:
    """Canonical weights -> ``model.save(path)`` of ``resnet_keras.build(spec)`` (logits head)."""
    _loaded(spec, weights).save(str(path))


READERS = {"keras-weights-h5": read_weights_h5, "keras": read_keras}
WRITERS = {"keras-weights-h5": write_weights_h5, "keras": write_keras}


def read_checkpoint(source: str | os.PathLike, spec: ResNetSpec | None = None,
                    style: str | None = None) -> tuple[ResNetSpec, dict[str, np.ndarray]]:
    """(spec, canonical weights) of a checkpoint file or ``shared.hub`` name, in any format this
    package reads (``shared.checkpoint.read`` with this package's ``READERS``); with ``spec`` a
    file that does not fit it is refused, naming the key."""
    return checkpoint.read(source, spec=spec, style=style, readers=READERS)
