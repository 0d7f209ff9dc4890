"""``shared.tools.infer``: a port's architecture read off its arrays, for any structure the spec
expresses. Proven against the float64 reference: the inferred spec, given the port's arrays in
the port's order, computes exactly the function of the spec the arrays were made from."""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings

from shared import reference
from shared.spec import PRESETS, STRUCTURE, conventions, preset
from strategies import block_specs
from shared.tools import infer

NUMBERS = ("depths", "width", "expansion", "groups", "width_per_group", "stem_convs", "se_ratio", "shortcut_kernel")


def _shapes(spec):
    return [(key, shape) for key, _, shape in infer.canonical_order(spec)]


def _same_function(spec, found, size=32):
    """The port's arrays (``spec``'s seeded weights, by position) in ``found``: the same logits."""
    weights = reference.calibrated_weights(spec, seed=0, size=size)
    images = reference.random_images(spec, 2, size, 1)
    ours = [key for key, _, _ in infer.canonical_order(spec)]
    theirs = [key for key, _, _ in infer.canonical_order(found, _shapes(spec))]
    moved = {t: weights[o] for o, t in zip(ours, theirs, strict=True)}
    a, b = reference.forward(spec, weights, images), reference.forward(found, moved, images)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


def _kin(spec, found):
    """``found`` has ``spec``'s structure but for the numbers the arrays tell (and its conventions)."""
    fields = [f for f in STRUCTURE if f not in NUMBERS] + list(conventions(spec.style, spec.block))
    return all(getattr(found, f) == getattr(spec, f) for f in fields)


@pytest.mark.parametrize("arch", list(PRESETS))
def test_every_preset_is_read_back_in_every_style(arch):
    for style in PRESETS[arch].styles:
        spec = preset(arch, style, image_channels=1, num_classes=10)
        found = [s for s, _ in infer.infer_specs(_shapes(spec))]
        assert spec in found
        assert found.index(spec) == 0 or all(s.arch for s in found[: found.index(spec)])  # presets first


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=block_specs(heads=((True, "avg"),)))
def test_any_structure_is_inferred_and_computes_the_ports_function(spec):
    assume(spec.style != "custom")  # a stride block no template of the style has
    assume(spec._inner_width(0) % spec.groups == 0)
    found = [s for s, _ in infer.infer_specs(_shapes(spec))]
    kin = [s for s in found if _kin(spec, s)]
    assert kin, [infer.describe(s) for s in found]
    assert _same_function(spec, kin[0]) <= 1e-13


@pytest.mark.parametrize("arch, changes", [
    ("seresnext26d_32x4d", dict(depths=(1, 2), width=48, groups=4, width_per_group=4, expansion=2)),
    ("resnetrs50", dict(depths=(2, 1, 2), width=16, se_ratio=1 / 16)),  # SE's ratio only stage 2 shows
    ("ecaresnet26t", dict(depths=(1, 1, 2), width=24)),
    ("resnet_vd_18", dict(depths=(1, 3), width=16, expansion=2)),
    ("resnetv2_50", dict(depths=(2, 1), width=16, stem_convs=((5, 24, 2),), groups=2, width_per_group=32)),
])
def test_family_structures_no_preset_has(arch, changes):
    spec = preset(arch, image_channels=2, num_classes=5).replace(**changes)
    found = [s for s, _ in infer.infer_specs(_shapes(spec))]
    kin = [s for s in found if _kin(spec, s)]
    assert found[0].arch is None and kin
    assert _same_function(spec, kin[0]) <= 1e-13


def test_the_natural_numbers_are_reported():
    """A torchvision-style fork 48 wide with depths 2-3-4-1 reads as such (not as an equal
    reparametrisation: width 64 with 48 per group and expansion 3)."""
    spec = preset("resnet50", depths=(2, 3, 4, 1), width=48, image_channels=1, num_classes=10)
    found = infer.infer_specs(_shapes(spec))[0][0]
    assert found == spec
    assert infer.describe(found) == "a ResNet (bottleneck blocks, depths 2-3-4-1, width 48)"


def test_what_no_spec_expresses_is_refused_at_its_first_array():
    """Stage 2 of a torchvision ResNet-18 widened to 96 (the spec doubles every stage)."""
    shapes = _shapes(preset("resnet18"))
    at = next(i for i, (k, _) in enumerate(shapes) if k == "conv3_block1_1_conv.kernel")
    shapes[at] = (shapes[at][0], (96, 64, 3, 3))
    with pytest.raises(infer.ArchitectureError, match=rf"parameter #{at} conv3_block1_1_conv.kernel \(96, 64, 3, 3\) "
                                                      r"fits no ResNet the spec expresses; the closest structure, "
                                                      r"\w+'s \(torchvision style\), expects layer2.0.conv1.weight "
                                                      r"\(128, 64, 3, 3\) there"):
        infer.infer_specs(shapes)


def test_folded_batchnorm_is_a_structure_too():
    spec = preset("resnet50d", image_channels=3, num_classes=10)
    found = [s for s, _ in infer.infer_specs(_shapes(spec.replace(folded=True)))]
    assert spec.replace(folded=True) in found and all(s.folded for s in found)
