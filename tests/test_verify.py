"""``resnet-parity verify``: a port nobody built from the spec (the seed article's ResNet, written
the way users write it: tests/ports/seed_resnet.py) passes; each broken copy fails, and the
diagnosis names exactly the convention that was broken, never one on a correct port."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from shared.tools import verify as V  # noqa: E402

PORT = str(Path(__file__).parent / "ports" / "seed_resnet.py")


def test_the_seed_articles_resnet50_passes(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "shared.tools.cli", "verify", f"{PORT}:ResNet50",
                           "--json", str(tmp_path / "v.json")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "torch port of resnet50 (torchvision style)" in proc.stdout and proc.stdout.strip().endswith("pass")
    verdict = json.loads((tmp_path / "v.json").read_text())
    assert verdict["pass"] and verdict["rel"] <= verdict["budget"] and verdict["diagnosis"] == []
    assert verdict["mapping"]["layer1.0.identity_downsample.0.weight"] == "conv2_block1_0_conv.kernel"
    assert verdict["mapping"]["fc.bias"] == "predictions.bias"
    torchvision = pytest.importorskip("torchvision")
    arrays = [k for k in torchvision.models.resnet50().state_dict() if not k.endswith("num_batches_tracked")]
    assert len(verdict["mapping"]) == len(arrays)  # every parameter and statistic, once


@pytest.mark.parametrize("broken, mutant", [("eps", "bn_epsilon"), ("stride_1x1", "stride_on"),
                                            ("missing_relu", "missing_relu"), ("same_padding", "same_padding")])
def test_a_broken_port_fails_and_the_diagnosis_names_the_bug(broken, mutant):
    verdict = V.verify(f"{PORT}:ResNet50(broken={broken!r})", size=32)
    assert not verdict.passed and verdict.rel > 10 * verdict.budget
    assert [d["mutants"] for d in verdict.diagnosis] == [[mutant]]
    assert f"({mutant} in shared.mutants)" in V.report(verdict)


def test_other_classes_and_depths_are_inferred():
    verdict = V.verify(f"{PORT}:ResNet101(img_channel=1, num_classes=7)", size=32, batch=1)
    assert verdict.passed and verdict.spec.arch == "resnet101"
    assert (verdict.spec.image_channels, verdict.spec.num_classes) == (1, 7)


def test_what_the_spec_cannot_express_is_refused_naming_the_parameter():
    import torch

    from shared.tools.cli import main

    deep_stem = V.load_port(f"{PORT}:ResNet50")
    deep_stem.conv1 = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, 2, 1, bias=False), torch.nn.Conv2d(32, 64, 3, 1, 1))
    with pytest.raises(V.VerifyError, match=r"parameter #0 conv1.0.weight \(32, 3, 3, 3\) fits no preset .*"
                                            r"resnet\d+ \(torchvision style\), expects conv1.weight \(64, 3, 7, 7\)"):
        V.verify(deep_stem)
    with pytest.raises(V.VerifyError, match="is no torch.nn.Module, keras.Model or flax.nnx.Module"):
        V.verify(object())
    assert main(["verify", "no_such_file.py:ResNet50"]) == 2
