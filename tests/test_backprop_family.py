"""The hand-derived backward (``shared.backprop``) on every block kind of the spec: against
central differences of the float64 forward on tiny specs (basic; bottleneck with groups and
width per group; pre-activation with its shortcut from the pre-activation, its 1x1 max-pool
shortcut and its zero-padded stem pool), and against torchvision's float64 autograd on
resnet18 and resnext50_32x4d. The family's layer kinds (deep and conv stem pools, avg-down at
an odd size where ceil_mode makes a partial window, blur and avg anti-aliasing, SE and ECA with
both gates, timm's pre-activation) and the family's presets cut to two stages are proven the
same way; ``tests/test_reference_family.py`` holds them against timm's autograd."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from helpers import assert_backprop_matches_central_differences, train_loss
from shared import backprop, interop, parity, reference, spec as S

TINY = {
    # stage 1: identity shortcut; stage 2: strided 3x3 and a projection
    "basic": S.preset_spec("torchvision", block="basic", depths=(1, 1), width=4, num_classes=5),
    # inner widths int(planes * 16 / 64) * 2 = 4 and 8, the 3x3 conv in two groups
    "grouped": S.preset_spec("torchvision", depths=(1, 1), width=8, groups=2, width_per_group=16, num_classes=5),
    # stage 1: conv shortcut from the pre-activation, identity, then the strided last block
    # with its 1x1/2 max-pool shortcut of the raw input; stem pool pads with 0; post BN/ReLU
    "preact": S.preset_spec("keras", block="preact", depths=(3, 1), width=4, num_classes=5),
}


def test_tiny_specs_hold_every_block_feature():
    """The cases below exercise what they claim to."""
    basic, grouped, preact = (TINY[k].blocks() for k in ("basic", "grouped", "preact"))
    assert basic[0].shortcut == () and [l.kind for l in basic[1].shortcut] == ["conv", "bn"]
    assert [l.groups for l in grouped[0].main if l.kind == "conv"] == [1, 2, 1]
    assert [(b.shortcut_from, tuple(l.kind for l in b.shortcut)) for b in preact] == [
        ("pre", ("conv",)), ("input", ()), ("input", ("maxpool",)), ("pre", ("conv",))]
    assert preact[2].shortcut[0].stride == 2 and preact[2].shortcut[0].size == 1
    assert TINY["preact"].stem()[-1].pad_value == 0.0
    assert [l.name for l in TINY["preact"].head()][:2] == ["post_bn", "post_relu"]


@pytest.mark.parametrize("kind", sorted(TINY))
def test_backprop_equals_central_differences(kind, monkeypatch):
    """Directional derivatives of the float64 train-mode loss, one random direction per weight.
    (A bias right before a train-mode BatchNorm, as a V2 block's last conv bias before the next
    pre-activation, has no effect on the loss: both sides are then ~0.)"""
    monkeypatch.setattr(reference, "validate", lambda *a, **k: None)  # float64 perturbed weights
    spec = TINY[kind]
    assert_backprop_matches_central_differences(spec)


def test_a_lost_shortcut_gradient_is_caught(monkeypatch):
    """The check can fail: a backward that forgets the pre-activation's share of the shortcut
    (the V2 shortcut conv reads the pre-activated input) disagrees with the differences."""
    monkeypatch.setattr(reference, "validate", lambda *a, **k: None)
    spec = TINY["preact"]
    weights = reference.calibrated_weights(spec, seed=0, size=32)
    images, labels = reference.random_images(spec, 3, 32, seed=1), np.array([0, 3, 4])
    blocks = [b if b.shortcut_from == "input" else _from_input(b) for b in spec.blocks()]
    monkeypatch.setattr(S.ResNetSpec, "blocks", lambda self: tuple(blocks))
    key = "conv2_block1_preact_bn.gamma"
    g = backprop.loss_and_grads(spec, weights, images, labels)[2][key]
    monkeypatch.undo()
    monkeypatch.setattr(reference, "validate", lambda *a, **k: None)
    right = backprop.loss_and_grads(spec, weights, images, labels)[2][key]
    w64 = {k: v.astype(np.float64) for k, v in weights.items()}
    v, h = np.random.default_rng(0).standard_normal(g.shape), 1e-7
    fd = (train_loss(spec, {**w64, key: w64[key] + h * v}, images, labels)
          - train_loss(spec, {**w64, key: w64[key] - h * v}, images, labels)) / (2 * h)
    assert abs(fd - (right * v).sum()) <= 1e-5 * abs(fd) + 1e-7
    assert abs(fd - (g * v).sum()) > 1e-3 * abs(fd)


def _from_input(block):
    """``block`` that still walks as it did but says its shortcut starts at the input: a
    backward that trusts it drops the pre-activation's share of the shortcut's gradient."""

    class Broken(type(block)):
        def walk(self, x, chain, add, scale=None):
            return block.walk(x, chain, add, scale)

    fields = {f.name: getattr(block, f.name) for f in dataclasses.fields(block)}
    return Broken(**{**fields, "shortcut_from": "input"})


@pytest.mark.parametrize("arch", ["resnet18", "resnext50_32x4d"])
def test_backprop_equals_torchvision_autograd_in_float64(arch):
    """A peer's autograd in float64 (train mode, 64 px, batch 2): the same loss to 1e-12 and
    every weight's gradient to 1e-9."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    spec = S.preset(arch, num_classes=20)
    weights = reference.calibrated_weights(spec, seed=0, size=64)
    images, labels = reference.random_images(spec, 2, 64, seed=3), np.array([1, 7])
    model = getattr(torchvision.models, arch)(num_classes=20).double().train()
    model.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in
                           interop.to_torchvision(spec, weights).items()})
    logits = model(torch.from_numpy(images).permute(0, 3, 1, 2).double())
    their_loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels))
    their_loss.backward()
    loss, _, ours = backprop.loss_and_grads(spec, weights, images, labels)
    assert loss == pytest.approx(their_loss.item(), rel=1e-12)
    by_torch = {k: p.grad.numpy() for k, p in model.named_parameters()}
    assert len(by_torch) == len(ours)
    worst = 0.0
    for key, g in ours.items():
        layer, param = key.rsplit(".", 1)
        name = interop.torchvision_module(layer) + "." + {"kernel": "weight", "gamma": "weight", "beta": "bias",
                                                          "bias": "bias"}[param]
        theirs = by_torch[name]
        theirs = theirs.transpose(2, 3, 1, 0) if theirs.ndim == 4 else (theirs.T if theirs.ndim == 2 else theirs)
        err = parity.rel_error(g, theirs)
        worst = max(worst, err)
        assert err <= 1e-9, key
    print(f"{arch}: worst gradient rel {worst:.2e}")


# The family's layer kinds, each on a spec small enough for a directional difference per weight.
# 36 px leaves 9 x 9 after a stride-4 stem: the avg-down pool's ceil_mode adds a partial last
# window and the blur reflects at odd sizes; the avg anti-aliasing pool needs even sizes.
FAMILY = {
    "se": (S.preset_spec("torchvision", block="basic", depths=(1, 1), width=8, num_classes=5, attention="se"), 32),
    "se-grouped-hard-sigmoid": (S.preset_spec("torchvision", depths=(1, 1), width=8, groups=2, width_per_group=16,
                                              num_classes=5, attention="se", attention_gate="hard_sigmoid"), 32),
    "eca-tiered-avg-down": (S.preset_spec("torchvision", depths=(1, 1), width=8, num_classes=5, attention="eca",
                                          stem_convs=((3, 6, 2), (3, 8, 1), (3, 16, 1)), shortcut="avg_down"), 36),
    "avg-down-deep-project-first": (S.preset_spec("torchvision", block="basic", depths=(1, 1), width=8, num_classes=5,
                                                  stem_convs=((3, 4, 2), (3, 4, 1), (3, 8, 1)), shortcut="avg_down",
                                                  project_first=True), 36),
    "blur": (S.preset_spec("torchvision", block="basic", depths=(1, 1), width=8, num_classes=5,
                           stem_pool="max_blur", anti_alias="blur"), 36),
    "avg-anti-alias": (S.preset_spec("torchvision", depths=(1, 1), width=8, num_classes=5, stem_pool="avg",
                                     anti_alias="avg"), 32),
    "conv-stem-pool": (S.preset_spec("torchvision", depths=(1, 1), width=8, num_classes=5, stem_pool="conv",
                                     stem_convs=((3, 8, 2), (3, 8, 1), (3, 16, 1)), attention="se", se_ratio=0.25), 32),
    "timm-preact": (S.preset_spec("timm", block="preact", depths=(2, 1), width=4, num_classes=5), 32),
}


def test_family_specs_hold_what_they_claim():
    kinds = {name: [layer.kind for layer in spec.layers()] for name, (spec, _) in FAMILY.items()}
    assert kinds["se"].count("gate") == 2 and kinds["se"].count("scale") == 2
    assert {l.function for l in FAMILY["se-grouped-hard-sigmoid"][0].layers() if l.kind == "gate"} == {"hard_sigmoid"}
    assert kinds["eca-tiered-avg-down"].count("channelconv") == 2
    blocks = FAMILY["avg-down-deep-project-first"][0].blocks()
    assert [l.kind for l in blocks[0].shortcut] == ["conv", "bn"]  # stride 1: no pool
    pool = blocks[1].shortcut[0]
    assert pool.kind == "avgpool" and pool.ceil_mode and not pool.count_include_pad
    # at 36 px the pool sees 9 x 9: ceil_mode's extra window
    assert S._out_len(9, 0, 0, 2, pool) == 5 and S._out_len(9, 0, 0, 2, S.AvgPool("p", 2, 2)) == 4
    assert kinds["blur"].count("blur") == 2 and kinds["avg-anti-alias"].count("avgpool") == 2
    assert [l.name for l in FAMILY["conv-stem-pool"][0].stem()][-3:] == ["pool1_conv", "pool1_bn", "pool1_relu"]
    preact = FAMILY["timm-preact"][0]
    assert not any(l.bias for l in preact.layers() if l.kind == "conv") and preact.blocks()[2].stride == 2


def _prove(spec, size, scale_eca=1.0):
    """Every learnable weight's gradient against a directional central difference of the
    float64 train-mode loss (``helpers.assert_backprop_matches_central_differences``, at ``size``
    and with ECA's kernels multiplied by ``scale_eca``). h = 1e-8: at 1e-7 one unit of a narrow
    deep stem's first ReLU crosses its kink in four of the presets below (a difference across a
    kink is no derivative); the roundoff at 1e-8 measured at most 3.4e-8, under the 1e-7 term."""
    weights = reference.calibrated_weights(spec, seed=0, size=size)
    weights = {k: v * np.float32(scale_eca) if k.endswith("_eca_conv.kernel") else v for k, v in weights.items()}
    images, labels = reference.random_images(spec, 3, size, seed=1), np.array([0, 3, 4])
    loss, _, grads = backprop.loss_and_grads(spec, weights, images, labels)
    w64 = {k: v.astype(np.float64) for k, v in weights.items()}
    assert loss == pytest.approx(train_loss(spec, w64, images, labels), rel=1e-12)
    assert set(grads) == {k for k in spec.param_shapes() if not S.is_statistic(k)}
    rng, h = np.random.default_rng(0), 1e-8
    for key, g in grads.items():
        v = rng.standard_normal(g.shape)
        fd = (train_loss(spec, {**w64, key: w64[key] + h * v}, images, labels)
              - train_loss(spec, {**w64, key: w64[key] - h * v}, images, labels)) / (2 * h)
        assert abs(fd - (g * v).sum()) <= 1e-5 * abs(fd) + 1e-7, key
    return weights, images


@pytest.mark.parametrize("kind", sorted(FAMILY))
def test_family_backprop_equals_central_differences(kind, monkeypatch):
    monkeypatch.setattr(reference, "validate", lambda *a, **k: None)  # float64 perturbed weights
    _prove(*FAMILY[kind])


def _gate_inputs(spec, weights, images, monkeypatch) -> np.ndarray:
    seen = []
    gate = reference.gate
    monkeypatch.setattr(reference, "gate", lambda x, f: seen.append(x) or gate(x, f))
    reference.train_statistics(spec, weights, images)
    monkeypatch.setattr(reference, "gate", gate)
    return np.concatenate([x.ravel() for x in seen])


def test_hard_sigmoid_kinks_equal_central_differences(monkeypatch):
    """ECA gated by hard-sigmoid, its kernels x 60 so that gates saturate on both sides: the
    derivative is 0 outside (-3, 3), and a backward with the slope 1/6 everywhere is caught."""
    monkeypatch.setattr(reference, "validate", lambda *a, **k: None)
    spec = FAMILY["eca-tiered-avg-down"][0].replace(attention_gate="hard_sigmoid")
    weights, images = _prove(spec, 36, scale_eca=60.0)
    x = _gate_inputs(spec, weights, images, monkeypatch)
    assert (x < -3).sum() >= 5 and (x > 3).sum() >= 5 and (abs(x) < 3).sum() >= 5
    monkeypatch.setattr(backprop, "_gate_backward", lambda layer, x, dy: dy / 6.0)
    with pytest.raises(AssertionError, match=r"_conv\.kernel"):
        _prove(spec, 36, scale_eca=60.0)


def test_a_lost_attention_route_is_caught(monkeypatch):
    """The check can fail: a backward that passes the main path only ``dy * gate`` (dropping the
    route through the attention that reads it) disagrees with the differences."""
    monkeypatch.setattr(reference, "validate", lambda *a, **k: None)
    spec, size = FAMILY["se"]
    monkeypatch.setattr(backprop, "_gate_backward", lambda layer, x, dy: np.zeros_like(dy))
    with pytest.raises(AssertionError, match="_conv.kernel"):
        _prove(spec, size)


# The family's presets, cut to two stages of one block and 16 planes (the stems as the preset's).
# The development run takes one per attention and anti-aliasing kind (FAMILY covers every layer).
FAMILY_PRESETS = ["resnet50d", "seresnext26d_32x4d", "ecaresnet26t", "resnetrs50", "resnetaa50d", "resnetblur18",
                  "resnet10t", "resnet50s", "resnetv2_50", "resnet_vd_18"]
DEV_PRESETS = ("seresnext26d_32x4d", "ecaresnet26t", "resnetblur18", "resnetv2_50")


@pytest.mark.parametrize("arch", [a if a in DEV_PRESETS else pytest.param(a, marks=pytest.mark.slow)
                                  for a in FAMILY_PRESETS])
def test_family_preset_train_step_equals_central_differences(arch, monkeypatch):
    monkeypatch.setattr(reference, "validate", lambda *a, **k: None)
    spec = S.preset(arch, depths=(1, 1), width=16, num_classes=5)
    _prove(spec, 32 if spec.anti_alias == "avg" else 36)


@pytest.mark.parametrize("kind", sorted(FAMILY))
def test_float32_peer_stays_float32_through_the_family(kind):
    """The float32 forward and step are the peers whose error sets the fp32 budgets: no layer
    kind may turn them float64 (an avg pool's divisor once did, from the first pool on), and
    their error against float64 is a float32 one."""
    spec, size = FAMILY[kind]
    weights = reference.calibrated_weights(spec, seed=0, size=size)
    images, labels = reference.random_images(spec, 3, size, seed=1), np.array([0, 3, 4])
    logits = reference.forward(spec, weights, images, dtype=np.float32)
    step = backprop.step(spec, weights, images, labels, dtype=np.float32)
    assert logits.dtype == np.float32 and {g.dtype for g in step.grads.values()} == {np.dtype(np.float32)}
    full = backprop.step(spec, weights, images, labels)
    worst = max(parity.rel_error(step.grads[k], full.grads[k]) for k in full.grads)
    assert 1e-8 < worst < 1e-4
