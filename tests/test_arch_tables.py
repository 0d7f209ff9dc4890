"""What the core keys by architecture name (``shared.spec.PRESETS``): the measured fp32 budgets of
``shared.parity`` (reproduced here against their peers) and the checkpoint descriptions of
``shared.checkpoint`` that name the architecture or, for a custom spec, its structure."""

import numpy as np
import pytest

from shared import checkpoint, interop, parity, reference, spec as S, weights as W


def test_every_preset_has_a_cpu_fp32_budget():
    for arch in S.ARCHS:
        assert (arch, "cpu", "fp32") in parity.MEASURED and 0 < parity.budget(arch=arch) < 2e-3, arch
    assert parity.budget(depth="resnet101") == parity.budget(arch="resnet101")  # the former keyword
    with pytest.raises(KeyError, match=r"no measured budget for \('resnet18', 'gpu', 'fp32'\)"):
        parity.budget(arch="resnet18", device="gpu")


def test_depth_name_still_names_the_bottleneck_presets():
    assert [parity.depth_name(d) for d in ((3, 4, 6, 3), (3, 4, 23, 3), (3, 8, 36, 3))] == [
        "resnet50", "resnet101", "resnet152"]
    assert parity.depth_name((2, 2, 2, 2)) is None and parity.depth_name(()) is None


def _peer_error(arch):
    """The measurement behind MEASURED (its comment): seed 0, 96 px, batch 2."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    spec = S.preset(arch)
    weights = reference.calibrated_weights(spec, seed=0)
    images = reference.random_images(spec, 2, 96, seed=1)
    ref = reference.forward(spec, weights, images)
    if spec.block == "preact":  # no torch peer: the reference's own float32 arithmetic
        return parity.rel_error(reference.forward(spec, weights, images, dtype=np.float32), ref)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in interop.to_torchvision(spec, weights).items()})
    with torch.no_grad():
        out = model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()
    return parity.rel_error(out, ref)


@pytest.mark.parametrize("arch", ["resnet18", "resnext50_32x4d", "resnet50v2"])
def test_measured_budgets_reproduce(arch):
    """Each table entry is a real measurement of its peer: re-measured, within 2x."""
    measured = parity.MEASURED[(arch, "cpu", "fp32")]
    err = _peer_error(arch)
    print(f"{arch}: fp32 peer rel {err:.2e}, table {measured:.2e}")
    assert measured / 2 <= err <= measured


def test_describe_names_the_preset_or_the_structure():
    assert checkpoint.describe(S.preset("resnext50_32x4d", num_classes=10)) == (
        "resnext50_32x4d (torchvision style, 10 classes, 3 image channels)")
    assert checkpoint.describe(S.preset("resnet101v2", include_top=False)) == (
        "resnet101v2 (keras style, no top, 3 image channels)")
    custom = S.preset_spec("keras", block="preact", depths=(1, 2), width=8, groups=2, width_per_group=32)
    assert checkpoint.describe(custom) == ("depths (1, 2), width 8, expansion 4, preact blocks, groups 2, width "
                                           "per group 32 (keras style, 1000 classes, 3 image channels)")
    assert checkpoint.describe(S.preset_spec("torchvision", depths=(1, 1), width=8)).startswith(
        "depths (1, 1), width 8, expansion 4 (torchvision style")


def test_a_checkpoint_of_another_block_kind_is_refused_naming_it(tmp_path):
    basic = S.preset_spec("torchvision", block="basic", depths=(1, 1), width=8, num_classes=3)
    path = tmp_path / "basic.safetensors"
    W.save(W.init(basic), path, spec=basic)
    model = basic.replace(block="bottleneck", expansion=4)
    with pytest.raises(ValueError, match=r"the checkpoint is depths \(1, 1\), width 8, expansion 1, basic blocks "
                                         r"\(torchvision style, 3 classes, 3 image channels\), the model is depths "
                                         r"\(1, 1\), width 8, expansion 4 \(.*they differ in block: checkpoint "
                                         r"'basic', model 'bottleneck'; expansion: checkpoint 1, model 4"):
        checkpoint.for_spec(model, path)
    assert checkpoint.differences(S.preset("resnet50"), S.preset("resnext50_32x4d")) == [
        "groups: checkpoint 32, model 1", "width_per_group: checkpoint 4, model 64"]
    assert "pool_pad_value: checkpoint 0.0, model -inf" in checkpoint.differences(
        S.preset("resnet50", style="keras"), S.preset("resnet50v2"))
