"""resnet_keras builds timm's and keras-hub's family (deep and tiered stems, the stem pools,
avg-down shortcuts, SE and ECA, anti-aliasing, timm's pre-activation) against the float64
reference, each new layer against the reference's own function, and the family's models through
Keras' own files. CI runs this file once per backend: KERAS_BACKEND=tensorflow|jax|torch pytest -m keras."""

import numpy as np
import pytest

from shared import keras_h5, parity, reference, spec as S
from shared.parity import fp32_budget
from helpers import assert_same

pytestmark = pytest.mark.keras
keras = pytest.importorskip("keras")
import resnet_keras as rk  # noqa: E402
from resnet_keras import checkpoints, layers  # noqa: E402

BACKEND = keras.backend.backend()
SMALL = dict(depths=(1, 1), width=8, num_classes=8)
# One small spec per new kind (SE at width 16: 64 channels, hidden 8 by timm's minimum).
CASES = {
    "resnet50d": S.preset("resnet50d", **SMALL),  # deep stem, avg-down (ceil mode)
    "resnet26t": S.preset("resnet26t", **SMALL),  # tiered stem
    "resnet_vd_18": S.preset("resnet_vd_18", **SMALL),  # vd basic block, project_first
    "seresnet50": S.preset("seresnet50", **{**SMALL, "width": 16}),
    "seresnet18_hard_sigmoid": S.preset("seresnet18", **SMALL, attention_gate="hard_sigmoid"),
    "ecaresnet26t": S.preset("ecaresnet26t", **SMALL),
    "resnetrs50": S.preset("resnetrs50", **SMALL),  # conv stem pool, SE at 1/4
    "resnetaa50d": S.preset("resnetaa50d", **SMALL),  # avg stem pool, avg anti-aliasing
    "resnetblur18": S.preset("resnetblur18", **SMALL),  # max + blur stem pool, blur anti-aliasing
    "resnetv2_50": S.preset("resnetv2_50", **SMALL),  # timm's V2: -inf stem pool, no biases
    "resnet50d_count_pad": S.preset("resnet50d", **SMALL, avg_down_count_include_pad=True),
}


def _numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float32)


@pytest.mark.parametrize("size", [33, 64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_family_against_reference(case, size):
    """Odd sizes too: 33 px leaves a 9x9 map where the avg-down pool's ceil mode keeps a last,
    cut window. Within 4x the float32 reference's own error (check's rule)."""
    spec = CASES[case]
    weights = reference.calibrated_weights(spec, seed=size, size=size)
    images = reference.random_images(spec, batch=4, size=size, seed=size + 1)
    model = rk.build(spec)
    rk.load_weights(model, weights)
    assert_same(rk.export_weights(model), weights)
    expected = reference.forward(spec, weights, images)
    peer = parity.rel_error(reference.forward(spec, weights, images, dtype=np.float32), expected)
    error = parity.rel_error(rk.predict(model, images), expected)
    print(f"{BACKEND} {case} {size}px: vs float64 {error:.2e} (float32 reference {peer:.2e})")
    assert error <= fp32_budget(peer)


@pytest.mark.parametrize("case", sorted(CASES))
def test_layers_names_and_order(case):
    """Every spec layer is a Keras layer of its name, listed where ``keras_layer_names`` says (the
    legacy ``.h5`` writer's order); the fixed filters hold no weights."""
    spec = CASES[case]
    model = rk.build(spec)
    assert [layer.name for layer in model.layers] == keras_h5.keras_layer_names(spec)
    names = {layer.name for layer in model.layers}
    assert {layer.name for layer in spec.layers()} <= names
    assert sorted(key for key, _ in rk.variables(model)) == sorted(spec.param_shapes())
    assert model.count_params() == spec.num_params(include_bn_statistics=True)
    for layer in spec.layers():
        if layer.kind in ("blur", "avgpool", "gate", "scale"):
            assert model.get_layer(layer.name).weights == [], layer.name


def test_keras_pools_where_keras_has_the_rule():
    """keras-hub's avg-down pool (2x2/2, ceil mode, padding not counted) is Keras'
    AveragePooling2D 'same'; the floor 'valid'; the blur and ECA's conv are ours."""
    model = rk.build(CASES["resnetblur18"])
    assert type(model.get_layer("conv3_block1_aa")).__name__ == "Blur2D"
    assert type(model.get_layer("pool1_blur")).__name__ == "Blur2D"
    model = rk.build(CASES["resnet50d"])
    assert model.get_layer("conv3_block1_down_pool").get_config()["padding"] == "same"
    assert type(rk.build(CASES["ecaresnet26t"]).get_layer("conv2_block1_eca_conv")).__name__ == "ChannelConv1D"
    floor = S.AvgPool("p", 2, 2, ceil_mode=False)
    assert layers._keras_avg_padding(floor) == "valid"
    assert layers._keras_avg_padding(S.AvgPool("p", 3, 2, (1, 1, 1, 1), True, False)) is None


AVG_POOLS = [S.AvgPool("p", k, s, pad, ceil, count)
             for k, s, pad in ((3, 2, (1, 1, 1, 1)), (2, 2, (0, 0, 0, 0)), (3, 3, (0, 0, 0, 0)), (3, 2, (1, 0, 0, 1)))
             for ceil in (True, False) for count in (True, False)]


@pytest.mark.parametrize("pool", AVG_POOLS, ids=lambda p: f"k{p.size}s{p.stride}p{''.join(map(str, p.padding))}"
                         f"{'ceil' if p.ceil_mode else 'floor'}{'count' if p.count_include_pad else 'exclude'}")
def test_average_pool_is_pytorchs_rule(pool):
    """Every AvgPool rule (the built-in Keras pool where it applies, else TorchAveragePooling2D)
    against the reference's AvgPool2d, at an odd and an even size, within 4x the float32
    reference; the shapes Keras infers are the computed ones."""
    for h, w in ((9, 9), (8, 11)):
        x = np.random.default_rng(h * w).normal(size=(2, h, w, 3)).astype(np.float32)
        inputs = keras.Input((h, w, 3))
        model = keras.Model(inputs, layers.apply(pool, inputs, None))
        out = _numpy(model(x))
        expected = reference.avgpool(x.astype(np.float64), pool)
        assert model.output_shape[1:] == out.shape[1:] == expected.shape[1:]
        peer = parity.rel_error(reference.avgpool(x, pool), expected)
        assert parity.rel_error(out, expected) <= fp32_budget(peer)


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_blur_against_reference(pad_mode):
    blur = S.Blur("b", channels=3, pad_mode=pad_mode)
    x = np.random.default_rng(3).normal(size=(2, 9, 8, 3)).astype(np.float32)
    inputs = keras.Input((None, None, 3))
    out = _numpy(keras.Model(inputs, layers.apply(blur, inputs, None))(x))
    expected = reference.blur(x.astype(np.float64), blur)
    assert out.shape == expected.shape == (2, 5, 4, 3)
    assert parity.rel_error(out, expected) <= fp32_budget(parity.rel_error(reference.blur(x, blur), expected))
    other = S.Blur("b", channels=3, pad_mode="constant" if pad_mode == "reflect" else "reflect")
    assert parity.rel_error(reference.blur(x.astype(np.float64), other), expected) > 1e-2  # the mode shows


def test_family_through_keras_files(tmp_path):
    """The registered layers survive ``model.save``/``load_model`` (safe mode), and a family
    model's ``.weights.h5`` reads back into canonical weights with its spec."""
    spec = S.preset("ecaresnet26t", **SMALL, anti_alias="blur", stem_pool="max_blur")
    weights = reference.calibrated_weights(spec, seed=2, size=40)
    images = reference.random_images(spec, batch=4, size=40, seed=3)
    model = rk.load_weights(rk.build(spec), weights)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False, safe_mode=True)
    assert [type(layer).__name__ for layer in loaded.layers] == [type(layer).__name__ for layer in model.layers]
    assert np.array_equal(_numpy(loaded(images, training=False)), rk.predict(model, images))
    checkpoints.write_weights_h5(spec, weights, tmp_path / "m.weights.h5")
    read_spec, read = checkpoints.read_weights_h5(tmp_path / "m.weights.h5", spec=spec)
    assert read_spec == spec
    assert_same(read, weights)


def test_train_mode_updates_statistics_of_the_family():
    """One training step through SE, the avg-down pool and the blur moves every running statistic
    as the reference's train step does (biased batch variance, as Keras)."""
    spec = S.preset("seresnet18", **SMALL, shortcut="avg_down", anti_alias="blur")
    weights = reference.calibrated_weights(spec, seed=5, size=33)
    images = reference.random_images(spec, batch=4, size=33, seed=6) * 2 + 0.5
    model = rk.load_weights(rk.build(spec), weights)
    model(images, training=True)
    _, expected = reference.forward_train(spec, weights, images, variance="biased")
    updated = rk.export_weights(model)
    for key, value in expected.items():
        assert parity.rel_error(updated[key], value) <= 1e-4, key  # as test_keras' momentum test
