"""What the core keys by architecture name (``shared.spec.PRESETS``): the measured fp32 budgets of
``shared.parity`` (reproduced here against their peers) and the checkpoint descriptions of
``shared.checkpoint`` that name the architecture or, for a custom spec, its structure."""

import numpy as np
import pytest

from shared import checkpoint, interop, parity, reference, spec as S, weights as W


def test_every_preset_has_a_cpu_fp32_budget():
    for arch in S.ARCHS:
        assert (arch, "cpu", "fp32") in parity.MEASURED and 0 < parity.budget(arch=arch) < 2e-3, arch
    with pytest.raises(KeyError, match=r"no measured budget for \('resnet18', 'gpu', 'fp32'\)"):
        parity.budget(arch="resnet18", device="gpu")


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


# ----------------------------------------------------------------------------- the published tables

def _table(path, header_start):
    """The rows (as lists of cells, backticks stripped) of the markdown table starting with header_start."""
    text = path.read_text()
    lines = text[text.index(header_start):].split("\n\n", 1)[0].splitlines()
    return [[c.strip().strip("`") for c in line.split("|")[1:-1]] for line in lines[2:]]


def _runs():
    import json
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "docs" / "results" / "architectures-cpu"
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}


# How the README names each publisher (``Preset.peer``'s first part).
PUBLISHERS = {"torchvision": "torchvision", "keras": "keras.applications", "timm": "timm", "keras_hub": "keras-hub"}


def test_readme_architectures_table_matches_the_spec_and_the_runs():
    """Each README row: its peer, the published parameter count (the spec reproduces it,
    tests/test_spec.py holds the publishers' figures) and the worst rel against float64 with its
    budget, taken from docs/results/architectures-cpu/ARCH.json."""
    from pathlib import Path

    rows = _table(Path(__file__).resolve().parents[1] / "README.md", "| architecture | peer |")
    runs = _runs()
    assert [row[0] for row in rows] == list(S.ARCHS) and set(runs) == set(S.ARCHS)
    for arch, peer, params, agreement in rows:
        spec, preset = S.preset(arch), S.PRESETS[arch]
        assert peer == f"{PUBLISHERS[preset.peer.split('.')[0]]} {preset.peer.rsplit('.', 1)[1]}", arch
        assert int(params.replace(",", "")) == preset.params == spec.num_params(
            include_bn_statistics=preset.params_count_bn_statistics), arch
        run = runs[arch]
        assert run["ok"] and S.ResNetSpec.from_dict(run["config"]["spec"]) == spec, arch
        worst = max(row["rel"] for row in run["rows"])
        assert agreement == f"rel 0.0; {worst:.2e} ({run['config']['budget']:.2e})", arch


def test_results_architectures_table_matches_the_runs():
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "docs" / "results" / "architectures-cpu.md"
    rows = _table(page, "| architecture | constructor |")
    runs = _runs()
    assert len(rows) == len(runs)
    for row in rows:
        run = runs[row[0].split(" ")[0]]
        rel = {r["target"]: r["rel"] for r in run["rows"]}
        assert row[5:9] == [f"{rel[t]:.2e}" for t in ("torch", "keras[tensorflow]", "flax", "onnx")], row[0]
        assert row[9] == f"{run['config']['budget']:.2e}", row[0]
