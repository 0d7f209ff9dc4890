"""Canonical weights: one flat ``dict[str, np.ndarray]`` that every framework loads and exports.

Conv kernels are HWIO, dense kernels (in, out), BatchNorm is gamma/beta/mean/var, everything
float32, keys ``f"{layer}.{param}"`` as ``ResNetSpec.param_shapes()`` lists them. Files are
safetensors (no pickle), written to a temporary file and renamed, so a failed save never
leaves a half-written file or touches an existing one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from shared.spec import BatchNorm, ChannelConv, Conv, Dense, ResNetSpec

DTYPE = np.dtype(np.float32)


class WeightsError(ValueError):
    """A weights dict or file does not match the spec; the message names every bad key."""


def _rng(seed: int, name: str) -> np.random.Generator:
    # One stream per key: the same seed gives the same tensor for a layer on any machine, and
    # adding or removing layers elsewhere does not shift it.
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(name.encode())])))


def init(spec: ResNetSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """He-normal convs (fan_out, as torchvision and timm, attention convs too), uniform dense
    and ECA's channel conv (torch.nn.Linear's and Conv1d's default, within 1/sqrt(fan_in)),
    BatchNorm at identity (gamma 1 or 0 with zero_init_residual, beta 0, mean 0, var 1), conv
    bias 0."""
    out: dict[str, np.ndarray] = {}
    for layer in spec.layers():
        if isinstance(layer, Conv):
            # torch's fan_out of an (out, in / groups, k, k) kernel: out * k * k, grouped or not
            fan_out = layer.kernel_size**2 * layer.out_channels
            shape = layer.params["kernel"]
            out[f"{layer.name}.kernel"] = _rng(seed, layer.name).normal(0.0, np.sqrt(2.0 / fan_out), shape)
            if layer.bias:
                out[f"{layer.name}.bias"] = np.zeros(layer.out_channels)
        elif isinstance(layer, BatchNorm):
            c = layer.channels
            out[f"{layer.name}.gamma"] = np.zeros(c) if layer.zero_init else np.ones(c)
            out[f"{layer.name}.beta"] = np.zeros(c)
            out[f"{layer.name}.mean"] = np.zeros(c)
            out[f"{layer.name}.var"] = np.ones(c)
        elif isinstance(layer, ChannelConv):
            bound = 1.0 / np.sqrt(layer.kernel_size)
            out[f"{layer.name}.kernel"] = _rng(seed, layer.name).uniform(-bound, bound, layer.params["kernel"])
        elif isinstance(layer, Dense):
            bound = 1.0 / np.sqrt(layer.in_features)
            rng = _rng(seed, layer.name)
            out[f"{layer.name}.kernel"] = rng.uniform(-bound, bound, layer.params["kernel"])
            out[f"{layer.name}.bias"] = rng.uniform(-bound, bound, layer.params["bias"])
    return {k: np.ascontiguousarray(v, dtype=DTYPE) for k, v in out.items()}


def randomize_batchnorm(spec: ResNetSpec, weights: Mapping[str, np.ndarray], seed: int = 0,
                        ) -> dict[str, np.ndarray]:
    """Give every BatchNorm non-trivial parameters and statistics (gamma in [0.5, 1.5], beta,
    mean ~ N(0, 0.1), var in [0.5, 2]) and every conv bias the spec has N(0, 0.1) values (they
    start at zero), so a test cannot pass by ignoring one of them.
    ``shared.reference.calibrate`` then sets mean/var so activations stay O(1).

    A pre-activation BatchNorm (V2: before each block and the head; it normalises a sum, not
    a conv output) gets gammas of both signs: with calibrated statistics and positive gammas
    the ReLU after it drops everything below the mean, so whatever the stem's max pool pads with
    (0 against -inf, which V2 turns on) would never reach the output."""
    out = dict(weights)
    pre_activation = {layer.name for block in spec.blocks() for layer in block.pre} | {
        layer.name for layer in spec.head()}
    for layer in spec.layers():
        if isinstance(layer, Conv) and layer.bias:
            out[f"{layer.name}.bias"] = _rng(seed + 2, layer.name).normal(0.0, 0.1, layer.out_channels).astype(DTYPE)
        if isinstance(layer, BatchNorm):
            rng = _rng(seed + 1, layer.name)
            c = layer.channels
            gamma = rng.uniform(0.5, 1.5, c)
            if layer.name in pre_activation:
                gamma *= _rng(seed + 3, layer.name).choice((-1.0, 1.0), c)
            out[f"{layer.name}.gamma"] = gamma.astype(DTYPE)
            out[f"{layer.name}.beta"] = rng.normal(0.0, 0.1, c).astype(DTYPE)
            out[f"{layer.name}.mean"] = rng.normal(0.0, 0.1, c).astype(DTYPE)
            out[f"{layer.name}.var"] = rng.uniform(0.5, 2.0, c).astype(DTYPE)
    return out


def problems(spec: ResNetSpec, weights: Mapping[str, object]) -> list[str]:
    """Every missing, unexpected, mis-shaped, wrongly typed or non-finite entry, one line each."""
    expected = spec.param_shapes()
    found = []
    for key in expected:
        if key not in weights:
            found.append(f"{key}: missing (expected float32 {expected[key]})")
    for key, value in weights.items():
        if key not in expected:
            found.append(f"{key}: unexpected key (not in the spec)")
            continue
        if not isinstance(value, np.ndarray):
            found.append(f"{key}: expected a numpy array, got {type(value).__name__}")
            continue
        if value.dtype != DTYPE:
            found.append(f"{key}: expected dtype float32, got {value.dtype}")
            continue
        if value.shape != expected[key]:
            found.append(f"{key}: expected shape {expected[key]}, got {value.shape}")
            continue
        if not np.isfinite(value).all():
            found.append(f"{key}: holds {int((~np.isfinite(value)).sum())} non-finite value(s) (NaN or inf)")
    return found


def validate(spec: ResNetSpec, weights: Mapping[str, object], source: str = "weights") -> None:
    """Raise WeightsError naming every bad entry; return None when the weights fit the spec."""
    found = problems(spec, weights)
    if found:
        raise WeightsError(f"{source}: {len(found)} problem(s) against the spec:\n  " + "\n  ".join(found))


def save(weights: Mapping[str, np.ndarray], path: str | os.PathLike, spec: ResNetSpec | None = None) -> None:
    """Write safetensors atomically: a temporary file in the same folder, then rename. With
    ``spec``, the spec travels in the file's metadata (``read_spec`` gives it back)."""
    from safetensors.numpy import save_file

    path = Path(path)
    metadata = {"resnet_parity.spec": json.dumps(spec.to_dict())} if spec else None
    for key, value in weights.items():
        if not isinstance(value, np.ndarray):
            raise WeightsError(f"{key}: expected a numpy array, got {type(value).__name__}")
    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(tmp), metadata=metadata)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a path with ``path``'s own name inside a fresh temporary folder beside it (Keras
    insists on ``.weights.h5``/``.keras`` names, Orbax on a directory); on success rename it over
    ``path``, on failure delete the folder. A reader never sees a half-written file, and a failed
    write leaves the old one. A directory destination that exists is refused before anything is
    written (an Orbax checkpoint is never merged into another). The one atomic writer."""
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"{path}: the folder {parent} does not exist")
    if path.is_dir():
        raise FileExistsError(f"{path}: a directory already exists there; remove it or choose another name")
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    try:
        tmp = tmpdir / path.name
        yield tmp
        if not tmp.exists():
            raise WeightsError(f"{path}: the writer produced nothing")
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def load(path: str | os.PathLike, spec: ResNetSpec | None = None) -> dict[str, np.ndarray]:
    """Read a safetensors file; with ``spec``, refuse one that does not match it (naming the key)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        weights = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None
    if spec is not None:
        validate(spec, weights, source=str(path))
    return weights


def read_spec(path: str | os.PathLike) -> ResNetSpec | None:
    """The spec stored in a safetensors file by ``save(..., spec=...)``, or None."""
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        text = (f.metadata() or {}).get("resnet_parity.spec")
    if text is None:
        return None
    return ResNetSpec.from_dict(json.loads(text))
