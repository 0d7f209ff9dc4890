"""Orbax checkpoints of ``nnx.state(model)``, written and restored by user code as the Flax NNX
checkpointing guide does it, against ``shared.formats``: bit-exact both ways, the pure-dict
variant, errors naming the key and both shapes, incomplete directories, atomic writes."""

import os
import shutil

import pytest

from shared import spec as S
from shared.tools import convert as formats  # every format, through the adapters
from shared.weights import WeightsError
from helpers import random_weights as _weights, assert_same as _same

pytest.importorskip("flax")
ocp = pytest.importorskip("orbax.checkpoint")
from flax import nnx  # noqa: E402

import resnet_flax as rf  # noqa: E402

TINY = dict(depths=(1, 2), width=8, num_classes=5)


def _user_save(model, path, pure=False):
    state = nnx.state(model)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path.absolute(), nnx.to_pure_dict(state) if pure else state)
    checkpointer.wait_until_finished()
    return path


def _model(spec, weights):
    model = rf.build(spec)
    rf.load_weights(model, weights)
    return model


@pytest.mark.parametrize("arch, style, pure, overrides", [
    ("resnet50", "torchvision", False, {}), ("resnet50", "keras", True, {}),
    ("resnet18", "torchvision", False, {}),
    ("resnext50_32x4d", "torchvision", True, dict(groups=4, width_per_group=32)),
    ("resnet50v2", "keras", False, {})], ids=["torchvision", "keras", "basic", "grouped", "preact"])
def test_user_checkpoint_both_ways(tmp_path, arch, style, pure, overrides):
    spec = S.preset(arch, style, **TINY, **overrides)
    weights = _weights(spec, 1)
    path = _user_save(_model(spec, weights), tmp_path / "state", pure)
    back_spec, back = formats.read(path)
    assert back_spec == spec  # biased convs: keras conventions; unbiased: torchvision
    _same(back, weights)

    formats.write(spec, weights, tmp_path / "ours")
    model = rf.build(spec)  # the guide's restore: abstract state of a fresh model, then update
    graphdef, state = nnx.split(model)
    nnx.update(model, ocp.StandardCheckpointer().restore((tmp_path / "ours").absolute(), state))
    _same(rf.export_weights(model), weights)


def test_errors_name_the_key_and_shapes(tmp_path):
    spec = S.preset("resnet50", "torchvision", **TINY)
    path = _user_save(_model(spec, _weights(spec)), tmp_path / "state")
    with pytest.raises(WeightsError, match=r"predictions/kernel \(for predictions.kernel\): expected shape \(64, 7\), "
                                           r"the checkpoint has \(64, 5\)"):
        formats.read(path, spec=spec.replace(num_classes=7))
    with pytest.raises(WeightsError, match=r"conv1_conv/kernel \(for conv1_conv.kernel\): expected shape \(7, 7, 3, 16\), "
                                           r"the checkpoint has \(7, 7, 3, 8\)"):
        formats.read(path, spec=spec.replace(width=16))
    with pytest.raises(WeightsError, match=r"conv3_block2_1_conv/kernel: in the checkpoint, but not in the model"):
        formats.read(path, spec=spec.replace(depths=(1, 1)))


def test_incomplete_directories_are_named(tmp_path):
    spec = S.preset("resnet50", "torchvision", **TINY)
    source = _user_save(_model(spec, _weights(spec)), tmp_path / "state")

    def broken(name, remove):
        target = tmp_path / name
        shutil.copytree(source, target)
        remove(target)
        return target

    with pytest.raises(WeightsError, match=r"no_meta: not a complete Orbax checkpoint: its _METADATA file"):
        formats.read(broken("no_meta", lambda p: (p / "_METADATA").unlink()))
    with pytest.raises(WeightsError, match=r"no_store: not a complete Orbax checkpoint: its array store"):
        formats.read(broken("no_store", lambda p: [(p / "manifest.ocdbt").unlink(), shutil.rmtree(p / "ocdbt.process_0")]))
    with pytest.raises(WeightsError, match=r"no_data: Orbax could not restore the arrays"):
        formats.read(broken("no_data", lambda p: shutil.rmtree(p / "ocdbt.process_0" / "d")))
    with pytest.raises(WeightsError, match=r"no_index: not a complete Orbax checkpoint: Orbax finds no tree of arrays"):
        formats.read(broken("no_index", lambda p: shutil.rmtree(p / "d")))
    parent = tmp_path / "manager" / "1"
    shutil.copytree(source, parent / "default")
    with pytest.raises(WeightsError, match=r"holds the checkpoint item\(s\) \['default'\]: pass one of those"):
        formats.read(parent)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    spec = S.preset("resnet50", "torchvision", **TINY)
    weights = _weights(spec)

    def failing(self, directory, *args, **kwargs):
        os.makedirs(directory)
        (directory / "_METADATA").write_text("{")
        raise OSError("disk full")

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", failing)
    with pytest.raises(OSError, match="disk full"):
        formats.write(spec, weights, tmp_path / "ckpt")
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    formats.write(spec, weights, tmp_path / "ckpt")
    with pytest.raises(FileExistsError, match="ckpt: a directory already exists there"):
        formats.write(spec, weights, tmp_path / "ckpt")
    _same(formats.read(tmp_path / "ckpt")[1], weights)


@pytest.mark.slow  # skipped by the development run (README); CI runs it
def test_check_weights_takes_an_orbax_directory(tmp_path, capsys):
    """``resnet-parity check --weights DIR``: the spec read off the checkpoint, judged as usual;
    a directory missing its parts ends in one line, exit code 2."""
    from shared.tools.adapter import installed
    from shared.tools.cli import main

    spec = S.preset("resnet50", "torchvision", **TINY)
    path = _user_save(_model(spec, _weights(spec)), tmp_path / "state")
    if installed("torch"):
        assert main(["check", "--weights", str(path), "--frameworks", "torch", "--size", "32", "--batch", "2"]) == 0
        assert "all checks passed" in capsys.readouterr().out
    (path / "_METADATA").unlink()
    assert main(["check", "--weights", str(path), "--frameworks", "torch"]) == 2
    assert "not a complete Orbax checkpoint: its _METADATA file" in capsys.readouterr().err
