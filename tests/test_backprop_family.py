"""The hand-derived backward (``shared.backprop``) on every block kind of the spec: against
central differences of the float64 forward on tiny specs (basic; bottleneck with groups and
width per group; pre-activation with its shortcut from the pre-activation, its 1x1 max-pool
shortcut and its zero-padded stem pool), and against torchvision's float64 autograd on
resnet18 and resnext50_32x4d."""

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
        def walk(self, x, chain, add):
            return block.walk(x, chain, add)

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
