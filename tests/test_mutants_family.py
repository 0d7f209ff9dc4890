"""The family's broken ports (issue 29) against the float64 reference, no framework needed:
each moves the logits beyond the fp32 budget where ``Mutant.applies`` says it applies (eval and
train mode), and changes nothing beyond the order of sums where it does not. The ports whose
arrays change shape are refused when the spec's weights are loaded, naming the key."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from shared import mutants, parity, reference, spec as S
from shared.tools.check import fp32_budget
from shared.weights import WeightsError, validate

ODD = 33  # the avg-down pools see 9 px here (17 in the deep-stem specs' stage 2): an odd size

# The smallest specs of each block kind that show each port; ecaresnet26t at width 16 has 64
# channels in stage 1, as many as its stem, so its first block has the vd choice too.
SPECS = {
    "resnet26d": S.preset("resnet26d", depths=(1, 1), num_classes=10),
    "seresnet18": S.preset("seresnet18", depths=(1, 1), num_classes=10),
    "ecaresnet26t": S.preset("ecaresnet26t", depths=(1, 1), width=16, num_classes=10),
    "resnetblur18": S.preset("resnetblur18", depths=(1, 1), num_classes=10),
    "resnetblur50": S.preset("resnetblur50", depths=(1, 1), width=16, num_classes=10),
    "resnetv2_50": S.preset("resnetv2_50", depths=(1, 1), width=16, num_classes=10),
    "resnet18d": S.preset("resnet18d", depths=(1, 1), num_classes=10),
    "resnet_vd_18": S.preset("resnet_vd_18", depths=(1, 1), num_classes=10),
}
AVG_DOWN = {"avg_down_count_pad", "avg_down_floor"}
# Where each port applies at 33 px, in eval and train mode: stated here, not derived.
APPLIES = {
    "resnet26d": AVG_DOWN,
    "seresnet18": {"se_no_min", "se_hard_sigmoid"},
    "ecaresnet26t": AVG_DOWN | {"se_hard_sigmoid", "eca_kernel", "eca_padding", "vd_first_shortcut"},
    "resnetblur18": {"blur_unnormalised"},
    "resnetblur50": {"blur_unnormalised"},
    "resnetv2_50": {"pool_zero_pad"},
    "resnet18d": AVG_DOWN | {"vd_first_shortcut"},
    "resnet_vd_18": AVG_DOWN | {"vd_first_shortcut"},
}
PORTS = (*mutants.FAMILY, "pool_zero_pad")


def _run(spec, weights, images, mode):
    if mode == "eval":
        return reference.forward(spec, weights, images)
    return reference.train_statistics(spec, weights, images)[0]


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("arch", SPECS)
def test_each_port_changes_the_reference_exactly_where_it_applies(arch, mode):
    spec = SPECS[arch]
    weights = reference.calibrated_weights(spec, seed=0, size=ODD)
    images = reference.random_images(spec, 2, ODD, seed=1)
    ref = _run(spec, weights, images, mode)
    if mode == "eval":
        peer = reference.forward(spec, weights, images, dtype=np.float32)
    else:
        peer = reference.train_statistics(spec, weights, images, dtype=np.float32)[0]
    budget = fp32_budget(parity.rel_error(peer, ref))
    assert {n for n in PORTS if mutants.CATALOGUE[n].applies(spec, mode, "fp32", ODD)} == APPLIES[arch]
    for name in PORTS:
        port = mutants.CATALOGUE[name]
        built, held = mutants.mutate_spec(name, spec), mutants.mutate_weights(name, spec, weights)
        if name in APPLIES[arch] and port.fails_to_run:
            with pytest.raises(ValueError, match="conv3_block1 a 5x5 main path and a 4x4 shortcut"):
                _run(built, held, images, mode)
            continue
        rel = parity.rel_error(_run(built, held, images, mode), ref)
        if name in APPLIES[arch]:
            assert rel > 10 * budget, f"{name}: rel {rel:.3g}, budget {budget:.3g}"
        else:
            assert rel <= 1e-12, f"{name} ({port.why_not(spec, mode, 'fp32', ODD)}) moved the logits by {rel:.3g}"


@pytest.mark.parametrize("size", [32, 33, 64, 65])
def test_the_avg_down_ports_apply_at_odd_sizes_only(size):
    """At an even size no window of the 2x2/2 avg-down pool overhangs its input: the port is the
    same function (bit for bit); at an odd size it divides the last window by 4 (count_pad) or
    cannot add its shortcut (floor)."""
    spec = SPECS["resnet26d"]
    weights = reference.calibrated_weights(spec, seed=0, size=size)
    images = reference.random_images(spec, 2, size, seed=1)
    ref = reference.forward(spec, weights, images)
    for name in sorted(AVG_DOWN):
        port = mutants.CATALOGUE[name]
        assert port.applies(spec, "eval", "fp32") and port.applies(spec, "eval", "fp32", size) == bool(size % 2)
        if size % 2:
            continue
        assert "only odd sizes" in port.why_not(spec, "eval", "fp32", size)
        assert np.array_equal(reference.forward(mutants.mutate_spec(name, spec), weights, images), ref), name


def test_the_harmless_port_computes_another_order_of_sums():
    """avg_down_conv_first never applies; it still computes differently (not 0.0) on a spec with
    avg-down pools, so a framework that passes it did run the other order."""
    spec = SPECS["resnet26d"]
    port = mutants.CATALOGUE["avg_down_conv_first"]
    assert not any(port.applies(s, m, "fp32") for s in SPECS.values() for m in ("eval", "train"))
    assert "harmless" in port.why_not(spec, "eval", "fp32")
    built = mutants.mutate_spec("avg_down_conv_first", spec)
    (block,) = [b for b in built.blocks() if b.stride > 1]
    assert [layer.kind for layer in block.shortcut] == ["conv", "avgpool", "bn"]
    weights = reference.calibrated_weights(spec, seed=0, size=ODD)
    images = reference.random_images(spec, 2, ODD, seed=1)
    rel = parity.rel_error(reference.forward(built, weights, images), reference.forward(spec, weights, images))
    assert 0.0 < rel <= 1e-14


def _narrow(spec, width_of):
    """The spec a port builds whose SE has ``width_of(block)`` hidden units."""
    def layer_fn(layer):
        block = layer.name.rsplit("_se_", 1)[0]
        if layer.name.endswith("_se_1_conv"):
            return dataclasses.replace(layer, out_channels=width_of[block])
        if layer.name.endswith("_se_2_conv"):
            return dataclasses.replace(layer, in_channels=width_of[block])
        return layer
    return mutants.MutatedSpec(spec, layer_fn=layer_fn)


def test_a_port_built_without_the_se_minimum_cannot_hold_the_spec_weights():
    """The real port (SE width 4 for 64 channels) fails to load the spec's weights, naming the
    array; what it computes with the 4 hidden units it can hold is the ``se_no_min`` mutant."""
    spec = SPECS["seresnet18"]
    assert mutants._se_narrow(spec) == {"conv2_block1": 4}  # timm: 8 for 64 channels; 128 -> 8 both
    weights = reference.calibrated_weights(spec, seed=0, size=ODD)
    port = _narrow(spec, {"conv2_block1": 4, "conv3_block1": 8})
    with pytest.raises(WeightsError, match=r"conv2_block1_se_1_conv.kernel: expected shape \(1, 1, 64, 4\), "
                                           r"got \(1, 1, 64, 8\)"):
        validate(port, weights)
    held = dict(weights)
    held["conv2_block1_se_1_conv.kernel"] = weights["conv2_block1_se_1_conv.kernel"][..., :4]
    held["conv2_block1_se_1_conv.bias"] = weights["conv2_block1_se_1_conv.bias"][:4]
    held["conv2_block1_se_2_conv.kernel"] = weights["conv2_block1_se_2_conv.kernel"][:, :, :4]
    images = reference.random_images(spec, 2, ODD, seed=1)
    mutant = reference.forward(spec, mutants.mutate_weights("se_no_min", spec, weights), images)
    assert parity.rel_error(reference.forward(port, held, images), mutant) <= 1e-12


def test_a_port_with_the_shorter_eca_kernel_computes_the_eca_kernel_mutant():
    """ECA's kernel 2 taps shorter (padding 1 less each side) holding the middle taps: the same
    function as ``eca_kernel``; with the spec's weights it fails to load, naming the array."""
    spec = SPECS["ecaresnet26t"]
    convs = mutants._eca_convs(spec)
    assert [c.kernel_size for c in convs] == [3, 5]  # ECA's rule for 64 and 128 channels

    def shorter(layer):
        if isinstance(layer, S.ChannelConv):
            k = layer.kernel_size - 2
            return dataclasses.replace(layer, kernel_size=k, padding=((k - 1) // 2, (k - 1) // 2))
        return layer

    port = mutants.MutatedSpec(spec, layer_fn=shorter)
    weights = reference.calibrated_weights(spec, seed=0, size=ODD)
    with pytest.raises(WeightsError, match=r"conv2_block1_eca_conv.kernel: expected shape \(1,\), got \(3,\)"):
        validate(port, weights)
    held = {**weights, **{f"{c.name}.kernel": weights[f"{c.name}.kernel"][1:-1] for c in convs}}
    images = reference.random_images(spec, 2, ODD, seed=1)
    mutant = reference.forward(spec, mutants.mutate_weights("eca_kernel", spec, weights), images)
    assert parity.rel_error(reference.forward(port, held, images), mutant) <= 1e-12


@pytest.mark.parametrize("arch", ["resnet18d", "resnet_vd_18"])
def test_the_vd_first_projection_toggled_is_the_other_checkpoint_loaded_non_strictly(arch):
    """resnet18d (identity) and keras-hub's resnet_vd_18 (a projection at stride 1) differ in one
    block's keys: the port has the other's keys, the checkpoint's extra ones dropped and its own
    missing ones at their initialisation (BatchNorm at identity)."""
    spec = SPECS[arch]
    weights = reference.calibrated_weights(spec, seed=0, size=ODD)
    built, held = mutants.mutate_spec("vd_first_shortcut", spec), mutants.mutate_weights("vd_first_shortcut", spec,
                                                                                             weights)
    assert built.project_first != spec.project_first
    validate(built, held)
    changed = set(held) ^ set(weights)
    assert changed == {f"conv2_block1_down_{p}" for p in ("conv.kernel", "bn.gamma", "bn.beta", "bn.mean", "bn.var")}
    assert all(np.array_equal(held[k], weights[k]) for k in set(held) & set(weights))
    if not spec.project_first:
        assert np.array_equal(held["conv2_block1_down_bn.var"], np.ones(64, np.float32))
    with pytest.raises(WeightsError, match="conv2_block1_down_conv.kernel"):
        validate(built, weights)  # a strict load refuses it, naming the key


def test_pool_zero_pad_applies_to_timms_v2_stem_and_not_after_a_relu():
    assert mutants.CATALOGUE["pool_zero_pad"].applies(S.preset("resnetv2_50"), "eval", "fp32")  # no ReLU first
    for arch, why in (("resnet50d", "follows a ReLU"), ("resnetblur50", "follows a ReLU"),
                      ("resnetrs50", "no padded max pool"), ("resnetaa50", "no padded max pool")):
        assert why in mutants.CATALOGUE["pool_zero_pad"].why_not(S.preset(arch), "eval", "fp32"), arch


def test_stride_on_does_not_apply_where_anti_aliasing_leaves_no_strided_conv():
    port = mutants.CATALOGUE["stride_on"]
    assert "anti-aliased" in port.why_not(S.preset("resnetaa50d"), "eval", "fp32")
    assert port.applies(S.preset("resnet50d"), "eval", "fp32")


@pytest.mark.parametrize("arch", ["resnet26d", "seresnet18", "resnetblur50", "ecaresnet26t"])
def test_bn_counts_follow_every_spatial_layer(arch):
    """``bn_counts`` (the variance-rule mutant's n) through avg-down pools, anti-aliasing, the
    blur and attention equals the count the train-mode reference normalised with."""
    spec = SPECS[arch]
    weights = reference.calibrated_weights(spec, seed=0, size=ODD)
    _, stats = reference.train_statistics(spec, weights, reference.random_images(spec, 3, ODD, seed=1))
    assert mutants.bn_counts(spec, 3, ODD, ODD) == {name: n for name, (_, _, n) in stats.items()}


def test_published_family_catch_table():
    """docs/results/mutants-cpu-family.json, every family port in torch, Keras (TensorFlow) and
    Flax, eval and train at fp32 and bf16, on the specs above at 33 px: each cell caught exactly
    where the port applies (recomputed here from the spec and size, not read from the run),
    refused where the port cannot run (the shortcut cannot be added), passing elsewhere; every
    unbroken run passes; and the page's table, checked against the JSON, counts the same."""
    import collections
    import json
    from pathlib import Path

    results = Path(__file__).resolve().parents[1] / "docs" / "results"
    doc = json.loads((results / "mutants-cpu-family.json").read_text())
    assert [t["arch"] for t in doc["tables"]] == list(SPECS) and doc["size"] == ODD
    counts = collections.defaultdict(collections.Counter)
    for table in doc["tables"]:
        spec = S.ResNetSpec.from_dict(table["spec"])
        assert spec == SPECS[table["arch"]] and table["size"] == ODD
        assert table["targets"] == ["torch", "keras[tensorflow]", "flax"]
        runs = {(t, m, p) for t in table["targets"] for m in ("eval", "train") for p in ("fp32", "bf16")}
        assert {(c["target"], c["mode"], c["precision"]) for c in table["baseline"]} == runs
        assert all(c["status"] == "pass" for c in table["baseline"]), table["arch"]
        counts["(none)", table["arch"]]["pass"] += len(runs)
        for c in table["cells"]:
            port = mutants.CATALOGUE[c["mutant"]]
            applies = port.applies(spec, c["mode"], c["precision"], ODD)
            expected = ("refused" if port.fails_to_run else "caught") if applies else "passes"
            assert c["catch"] == expected, (table["arch"], c)
            if expected == "refused":
                assert c["status"] == "error" and any(s in c["detail"] for s in ("shape", "size")), c
            counts[c["mutant"], table["arch"]][c["catch"]] += 1
        assert {c["mutant"] for c in table["cells"]} == set(PORTS)
    page = (results / "mutants-cpu-family.md").read_text()
    lines = page[page.index("| broken port | resnet26d"):].split("\n\n", 1)[0].splitlines()
    archs = [cell.strip() for cell in lines[0].split("|")[2:-1]]
    assert archs == list(SPECS)
    for line in lines[2:]:
        name, *cells = [cell.strip().strip("`") for cell in line.split("|")[1:-1]]
        name = "(none)" if name.startswith("unbroken") else name
        for arch, cell in zip(archs, cells):
            assert cell == ", ".join(f"{o} {n}" for o, n in sorted(counts[name, arch].items())), (name, arch)
