"""resnet_flax on the family of shared.spec (deep stems, the stem pools, avg-down shortcuts, SE
and ECA, anti-aliasing, timm's pre-activation) against the float64 reference: each new layer
kind alone, one small spec per new kind, the new presets cut to depths (1, 1) at 64 px and at
65 px (odd sizes reach the avg-down pool's ceil mode and the blur's reflect padding), train mode
(batch statistics and running averages against ``reference.forward_train``, gradients against
``shared.backprop``), bf16 against the emulated-bf16 reference, and the weights round trips
(export/load, Orbax). Tolerances: 4x the same arithmetic in float32 against float64
(``parity.fp32_budget``), as in tests/test_flax.py."""

import numpy as np
import pytest

from shared import parity, reference, spec as S
from shared.parity import fp32_budget
from shared.tools import convert as formats
from shared.tools.check import _oracle, low_precision_oracle
from helpers import assert_same, random_weights

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import resnet_flax as rf  # noqa: E402
from resnet_flax import layers  # noqa: E402
from shared.tools.adapters import flax as adapter  # noqa: E402
from test_flax import _fp32_budget, _loaded, _native_names  # noqa: E402


def _layer_budget(ours, apply, x):
    """``ours`` (a jax float32 result) against ``apply`` in float64, within 4x ``apply`` in float32."""
    ref = apply(x.astype(np.float64))
    budget = fp32_budget(parity.rel_error(apply(x.astype(np.float32)), ref))
    return parity.rel_error(np.asarray(ours), ref), budget


def _images(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------- each new layer kind alone

AVG_POOLS = [
    S.AvgPool("plain", 2, 2),
    S.AvgPool("avg_down", 2, 2, ceil_mode=True, count_include_pad=False),  # timm's avg-down
    S.AvgPool("padded_ceil", 3, 2, (1, 1, 1, 1), ceil_mode=True, count_include_pad=True),
    S.AvgPool("padded_ceil_excl", 3, 2, (1, 1, 1, 1), ceil_mode=True, count_include_pad=False),
    S.AvgPool("asymmetric", 3, 2, (1, 0, 0, 1), ceil_mode=False, count_include_pad=True),
    S.AvgPool("stride3", 3, 3, (1, 1, 1, 1), ceil_mode=True, count_include_pad=True),
]


@pytest.mark.parametrize("pool", AVG_POOLS, ids=[p.name for p in AVG_POOLS])
@pytest.mark.parametrize("size", [(8, 8), (7, 9)])
def test_avg_pool_is_pytorchs_rule(pool, size):
    x = _images((2, *size, 3))
    ours = layers.avg_pool(jnp.asarray(x), pool)
    assert ours.shape[1:3] == S.out_size(*size, pool)
    err, budget = _layer_budget(ours, lambda a: reference.avgpool(a, pool), x)
    assert err <= budget, (err, budget)


def test_avg_pool_conventions_change_the_function():
    """The cases above reach both conventions: ceil mode adds a window at odd sizes, and with
    explicit padding the divisor depends on count_include_pad."""
    x = _images((1, 7, 9, 2)).astype(np.float64)
    ceil, floor = (reference.avgpool(x, S.AvgPool("p", 2, 2, ceil_mode=c)) for c in (True, False))
    assert ceil.shape == (1, 4, 5, 2) and floor.shape == (1, 3, 4, 2)
    incl, excl = (reference.avgpool(x, S.AvgPool("p", 3, 2, (1, 1, 1, 1), True, c)) for c in (True, False))
    assert parity.rel_error(incl, excl) > 0.1


BLURS = [S.Blur("reflect", 3), S.Blur("constant", 3, pad_mode="constant"),
         S.Blur("unnormalized", 3, normalize=False), S.Blur("stride1", 3, stride=1),
         S.Blur("wide", 3, filter=(1.0, 3.0, 3.0, 1.0), padding=(1, 2, 1, 2))]


@pytest.mark.parametrize("blur", BLURS, ids=[b.name for b in BLURS])
@pytest.mark.parametrize("size", [(8, 8), (7, 9)])
def test_blur_is_a_fixed_depthwise_filter(blur, size):
    x = _images((2, *size, 3), seed=1)
    ours = layers.blur(jnp.asarray(x), blur)
    err, budget = _layer_budget(ours, lambda a: reference.blur(a, blur), x)
    assert err <= budget, (err, budget)
    if blur.pad_mode == "reflect":  # the padding mode reaches the output
        other = reference.blur(x.astype(np.float64), S.Blur("c", 3, blur.stride, blur.filter, blur.padding,
                                                               "constant", blur.normalize))
        assert parity.rel_error(other, reference.blur(x.astype(np.float64), blur)) > 100 * budget


@pytest.mark.parametrize("taps, padding", [(3, (1, 1)), (5, (2, 2)), (7, (3, 3)), (5, (1, 3))])
def test_channel_conv_is_ecas_1d_conv_over_channels(taps, padding):
    layer = S.ChannelConv("eca", taps, padding)
    native = layers.native_layer(layer, nnx.Rngs(0), True, None, jnp.float32)
    kernel = np.asarray(native.kernel[...])
    assert kernel.shape == (taps,) and 0 < np.abs(kernel).max() <= taps**-0.5  # Conv1d's default init
    x = _images((3, 1, 1, 24), seed=2)
    err, budget = _layer_budget(native(jnp.asarray(x)), lambda a: reference.channel_conv(a, kernel.astype(a.dtype),
                                                                                        padding), x)
    assert err <= budget, (err, budget)


@pytest.mark.parametrize("function", S.GATES)
def test_gates(function):
    x = 4 * _images((2, 1, 1, 64), seed=3)  # reaches hard-sigmoid's clipped ends (|x| > 3)
    gate = S.Gate("g", function)
    err, budget = _layer_budget(layers.gate(jnp.asarray(x), gate), lambda a: reference.gate(a, function), x)
    assert err <= budget, (err, budget)
    other = reference.gate(x.astype(np.float64), "sigmoid" if function == "hard_sigmoid" else "hard_sigmoid")
    assert parity.rel_error(other, reference.gate(x.astype(np.float64), function)) > 100 * budget


def test_global_pool_keeps_dims_inside_an_attention():
    x = jnp.asarray(_images((2, 5, 7, 4)))
    assert layers.global_pool(x, S.GlobalPool("p", "avg", keepdims=True)).shape == (2, 1, 1, 4)
    assert layers.global_pool(x, S.GlobalPool("p", "max")).shape == (2, 4)


# ----------------------------------------------------------------- one small spec per new kind


def _tiny(style="torchvision", **fields):
    return S.preset_spec(style, **{"depths": (1, 1), "width": 8, "num_classes": 10, **fields})


KINDS = {
    "deep_stem": _tiny(stem_convs=((3, 8, 2), (3, 8, 1), (3, 16, 1))),
    "stem_max_blur": _tiny(block="basic", stem_pool="max_blur"),
    "stem_avg": _tiny(stem_pool="avg"),
    "stem_conv": _tiny(stem_pool="conv"),
    "stem_none": _tiny(block="basic", stem_pool="none"),
    "avg_down": _tiny(shortcut="avg_down"),
    "avg_down_floor_counting_pad": _tiny(shortcut="avg_down", avg_down_ceil_mode=False,
                                         avg_down_count_include_pad=True),
    "shortcut_3x3": _tiny(shortcut_kernel=3),
    "project_first": _tiny(block="basic", shortcut="avg_down", project_first=True),
    "se": _tiny(attention="se"),
    "se_hard_sigmoid": _tiny(block="basic", attention="se", attention_gate="hard_sigmoid"),
    "eca": _tiny(attention="eca", width=16),
    "aa_avg": _tiny(anti_alias="avg"),
    "aa_blur": _tiny(block="basic", anti_alias="blur"),
    "preact_timm": _tiny("timm", block="preact"),
}


def _case(spec, size, seed=1):
    weights = reference.calibrated_weights(spec, seed=seed, size=size)
    images = reference.random_images(spec, 2, size, seed=seed + 1)
    return weights, images


def _odd_size(spec) -> int:
    """65 px, or 64 where a block holds a 2x2 average pool without ceil mode (timm's avg
    anti-aliasing, avg-down without ceil mode) that may see an odd size: it drops the odd row
    the other path keeps, and the two no longer add up (in timm and PyTorch too)."""
    floor = any(layer.kind == "avgpool" and not layer.ceil_mode for b in spec.blocks() for layer in b.layers)
    return 64 if floor else 65


SIZES = [(k, s) for k in KINDS for s in dict.fromkeys((64, _odd_size(KINDS[k])))]


@pytest.mark.parametrize("kind, size", SIZES)
def test_each_new_kind_matches_reference(kind, size):
    spec = KINDS[kind]
    weights, images = _case(spec, size)
    ref, budget = _fp32_budget(spec, weights, images)
    out = rf.predict(_loaded(spec, weights), images)
    assert out.shape == (2, *spec.output_shape(size))
    err = parity.rel_error(out, ref)
    print(f"{kind} {size} px: flax rel {err:.3g}, budget {budget:.3g}")
    assert err <= budget


def test_kinds_hold_what_they_name():
    layer_kinds = {k: {layer.kind for layer in spec.layers()} for k, spec in KINDS.items()}
    assert {"blur", "maxpool"} <= layer_kinds["stem_max_blur"] and "avgpool" in layer_kinds["stem_avg"]
    assert "avgpool" in layer_kinds["avg_down"] and {"gate", "conv"} <= layer_kinds["se"]
    assert "channelconv" in layer_kinds["eca"] and "blur" in layer_kinds["aa_blur"]
    assert KINDS["project_first"].blocks()[0].shortcut and not KINDS["preact_timm"].blocks()[0].main[-1].bias
    assert KINDS["eca"].blocks()[-1].attention[1].kernel_size == 5  # ECA's rule: 5 for 128 channels, 3 for 64
    assert KINDS["se"].blocks()[0].attention[1].out_channels == 8  # timm's minimum of 8 (32 / 16 = 2)


# Same weights, another function: the reference of the alternative is far outside the budget
# the model meets, so each comparison above can fail on that convention.
ALTERNATIVES = [
    ("se_hard_sigmoid", dict(attention_gate="sigmoid")),
    ("aa_avg", dict(anti_alias="blur")),
    ("stem_avg", dict(stem_pool="max")),
    ("stem_max_blur", dict(stem_pool="max")),
]


@pytest.mark.parametrize("kind, change", ALTERNATIVES, ids=[f"{k}-{next(iter(c))}" for k, c in ALTERNATIVES])
def test_a_model_with_the_other_convention_fails(kind, change):
    spec = KINDS[kind]
    weights, images = _case(spec, _odd_size(spec))
    ref, budget = _fp32_budget(spec, weights, images)
    wrong = rf.predict(_loaded(spec.replace(**change), weights), images)
    assert parity.rel_error(wrong, ref) > 100 * budget


# ----------------------------------------------------------------- the new presets, (1, 1) deep

ORIGINAL = set(list(S.PRESETS)[:13])  # torchvision's and Keras Applications' (tests/test_flax.py)


def _family_presets():
    """The new presets at depths (1, 1), one per distinct spec (resnet200 cut to (1, 1) is
    resnet26's): arch -> spec."""
    out, seen = {}, set()
    for arch in S.PRESETS:
        if arch in ORIGINAL:
            continue
        spec = S.preset(arch, depths=(1, 1), num_classes=10)
        if spec not in seen:
            seen.add(spec)
            out[arch] = spec
    return out


FAMILY = _family_presets()
# Odd sizes where a layer depends on them: avg-down's ceil mode, the blur's reflection, avg aa.
ODD = [arch for arch, spec in FAMILY.items() if {"avgpool", "blur"} & {layer.kind for layer in spec.layers()}]


@pytest.mark.parametrize("arch, size", [(a, 64) for a in FAMILY] + [(a, 65) for a in ODD])
def test_family_presets_match_reference(arch, size):
    spec = FAMILY[arch]
    weights, images = _case(spec, size)
    ref, budget = _fp32_budget(spec, weights, images)
    err = parity.rel_error(rf.predict(_loaded(spec, weights), images), ref)
    print(f"{arch} (1, 1) {size} px: flax rel {err:.3g}, budget {budget:.3g}")
    assert err <= budget


def test_family_names_are_the_specs():
    """Every parameterised layer is the attribute named after its spec layer, holding the spec's
    shapes, Param or BatchStat by kind."""
    for arch, spec in FAMILY.items():
        names = _native_names(rf.ResNet(spec))
        assert {k: shape for k, (shape, _) in names.items()} == spec.param_shapes(), arch
        for key, (_, kind) in names.items():
            assert kind is (nnx.BatchStat if S.is_statistic(key) else nnx.Param), key


def test_native_init_draws_every_new_parameter():
    spec = S.preset("ecaresnet26t", depths=(1, 1), num_classes=10, width=16)  # 64 channels: ECA's 3 taps
    w = rf.export_weights(rf.ResNet(spec, rngs=nnx.Rngs(0)))
    eca = w["conv2_block1_eca_conv.kernel"]
    assert eca.shape == (3,) and 0 < np.abs(eca).max() <= 3**-0.5
    se = rf.export_weights(rf.ResNet(KINDS["se"], rngs=nnx.Rngs(0)))
    assert (se["conv2_block1_se_1_conv.bias"] == 0).all() and se["conv2_block1_se_1_conv.kernel"].std() > 0
    assert all(np.isfinite(v).all() for v in w.values())


# ----------------------------------------------------------------- train mode, bf16

TRAIN = {
    "se_avg_down_deep": S.preset("seresnext26d_32x4d", depths=(1, 1), num_classes=10, width=16),
    "eca_tiered": S.preset("ecaresnet26t", depths=(1, 1), num_classes=10, width=16),
    "rs_conv_pool": S.preset("resnetrs50", depths=(1, 1), num_classes=10, width=16),
    "aa_avg_se_hard_sigmoid": _tiny(anti_alias="avg", attention="se", attention_gate="hard_sigmoid"),
    "blur": S.preset("resnetblur18", depths=(1, 1), num_classes=10, width=16),
    "preact_timm": KINDS["preact_timm"],
}


@pytest.mark.parametrize("name", TRAIN)
def test_train_mode_matches_reference(name):
    """One train step through the adapter (``nnx.jit`` of value_and_grad, as ``check --mode
    train`` runs it): logits on batch statistics and running averages after one update
    (Flax's biased variance) against ``reference.forward_train``, gradients against
    ``shared.backprop`` (check's train oracle: the nearest of the float64 gradients and their
    ReLU-tie alternatives, budget 4x the same backward in float32)."""
    spec = TRAIN[name]
    weights, images = _case(spec, _odd_size(spec))
    labels = np.arange(len(images)) % spec.num_classes
    out = adapter.run_check(spec, weights, images, labels=labels, mode="train")
    logits, stats = reference.forward_train(spec, weights, images, variance="biased")
    peer_logits, peer_stats = reference.forward_train(spec, weights, images, "biased", dtype=np.float32)
    err = parity.rel_error(out["logits"], logits)
    assert err <= fp32_budget(parity.rel_error(peer_logits, logits)), err
    for key, value in stats.items():
        budget = fp32_budget(parity.rel_error(peer_stats[key], value))
        assert parity.rel_error(out[f"stats/{key}"], value) <= budget, key
    eval_logits = reference.forward(spec, weights, images)
    assert parity.rel_error(eval_logits, logits) > 100 * fp32_budget(parity.rel_error(peer_logits, logits))

    oracle = _oracle(spec, weights, images, labels, "train", "fp32", False)
    keys = sorted(oracle.grads)
    got = np.concatenate([out[f"grad/{k}"].ravel() for k in keys])
    errors = [parity.rel_error(got, np.concatenate([g[k].ravel() for k in keys]))
              for g in (oracle.grads, *oracle.grad_alternatives)]
    print(f"{name} train: logits rel {err:.3g}, gradients rel {min(errors):.3g}, budget {oracle.grad_budget:.3g}")
    assert min(errors) <= oracle.grad_budget


BF16 = {
    "se_avg_down_blur": _tiny(width=16, attention="se", shortcut="avg_down", anti_alias="blur", stem_pool="max_blur",
                              stem_convs=((3, 16, 2), (3, 16, 1), (3, 32, 1))),
    "eca_aa_avg_conv_pool": _tiny(width=16, attention="eca", attention_gate="hard_sigmoid", anti_alias="avg",
                                  stem_pool="conv"),
}


@pytest.mark.parametrize("name", BF16)
def test_bf16_runs_within_the_emulated_bf16_budget(name):
    """bf16 compute (BatchNorm in float32, as in tests/test_flax.py) against the reference with
    bf16's rounding emulated, within LOW_PRECISION_MARGIN x the distance of its two legitimate
    rounding placements (test_flax's rule)."""
    spec = BF16[name]
    weights, images = _case(spec, _odd_size(spec))
    model = _loaded(spec, weights, dtype=jnp.bfloat16)
    assert nnx.eval_shape(lambda m, x: m(x), model, images).dtype == jnp.bfloat16
    out = rf.predict(model, images)
    emulated, budget = low_precision_oracle(spec, weights, images, "bf16")
    err = parity.rel_error(out, emulated)
    print(f"{name} bf16: rel vs emulated bf16 {err:.3g}, budget {budget:.3g}")
    assert parity.rel_error(out, reference.forward(spec, weights, images)) > 1e-3  # bf16 really ran
    assert err <= budget < 0.5


# ----------------------------------------------------------------- weights round trips


@pytest.mark.parametrize("arch", FAMILY)
def test_export_of_load_is_bit_exact(arch):
    spec = FAMILY[arch]
    weights = random_weights(spec, 3)
    mine = {k: v.copy() for k, v in weights.items()}
    model = rf.load_weights(rf.ResNet(spec), mine)
    for v in mine.values():
        v[...] = 0  # the model holds its own copy
    out = rf.export_weights(model)
    assert list(out) == list(spec.param_shapes())
    assert_same(out, weights)


ORBAX = ["seresnext26d_32x4d", "ecaresnet26t", "resnetrs50", "resnetblur18", "resnetv2_50", "resnet_vd_18"]


@pytest.mark.parametrize("arch", ORBAX)
def test_orbax_checkpoint_both_ways(arch, tmp_path):
    """A user's ``save(nnx.state(model))`` read back, and ours restored into a fresh model's
    ``nnx.state`` as the Flax guide does: both bit-exact."""
    ocp = pytest.importorskip("orbax.checkpoint")
    spec = S.preset(arch, depths=(1, 1), width=16, num_classes=5)  # 32x4d: 16 is the least width
    weights = random_weights(spec, 4)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((tmp_path / "user").absolute(), nnx.state(_loaded(spec, weights)))
    checkpointer.wait_until_finished()
    back_spec, back = rf.read_checkpoint(tmp_path / "user", spec=spec)
    assert back_spec == spec
    assert_same(back, weights)

    formats.write(spec, weights, tmp_path / "ours")
    model = rf.ResNet(spec)
    nnx.update(model, ocp.StandardCheckpointer().restore((tmp_path / "ours").absolute(), nnx.state(model)))
    assert_same(rf.export_weights(model), weights)
    assert_same(formats.read(tmp_path / "ours", spec=spec)[1], weights)


def test_orbax_refuses_a_checkpoint_without_the_attention(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    spec = S.preset("seresnet18", depths=(1, 1), width=8, num_classes=5)
    plain = spec.replace(attention=None)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((tmp_path / "plain").absolute(), nnx.state(rf.build(plain)))
    checkpointer.wait_until_finished()
    with pytest.raises(ValueError, match=r"conv2_block1_se_1_conv/kernel \(for conv2_block1_se_1_conv.kernel\): "
                                         r"missing in the checkpoint \(expected shape \(1, 1, 8, 8\)\)"):
        rf.read_checkpoint(tmp_path / "plain", spec=spec)


def test_load_weights_names_a_misshapen_eca_kernel():
    spec = S.preset("ecaresnet26t", depths=(1, 1), width=8, num_classes=5)
    weights = random_weights(spec)
    weights["conv2_block1_eca_conv.kernel"] = np.zeros((1, 1, 3), np.float32)  # timm's (1, 1, k) layout
    with pytest.raises(ValueError, match=r"conv2_block1_eca_conv.kernel: expected shape \(3,\), got \(1, 1, 3\)"):
        rf.load_weights(rf.ResNet(spec), weights)


def test_resnet_flax_has_no_import_cycle():
    from test_layout import MODULES, cycles, imports

    ours = {m: p for m, p in MODULES.items() if m.startswith("resnet_flax")}
    graph = {m: {i for i in imports(p) if i in ours and i != m} for m, p in ours.items()}
    assert cycles(graph) == []
