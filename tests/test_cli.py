"""The command line as a user meets it: exit codes, one-line errors, the trace naming the block
where a deliberately broken framework leaves its budget."""

import json
import subprocess
import sys

import numpy as np
import pytest

from shared import interop, reference, spec as S, weights as W
from shared.tools.cli import main


def cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "shared.tools.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_info_prints_published_count(capsys):
    assert main(["info", "--arch", "resnet101", "--style", "keras"]) == 0
    out = capsys.readouterr().out
    assert "44,707,176" in out and "1x1" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["check", "--frameworks", "torch,mxnet"], "unknown 'mxnet'"),
        (["check", "--weights", "/nonexistent/w.safetensors"], "--weights: no such file"),
        (["check", "--override", "torch-epsilon"], "--override: expected FRAMEWORK:FIELD=VALUE"),
        (["check", "--override", "torch:bn_epsilon=-1"], "bn_epsilon: must be > 0"),
    ],
)
def test_bad_arguments_give_one_line(args, message):
    proc = cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2


def test_broken_weights_file_gives_one_line(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    proc = cli("check", "--frameworks", "torch", "--weights", str(bad))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "broken.safetensors" in proc.stderr
    pth = tmp_path / "model.pth"
    pth.write_bytes(b"not a zip")
    proc = cli("check", "--frameworks", "torch", "--weights", str(pth))
    assert proc.returncode == 2 and "model.pth: not a weights-only torch checkpoint" in proc.stderr


torch_only = pytest.mark.skipif(not __import__("shared.tools.adapter", fromlist=["installed"]).installed("torch"),
                                reason="needs torch")


@torch_only
def test_check_passes_and_writes_json(tmp_path):
    out = tmp_path / "report.json"
    proc = cli("check", "--frameworks", "torch", "--size", "64", "--batch", "2", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    row = report["rows"][0]
    assert report["ok"] and row["target"] == "torch" and row["status"] == "pass"
    assert 0 < row["rel"] <= row["budget"] == pytest.approx(4 * report["config"]["peer_fp32_error"])


@torch_only
@pytest.mark.parametrize(
    "override, first",
    [("torch:bn_epsilon=1e-3", "stem"),  # the stem's BatchNorm is the first to see the epsilon
     pytest.param("torch:stride_on=1x1", "conv3_block1", marks=pytest.mark.slow)],  # the first strided bottleneck
)
def test_broken_framework_fails_and_trace_names_the_block(override, first):
    proc = cli("check", "--frameworks", "torch", "--size", "64", "--batch", "2", "--trace", "--override", override)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"first leaves its budget at {first} " in proc.stdout
    assert "parity check failed" in proc.stdout


@torch_only
@pytest.mark.slow  # an end-to-end check run; skipped by the development run (README), CI runs it
def test_check_reads_torchvision_pth(tmp_path):
    torch = pytest.importorskip("torch")
    spec = S.ResNetSpec(depths=(1, 1, 1, 1), width=8, num_classes=10)
    weights = reference.calibrated_weights(spec)
    path = tmp_path / "small.pth"
    torch.save({k: torch.from_numpy(v) for k, v in interop.to_torchvision(spec, weights).items()}, path)
    out = tmp_path / "r.json"
    proc = cli("check", "--frameworks", "torch", "--weights", str(path), "--size", "64", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert S.ResNetSpec.from_dict(json.loads(out.read_text())["config"]["spec"]) == spec


@torch_only
def test_convert_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    spec = S.ResNetSpec(depths=(1, 2), width=8, num_classes=3)
    weights = reference.calibrated_weights(spec)
    W.save(weights, tmp_path / "a.safetensors", spec=spec)
    assert main(["convert", str(tmp_path / "a.safetensors"), str(tmp_path / "b.pth")]) == 0
    state = torch.load(tmp_path / "b.pth", weights_only=True)
    assert np.array_equal(state["layer2.0.conv2.weight"].numpy(), weights["conv3_block1_2_conv.kernel"].transpose(3, 2, 0, 1))
    assert main(["convert", str(tmp_path / "b.pth"), str(tmp_path / "c.safetensors")]) == 0
    back = W.load(tmp_path / "c.safetensors", spec)
    assert W.read_spec(tmp_path / "c.safetensors") == spec
    assert all(np.array_equal(back[k], weights[k]) for k in weights)


@pytest.mark.slow  # skipped by the development run (README); CI runs it
def test_default_check_passes(tmp_path):
    """The README's main job exactly as written: every installed framework and Keras backend,
    ResNet-50, CPU, fp32, within budget, pairwise too; absent ones reported, not failed."""
    out = tmp_path / "default.json"
    proc = cli("check", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    ran = [r for r in report["rows"] if r["status"] != "not installed"]
    assert ran and all(r["status"] == "pass" and r["rel"] <= r["budget"] for r in ran)
    assert all(p["pass"] and p["top1"] == [4, 4] for p in report["pairwise"].values())
    assert len(report["pairwise"]) == len(ran) * (len(ran) - 1) // 2
    assert "all checks passed" in proc.stdout


@torch_only
@pytest.mark.slow  # an end-to-end check run; skipped by the development run (README), CI runs it
def test_train_mode_check_reports_conventions(tmp_path):
    out = tmp_path / "train.json"
    proc = cli("check", "--frameworks", "torch", "--mode", "train", "--size", "64", "--batch", "4", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = json.loads(out.read_text())["rows"][0]
    assert row["extra"]["variance_convention"] == "unbiased"
    assert row["extra"]["running_stats_rel"] <= row["budget"]
    assert "unbiased batch variance" in proc.stdout
