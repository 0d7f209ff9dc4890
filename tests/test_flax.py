"""resnet_flax against torchvision, the float64 reference, the published parameter counts of
every preset and its own contract (build, load, export, predict, train mode, nnx transforms).
Tolerances: 4x a peer's error against float64, measured here on the same weights and input
(shared.parity.budget)."""

import copy
import inspect
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from shared.parity import fp32_budget
from shared.tools.check import low_precision_oracle
from hypothesis import given, settings, strategies as st

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import resnet_flax as rf  # noqa: E402
from resnet_flax.layers import max_pool as _max_pool  # noqa: E402
from resnet_flax.model import ResNet  # noqa: E402
from shared import interop, parity, reference, spec as S, weights as W  # noqa: E402
from strategies import block_specs, small_specs  # noqa: E402
from helpers import dev_or_slow  # noqa: E402

BN_NAMES = {"scale": "gamma", "bias": "beta", "mean": "mean", "var": "var"}


def _has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


needs_gpu = pytest.mark.skipif(not _has_gpu(), reason="needs a jax GPU device")


def _fp32_budget(spec, weights, images):
    """4x the error of the same arithmetic in float32 (shared.reference) against float64."""
    ref = reference.forward(spec, weights, images)
    peer = parity.rel_error(reference.forward(spec, weights, images, dtype=np.float32), ref)
    # A peer error of exactly 0 would leave no budget at all: floor it at 1e-6 then.
    return ref, fp32_budget(peer)  # check's rule: 4x the peer, floor 1e-6 (fp32 noise)


def _small(style="torchvision", **overrides):
    return S.resnet50(style, **{"depths": (1, 2), "width": 8, "num_classes": 10, **overrides})


def _loaded(spec, weights, **native_kwargs):
    """``load_weights`` into ``build(spec)``, or into ``ResNet(spec, **native_kwargs)`` (a dtype)."""
    return rf.load_weights(rf.ResNet(spec, **native_kwargs) if native_kwargs else rf.build(spec), weights)


# ----------------------------------------------------------------- against torchvision

# Image sizes: compile and float64 reference cost grow with depth and width.
TORCHVISION_SIZES = {"resnet50": 96, "resnet18": 64, "resnext50_32x4d": 64, "resnet101": 64, "resnet152": 64,
                     "wide_resnet50_2": 64}


def _constructor(arch):
    return getattr(rf, S.PRESETS[arch].constructor)


@pytest.fixture(scope="module")
def torchvision_case(torchvision_model):
    """``case(arch)``: torchvision (calibrated, randomised BatchNorm) and the arch's constructor's
    Flax model loaded through shared.interop.from_torchvision, on the same batch of 2 images."""
    torch = pytest.importorskip("torch")
    cache = {}

    def case(arch):
        if arch not in cache:
            tv, _, _ = torchvision_model(arch)
            spec, weights = interop.from_torchvision(tv.state_dict())
            images = reference.random_images(spec, 2, TORCHVISION_SIZES[arch], seed=7)
            with torch.no_grad():
                peer = tv(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
            model = _constructor(arch)()
            rf.load_weights(model, weights)
            cache[arch] = SimpleNamespace(
                tv=tv, spec=spec, weights=weights, images=images, peer=peer, model=model,
                ref=reference.forward(spec, weights, images), ours=rf.predict(model, images),
            )
        return cache[arch]

    return case


@pytest.mark.parametrize("arch", dev_or_slow(TORCHVISION_SIZES))
def test_matches_torchvision_fp32_cpu(arch, torchvision_case):
    c = torchvision_case(arch)
    assert c.model.spec == c.spec == S.preset(arch)
    peer, ours = parity.rel_error(c.peer, c.ref), parity.rel_error(c.ours, c.ref)
    print(f"{arch} {c.images.shape}: torchvision fp32 rel {peer:.3g}, flax {ours:.3g}, budget {parity.budget(peer):.3g}")
    assert 0 < peer and ours <= parity.budget(peer)
    assert parity.top1_agreement(c.ours, c.ref) == (2, 2)


def test_bf16_compute_matches_torchvision_bf16_cpu(torchvision_case):
    torch = pytest.importorskip("torch")
    c = torchvision_case("resnet50")
    with torch.no_grad():
        tv16 = copy.deepcopy(c.tv).bfloat16()
        peer16 = tv16(torch.from_numpy(c.images).permute(0, 3, 1, 2).bfloat16()).float().numpy()
    model = _loaded(c.spec, c.weights, dtype=jnp.bfloat16)
    out = rf.predict(model, c.images)
    peer, ours = parity.rel_error(peer16, c.ref), parity.rel_error(out, c.ref)
    print(f"resnet50 bf16 {c.images.shape}: torchvision rel {peer:.3g}, flax {ours:.3g}")
    assert ours <= parity.budget(peer)
    assert ours > 10 * parity.rel_error(c.ours, c.ref)  # bf16 arithmetic really ran
    # Mixed precision: bf16 activations, float32 parameters and statistics, exported bit-exact.
    assert nnx.eval_shape(lambda m, x: m(x), model, c.images).dtype == jnp.bfloat16
    assert all(v.get_value().dtype == jnp.float32 for _, v in nnx.to_flat_state(nnx.state(model)))
    assert all(np.array_equal(v, c.weights[k]) for k, v in rf.export_weights(model).items())


@pytest.mark.parametrize("arch, overrides", [
    ("resnet50v2", {}), ("resnext50_32x4d", dict(groups=4, width_per_group=32))], ids=["preact", "grouped"])
def test_bf16_block_kinds_against_emulated_bf16_reference(arch, overrides):
    """Pre-activation and grouped blocks in bf16 (BatchNorm, the pre-activation's and post_bn
    included, in float32) within the emulated-bf16 budget, on a shallow net (test_parity's rule)."""
    spec = S.preset(arch, depths=(1, 1, 1, 1), width=16, num_classes=100, **overrides)
    weights = reference.calibrated_weights(spec, seed=1, size=64)
    images = reference.random_images(spec, 4, 64, seed=2)
    out = rf.predict(_loaded(spec, weights, dtype=jnp.bfloat16), images)
    emulated, budget = low_precision_oracle(spec, weights, images, "bf16")
    print(f"{arch} bf16: rel vs emulated bf16 {parity.rel_error(out, emulated):.3g}, budget {budget:.3g}")
    assert parity.rel_error(out, reference.forward(spec, weights, images)) > 1e-3  # bf16 really ran
    assert parity.rel_error(out, emulated) <= budget < 0.5


# ----------------------------------------------------------------- against the reference


def _assert_matches_reference(spec, size):
    """Calibrated weights, two images: resnet_flax within the fp32 budget of float64."""
    weights = reference.calibrated_weights(spec, seed=size)
    images = reference.random_images(spec, 2, size, seed=1)
    ref, budget = _fp32_budget(spec, weights, images)
    out = rf.predict(_loaded(spec, weights), images)
    assert out.shape == (2, *spec.output_shape(size))
    assert parity.rel_error(out, ref) <= budget


@pytest.mark.parametrize("style", S.STYLES)
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_small_specs_match_reference(style, data):
    spec = data.draw(small_specs(styles=(style,), classes=(2, 20)))
    size = data.draw(st.integers(max(32, spec.min_input_size), 96))
    _assert_matches_reference(spec, size)


# Each block kind at its preset's full depth, on small images: basic (ResNet-18), grouped
# bottleneck (ResNeXt-50 32x4d), pre-activation with V2's stem and head (ResNet-50 V2).
PRESET_SIZES = {"resnet18": 64, "resnext50_32x4d": 64, "resnet50v2": 64}


@pytest.mark.parametrize("arch", PRESET_SIZES)
def test_presets_match_reference(arch):
    spec = S.preset(arch, num_classes=10)
    size = PRESET_SIZES[arch]
    weights = reference.calibrated_weights(spec, seed=1, size=size)
    images = reference.random_images(spec, 2, size, seed=2)
    ref, budget = _fp32_budget(spec, weights, images)
    model = _constructor(arch)(num_classes=10, weights=weights)
    assert model.spec == spec
    out = rf.predict(model, images)
    err = parity.rel_error(out, ref)
    print(f"{arch} {images.shape}: flax fp32 rel {err:.3g}, budget {budget:.3g}")
    assert err <= budget
    assert parity.top1_agreement(out, ref) == (2, 2)


@settings(max_examples=8, deadline=None)
@given(spec=block_specs(classes=(2, 20)), data=st.data())
def test_generated_block_specs_match_reference(spec, data):
    """Every block kind, groups, width per group, expansion and stride block."""
    size = data.draw(st.integers(max(16, spec.min_input_size), 48))
    _assert_matches_reference(spec, size)


def test_v2_stem_pool_pads_with_zero():
    """V2 max-pools the raw stem conv output, so Keras' zero padding is part of the function: a
    model padding with -inf (PyTorch's rule) fails the check the right one passes. A stem conv
    whose outputs are mostly negative (bias -3; BatchNorm recalibrated) lets the padding through:
    with a zero-mean output the pre-activation ReLU zeroes both values wherever they differ."""
    spec = S.preset("resnet50v2", depths=(1, 1), width=8, num_classes=10)
    assert spec.stem()[-1].pad_value == 0.0
    images = reference.random_images(spec, 2, 32, seed=5)
    weights = reference.calibrated_weights(spec)
    weights["conv1_conv.bias"] = weights["conv1_conv.bias"] - 3
    weights = reference.calibrate(spec, weights, images)
    ref, budget = _fp32_budget(spec, weights, images)
    assert parity.rel_error(rf.predict(_loaded(spec, weights), images), ref) <= budget
    wrong = _loaded(spec.replace(pool_pad_value=float("-inf")), weights)
    assert parity.rel_error(rf.predict(wrong, images), ref) > 100 * budget


def test_max_pool_pads_with_minus_infinity():
    pool = S.resnet50().stem()[3]
    assert (np.asarray(_max_pool(-jnp.ones((1, 4, 4, 1)), pool)) == -1).all()
    x = reference.random_images(S.resnet50(), 2, 9)
    assert np.array_equal(np.asarray(_max_pool(jnp.asarray(x), pool)), reference.maxpool(x, 3, 2, pool.padding))


# ----------------------------------------------------------------- weights


def _native_names(model):
    """Canonical name -> (shape, variable type) read off the nnx state by the naming rule."""
    out = {}
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        layer, param = path
        if isinstance(getattr(model, layer), nnx.BatchNorm):
            param = BN_NAMES[param]
        out[f"{layer}.{param}"] = (variable.get_value().shape, type(variable))
    return out


@pytest.mark.parametrize("spec", [S.resnet50(), _small("keras"), _small(pooling=None, include_top=False)],
                         ids=["resnet50", "keras-small", "headless-small"])
def test_param_names_and_shapes_equal_spec(spec):
    names = _native_names(rf.build(spec))
    assert {k: shape for k, (shape, _) in names.items()} == spec.param_shapes()
    for key, (_, kind) in names.items():
        assert kind is (nnx.BatchStat if key.endswith((".mean", ".var")) else nnx.Param), key


# Every preset in the style(s) its peer published a count for: torchvision's weights metadata,
# Keras Applications' summaries (those count the BatchNorm statistics).
PUBLISHED = [(arch, p.styles[0], p.params, p.params_count_bn_statistics) for arch, p in S.PRESETS.items()]
PUBLISHED += [(arch, "keras", n, True) for arch, n in S.KERAS_V1_PARAMS.items()]
DEEP = 16  # blocks in a ResNet-50: the deeper presets only repeat its blocks, and take seconds each


@pytest.mark.parametrize("arch, style, published, with_statistics", [
    pytest.param(*case, id=f"{case[0]}-{case[1]}",
                 marks=[pytest.mark.slow] if sum(S.preset(case[0]).depths) > DEEP else [])
    for case in PUBLISHED])
def test_every_preset_builds_with_the_published_parameter_count(arch, style, published, with_statistics):
    spec = S.preset(arch, style)
    names = _native_names(nnx.eval_shape(lambda: rf.ResNet(spec)))  # shapes only: no full-size init
    assert {k: shape for k, (shape, _) in names.items()} == spec.param_shapes()
    counted = [shape for shape, kind in names.values() if with_statistics or kind is nnx.Param]
    assert sum(int(np.prod(shape)) for shape in counted) == published


def test_one_constructor_per_preset():
    for arch, p in S.PRESETS.items():
        construct = getattr(rf, p.constructor)
        assert p.constructor in rf.__all__ and construct.__name__ == p.constructor
        assert inspect.signature(construct).parameters["style"].default == p.styles[0]
    model = rf.ResNet18(img_channel=1, num_classes=7)
    assert model.spec == S.preset("resnet18", image_channels=1, num_classes=7)
    assert model.conv2_block1_2_conv.kernel.get_value().shape == (3, 3, 64, 64)
    assert model.predictions.kernel.get_value().shape == (512, 7)
    with pytest.raises(ValueError, match=r"resnet50v2 exists in style\(s\) \('keras',\), got 'torchvision'"):
        rf.ResNet50V2(style="torchvision")


def test_export_of_load_is_bit_exact(torchvision_case):
    c = torchvision_case("resnet50")
    keras = _small("keras")
    for spec, weights in [(c.spec, c.weights), (keras, reference.calibrated_weights(keras))]:
        mine = {k: v.copy() for k, v in weights.items()}
        model = _loaded(spec, mine)
        for v in mine.values():
            v[...] = 0  # the model holds its own copy
        out = rf.export_weights(model)
        assert list(out) == list(spec.param_shapes())
        for key, value in out.items():
            assert value.dtype == np.float32 and value.tobytes() == weights[key].tobytes(), key
            value[...] = 0  # and export hands out copies
        assert all(v.tobytes() == weights[k].tobytes() for k, v in rf.export_weights(model).items())


def test_safetensors_file_gives_identical_outputs(torchvision_case, tmp_path):
    c = torchvision_case("resnet50")
    path = tmp_path / "resnet50.safetensors"
    W.save(c.weights, path)
    model = rf.ResNet50()
    rf.load_weights(model, W.load(path, c.spec))
    assert np.array_equal(rf.predict(model, c.images), c.ours)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda w: w.update({"predictions.kernel": np.zeros((64, 9), np.float32)}),
         r"predictions.kernel: expected shape \(64, 10\), got \(64, 9\)"),
        (lambda w: w.update({"predictions.bias": w["predictions.bias"].astype(np.float64)}),
         r"predictions.bias: expected dtype float32, got float64"),
        (lambda w: w.pop("conv3_block2_3_bn.var"), r"conv3_block2_3_bn.var: missing \(expected float32 \(64,\)\)"),
        (lambda w: w.update({"conv9_conv.kernel": np.zeros(1, np.float32)}), r"conv9_conv.kernel: unexpected key"),
    ],
    ids=["shape", "dtype", "missing", "unexpected"],
)
def test_load_weights_rejects_bad_weights_and_touches_nothing(change, message):
    spec = _small()
    model = rf.build(spec)
    before = rf.export_weights(model)
    bad = reference.calibrated_weights(spec)  # every other entry differs from the model's
    change(bad)
    with pytest.raises(ValueError, match=message):
        rf.load_weights(model, bad)
    assert all(np.array_equal(v, before[k]) for k, v in rf.export_weights(model).items())


def test_build_starts_from_canonical_init_in_eval_mode():
    spec = _small(zero_init_residual=True)
    for seed in (None, 3):
        model = rf.build(spec) if seed is None else rf.ResNet(spec, rngs=seed)
        expected = W.init(spec, 0 if seed is None else seed)
        assert all(v.tobytes() == expected[k].tobytes() for k, v in rf.export_weights(model).items())
        assert all(m.use_running_average for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm))


def test_native_init_draws_torchvision_distributions():
    spec = S.resnet50(depths=(1,), width=16, num_classes=10, zero_init_residual=True)
    w = rf.export_weights(rf.ResNet(spec, rngs=nnx.Rngs(0)))
    assert not np.array_equal(w["conv2_block1_3_conv.kernel"], w["conv2_block1_0_conv.kernel"])  # one key each
    for key in ("conv1_conv.kernel", "conv2_block1_2_conv.kernel", "conv2_block1_3_conv.kernel"):
        k = w[key]
        assert k.std() == pytest.approx(np.sqrt(2.0 / (k.shape[0] * k.shape[1] * k.shape[3])), rel=0.1), key
    bound = 1 / np.sqrt(64)
    for key in ("predictions.kernel", "predictions.bias"):
        assert np.abs(w[key]).max() <= bound and np.abs(w[key]).max() > 0.8 * bound, key
    assert (w["conv2_block1_3_bn.gamma"] == 0).all() and (w["conv2_block1_2_bn.gamma"] == 1).all()
    assert (w["conv1_bn.mean"] == 0).all() and (w["conv1_bn.var"] == 1).all() and (w["conv1_bn.beta"] == 0).all()


def test_seed_constructors_take_channels_and_classes():
    model = rf.ResNet50(img_channel=1, num_classes=7)
    assert model.spec == S.resnet50(image_channels=1, num_classes=7)
    assert model.conv1_conv.kernel.get_value().shape == (7, 7, 1, 64)
    assert model.predictions.kernel.get_value().shape == (2048, 7)


# ----------------------------------------------------------------- predict and nnx transforms


def test_predict_checks_images():
    model = rf.build(_small())
    with pytest.raises(ValueError, match=r"4-D NHWC batch"):
        rf.predict(model, np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"3 channels on the last axis"):
        rf.predict(model, np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"at least 8x8 pixels, got 4x8"):
        rf.predict(model, np.zeros((1, 4, 8, 3), np.float32))


def test_predict_traces_once_per_shape(monkeypatch):
    spec = _small(width=12, num_classes=3, image_channels=2)  # compiled by no other test
    traces = []
    call = ResNet.__call__
    monkeypatch.setattr(ResNet, "__call__", lambda self, x: traces.append(x.shape) or call(self, x))
    model, other = rf.build(spec), rf.ResNet(spec, rngs=1)
    small, large = (reference.random_images(spec, 2, s) for s in (32, 40))
    first = rf.predict(model, small)
    rf.predict(model, small)
    rf.predict(model, large)
    assert np.array_equal(rf.predict(model, small), first)
    assert not np.array_equal(rf.predict(other, small), first)  # same program, the other's weights
    assert traces == [small.shape, large.shape]


def test_nnx_jit_and_split_merge_compute_the_same_function():
    spec = _small("keras")
    weights = reference.calibrated_weights(spec)
    images = reference.random_images(spec, 2, 48)
    ref, budget = _fp32_budget(spec, weights, images)
    model = _loaded(spec, weights)
    graphdef, state = nnx.split(model)
    outs = {
        "predict": rf.predict(model, images),
        "nnx.jit": nnx.jit(lambda m, x: m(x))(model, images),
        "split/merge": jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, images),
    }
    for name, out in outs.items():
        assert parity.rel_error(out, ref) <= budget, name


def test_train_mode_uses_batch_statistics_and_updates_running_averages():
    spec = S.resnet50(depths=(1, 1, 1, 1), width=8, num_classes=10)  # last stage 1x1: N = 2 per BN
    weights = reference.calibrated_weights(spec)  # running statistics of other images
    images = reference.random_images(spec, 2, 32, seed=3)
    batch = reference.calibrate(spec, weights, images)  # numpy float64 batch statistics (biased var)
    expected, budget = _fp32_budget(spec, batch, images)
    model = _loaded(spec, weights)
    eval_out = rf.predict(model, images)

    model.train()
    out = nnx.jit(lambda m, x: m(x))(model, images)
    assert parity.rel_error(out, expected) <= budget
    assert parity.rel_error(eval_out, expected) > 100 * budget  # the two modes really differ

    after = rf.export_weights(model)
    for layer in spec.layers():
        if layer.kind != "bn":
            continue
        m = layer.momentum  # spec's meaning: weight of the new batch statistic
        for stat in ("mean", "var"):
            key = f"{layer.name}.{stat}"
            running = (1 - m) * weights[key].astype(np.float64) + m * batch[key].astype(np.float64)
            assert parity.rel_error(after[key], running) <= budget, key
        for param in ("gamma", "beta"):
            assert np.array_equal(after[f"{layer.name}.{param}"], weights[f"{layer.name}.{param}"])

    # predict is eval mode whatever the model's mode: the updated running averages.
    ref, budget = _fp32_budget(spec, after, images)
    assert parity.rel_error(rf.predict(model, images), ref) <= budget
    model.eval()
    assert all(m.use_running_average for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm))


def test_import_pulls_in_no_other_framework():
    code = "import sys, resnet_flax; print(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.strip() == "[]"


# ----------------------------------------------------------------- GPU


@pytest.fixture(scope="module")
def gpu_case():
    spec = S.resnet50()
    weights = reference.calibrated_weights(spec)
    images = reference.random_images(spec, 16, 224, seed=11)
    return spec, weights, images, reference.forward(spec, weights, images)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_gpu_resnet50_224_against_float64(precision, gpu_case):
    spec, weights, images, ref = gpu_case
    model = _loaded(spec, weights, dtype=jnp.bfloat16 if precision == "bf16" else None)
    with jax.default_matmul_precision("highest" if precision == "fp32" else "default"):
        out = rf.predict(model, images)
    err = parity.rel_error(out, ref)
    budget = parity.budget(arch="resnet50", device="gpu", precision="fp32")
    if precision != "fp32":  # judged against the reference with this precision's rounding emulated
        assert err > budget  # it really ran at low precision
        ref, budget = low_precision_oracle(spec, weights, images, precision)
        err = parity.rel_error(out, ref)
        assert budget < 0.5
    print(f"resnet50 gpu {precision}: rel {err:.3g}, top-1 {parity.top1_agreement(out, ref)}, budget {budget:.3g}")
    assert err <= budget
