"""Keras 3's own files, written by Keras (``model.save_weights("x.weights.h5")``,
``model.save("x.keras")``) from keras.applications ResNets and resnet_keras models, read through
``shared.formats`` and compared with the layers' variables; the files we write, loaded by
keras.applications itself; errors that name the layer and both shapes. Keras-marked: CI runs
this file once per KERAS_BACKEND."""

import os

import h5py
import numpy as np
import pytest

from shared import keras_h5, spec as S
from shared.tools import convert as formats  # every format, through the adapters
from shared.weights import WeightsError
from helpers import random_weights as _weights, assert_same as _same

pytestmark = pytest.mark.keras
keras = pytest.importorskip("keras")
import resnet_keras as rk  # noqa: E402
from resnet_keras import checkpoints  # noqa: E402
from keras.src.applications import resnet as keras_resnet  # noqa: E402  (ResNet(stack_fn, ...) is not public)

TINY = dict(depths=(1, 2), width=8, num_classes=5)




def _randomise(model, seed):
    """Every variable random by position, independent of our name mapping (variances > 0)."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def _by_layer(model, spec):
    """Canonical weights read straight off the Keras layers by name (not via shared)."""
    return {f"{layer.name}.{p}": np.asarray(keras.ops.convert_to_numpy(
        getattr(model.get_layer(layer.name), keras_h5.KERAS_PARAM[p])), np.float32)
        for layer in spec.layers() for p in layer.params}


def _small_app(classes=5, include_top=True, pooling=None):
    """keras.applications' own ResNet builder (v1 blocks, biased convs), two stages, 32 px."""
    def stack_fn(x):
        x = keras_resnet.stack_residual_blocks_v1(x, 64, 1, stride1=1, name="conv2")
        return keras_resnet.stack_residual_blocks_v1(x, 128, 2, name="conv3")

    return keras_resnet.ResNet(stack_fn, False, True, include_top=include_top, weights=None, input_shape=(32, 32, 3),
                               pooling=pooling, classes=classes, classifier_activation=None, name="small")


def test_keras_applications_resnet50_weights_h5(tmp_path):
    """The issue's case: keras.applications.ResNet50(weights=None).save_weights("r50.weights.h5")
    reads as ResNet-50 (keras style), every weight equal to its layer's variable. (Writing back
    into keras.applications: the small model below, the same builder.)"""
    app = _randomise(keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classifier_activation=None), 0)
    app.save_weights(str(tmp_path / "r50.weights.h5"))
    spec, weights = formats.read(tmp_path / "r50.weights.h5")
    assert spec == S.resnet50("keras")
    _same(weights, _by_layer(app, spec))


@pytest.mark.parametrize("include_top, pooling", [(True, None), pytest.param(False, "max", marks=pytest.mark.slow)])
def test_keras_applications_keras_file_both_ways(tmp_path, include_top, pooling):
    app = _randomise(_small_app(include_top=include_top, pooling=pooling), 1)
    app.save(str(tmp_path / "app.keras"))
    app.save_weights(str(tmp_path / "app.weights.h5"))
    expected = S.preset_spec("keras", depths=(1, 2), num_classes=5 if include_top else 1000,
                             include_top=include_top, pooling=pooling or ("avg" if include_top else None))
    for name in ("app.keras", "app.weights.h5"):
        spec, weights = formats.read(tmp_path / name)
        assert spec == expected, name
        _same(weights, _by_layer(app, spec))
    formats.write(spec, weights, tmp_path / "ours.keras")
    formats.write(spec, weights, tmp_path / "ours.weights.h5")
    back = keras.saving.load_model(str(tmp_path / "ours.keras"), compile=False)
    assert [layer.name for layer in back.layers][1:] == [layer.name for layer in app.layers][1:]  # [0]: input
    fresh = _small_app(include_top=include_top, pooling=pooling)
    fresh.load_weights(str(tmp_path / "ours.weights.h5"))  # by object path, as Keras 3 loads
    for model in (back, fresh):
        for ours, theirs in zip(model.get_weights(), app.get_weights(), strict=True):
            assert ours.tobytes() == theirs.tobytes()


def _small_app_v2(include_top=True, pooling=None):
    """keras.applications' own ResNet V2 builder (pre-activation blocks), two stages, 32 px."""
    def stack_fn(x):
        x = keras_resnet.stack_residual_blocks_v2(x, 64, 2, name="conv2")  # Keras' V2 stack needs >= 2 blocks
        return keras_resnet.stack_residual_blocks_v2(x, 128, 2, stride1=1, name="conv3")

    return keras_resnet.ResNet(stack_fn, True, True, include_top=include_top, weights=None, input_shape=(32, 32, 3),
                               pooling=pooling, classes=5, classifier_activation=None, name="small_v2")


@pytest.mark.parametrize("include_top, pooling", [(True, None), pytest.param(False, "avg", marks=pytest.mark.slow)])
def test_keras_applications_v2_files_both_ways(tmp_path, include_top, pooling):
    """Keras' ResNet V2 builder's .keras and .weights.h5 read as the pre-activation spec (stride
    on the last block of a stage, read off the layers or Keras' V2 conventions); ours load back
    into a fresh one, bit for bit."""
    app = _randomise(_small_app_v2(include_top, pooling), 4)
    app.save(str(tmp_path / "app.keras"))
    app.save_weights(str(tmp_path / "app.weights.h5"))
    expected = S.preset_spec("keras", block="preact", depths=(2, 2), num_classes=5 if include_top else 1000,
                             include_top=include_top, pooling=pooling or "avg")
    for name in ("app.keras", "app.weights.h5"):
        spec, weights = formats.read(tmp_path / name)
        assert spec == expected, name
        _same(weights, _by_layer(app, spec))
    formats.write(spec, weights, tmp_path / "ours.weights.h5")
    fresh = _small_app_v2(include_top, pooling)
    fresh.load_weights(str(tmp_path / "ours.weights.h5"))
    for ours, theirs in zip(fresh.get_weights(), app.get_weights(), strict=True):
        assert ours.tobytes() == theirs.tobytes()


KINDS = [("resnet50", "torchvision", TINY), ("resnet50", "keras", TINY),
         ("resnet18", "torchvision", TINY), ("resnext50_32x4d", "torchvision", dict(TINY, width=16)),
         ("resnet50v2", "keras", TINY)]


@pytest.mark.parametrize("arch, style, fields", KINDS, ids=[f"{a}-{s}" for a, s, _ in KINDS])
def test_resnet_keras_files_round_trip(tmp_path, arch, style, fields):
    """resnet_keras models saved by Keras, every block kind: the .keras file gives back the
    whole spec (stride placement, epsilon and momentum read off the layers), the .weights.h5
    with the style's conventions; both bit-exact; and our writes load back through Keras."""
    spec = S.preset(arch, style, **fields)
    weights = _weights(spec, 2)
    model = rk.build(spec)
    assert [layer.name for layer in model.layers] == keras_h5.keras_layer_names(spec)
    rk.load_weights(model, weights)
    model.save(str(tmp_path / "m.keras"))
    model.save_weights(str(tmp_path / "m.weights.h5"))
    for name in ("m.keras", "m.weights.h5"):
        back_spec, back = formats.read(tmp_path / name)
        assert back_spec == spec, name
        _same(back, weights)
    for name in ("w.keras", "w.weights.h5"):
        formats.write(spec, weights, tmp_path / name)
    fresh = rk.build(spec)
    fresh.load_weights(str(tmp_path / "w.weights.h5"))
    _same(rk.export_weights(fresh), weights)
    _same(rk.export_weights(_with_spec(keras.saving.load_model(str(tmp_path / "w.keras"), compile=False), spec)),
          weights)


def _with_spec(model, spec):
    model.spec = spec
    return model


def test_weights_h5_errors_name_the_layer_and_shapes(tmp_path):
    spec = S.preset("resnet50", "torchvision", **TINY)
    model = rk.build(spec)
    rk.load_weights(model, _weights(spec))
    path = tmp_path / "m.weights.h5"
    model.save_weights(str(path))
    with pytest.raises(WeightsError, match=r"layer predictions \(layers/dense\): expected shapes "
                                           r"\[\(64, 7\), \(7,\)\], the file has \[\(64, 5\), \(5,\)\]"):
        formats.read(path, spec=spec.replace(num_classes=7))
    with pytest.raises(WeightsError, match=r"layer conv1_conv \(layers/conv2d\): expected shapes \[\(7, 7, 3, 16\)\], "
                                           r"the file has \[\(7, 7, 3, 8\)\]"):
        formats.read(path, spec=spec.replace(width=16))
    deeper = spec.replace(depths=(1, 3))
    with pytest.raises(WeightsError, match=r"does not fit torchvision spec \(1, 3\)"):
        formats.read(path, spec=deeper)

    with h5py.File(path, "r+") as f:
        del f["layers/batch_normalization_2/vars/3"]
    with pytest.raises(WeightsError, match=r"layers/batch_normalization_2\): expected shapes \[\(8,\), \(8,\), \(8,\), \(8,\)\], "
                                           r"the file has \[\(8,\), \(8,\), \(8,\)\]"):
        formats.read(path)
    model.save_weights(str(path))
    data = path.read_bytes()
    (tmp_path / "cut.weights.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cut.weights.h5: not a readable HDF5 file"):
        formats.read(tmp_path / "cut.weights.h5")


def test_keras_file_errors(tmp_path):
    spec = S.preset("resnet50", "keras", **TINY)
    model = rk.build(spec)
    rk.load_weights(model, _weights(spec))
    model.save(str(tmp_path / "m.keras"))
    with pytest.raises(WeightsError, match=r"predictions.kernel: expected shape \(64, 7\), got \(64, 5\)"):
        formats.read(tmp_path / "m.keras", spec=spec.replace(num_classes=7))
    with pytest.raises(WeightsError, match=r"layer conv3_block2_1_conv: unexpected \(not in the spec\)"):
        formats.read(tmp_path / "m.keras", spec=spec.replace(depths=(1, 1)))
    data = (tmp_path / "m.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"cut.keras: not a readable .keras file"):
        formats.read(tmp_path / "cut.keras")


def test_failed_keras_write_leaves_nothing(tmp_path, monkeypatch):
    spec = S.preset("resnet50", "torchvision", **TINY)
    weights = _weights(spec)
    (tmp_path / "w.weights.h5").write_bytes(b"previous")

    def failing(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save_weights", failing)
    monkeypatch.setattr(keras.Model, "save", failing)
    for name in ("w.weights.h5", "w.keras"):
        with pytest.raises(OSError, match="disk full"):
            formats.write(spec, weights, tmp_path / name)
    assert os.listdir(tmp_path) == ["w.weights.h5"] and (tmp_path / "w.weights.h5").read_bytes() == b"previous"


def test_object_paths_are_keras_own(tmp_path):
    """Our copy of saving_lib's naming rule against the file Keras writes for the same model."""
    spec = S.preset("resnet50", "keras", **TINY)
    model = rk.build(spec)
    paths = checkpoints.object_paths(model)
    assert paths["conv1_conv"] == "layers/conv2d" and paths["predictions"] == "layers/dense"
    model.save_weights(str(tmp_path / "m.weights.h5"))
    with h5py.File(tmp_path / "m.weights.h5", "r") as f:
        with_vars = {f"layers/{k}" for k, g in f["layers"].items() if len(g.get("vars", {}))}
        assert with_vars == {paths[layer.name] for layer in model.layers if layer.weights}
        for layer in model.layers:
            for i, v in enumerate(layer.weights):
                assert f[f"{paths[layer.name]}/vars/{i}"].shape == tuple(v.shape), layer.name
