"""A checkpoint given by path or by name -> canonical weights for a model's spec, framework-free.

What ``ResNet50(weights=...)`` and ``load_weights(model, path_or_name)`` accept in every framework
package: the core's formats (canonical or torchvision-keyed ``.safetensors``, Keras
Applications ``.h5``) and the package's own native ones, whose readers it hands in
(``resnet_torch``: ``.pth``/``.pt``; ``resnet_keras``: ``.weights.h5``, ``.keras``;
``resnet_flax``: Orbax directories; another framework's format says which package reads it), or
a name registered in ``shared.hub``. An
existing path wins over a name. A checkpoint made for another architecture, style or class count is refused before
any model is touched, with a ValueError that describes both.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from shared import formats, hub
from shared import weights as W
from shared.spec import STYLES, ResNetSpec

# Fields that change the function a set of weights computes and that the weights show (pooling,
# anti-aliasing, the gate and a parameterless stem pool have no weights: the model's spec decides
# them; the init flag zero_init_residual does not matter once weights are loaded).
_ARCH = ("block", "depths", "width", "expansion", "groups", "width_per_group", "image_channels", "stem_convs",
         "shortcut", "shortcut_kernel", "project_first", "attention", "se_ratio", "se_divisor")
_STYLE = ("stride_on", "stride_block", "conv_bias", "bn_epsilon", "bn_momentum", "pool_pad_value")


def resolve(source: str | os.PathLike) -> Path:
    """The local file (or Orbax directory) of a path, or of a registered name (fetched into the
    cache). An existing path wins over a name."""
    if isinstance(source, (str, os.PathLike)) and Path(source).exists():
        return Path(source)
    if hub.is_registered(source):
        return hub.fetch(source)
    if isinstance(source, str) and "/" in source and not source.lower().endswith(formats.SUFFIXES):
        hub.entry(source)  # raises, naming close matches
    raise FileNotFoundError(f"{source}: no such checkpoint file, and not a registered name "
                            f"(shared.hub.names(): {', '.join(hub.names())})")


def read(source: str | os.PathLike, spec: ResNetSpec | None = None, style: str | None = None,
         readers: formats.Readers | None = None, format: str | None = None,
         ) -> tuple[ResNetSpec, dict[str, np.ndarray]]:
    """(spec, canonical weights) of a path or name, in any format ``shared.formats`` reads: the
    one reading behind every package's ``read_checkpoint`` (which hands in its ``readers``, the
    framework formats' readers). The spec is the one stored in the file, else read off its names
    and shapes, with ``style`` for what shapes cannot show; with ``spec`` a file that does not
    fit it is refused, naming the key; ``format`` overrides the suffix."""
    return formats.read(resolve(source), spec=spec, style=style, format=format, readers=readers)


def describe(spec: ResNetSpec) -> str:
    """``resnet50 (torchvision style, 1000 classes, 3 image channels)``; a spec that is no preset
    names its structure, ``depths (2, 2), width 16, expansion 4`` with the block kind, groups and
    width per group where they are not the plain bottleneck's (``..., preact blocks``,
    ``..., groups 2, width per group 32``)."""
    arch = spec.arch
    if arch is None:
        arch = f"depths {spec.depths}, width {spec.width}, expansion {spec.expansion}"
        if spec.block != "bottleneck":
            arch += f", {spec.block} blocks"
        if (spec.groups, spec.width_per_group) != (1, 64):
            arch += f", groups {spec.groups}, width per group {spec.width_per_group}"
    top = f"{spec.num_classes} classes" if spec.include_top else "no top"
    return f"{arch} ({spec.style} style, {top}, {spec.image_channels} image channels)"


def differences(model: ResNetSpec, checkpoint: ResNetSpec) -> list[str]:
    """Every field in which a checkpoint's spec cannot serve the model's, as 'field: a vs b'."""
    fields = [*_ARCH, *_STYLE]
    if model.include_top:
        fields += ["include_top", "num_classes"]
    if "conv" in (model.stem_pool, checkpoint.stem_pool):  # the only stem pool with weights
        fields.append("stem_pool")
    return [f"{f}: checkpoint {getattr(checkpoint, f)!r}, model {getattr(model, f)!r}"
            for f in fields if getattr(checkpoint, f) != getattr(model, f)]


def for_spec(spec: ResNetSpec, source: str | os.PathLike,
             readers: formats.Readers | None = None) -> dict[str, np.ndarray]:
    """Canonical weights of a file or name for a model of ``spec``. A checkpoint with a top
    serves a model without one (its classifier is dropped); anything else that differs is a
    ValueError naming both."""
    found, weights = read(source, style=spec.style if spec.style in STYLES else None, readers=readers)
    diff = differences(spec, found)
    if diff:
        raise ValueError(f"weights {source}: the checkpoint is {describe(found)}, the model is {describe(spec)}; "
                         f"they differ in {'; '.join(diff)}")
    if found.include_top and not spec.include_top:
        top = {f"{layer.name}.{p}" for layer in found.head() for p in layer.params}
        weights = {k: v for k, v in weights.items() if k not in top}
    W.validate(spec, weights, source=str(source))
    return weights


def canonical(spec: ResNetSpec, weights, readers: formats.Readers | None = None) -> Mapping[str, np.ndarray]:
    """What ``load_weights`` copies: a mapping as given, or a file or name read for ``spec``
    (``readers``: the calling package's native formats)."""
    if isinstance(weights, Mapping):
        return weights
    if isinstance(weights, (str, os.PathLike)):
        return for_spec(spec, weights, readers)
    raise TypeError(f"weights: expected a canonical dict, a checkpoint path or a registered name, "
                    f"got {type(weights).__name__}")
