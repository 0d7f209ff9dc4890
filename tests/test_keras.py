"""resnet_keras against keras.applications (same layers, names, order, weights, logits), the
float64 reference (both styles, generated small specs), torchvision, and the contract (round
trips, errors). CI runs this file once per backend: KERAS_BACKEND=tensorflow|jax|torch pytest -m keras."""

import functools
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from shared.parity import fp32_budget
from shared.tools.check import low_precision_oracle
from hypothesis import given, settings, strategies as st

from shared import keras_h5, parity, reference, spec as S
from shared.weights import WeightsError, init
from helpers import assert_same as _same, dev_or_slow
from strategies import small_specs

try:  # the torchvision peer; first, as importing it after TensorFlow segfaults (torch._dynamo)
    import torchvision  # noqa: F401
except ImportError:
    pass

pytestmark = pytest.mark.keras
keras = pytest.importorskip("keras")
import resnet_keras as rk  # noqa: E402
from shared.tools.adapters import keras as runner  # noqa: E402

BACKEND = keras.backend.backend()
# The presets keras.applications has (ResNet50/101/152 in keras style, ResNet50V2/101V2/152V2).
APPS = {a: getattr(keras.applications, p.constructor) for a, p in S.PRESETS.items()
        if hasattr(keras.applications, p.constructor)}
V2 = [a for a in APPS if S.preset(a, "keras").block == "preact"]
# Keras Applications' published counts (its summaries count BatchNorm statistics), typed here.
PUBLISHED_PARAMS = {"resnet50": 25_636_712, "resnet101": 44_707_176, "resnet152": 60_419_944,
                    "resnet50v2": 25_613_800, "resnet101v2": 44_675_560, "resnet152v2": 60_380_648}
FULL_SIZE = dev_or_slow(APPS)
SIZE = 64  # keras.applications needs >= 32 px; 64 keeps ResNet-152 cheap on two cores
# One tiny spec (and batch 4 at 40 px) for the small tests: on the jax backend every new shape
# costs an XLA compile, of the initializers too.
TINY = dict(depths=(1, 1), width=8, num_classes=5)
KERAS_AUTO_POOL = re.compile(r"max_pooling2d(_\d+)?$")  # V2's shortcut pools: Keras names them itself


def _numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float32)


class _Pair:
    """keras.applications' model and ours (keras style, 64 px, random init), images; the
    calibrated canonical weights and their float64 logits when first asked for."""

    def __init__(self, arch):
        self.spec = S.preset(arch, "keras")
        self.images = reference.random_images(self.spec, batch=2, size=SIZE, seed=1)
        self.app = APPS[arch](weights=None, input_shape=(SIZE, SIZE, 3), classifier_activation=None)
        self.ours = rk.keras_model(self.spec, input_shape=(SIZE, SIZE, 3))

    @functools.cached_property
    def weights(self):
        return reference.calibrated_weights(self.spec, seed=0, size=SIZE)

    @functools.cached_property
    def expected(self):
        return reference.forward(self.spec, self.weights, self.images)


@pytest.fixture(scope="module")
def pair():
    """``pair(arch)``: a ``_Pair``, built once per arch."""
    cache = {}

    def make(arch):
        if arch not in cache:
            cache[arch] = _Pair(arch)
        return cache[arch]

    return make


def _randomise_by_keras(model, seed):
    """Every BatchNorm variable and every bias random, set through Keras' own layer objects (not
    our name mapping); kernels keep Keras' init. Variances in [0.5, 1.5]."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.2, c),
                               rng.uniform(0.5, 1.5, c)])
        elif getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0, 0.2, layer.bias.shape).astype(np.float32))
    return model


# ----------------------------------------------------------------------------- keras.applications

@pytest.mark.parametrize("arch", FULL_SIZE)
def test_same_layers_as_keras_applications(pair, arch):
    p = pair(arch)
    app, ours = p.app, p.ours
    assert ours.spec == p.spec
    theirs, mine = [layer.name for layer in app.layers][1:], [layer.name for layer in ours.layers][1:]  # [0]: input
    renamed = [(a, b) for a, b in zip(theirs, mine, strict=True) if a != b]
    assert all(KERAS_AUTO_POOL.match(a) and b.endswith("_0_pool") for a, b in renamed), renamed[:3]
    assert len(renamed) == (len(p.spec.depths) - 1 if arch in V2 else 0)  # one strided identity block a stage
    assert [layer.name for layer in ours.layers] == keras_h5.keras_layer_names(p.spec)
    for a, b in zip(app.layers[1:], ours.layers[1:], strict=True):
        assert type(a) is type(b), a.name
        theirs, mine = a.get_config(), b.get_config()
        if type(a).__name__ == "BatchNormalization":  # 3 there, -1 here: the same last axis of NHWC
            assert (theirs.pop("axis"), mine.pop("axis")) == (3, -1)
        if KERAS_AUTO_POOL.match(a.name):
            theirs.pop("name"), mine.pop("name")
        assert theirs == mine, a.name
    assert [(w.path, tuple(w.shape)) for w in ours.weights] == [(w.path, tuple(w.shape)) for w in app.weights]
    assert ours.count_params() == app.count_params() == PUBLISHED_PARAMS[arch] == p.spec.num_params(True)


@pytest.mark.parametrize("arch", FULL_SIZE)
def test_logits_equal_keras_applications(pair, arch, tmp_path):
    """keras.applications gets the calibrated weights through our .h5 writer and Keras' own
    loader, ours through Keras' positional set_weights; both must compute the same logits."""
    p = pair(arch)
    keras_h5.to_keras_applications_h5(p.spec, p.weights, tmp_path / "w.h5")
    p.app.load_weights(tmp_path / "w.h5")
    p.ours.set_weights(p.app.get_weights())
    _same(rk.export_weights(p.ours), p.weights)

    theirs = _numpy(p.app(p.images, training=False))
    mine = rk.predict(p.ours, p.images)
    peer = parity.rel_error(theirs, p.expected)
    error = parity.rel_error(mine, p.expected)
    print(f"{BACKEND} {arch}: ours vs keras.applications {parity.rel_error(mine, theirs):.1e}, "
          f"vs float64 {error:.2e} (keras.applications {peer:.2e})")
    assert parity.rel_error(mine, theirs) == 0.0  # layer for layer keras.applications: bit-identical (README)
    assert peer <= parity.budget(arch=p.spec.arch.removesuffix("v2")), f"keras.applications itself is off: {peer:.2e}"
    assert error <= parity.budget(peer)


@pytest.mark.parametrize("arch", dev_or_slow(V2))
def test_v2_equals_keras_applications(arch, tmp_path):
    """ResNet50V2/101V2/152V2 (64 px, batch 2): keras.applications' model with random
    BatchNorms and biases, read by ``from_keras_applications`` into our constructor's model:
    the same spec, count and logits, bit for bit; and back through our ``.h5`` writer into a
    fresh keras.applications model (``weights=path``, Keras' own loader), bit for bit."""
    app = _randomise_by_keras(APPS[arch](weights=None, input_shape=(SIZE, SIZE, 3), classifier_activation=None), 3)
    spec, weights = keras_h5.from_keras_applications(app)
    assert spec == S.preset(arch, "keras") and spec.arch == arch
    ours = getattr(rk, S.PRESETS[arch].constructor)(style="keras", weights=weights)
    assert ours.count_params() == app.count_params() == PUBLISHED_PARAMS[arch]
    for mine, theirs in zip(ours.get_weights(), app.get_weights(), strict=True):  # Keras' order: by position
        assert mine.tobytes() == theirs.tobytes()
    images = reference.random_images(spec, batch=2, size=SIZE, seed=4)
    expected = _numpy(app(images, training=False))
    error = parity.rel_error(rk.predict(ours, images), expected)
    print(f"{BACKEND} {arch}: ours vs keras.applications {error:.1e}")
    assert error == 0.0 and np.isfinite(expected).all()

    keras_h5.to_keras_applications_h5(spec, rk.export_weights(ours), tmp_path / "ours.h5")
    back = APPS[arch](weights=str(tmp_path / "ours.h5"), input_shape=(SIZE, SIZE, 3), classifier_activation=None)
    for mine, theirs in zip(back.get_weights(), app.get_weights(), strict=True):
        assert mine.tobytes() == theirs.tobytes()


@pytest.mark.slow  # full-size files; the development run keeps V1's (test_keras_weight_files_load_unchanged)
def test_v2_weight_files_keras_writes(tmp_path):
    """ResNet50V2 files Keras writes (legacy weights .h5 with top; a full-model .h5 without top)
    read by ``from_keras_applications`` into our model; features and logits equal Keras'."""
    from keras.src.legacy.saving import legacy_h5_format
    import h5py

    images = reference.random_images(S.preset("resnet50v2", "keras"), batch=2, size=SIZE, seed=5)
    for include_top in (True, False):
        app = _randomise_by_keras(keras.applications.ResNet50V2(
            weights=None, include_top=include_top, pooling=None if include_top else "avg",
            input_shape=(SIZE, SIZE, 3), classifier_activation=None), 6)
        if include_top:
            with h5py.File(tmp_path / "top.h5", "w") as f:
                legacy_h5_format.save_weights_to_hdf5_group(f, app)
            path = tmp_path / "top.h5"
        else:
            app.save(tmp_path / "notop.h5")  # the legacy full-model layout: weights under model_weights
            path = tmp_path / "notop.h5"
        spec, weights = keras_h5.from_keras_applications(path)
        assert spec == S.preset("resnet50v2", "keras", include_top=include_top, pooling="avg")
        ours = rk.keras_model(spec)
        rk.load_weights(ours, weights)
        assert parity.rel_error(rk.predict(ours, images), _numpy(app(images, training=False))) == 0.0


def test_keras_weight_files_load_unchanged(pair, tmp_path):
    """Files Keras writes (as its ImageNet files, with and without top) load through
    ``model.load_weights``, Keras' own method, by position."""
    from keras.src.legacy.saving import legacy_h5_format
    import h5py

    p = pair("resnet50")
    keras_h5.to_keras_applications_h5(p.spec, p.weights, tmp_path / "ours.h5")
    p.app.load_weights(tmp_path / "ours.h5")
    with h5py.File(tmp_path / "top.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, p.app)
    rk.load_weights(p.ours, init(p.spec))
    p.ours.load_weights(tmp_path / "top.h5")
    _same(rk.export_weights(p.ours), p.weights)

    app = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    ours = rk.keras_model(S.resnet50("keras", include_top=False, pooling=None), input_shape=(SIZE, SIZE, 3))
    assert ours.spec.pooling is None and ours.output_shape == app.output_shape == (None, 2, 2, 2048)
    app.save(tmp_path / "notop.h5")  # the legacy full-model layout: weights under model_weights
    ours.load_weights(tmp_path / "notop.h5")
    for mine, theirs in zip(ours.get_weights(), app.get_weights(), strict=True):
        assert mine.tobytes() == theirs.tobytes()
    features = rk.predict(ours, p.images)
    assert parity.rel_error(features, _numpy(app(p.images, training=False))) <= 1e-6


# ----------------------------------------------------------------------------- float64 reference

@pytest.mark.parametrize("arch", ["resnet50", "resnet18", "resnext50_32x4d"])
def test_torchvision_style_against_reference_and_torchvision(torchvision_model, arch):
    """The bottleneck, the basic block and the grouped (ResNeXt) one, torchvision style, with
    torchvision's own weights layout: within 4x torchvision's error against float64."""
    import torch

    tv, spec, weights = torchvision_model(arch)
    images = reference.random_images(spec, batch=2, size=SIZE, seed=2)
    expected = reference.forward(spec, weights, images)
    with torch.no_grad():
        peer = parity.rel_error(tv(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy(), expected)
    model = getattr(rk, S.PRESETS[arch].constructor)()
    assert model.spec == spec == S.preset(arch)
    rk.load_weights(model, weights)
    error = parity.rel_error(rk.predict(model, images), expected)
    print(f"{BACKEND} torchvision-style {arch} vs float64 {error:.2e} (torchvision {peer:.2e})")
    assert error <= parity.budget(peer)
    assert model.count_params() == S.PRESETS[arch].params + sum(  # torchvision's count, plus Keras' BN statistics
        w.size for k, w in weights.items() if S.is_statistic(k))
    for layer in model.layers:  # never 'same' on a strided layer (TF/XLA pad bottom/right there)
        if hasattr(layer, "strides") and max(layer.strides) > 1:
            assert layer.padding == "valid", layer.name
    assert model.get_layer("conv3_block1_2_pad" if spec.block == "bottleneck" else "conv3_block1_1_pad").padding == ((1, 1), (1, 1))
    if spec.groups > 1:
        assert model.get_layer("conv2_block1_2_conv").groups == spec.groups


@pytest.mark.parametrize("pad_value", [0.0, float("-inf")])
def test_v2_stem_pool_pads_with_the_spec_value(pad_value):
    """V2 max-pools the raw stem conv output (no ReLU first), so the pad value is part of the
    function: 0 as Keras' ZeroPadding2D, -inf (a spec no preset has, a mutant's) through
    ConstantPadding2D; each stem output and each logit against float64, at an odd size."""
    spec = S.preset("resnet50v2", "keras", **TINY).replace(pool_pad_value=pad_value)
    weights = reference.calibrated_weights(spec, seed=9, size=33)
    images = reference.random_images(spec, batch=4, size=33, seed=10)
    stems = {}
    expected = reference.forward(spec, weights, images, hook=lambda name, x: stems.setdefault(name, x))
    model = rk.build(spec)
    rk.load_weights(model, weights)
    pad = model.get_layer("pool1_pad")
    assert type(pad).__name__ == ("ZeroPadding2D" if pad_value == 0.0 else "ConstantPadding2D")
    stem = rk.features(model, images)["stem"]
    assert parity.rel_error(stem, stems["stem"]) <= 1e-6
    other = reference.forward(spec.replace(pool_pad_value=0.0 if pad_value else float("-inf")), weights,
                              images, hook=lambda name, x: stems.setdefault(f"other_{name}", x))
    assert parity.rel_error(stems["other_stem"], stems["stem"]) > 1e-3  # the padding reaches the stem output
    peer = parity.rel_error(reference.forward(spec, weights, images, dtype=np.float32), expected)
    assert parity.rel_error(rk.predict(model, images), expected) <= fp32_budget(peer)
    assert parity.rel_error(other, expected) > fp32_budget(peer)


# With batch 4, >= 32 logits: fewer make rel_error a coin toss of a few ulps.
KERAS_SMALL_SPECS = small_specs(classes=(8, 16), heads=((True, "avg"), (True, "max"), (False, "max"), (False, None)))


@settings(max_examples=6, deadline=None)
@given(spec=KERAS_SMALL_SPECS, size=st.integers(32, 96), seed=st.integers(0, 2**16))
def test_small_specs_against_reference(spec, size, seed):
    """Odd sizes included: explicit padding must put the odd pixel where PyTorch does."""
    weights = reference.calibrated_weights(spec, seed=seed, size=size)
    images = reference.random_images(spec, batch=4, size=size, seed=seed + 1)
    model = rk.build(spec)
    rk.load_weights(model, weights)
    _same(rk.export_weights(model), weights)
    out = rk.predict(model, images)
    assert out.shape == (4, *spec.output_shape(size))
    expected = reference.forward(spec, weights, images)
    peer = parity.rel_error(reference.forward(spec, weights, images, dtype=np.float32), expected)
    tolerance = fp32_budget(peer)  # check's rule: 4x the peer, floor 1e-6 (fp32 noise)
    assert parity.rel_error(out, expected) <= tolerance


@pytest.mark.parametrize("style", S.PRESETS["resnet50"].styles)
def test_batchnorm_momentum_in_training(style):
    """One training step moves each running statistic by the spec's momentum (PyTorch's
    meaning; Keras gets 1 - momentum), with the biased batch variance Keras uses."""
    spec = S.preset("resnet50", style, **TINY)
    weights = reference.calibrated_weights(spec, seed=5, size=40)
    images = reference.random_images(spec, batch=4, size=40, seed=6) * 2 + 0.5  # stats far from the calibrated ones
    model = rk.build(spec)
    rk.load_weights(model, weights)
    model(images, training=True)
    _, expected = reference.forward_train(spec, weights, images, variance="biased")
    updated = rk.export_weights(model)
    for key, value in expected.items():
        # fp32 batch statistics of O(1) activations are good to ~1e-6; the swapped convention
        # (0.99 for 0.01) is off by O(1)
        assert parity.rel_error(updated[key], value) <= 1e-4, key


def test_classifier_activation_and_heads():
    spec = S.preset("resnet50", "keras", **TINY)
    weights = reference.calibrated_weights(spec, seed=7, size=40)
    images = reference.random_images(spec, batch=4, size=40, seed=8)
    logits_model, softmax_model = rk.build(spec), rk.keras_model(spec, classifier_activation="softmax")
    rk.load_weights(logits_model, weights)
    rk.load_weights(softmax_model, weights)
    logits = rk.predict(logits_model, images).astype(np.float64)
    softmax = np.exp(logits - logits.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    assert parity.rel_error(rk.predict(softmax_model, images), softmax) <= 1e-6

    model = rk.ResNet50(img_channel=1, num_classes=10, include_top=False, pooling="max")
    assert model.spec == S.resnet50(image_channels=1, num_classes=10, include_top=False, pooling="max")
    assert model.output_shape == (None, 2048) and model.input_shape == (None, None, None, 1)
    assert model.layers[-1].name == "max_pool"


# ----------------------------------------------------------------------------- contract and errors

def test_inputs_are_checked():
    spec = S.preset("resnet50", "keras", **TINY)
    with pytest.raises(ValueError, match=r"needs images of at least 8x8 pixels, got 7x30"):
        rk.keras_model(spec, input_shape=(7, 30, 3))
    with pytest.raises(ValueError, match=r"input_shape: expected \(height, width, 3\) \(channels last\), got \(3, 32, 32\)"):
        rk.keras_model(spec, input_shape=(3, 32, 32))
    fixed = rk.keras_model(spec, input_shape=(32, None, 3))
    assert rk.predict(fixed, np.ones((1, 32, 17, 3), np.float32)).shape == (1, 5)
    with pytest.raises(ValueError, match=r"built for 32xNone inputs, got 40x40"):
        rk.predict(fixed, np.ones((1, 40, 40, 3), np.float32))
    with pytest.raises(ValueError, match=r"expected 3 channels on the last axis \(NHWC\), got shape \(1, 3, 32, 32\)"):
        rk.predict(fixed, np.ones((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="needs images of at least 8x8 pixels"):
        rk.predict(rk.build(spec), np.ones((1, 4, 4, 3), np.float32))


def test_weight_errors_name_the_key(pair):
    spec = S.preset("resnet50", "keras", **TINY)
    model = rk.build(spec)
    weights = init(spec, 1)
    rk.load_weights(model, weights)
    before = rk.export_weights(model)
    bad = {**weights, "conv3_block1_2_conv.kernel": np.zeros((3, 3, 16, 8), np.float32)}
    del bad["conv2_block1_0_bn.var"]
    with pytest.raises(ValueError, match=r"conv2_block1_0_bn.var: missing[\s\S]*conv3_block1_2_conv.kernel: expected shape \(3, 3, 16, 16\), got \(3, 3, 16, 8\)"):
        rk.load_weights(model, bad)
    with pytest.raises(ValueError, match="predictions.bias: expected dtype float32, got float64"):
        rk.load_weights(model, {**weights, "predictions.bias": weights["predictions.bias"].astype(np.float64)})
    _same(rk.export_weights(model), before)  # nothing touched

    model.spec = spec.replace(num_classes=7)  # a model whose layers disagree with its spec
    with pytest.raises(WeightsError, match=r"predictions.kernel: model variable predictions/kernel has shape \(64, 5\), the weights \(64, 7\)"):
        rk.load_weights(model, init(model.spec))
    with pytest.raises(ValueError, match="has no ResNetSpec in .spec.*from_keras_applications"):
        rk.export_weights(pair("resnet50").app)


# ----------------------------------------------------------------------------- imports

_FRAMEWORKS = ("torch", "tensorflow", "jax", "flax")


def _modules_after(code, env):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_import_loads_no_framework_beyond_keras():
    """On this run's backend: importing and using resnet_keras loads no framework that
    ``import keras`` alone does not."""
    before, after = _modules_after(f"""
        import sys
        def loaded():
            return ",".join(sorted(m for m in {_FRAMEWORKS} if sys.modules.get(m))) or "-"
        import keras
        print(loaded())
        import numpy as np, resnet_keras
        from shared import spec
        resnet_keras.predict(resnet_keras.build(spec.resnet50(depths=(1,), width=8)), np.ones((1, 8, 8, 3), np.float32))
        print(loaded())""", {})
    assert after == before


@pytest.mark.slow  # skipped by the development run (README); CI runs it
@pytest.mark.skipif(BACKEND != "tensorflow", reason="the tensorflow pass checks it once")
def test_tensorflow_backend_needs_no_jax_torch_flax():
    """``import tensorflow`` itself imports jax when installed (tensorflow/lite/python/util.py);
    with jax, torch and flax made unimportable, resnet_keras still imports, builds and predicts."""
    modules = _modules_after(f"""
        import sys
        for name in ("jax", "torch", "flax"):
            sys.modules[name] = None
        import numpy as np, resnet_keras
        from shared import spec
        resnet_keras.predict(resnet_keras.build(spec.resnet50(depths=(1,), width=8)), np.ones((1, 8, 8, 3), np.float32))
        print(*sorted(m for m in {_FRAMEWORKS} if sys.modules.get(m)))""", {"KERAS_BACKEND": "tensorflow"})
    assert modules == ["tensorflow"]


# ----------------------------------------------------------------------------- runner, precisions, GPU

def test_runner_trace_names_every_block():
    """``resnet-parity check --trace`` names the first diverging block: the runner's activations
    carry the reference hook's names and values."""
    spec = S.preset("resnet50", "torchvision", **TINY)
    weights = reference.calibrated_weights(spec, seed=11, size=40)
    images = reference.random_images(spec, batch=4, size=40, seed=12)
    hooked, peer = {}, {}
    reference.forward(spec, weights, images, hook=hooked.__setitem__)
    reference.forward(spec, weights, images, hook=peer.__setitem__, dtype=np.float32)
    out = runner.run_check(spec, weights, images, trace=True)
    assert sorted(out) == sorted(["logits", *(f"trace/{name}" for name in hooked)])
    for name, expected in hooked.items():
        peer_error = parity.rel_error(peer[name], expected)
        tolerance = fp32_budget(peer_error)  # check's rule: 4x the peer, floor 1e-6 (fp32 noise)
        assert parity.rel_error(out[f"trace/{name}"], expected) <= tolerance, name
    assert np.array_equal(out["trace/head"], out["logits"])


@pytest.fixture(scope="module")
def gpu_case():
    """ResNet-50 at the measured table's GPU conditions: 224 px, batch 16."""
    if not runner.has_gpu():
        pytest.skip(f"the {BACKEND} backend sees no GPU")
    spec = S.resnet50("keras")
    weights = reference.calibrated_weights(spec, seed=9, size=224)
    images = reference.random_images(spec, batch=16, size=224, seed=10)
    return spec, weights, images, reference.forward(spec, weights, images)


# CPU bf16 is tests/test_parity.py's (every framework, the measured 64 px row).
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_gpu_precision_against_measured_budget(gpu_case, precision):
    """fp32 with TF32 off within 4x its measured error; TF32 and Keras' mixed_bfloat16 against
    the reference with their rounding emulated (shared.tools.check.low_precision_oracle)."""
    spec, weights, images, expected = gpu_case
    out = runner.run_check(spec, weights, images, device="gpu", precision=precision)["logits"]
    assert keras.config.dtype_policy().name == "float32"  # restored
    error = parity.rel_error(out, expected)
    tolerance = parity.budget(arch="resnet50", device="gpu", precision="fp32")
    if precision != "fp32":  # judged against the reference with this precision's rounding emulated
        assert error > tolerance  # it really ran at the lower precision: well above fp32's error
        expected, tolerance = low_precision_oracle(spec, weights, images, precision)
        error = parity.rel_error(out, expected)
    top1 = parity.top1_agreement(out, expected)
    print(f"{BACKEND} gpu {precision}: rel {error:.2e} (budget {tolerance:.2e}), top-1 {top1[0]}/{top1[1]}")
    assert error <= tolerance < 0.5
