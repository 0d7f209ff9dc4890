"""BatchNorm folding (shared.fold): the folded spec computes the unfolded network's function, in
the float64 reference and in every framework, within the fp32 budget (4x the float32
reference's own error on the same weights and input); bad input is refused by name."""

from __future__ import annotations

import importlib
import re

import numpy as np
import pytest
from hypothesis import given, settings

from shared import parity, reference, spec as S, weights as W
from shared.tools import adapter
from shared.tools.adapter import installed
from shared.parity import fp32_budget
from shared.fold import NothingToFold, fold_batchnorm, fold_note, kept_batchnorms
from shared.spec import BatchNorm, Conv
from strategies import small_specs

TINY = dict(depths=(1, 1, 1, 1), width=8, num_classes=10)


def _case(style: str, size: int = 64, batch: int = 3, **fields):
    spec = S.preset_spec(style, **{**TINY, **fields})
    weights = reference.calibrated_weights(spec, seed=3)
    images = reference.random_images(spec, batch, size, seed=4)
    ref = reference.forward(spec, weights, images)
    peer = parity.rel_error(reference.forward(spec, weights, images, dtype=np.float32), ref)
    return spec, weights, images, ref, fp32_budget(peer)


@pytest.mark.parametrize("style", S.STYLES)
@pytest.mark.parametrize("head", [dict(), dict(include_top=False, pooling="max"), dict(include_top=False, pooling=None)])
def test_folded_reference_computes_the_unfolded_function(style, head):
    spec, weights, images, ref, budget = _case(style, **head)
    fspec, fweights = fold_batchnorm(spec, weights)
    assert fspec.folded and fspec.style == spec.style
    assert not any(isinstance(layer, BatchNorm) for layer in fspec.layers())
    assert all(layer.bias for layer in fspec.layers() if isinstance(layer, Conv))
    # Parameter count: the BNs' gamma and beta go, a bias per conv output channel comes in
    # (Keras-style convs already had one).
    bns = [layer.channels for layer in spec.layers() if isinstance(layer, BatchNorm)]
    expected = spec.num_params() - 2 * sum(bns) + (0 if spec.conv_bias else sum(bns))
    assert fspec.num_params() == expected
    # float64 arithmetic on float32 folded weights: only the weights' rounding differs.
    assert parity.rel_error(reference.forward(fspec, fweights, images), ref) <= budget
    folded32 = reference.forward(fspec, fweights, images, dtype=np.float32)
    assert parity.rel_error(folded32, ref) <= budget


@settings(max_examples=8, deadline=None)
@given(small_specs(mixed=True, heads=((True, "avg"), (False, None))))
def test_fold_is_exact_for_any_small_spec(spec):
    weights = reference.calibrated_weights(spec, seed=5, size=spec.min_input_size * 2)
    images = reference.random_images(spec, 2, spec.min_input_size * 2, seed=6)
    ref = reference.forward(spec, weights, images)
    peer = parity.rel_error(reference.forward(spec, weights, images, dtype=np.float32), ref)
    fspec, fweights = fold_batchnorm(spec, weights)
    assert parity.rel_error(reference.forward(fspec, fweights, images), ref) <= fp32_budget(peer)


# Every block kind, on a spec small enough to run in milliseconds: two stages of two blocks,
# so V2 has a strided block with a max-pool shortcut and one with an identity shortcut.
KINDS = {
    "basic": ("torchvision", dict(block="basic")),
    "basic-keras": ("keras", dict(block="basic")),
    "resnext": ("torchvision", dict(groups=2, width_per_group=32)),
    "resnext-keras": ("keras", dict(groups=2, width_per_group=32)),
    "preact": ("keras", dict(block="preact")),
}
KIND_TINY = dict(depths=(2, 2), width=8, num_classes=10)


@pytest.mark.parametrize("kind", KINDS)
def test_fold_is_exact_for_every_block_kind(kind, monkeypatch):
    """Folded weights fit ``spec.replace(folded=True)``; V2 keeps exactly its pre-activation
    BNs and post_bn; folded in float64, the reference computes the unfolded function to 1e-12."""
    style, fields = KINDS[kind]
    spec = S.preset_spec(style, **KIND_TINY, **fields)
    weights = reference.calibrated_weights(spec, seed=3, size=32)
    images = reference.random_images(spec, 2, 32, seed=4)
    ref = reference.forward(spec, weights, images)
    fspec, fweights = fold_batchnorm(spec, weights)
    assert fspec == spec.replace(folded=True)
    W.validate(spec.replace(folded=True), fweights)
    kept = {layer.name for layer in fspec.layers() if isinstance(layer, BatchNorm)}
    if spec.block == "preact":
        assert kept == {"conv2_block1_preact_bn", "conv2_block2_preact_bn", "conv3_block1_preact_bn",
                        "conv3_block2_preact_bn", "post_bn"}
        assert "5 kept" in fold_note(spec) and "ReLU" in fold_note(spec)
    else:
        assert kept == set() and fold_note(spec) == "every BatchNorm folded into the conv before it"
    assert {bn.name for bn in kept_batchnorms(spec)} == kept
    # float32 folded weights: within the fp32 budget of the unfolded float64 function.
    peer = parity.rel_error(reference.forward(spec, weights, images, dtype=np.float32), ref)
    assert parity.rel_error(reference.forward(fspec, fweights, images), ref) <= fp32_budget(peer)
    # Unrounded, the fold is exact: only float64 rounding is left.
    _, exact = fold_batchnorm(spec, weights, dtype=np.float64)
    monkeypatch.setattr(reference, "validate", lambda *a, **k: None)  # float64 weights
    assert parity.rel_error(reference.forward(fspec, exact, images), ref) <= 1e-12


# The family's new places for a BatchNorm (deep stem, ResNet-RS's stem pool conv, avg-down's
# conv after its pool) and the layers a fold must leave alone (SE's biased convs, ECA's channel
# conv, the blur and avg pools, timm's V2 convs that no BatchNorm follows).
FAMILY = {
    "deep-stem-avg-down-se": dict(stem_convs=((3, 4, 2), (3, 4, 1), (3, 8, 1)), shortcut="avg_down", attention="se"),
    "conv-stem-pool-eca": dict(block="basic", stem_pool="conv", attention="eca"),
    "blur-project-first": dict(block="basic", stem_pool="max_blur", anti_alias="blur", shortcut="avg_down",
                               project_first=True),
    "avg-anti-alias": dict(stem_pool="avg", anti_alias="avg"),
    "timm-preact": dict(block="preact"),
}


@pytest.mark.parametrize("kind", FAMILY)
def test_fold_is_exact_for_the_family(kind, monkeypatch):
    """The folded spec enumerates the unfolded one less its folded BatchNorms (every attention
    kept, every conv biased); the attentions' weights come through bit-exact; folded in float64
    the reference computes the unfolded function to 1e-12, in float32 within the fp32 budget."""
    spec = S.preset_spec("timm", **KIND_TINY, **FAMILY[kind])
    weights = reference.calibrated_weights(spec, seed=3, size=32)
    images = reference.random_images(spec, 2, 32, seed=4)
    ref = reference.forward(spec, weights, images)
    fspec, fweights = fold_batchnorm(spec, weights)
    kept = {bn.name for bn in kept_batchnorms(spec)}
    folded = {bn.name for bn in spec.layers() if isinstance(bn, BatchNorm)} - kept
    assert [l.name for l in fspec.layers()] == [l.name for l in spec.layers() if l.name not in folded]
    assert all(layer.bias for layer in fspec.layers() if isinstance(layer, Conv))
    assert [(b.attention, b.scale) for b in fspec.blocks()] == [(b.attention, b.scale) for b in spec.blocks()]
    for key in (k for k in weights if "_se_" in k or "_eca_" in k):
        assert fweights[key].tobytes() == weights[key].tobytes(), key
    W.validate(fspec, fweights)
    peer = parity.rel_error(reference.forward(spec, weights, images, dtype=np.float32), ref)
    assert parity.rel_error(reference.forward(fspec, fweights, images), ref) <= fp32_budget(peer)
    _, exact = fold_batchnorm(spec, weights, dtype=np.float64)
    monkeypatch.setattr(reference, "validate", lambda *a, **k: None)  # float64 weights
    assert parity.rel_error(reference.forward(fspec, exact, images), ref) <= 1e-12


def test_family_kinds_are_where_the_fold_must_look():
    """The cases above hold what they claim: BatchNorms after a deep stem's convs, the stem pool
    conv and avg-down's conv; an attention in a block; V2 convs without a bias before the fold."""
    names = {kind: [l.name for l in S.preset_spec("timm", **KIND_TINY, **f).layers()] for kind, f in FAMILY.items()}
    assert {"conv1_1_bn", "conv1_2_bn", "conv1_bn", "conv3_block1_down_bn", "conv2_block1_se_2_conv"} <= set(
        names["deep-stem-avg-down-se"])
    assert {"pool1_bn", "conv2_block1_eca_conv"} <= set(names["conv-stem-pool-eca"])
    assert {"conv2_block1_down_bn", "conv3_block1_down_pool", "conv3_block1_aa"} <= set(names["blur-project-first"])
    v2 = S.preset_spec("timm", **KIND_TINY, **FAMILY["timm-preact"])
    assert not any(l.bias for l in v2.layers() if isinstance(l, Conv))


def test_a_wrong_grouped_fold_is_caught(monkeypatch):
    """The 1e-12 can fail: a grouped kernel scaled with its output channels' scales reversed
    within each group is far from the unfolded function."""
    spec = S.preset_spec("torchvision", **KIND_TINY, groups=2, width_per_group=32)
    weights = reference.calibrated_weights(spec, seed=3, size=32)
    images = reference.random_images(spec, 2, 32, seed=4)
    ref = reference.forward(spec, weights, images)
    fspec, exact = fold_batchnorm(spec, weights, dtype=np.float64)
    key, bn = "conv2_block1_2_conv.kernel", "conv2_block1_2_bn"
    scale = weights[f"{bn}.gamma"] / np.sqrt(weights[f"{bn}.var"].astype(np.float64) + spec.bn_epsilon)
    broken = {**exact, key: exact[key] / scale * scale.reshape(2, -1)[:, ::-1].reshape(-1)}
    monkeypatch.setattr(reference, "validate", lambda *a, **k: None)  # float64 weights
    assert parity.rel_error(reference.forward(fspec, broken, images), ref) > 1e-3


def test_a_wrong_fold_is_caught():
    """The budget can fail: a fold that forgets the running mean leaves it."""
    spec, weights, images, ref, budget = _case("torchvision")
    fspec, fweights = fold_batchnorm(spec, weights)
    broken = dict(fweights)
    broken["conv3_block1_2_conv.bias"] = broken["conv3_block1_2_conv.bias"] + weights["conv3_block1_2_bn.mean"]
    assert parity.rel_error(reference.forward(fspec, broken, images), ref) > 10 * budget


def test_nothing_to_fold_comes_back_unchanged_with_a_note():
    spec, weights, *_ = _case("keras")
    fspec, fweights = fold_batchnorm(spec, weights)
    with pytest.warns(NothingToFold, match="no BatchNorm to fold"):
        again_spec, again = fold_batchnorm(fspec, fweights)
    assert again_spec == fspec and again.keys() == fweights.keys()
    assert all(np.array_equal(again[k], fweights[k]) for k in fweights)


def test_folded_spec_round_trips_through_a_file(tmp_path):
    spec, weights, *_ = _case("torchvision")
    fspec, fweights = fold_batchnorm(spec, weights)
    assert S.ResNetSpec.from_dict(fspec.to_dict()) == fspec
    W.save(fweights, tmp_path / "f.safetensors", spec=fspec)
    assert W.read_spec(tmp_path / "f.safetensors") == fspec
    W.validate(fspec, W.load(tmp_path / "f.safetensors", fspec))


@pytest.mark.parametrize("change, key", [
    (lambda w: w.pop("conv2_block1_2_bn.var"), "conv2_block1_2_bn.var: missing"),
    (lambda w: w.__setitem__("conv1_conv.kernel", np.zeros((3, 3, 3, 8), np.float32)), "conv1_conv.kernel: expected shape"),
    (lambda w: w.__setitem__("conv1_bn.var", -np.ones(8, np.float32)), "conv1_bn.var: 8 channel(s) with var + epsilon <= 0"),
])
def test_weights_that_do_not_fit_are_named(change, key):
    spec, weights, *_ = _case("torchvision")
    weights = dict(weights)
    change(weights)
    with pytest.raises(W.WeightsError, match=re.escape(key)):
        fold_batchnorm(spec, weights)


def test_training_a_folded_spec_is_refused():
    spec, weights, images, *_ = _case("torchvision")
    fspec, fweights = fold_batchnorm(spec, weights)
    with pytest.raises(ValueError, match="folded .*eval only"):
        reference.forward_train(fspec, fweights, images)
    from shared.tools import check

    with pytest.raises(ValueError, match="check --fold --mode train"):
        check.check(spec, weights, frameworks=(), mode="train", fold=True, size=64, batch=2)


# ---------------------------------------------------------------- every framework builds it

FRAMEWORKS = [
    pytest.param("torch", marks=pytest.mark.skipif(not installed("torch"), reason="torch not installed")),
    pytest.param("flax", marks=pytest.mark.skipif(not installed("flax"), reason="flax not installed")),
    pytest.param("keras", marks=[pytest.mark.keras, pytest.mark.skipif(not installed("keras"), reason="keras not installed")]),
]


FOLDED_CASES = {"torchvision": ("torchvision", {}), "keras": ("keras", {}),
                **{kind: (style, {**fields, "depths": KIND_TINY["depths"]})
                   for kind, (style, fields) in KINDS.items() if kind in ("basic", "resnext-keras", "preact")}}


@pytest.mark.parametrize("case", FOLDED_CASES)
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_each_framework_runs_the_folded_spec(framework, case):
    """Folded model (V2: pre-activation BNs and post_bn kept) vs the UNFOLDED float64
    reference, within the fp32 budget; its weights export back bit-exact under the folded
    spec's names."""
    style, fields = FOLDED_CASES[case]
    spec, weights, images, ref, budget = _case(style, **fields)
    fspec, fweights = fold_batchnorm(spec, weights)
    logits = adapter.load(framework).run_check(fspec, fweights, images)["logits"]
    assert parity.rel_error(logits, ref) <= budget
    api = importlib.import_module(f"resnet_{framework}")
    model = api.build(fspec)
    loaded = api.load_weights(model, fweights)
    exported = api.export_weights(loaded if loaded is not None else model)
    assert exported.keys() == fweights.keys()
    assert all(np.array_equal(exported[k], fweights[k]) for k in fweights)


@pytest.mark.skipif(not installed("torch"), reason="torch not installed")
def test_torch_folded_model_refuses_train_mode():
    import resnet_torch

    model = resnet_torch.build(S.preset_spec("torchvision", **TINY, folded=True))
    with pytest.raises(ValueError, match="folded"):
        model.train()
    model.eval()  # eval stays allowed


@pytest.mark.skipif(not installed("flax"), reason="flax not installed")
def test_flax_folded_model_refuses_train_mode():
    import resnet_flax

    model = resnet_flax.build(S.preset_spec("keras", **TINY, folded=True))
    with pytest.raises(ValueError, match="folded"):
        model.train()


def test_folded_weights_without_a_stored_spec_need_a_style():
    from shared import interop

    spec, weights, *_ = _case("keras")
    fspec, fweights = fold_batchnorm(spec, weights)
    with pytest.raises(W.WeightsError, match="BatchNorm-folded"):
        interop.spec_from_canonical(fweights)
    assert interop.spec_from_canonical(fweights, style="keras") == fspec


@pytest.mark.keras
@pytest.mark.skipif(not installed("keras"), reason="keras not installed")
def test_keras_folded_model_refuses_fit_and_still_predicts():
    import resnet_keras

    spec, weights, images, ref, budget = _case("keras")
    fspec, fweights = fold_batchnorm(spec, weights)
    model = resnet_keras.build(fspec)
    resnet_keras.load_weights(model, fweights)
    model.compile(optimizer="sgd", loss="mse")
    for call in (model.fit, model.train_on_batch):
        with pytest.raises(ValueError, match="folded"):
            call(images, np.zeros((len(images), 10), np.float32))
    assert parity.rel_error(resnet_keras.predict(model, images), ref) <= budget
