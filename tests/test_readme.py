"""Every fenced Python block of the README runs, in order, in one namespace, in a temporary
folder, so an example can never drift from the code. The two published checkpoints the examples
name are served by a local mirror (generated files of the same architecture, registered under
the same names with their sha256): no test reaches the internet. Keras runs them on the backend a
reader gets by default (the whole suite's pass); the per-backend reruns leave this test out."""

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from shared import hub, interop, spec as S, weights as W
from local_server import serving

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
MIRRORED = {"torchvision/resnet50.IMAGENET1K_V2": "pth", "keras/resnet50.imagenet": "h5"}


def blocks() -> list[str]:
    return BLOCK.findall(README.read_text())


def _published_like(name: str, fmt: str, folder: Path) -> Path:
    """A file of the architecture and format the name publishes, with seeded random weights."""
    path = folder / hub.entry(name).filename
    if fmt == "pth":
        import torch

        spec = S.resnet50()
        state = interop.to_torchvision(spec, W.init(spec, seed=1))
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    else:
        spec = S.resnet50("keras")
        interop.to_keras_applications_h5(spec, W.init(spec, seed=2), path)
    return path


@pytest.mark.slow  # skipped by the development run (README); CI runs it
def test_readme_python_examples_run(tmp_path, monkeypatch):
    for module in ("torch", "torchvision", "keras", "flax"):
        pytest.importorskip(module)
    assert len(blocks()) >= 3
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(hub.ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "_REGISTRY", dict(hub._REGISTRY))
    with serving() as (url, files, hits):
        for name, fmt in MIRRORED.items():
            path = f"/{name}/{hub.entry(name).filename}"
            files[path] = _published_like(name, fmt, tmp_path).read_bytes()
            hub.register(name, url + path, hashlib.sha256(files[path]).hexdigest(), fmt, replace=True)
        namespace: dict = {}
        for i, code in enumerate(blocks(), 1):
            exec(compile(code, f"README.md, python block {i}", "exec"), namespace)
    # What the comments claim.
    assert namespace["logits"].shape == (2, 1000) and namespace["logits"].dtype == np.float32
    assert list(namespace["feats"]) == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert all(v.dtype == np.float32 and v.ndim == 4 for v in namespace["feats"].values())
    assert namespace["spec"] == S.preset("resnext50_32x4d") and set(namespace["weights"]) == set(S.preset("resnext50_32x4d").param_shapes())
    assert len(namespace["backbone"].outputs) == 5
    assert sorted(hits) == sorted(f"/{n}/{hub.entry(n).filename}" for n in MIRRORED)  # each fetched once, then cached
