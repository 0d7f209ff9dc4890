"""Keras Applications' legacy .h5 files <-> canonical weights (shared.keras_h5): the file layout,
bit-exact round trips, errors that name the layer, and files that Keras itself writes from
``keras.applications`` models (the keras-marked tests, run once per KERAS_BACKEND)."""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from shared import keras_h5, parity, reference, spec as S
from shared.weights import WeightsError
from helpers import random_weights as _weights, assert_same as _same
from strategies import small_specs

PUBLISHED_PARAMS = {"resnet50": 25_636_712, "resnet101": 44_707_176, "resnet152": 60_419_944}






# ----------------------------------------------------------------------------- pure h5py

def test_import_needs_no_framework():
    code = ("import sys, shared.keras_h5, shared.interop; "
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'jax', 'flax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@settings(max_examples=10, deadline=None)
@given(spec=small_specs(classes=(1, 12)), seed=st.integers(0, 2**16))
def test_round_trip_bit_exact(tmp_path_factory, spec, seed):
    path = tmp_path_factory.mktemp("h5") / "w.h5"
    weights = _weights(spec, seed)
    keras_h5.to_keras_applications_h5(spec, weights, path)
    back_spec, back = keras_h5.from_keras_applications(path)
    assert back_spec == spec
    _same(back, weights)


def test_file_layout_is_keras_applications(tmp_path):
    spec = S.resnet50("keras")
    weights = _weights(spec)
    path = tmp_path / "resnet50.h5"
    keras_h5.to_keras_applications_h5(spec, weights, path)
    with h5py.File(path, "r") as f:
        names = [n.decode() for n in f.attrs["layer_names"]]
        assert names == keras_h5.keras_layer_names(spec) and len(names) == 177
        assert names[:8] == ["input_layer", "conv1_pad", "conv1_conv", "conv1_bn", "conv1_relu", "pool1_pad",
                             "pool1_pool", "conv2_block1_1_conv"]
        # keras.applications' order inside a projection block
        i = names.index("conv2_block1_2_relu")
        assert names[i + 1:i + 7] == ["conv2_block1_0_conv", "conv2_block1_3_conv", "conv2_block1_0_bn",
                                      "conv2_block1_3_bn", "conv2_block1_add", "conv2_block1_out"]
        assert set(f.attrs) == {"layer_names", keras_h5.SPEC_ATTR}
        assert [n.decode() for n in f["conv1_conv"].attrs["weight_names"]] == ["conv1_conv/kernel:0", "conv1_conv/bias:0"]
        assert [n.decode() for n in f["conv4_block2_1_bn"].attrs["weight_names"]] == [
            f"conv4_block2_1_bn/{v}:0" for v in ("gamma", "beta", "moving_mean", "moving_variance")]
        assert len(f["conv1_relu"].attrs["weight_names"]) == 0
        assert np.array_equal(f["conv4_block2_1_bn/conv4_block2_1_bn/moving_variance:0"][()],
                              weights["conv4_block2_1_bn.var"])
        assert f["predictions/predictions/kernel:0"].shape == (2048, 1000)
        count = 0
        for name in names:
            for w in f[name].attrs["weight_names"]:
                count += f[name][w].size
    assert count == PUBLISHED_PARAMS["resnet50"]


def _drop_spec_attr(path):
    with h5py.File(path, "r+") as f:
        del f.attrs[keras_h5.SPEC_ATTR]


def _read_back_without_our_spec(tmp_path, spec):
    """Write ``spec``'s weights, strip our spec attribute (as a Keras-written file has none),
    read back: the same spec and the same weights."""
    weights = _weights(spec)
    path = tmp_path / "w.h5"
    keras_h5.to_keras_applications_h5(spec, weights, path)
    _drop_spec_attr(path)
    back_spec, back = keras_h5.from_keras_applications(path)
    assert back_spec == spec
    _same(back, weights)


@pytest.mark.parametrize("include_top, pooling", [(True, "avg"), (False, None), (False, "avg"), (False, "max")])
def test_spec_read_off_a_file_without_ours(tmp_path, include_top, pooling):
    """Keras' own files carry no spec: depths, width, channels, classes, top and pooling come
    from the layer names and kernel shapes, the rest from Keras Applications' conventions."""
    spec = S.preset("resnet50", "keras", depths=(2, 1, 3), width=16, image_channels=1,
                    num_classes=7 if include_top else 1000, include_top=include_top, pooling=pooling)
    _read_back_without_our_spec(tmp_path, spec)


def test_torchvision_style_spec_travels_in_the_file(tmp_path):
    spec = S.resnet50()
    path = tmp_path / "tv.h5"
    keras_h5.to_keras_applications_h5(spec, _weights(spec), path)
    assert keras_h5.from_keras_applications(path)[0] == spec
    _drop_spec_attr(path)
    with pytest.raises(WeightsError, match=r"conv1_conv: missing weight bias \(for conv1_conv.bias\)"):
        keras_h5.from_keras_applications(path, spec=S.resnet50("keras"))


def test_write_is_atomic(tmp_path, monkeypatch):
    spec = S.preset("resnet50", "keras", depths=(1, 1), width=8)
    weights = _weights(spec)
    path = tmp_path / "w.h5"
    path.write_bytes(b"previous")
    with pytest.raises(WeightsError, match=r"conv1_conv.kernel: expected shape \(7, 7, 3, 8\), got \(7, 7, 3, 9\)"):
        keras_h5.to_keras_applications_h5(spec, {**weights, "conv1_conv.kernel": np.zeros((7, 7, 3, 9), np.float32)}, path)

    calls = []

    def failing(f, name, layer, w):
        calls.append(name)
        if len(calls) == 5:
            raise OSError("disk full")
        return original(f, name, layer, w)

    original = keras_h5._write_layer
    monkeypatch.setattr(keras_h5, "_write_layer", failing)
    with pytest.raises(OSError, match="disk full"):
        keras_h5.to_keras_applications_h5(spec, weights, path)
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["w.h5"]


def _edit(path, edit):
    with h5py.File(path, "r+") as f:
        edit(f)


def test_errors_name_the_layer_and_shapes(tmp_path):
    spec = S.preset("resnet50", "keras", depths=(1, 2), width=8)
    weights = _weights(spec)
    path = tmp_path / "w.h5"

    def fresh():
        keras_h5.to_keras_applications_h5(spec, weights, path)
        return path

    def set_dataset(f, name, value):
        del f[name]
        f[name] = value

    _edit(fresh(), lambda f: set_dataset(f, "conv3_block2_2_conv/conv3_block2_2_conv/kernel:0", np.zeros((3, 3, 16, 8), np.float32)))
    with pytest.raises(WeightsError, match=r"conv3_block2_2_conv.kernel: expected shape \(3, 3, 16, 16\), got \(3, 3, 16, 8\)"):
        keras_h5.from_keras_applications(path)

    def drop_var(f):
        g = f["conv2_block1_0_bn"]
        del g["conv2_block1_0_bn/moving_variance:0"]
        g.attrs["weight_names"] = [n for n in g.attrs["weight_names"] if b"moving_variance" not in n]
    _edit(fresh(), drop_var)
    with pytest.raises(WeightsError, match=r"layer conv2_block1_0_bn: missing weight moving_variance \(for conv2_block1_0_bn.var\)"):
        keras_h5.from_keras_applications(path)

    _edit(fresh(), lambda f: f["conv2_block1_0_bn"].__delitem__("conv2_block1_0_bn/gamma:0"))
    with pytest.raises(WeightsError, match="layer conv2_block1_0_bn: dataset conv2_block1_0_bn/gamma:0 listed in weight_names is missing"):
        keras_h5.from_keras_applications(path)

    def add_layer(f):
        f.attrs["layer_names"] = [*f.attrs["layer_names"], b"extra_dense"]
        g = f.create_group("extra_dense")
        g.attrs["weight_names"] = [b"extra_dense/kernel:0"]
        g["extra_dense/kernel:0"] = np.zeros((2, 2), np.float32)
    _edit(fresh(), add_layer)
    with pytest.raises(WeightsError, match=r"layer extra_dense: unexpected \(not in the spec\)"):
        keras_h5.from_keras_applications(path)

    with pytest.raises(WeightsError, match=r"predictions.kernel: expected shape \(64, 5\), got \(64, 1000\)"):
        keras_h5.from_keras_applications(fresh(), spec=spec.replace(num_classes=5))

    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(WeightsError, match="not a readable HDF5 file"):
        keras_h5.from_keras_applications(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "new.weights.h5", "w") as f:
        f.create_group("layers")
    with pytest.raises(WeightsError, match=r"no 'layer_names' attribute .* Keras 3 \.weights\.h5"):
        keras_h5.from_keras_applications(tmp_path / "new.weights.h5")
    with pytest.raises(FileNotFoundError, match="absent.h5: no such file"):
        keras_h5.from_keras_applications(tmp_path / "absent.h5")


def test_non_resnet_files_are_refused():
    with pytest.raises(WeightsError, match="no layer conv1_conv with a kernel"):
        keras_h5.spec_from_keras_layers(["dense"], {"dense": {"kernel": np.zeros((2, 2))}})
    with pytest.raises(WeightsError, match=r"no conv\{stage\}_block\{n\}_\* layers found"):
        keras_h5.spec_from_keras_layers(["conv1_conv"], {"conv1_conv": {"kernel": np.zeros((7, 7, 3, 64))}})


# The block kinds (basic, grouped bottleneck, wide, pre-activation V2), small, with a head each.
KINDS = [S.preset("resnet18", "keras", depths=(1, 2), width=8, num_classes=5),
         S.preset("resnext50_32x4d", "keras", depths=(2, 1), width=16, image_channels=1, include_top=False,
                  pooling="max"),
         S.preset("wide_resnet50_2", "keras", depths=(1, 1), width=8, num_classes=3),
         S.preset("resnet50v2", "keras", depths=(2, 1, 2), width=8, include_top=False, pooling=None)]


@pytest.mark.parametrize("spec", KINDS, ids=["basic", "grouped", "wide", "preact"])
def test_every_block_kind_read_off_a_file_without_ours(tmp_path, spec):
    """Block kind (V2 by its preact/post BatchNorms, basic by the missing _3_conv), groups and
    width per group (off the first 3x3 kernel) come from the names and shapes alone."""
    _read_back_without_our_spec(tmp_path, spec)


def test_v2_file_layout_is_keras_applications(tmp_path):
    """ResNet50V2's layer order as keras.applications lists it (read 2026-11-27 off Keras 3.15:
    the shortcut before _3_conv, the stride-2 pool of the raw input in each stage's last block;
    Keras names those pools max_pooling2d_N, the spec _0_pool) and its published count."""
    spec = S.preset("resnet50v2", "keras")
    path = tmp_path / "v2.h5"
    keras_h5.to_keras_applications_h5(spec, _weights(spec), path)
    with h5py.File(path, "r") as f:
        names = [n.decode() for n in f.attrs["layer_names"]]
        count = sum(f[name][w].size for name in names for w in f[name].attrs["weight_names"])
    assert len(names) == 192 and count == 25_613_800
    assert names[:8] == ["input_layer", "conv1_pad", "conv1_conv", "pool1_pad", "pool1_pool",
                         "conv2_block1_preact_bn", "conv2_block1_preact_relu", "conv2_block1_1_conv"]
    i = names.index("conv2_block1_2_relu")
    assert names[i - 3:i] == ["conv2_block1_2_pad", "conv2_block1_2_conv", "conv2_block1_2_bn"]  # V2 pads at stride 1 too
    assert names[i:i + 4] == ["conv2_block1_2_relu", "conv2_block1_0_conv", "conv2_block1_3_conv", "conv2_block1_out"]
    i = names.index("conv2_block3_2_relu")
    assert names[i:i + 5] == ["conv2_block3_2_relu", "conv2_block3_0_pool", "conv2_block3_3_conv", "conv2_block3_out",
                              "conv3_block1_preact_bn"]
    assert names[-6:] == ["conv5_block3_3_conv", "conv5_block3_out", "post_bn", "post_relu", "avg_pool", "predictions"]


def test_long_attributes_are_chunked_like_keras(tmp_path, monkeypatch):
    """Keras splits an attribute past HDF5's 64 KiB object-header limit into name0, name1, ...
    (a ResNet of some thousand layers); shrink the limit to see both directions do it."""
    monkeypatch.setattr(keras_h5, "_HDF5_OBJECT_HEADER_LIMIT", 200)
    spec = S.preset("resnet50", "keras", depths=(2, 1), width=8)
    weights = _weights(spec)
    path = tmp_path / "w.h5"
    keras_h5.to_keras_applications_h5(spec, weights, path)
    with h5py.File(path, "r") as f:
        chunks = [a for a in f.attrs if a.startswith("layer_names")]
        assert "layer_names" not in chunks and len(chunks) > 2
        assert all(f.attrs[a].nbytes <= 200 for a in chunks)
    _drop_spec_attr(path)
    back_spec, back = keras_h5.from_keras_applications(path)
    assert back_spec == spec
    _same(back, weights)


# ----------------------------------------------------------------------------- files Keras writes

@pytest.fixture(scope="module")
def keras_app():
    """``keras_app(include_top)``: a keras.applications.ResNet50 (64 px) whose every weight is
    random, set by position and independent of shared.keras_h5 (BatchNorm variances positive)."""
    keras = pytest.importorskip("keras")
    cache = {}

    def make(include_top):
        if include_top not in cache:
            app = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), include_top=include_top,
                                              classifier_activation=None)
            rng = np.random.default_rng(int(include_top))
            app.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in app.get_weights()])
            cache[include_top] = app
        return cache[include_top]

    return make


def _keras_writes(app, path, layout):
    if layout == "weights":
        from keras.src.legacy.saving import legacy_h5_format

        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, app)
    else:
        app.save(path)  # the legacy full-model file: weights under model_weights
    return path


@pytest.mark.keras
@pytest.mark.parametrize("include_top, layout", [(True, "weights"), pytest.param(False, "full_model", marks=pytest.mark.slow)],
                         ids=["top-weights_file", "notop-full_model_file"])
def test_keras_written_file_to_canonical_and_back(tmp_path, keras_app, include_top, layout):
    """Keras-written .h5 -> canonical (by name, spec read off the file) -> our .h5 -> a fresh
    keras.applications model's load_weights: identical get_weights(), bit for bit."""
    import keras

    app = keras_app(include_top)
    spec, weights = keras_h5.from_keras_applications(_keras_writes(app, tmp_path / "keras.h5", layout))
    assert spec == S.resnet50("keras", include_top=include_top, pooling="avg" if include_top else None)
    for key, value in weights.items():
        layer, param = key.split(".")
        native = keras.ops.convert_to_numpy(getattr(app.get_layer(layer), keras_h5.KERAS_PARAM[param]))
        assert value.tobytes() == native.tobytes(), key
    live_spec, live = keras_h5.from_keras_applications(app)
    assert live_spec == spec
    _same(live, weights)

    keras_h5.to_keras_applications_h5(spec, weights, tmp_path / "ours.h5")
    fresh = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), include_top=include_top,
                                        classifier_activation=None)
    fresh.load_weights(tmp_path / "ours.h5")
    for ours, theirs in zip(fresh.get_weights(), app.get_weights(), strict=True):
        assert ours.tobytes() == theirs.tobytes()
    assert sum(w.size for w in weights.values()) == (PUBLISHED_PARAMS["resnet50"] if include_top else 23_587_712)


def _peer_packages(backend):
    """resnet_torch on the torch backend, resnet_flax on jax (where they exist): each framework
    is checked in the pass that loads it anyway."""
    name = {"torch": "resnet_torch", "jax": "resnet_flax"}.get(backend)
    try:
        return [(name, __import__(name))] if name else []
    except ImportError:
        return []


@pytest.mark.keras
def test_keras_file_gives_keras_logits_in_every_framework(tmp_path):
    """The canonical weights read from a Keras-written file compute keras.applications' function:
    each framework's logits against float64 within 4x keras.applications' own fp32 error."""
    keras = pytest.importorskip("keras")
    import resnet_keras

    spec = S.resnet50("keras")
    calibrated = reference.calibrated_weights(spec, seed=3, size=64)
    app = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classifier_activation=None)
    for key, value in calibrated.items():  # by name, without shared.keras_h5
        layer, param = key.split(".")
        getattr(app.get_layer(layer), keras_h5.KERAS_PARAM[param]).assign(value)
    spec_read, weights = keras_h5.from_keras_applications(_keras_writes(app, tmp_path / "keras.h5", "weights"))
    assert spec_read == spec
    _same(weights, calibrated)

    images = reference.random_images(spec, batch=2, size=64, seed=4)
    expected = reference.forward(spec, weights, images)
    peer = parity.rel_error(keras.ops.convert_to_numpy(app(images, training=False)), expected)
    assert peer <= parity.budget(arch="resnet50"), f"keras.applications itself is off: {peer:.2e}"
    tolerance = parity.budget(peer)

    model = resnet_keras.build(spec)
    resnet_keras.load_weights(model, weights)
    errors = {"resnet_keras": parity.rel_error(resnet_keras.predict(model, images), expected)}
    for name, package in _peer_packages(keras.backend.backend()):
        other = package.build(spec)
        package.load_weights(other, weights)
        errors[name] = parity.rel_error(package.predict(other, images), expected)
    print(f"keras.applications fp32 {peer:.2e}, tolerance {tolerance:.2e}, "
          + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert all(e <= tolerance for e in errors.values()), errors
