"""shared.formats, the one dispatcher by file type: detection, torchvision-keyed safetensors (as
hubs ship ResNets) against torchvision itself, atomic writes, one-line errors, and the message
when a format's framework is missing. Keras 3 and Orbax files: test_keras_checkpoints.py,
test_flax_checkpoints.py; the fine-tuned model across frameworks: test_finetune_interop.py."""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from shared import formats, spec as S
from shared.tools import convert
from shared.tools.cli import main
from shared import weights as W
from shared.weights import WeightsError, init, randomize_batchnorm
from helpers import random_weights as _weights, assert_same as _same

TINY = dict(depths=(1, 2), width=8, num_classes=5)




def test_import_needs_no_framework():
    code = ("import sys, shared.formats, shared.interop, shared.tools.cli; "
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'jax', 'flax', 'orbax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_detect_by_type_and_content(tmp_path):
    spec = S.preset("resnet50", **TINY)
    w = _weights(spec)
    formats.write(spec, w, tmp_path / "c.safetensors")
    formats.write(spec, w, tmp_path / "t.safetensors", format="torchvision-safetensors")
    formats.write(spec, w, tmp_path / "legacy.h5")
    with h5py.File(tmp_path / "renamed.h5", "w") as f:  # a Keras 3 weights file under a plain .h5 name
        f.create_group("layers/conv2d/vars")
    (tmp_path / "ckpt").mkdir()
    found = {p.name: formats.detect(p) for p in tmp_path.iterdir()}
    assert found == {"c.safetensors": "safetensors", "t.safetensors": "torchvision-safetensors",
                     "legacy.h5": "keras-h5", "renamed.h5": "keras-weights-h5", "ckpt": "orbax"}
    assert [formats.destination_format(p) for p in ("a.weights.h5", "a.keras", "a.h5", "a.pt", "out/ckpt", "d/")] == [
        "keras-weights-h5", "keras", "keras-h5", "pth", "orbax", "orbax"]
    with pytest.raises(WeightsError, match=r"unknown checkpoint type '.npz'"):
        (tmp_path / "w.npz").write_bytes(b"x")
        formats.detect(tmp_path / "w.npz")
    with pytest.raises(FileNotFoundError, match="absent.safetensors: no such file"):
        formats.read(tmp_path / "absent.safetensors")


@pytest.fixture(scope="module")
def tv_model():
    """A small torchvision bottleneck ResNet with every tensor random (BatchNorm variances > 0)."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 2, 1, 1], num_classes=3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                value.copy_(torch.rand(value.shape, generator=g) + 0.5)
    return model.eval()


def test_torchvision_safetensors_round_trip_through_torch(tmp_path, tv_model):
    """torch writes its state_dict as safetensors (as hubs do) -> canonical -> our torchvision
    safetensors and .pth -> a fresh torchvision model's strict load_state_dict: every tensor
    and the logits identical, bit for bit."""
    import torch
    import torchvision
    from safetensors.torch import load_file, save_file

    save_file(tv_model.state_dict(), tmp_path / "hub.safetensors")
    spec, weights = formats.read(tmp_path / "hub.safetensors")
    assert spec == S.preset_spec("torchvision", depths=(1, 2, 1, 1), num_classes=3)
    assert main(["convert", str(tmp_path / "hub.safetensors"), str(tmp_path / "canon.safetensors")]) == 0
    assert main(["convert", str(tmp_path / "canon.safetensors"), str(tmp_path / "back.safetensors"),
                 "--format", "torchvision-safetensors"]) == 0
    assert main(["convert", str(tmp_path / "back.safetensors"), str(tmp_path / "back.pth")]) == 0
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    expected = tv_model(images)
    for state in (load_file(tmp_path / "back.safetensors"), torch.load(tmp_path / "back.pth", weights_only=True)):
        fresh = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 2, 1, 1], num_classes=3)
        fresh.load_state_dict(state, strict=True)
        for key, value in tv_model.state_dict().items():
            assert torch.equal(fresh.state_dict()[key], value), key
        assert torch.equal(fresh.eval()(images), expected)
    _same(formats.read(tmp_path / "canon.safetensors")[1], weights)


def test_torchvision_safetensors_errors_name_key_and_shapes(tmp_path, tv_model):
    from safetensors.torch import save_file

    save_file(tv_model.state_dict(), tmp_path / "hub.safetensors")
    other = S.preset_spec("torchvision", depths=(1, 2, 1, 1), num_classes=7)
    with pytest.raises(WeightsError, match=r"predictions.kernel: expected shape \(2048, 7\), got \(2048, 3\)"):
        formats.read(tmp_path / "hub.safetensors", spec=other)
    deeper = other.replace(depths=(1, 3, 1, 1), num_classes=3)
    with pytest.raises(WeightsError, match=r"missing key layer2.2.conv1.weight \(for conv3_block3_1_conv.kernel\)"):
        formats.read(tmp_path / "hub.safetensors", spec=deeper)
    data = (tmp_path / "hub.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cut.safetensors: not a readable safetensors file"):
        formats.read(tmp_path / "cut.safetensors")


def test_style_imposes_conventions_on_torchvision_keys(tmp_path):
    spec = S.preset("resnet50", "keras", **TINY)
    w = _weights(spec)
    formats.write(spec, w, tmp_path / "t.safetensors", format="torchvision-safetensors")
    assert formats.read(tmp_path / "t.safetensors")[0].stride_on == "3x3"  # torchvision's, by default
    back_spec, back = formats.read(tmp_path / "t.safetensors", style="keras")
    assert back_spec == spec
    _same(back, w)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    spec = S.preset("resnet50", **TINY)
    w = _weights(spec)
    dest = tmp_path / "out.safetensors"
    dest.write_bytes(b"previous")
    import safetensors.numpy

    def failing(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        formats.write(spec, w, dest, format="torchvision-safetensors")
    assert dest.read_bytes() == b"previous" and os.listdir(tmp_path) == ["out.safetensors"]
    monkeypatch.undo()
    bad = {**w, "conv1_conv.kernel": np.zeros((7, 7, 3, 9), np.float32)}
    with pytest.raises(WeightsError, match=r"conv1_conv.kernel: expected shape \(7, 7, 3, 8\), got \(7, 7, 3, 9\)"):
        convert.write(spec, bad, tmp_path / "new.weights.h5")
    with pytest.raises(ValueError, match=r"unknown output type '.npz'"):
        formats.write(spec, w, tmp_path / "new.npz")
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(FileExistsError, match="ckpt: a directory already exists there"):
        W.atomic_path(tmp_path / "ckpt").__enter__()
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "out.safetensors"]


def test_cli_convert_failure_writes_nothing(tmp_path):
    (tmp_path / "cut.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 20)
    proc = subprocess.run([sys.executable, "-m", "shared.tools.cli", "convert", str(tmp_path / "cut.weights.h5"),
                           str(tmp_path / "out.safetensors")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cut.weights.h5: not a readable HDF5 file" in proc.stderr
    assert os.listdir(tmp_path) == ["cut.weights.h5"]


@pytest.mark.parametrize("name, module", [("w.weights.h5", "keras"), ("w.keras", "keras"), ("ckpt", "flax"),
                                          ("w.pth", "torch")])
def test_missing_framework_is_named(tmp_path, monkeypatch, name, module):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n.split(".")[0] in (module, "jax", "orbax") else real(n, *a))
    path = tmp_path / name
    path.mkdir() if name == "ckpt" else path.write_bytes(b"")
    with pytest.raises(convert.FrameworkMissing, match=rf"pip install 'resnet-parity\[{module}\]'"):
        convert.read(path)
    spec = S.preset("resnet50", **TINY)
    with pytest.raises(convert.FrameworkMissing, match=rf"pip install 'resnet-parity\[{module}\]'"):
        convert.write(spec, _weights(spec), tmp_path / ("out" if name == "ckpt" else f"out.{name.split('.', 1)[1]}"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, fmt, package", [("w.weights.h5", "keras-weights-h5", "resnet_keras"),
                                                ("w.keras", "keras", "resnet_keras"), ("ckpt", "orbax", "resnet_flax"),
                                                ("w.pth", "pth", "resnet_torch")])
def test_the_core_reads_no_framework_format_itself(tmp_path, name, fmt, package):
    """Without the reader a framework package hands in, the core refuses a framework's format,
    naming the package that reads it (it imports nothing to try); with a reader, it calls it."""
    path = tmp_path / name
    path.mkdir() if name == "ckpt" else path.write_bytes(b"")
    with pytest.raises(formats.FrameworkMissing, match=rf"a {fmt} checkpoint is read by {package}"):
        formats.read(path, format=fmt)
    spec = S.preset("resnet50", **TINY)
    calls = []
    got = formats.read(path, format=fmt, readers={fmt: lambda p, spec, style: calls.append(p) or (spec, {})})
    assert calls == [path] and got == (None, {})
    with pytest.raises(formats.FrameworkMissing, match=rf"a {fmt} checkpoint is written by {package}"):
        formats.write(spec, _weights(spec), tmp_path / ("out" if name == "ckpt" else f"out.{name.split('.', 1)[1]}"),
                      format=fmt)


def test_load_weights_takes_every_format_by_path(tmp_path):
    """The framework packages' ``load_weights`` (and so the constructors' ``weights=``) read a
    file through the same dispatcher as ``convert``: here a torchvision-keyed safetensors, told
    from a canonical one by its keys, loads bit-exact."""
    rt = pytest.importorskip("resnet_torch")
    spec = S.preset_spec("torchvision", depths=(1, 1), width=8, num_classes=5)
    weights = randomize_batchnorm(spec, init(spec, seed=4), seed=4)
    path = tmp_path / "hub_style.safetensors"
    formats.write(spec, weights, path, format="torchvision-safetensors")
    assert formats.detect(path) == "torchvision-safetensors"
    exported = rt.export_weights(rt.load_weights(rt.build(spec), path))
    assert set(exported) == set(weights)
    assert all(np.array_equal(exported[k], weights[k]) for k in weights)
