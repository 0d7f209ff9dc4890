"""``resnet-parity verify``: a port nobody built from the spec (the seed article's ResNet, written
the way users write it: tests/ports/seed_resnet.py) passes; each broken copy fails, and the
diagnosis names exactly the convention that was broken, never one on a correct port."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from shared.tools import verify as V

PORT = str(Path(__file__).parent / "ports" / "seed_resnet.py")


def test_the_seed_articles_resnet50_passes(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "shared.tools.cli", "verify", f"{PORT}:ResNet50",
                           "--json", str(tmp_path / "v.json"), "--trace", "--plot", str(tmp_path / "trace.png")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "trace.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # --plot: the trace drawn
    head, trace = proc.stdout.strip().splitlines()
    assert head.startswith("torch port of resnet50 (torchvision style)") and head.endswith("pass")
    assert trace == "every traced block within budget (17 traced)"
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


@pytest.mark.parametrize("depth", [101, 152])
def test_other_classes_and_depths_are_inferred(depth):
    verdict = V.verify(f"{PORT}:ResNet{depth}(img_channel=1, num_classes=7)", size=32, batch=1)
    assert verdict.passed and verdict.spec.arch == f"resnet{depth}"
    assert (verdict.spec.image_channels, verdict.spec.num_classes) == (1, 7)


def test_what_the_spec_cannot_express_is_refused_naming_the_parameter():
    import torch

    from shared.tools.cli import main

    # a deep stem with no BatchNorm between its convs (timm's have one after each)
    deep_stem = V.load_port(f"{PORT}:ResNet50")
    deep_stem.conv1 = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, 2, 1, bias=False), torch.nn.Conv2d(32, 64, 3, 1, 1))
    with pytest.raises(V.VerifyError, match=r"parameter #1 conv1.1.weight \(64, 32, 3, 3\) fits no ResNet the spec "
                                            r"expresses; the closest structure, \w+'s \(torchvision style\), expects "
                                            r"bn1.weight \(32,\) there"):
        V.verify(deep_stem)
    with pytest.raises(V.VerifyError, match="is no torch.nn.Module, keras.Model or flax.nnx.Module"):
        V.verify(object())
    assert main(["verify", "no_such_file.py:ResNet50"]) == 2


PORTS = Path(__file__).parent / "ports"


def _first_out(verdict, block):
    """--trace names ``block`` (where the bug is: the stem, the first block, the first strided
    block) as the first out of budget, every block before it within; a correct port: none."""
    assert len(verdict.trace) == 17  # the stem and 16 blocks
    first = verdict.first_out_of_budget
    assert (first and first["block"]) == block
    before = verdict.trace[:[t["block"] for t in verdict.trace].index(block)] if block else verdict.trace
    assert all(t["rel"] <= t["budget"] for t in before)
    if block:
        assert first["rel"] > 10 * first["budget"]


@pytest.mark.parametrize("broken, mutant, block", [(None, None, None), ("eps", "bn_epsilon", "stem"),
                                                   ("stride_3x3", "stride_on", "conv3_block1")])
def test_a_keras_functional_resnet50_is_judged(broken, mutant, block):
    """keras.applications' conventions (biased convs, the stride on the 1x1, epsilon 1.001e-5),
    the shortcut listed before the main path: the keras style is inferred and every weight maps to
    the canonical weight of the layer it belongs to (the port names its layers as Keras does)."""
    pytest.importorskip("keras")
    verdict = V.verify(f"{PORTS / 'keras_resnet.py'}:ResNet50(broken={broken!r})", size=32, trace_blocks=True)
    _first_out(verdict, block)
    assert (verdict.framework, verdict.spec.arch, verdict.spec.style) == ("keras", "resnet50", "keras")
    assert all(path.split("/")[0] == key.split(".")[0] for path, key in verdict.mapping.items())
    if mutant is None:
        assert verdict.passed and verdict.rel <= verdict.budget and verdict.diagnosis == []
    else:
        assert not verdict.passed and verdict.rel > 10 * verdict.budget
        assert [d["mutants"] for d in verdict.diagnosis] == [[mutant]]


@pytest.mark.parametrize("broken, mutant, block", [(None, None, None), ("same_padding", "same_padding", "stem"),
                                                   ("missing_relu", "missing_relu", "conv2_block1")])
def test_a_flax_nnx_resnet50_is_judged(broken, mutant, block):
    """An nnx graph lists attributes alphabetically and this port runs each shortcut first: the
    mapping comes from the order a forward calls the layers."""
    pytest.importorskip("flax")
    verdict = V.verify(f"{PORTS / 'flax_resnet.py'}:ResNet50(broken={broken!r})", size=32, trace_blocks=True)
    _first_out(verdict, block)
    assert (verdict.framework, verdict.spec.arch, verdict.spec.style) == ("flax", "resnet50", "torchvision")
    assert verdict.mapping["conv1.kernel"] == "conv1_conv.kernel"
    assert verdict.mapping["blocks.0.downsample.layers.0.kernel"] == "conv2_block1_0_conv.kernel"
    assert verdict.mapping["blocks.15.bn3.var"] == "conv5_block3_3_bn.var"
    if mutant is None:
        assert verdict.passed and verdict.rel <= verdict.budget and verdict.diagnosis == []
    else:
        assert not verdict.passed and verdict.rel > 10 * verdict.budget
        assert [d["mutants"] for d in verdict.diagnosis] == [[mutant]]


def _export(model, path, **kwargs):
    import torch

    torch.onnx.export(model.eval(), torch.zeros(1, 3, 32, 32), str(path), dynamo=False, input_names=["images"],
                      dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}}, **kwargs)
    return str(path)


def test_an_onnx_export_is_judged_and_nothing_of_it_is_written(tmp_path):
    pytest.importorskip("onnxruntime")
    good = _export(V.load_port(f"{PORT}:ResNet50"), tmp_path / "seed.onnx", do_constant_folding=False)
    before = Path(good).read_bytes()
    verdict = V.verify(good, size=32, trace_blocks=True)
    _first_out(verdict, None)
    assert verdict.framework == "onnx" and verdict.passed and verdict.rel <= verdict.budget
    assert verdict.mapping["/layer1/layer1.0/identity_downsample/identity_downsample.0/Conv.weight"] == "conv2_block1_0_conv.kernel"
    assert Path(good).read_bytes() == before
    broken = _export(V.load_port(f"{PORT}:ResNet50(broken='same_padding')"), tmp_path / "b.onnx",
                     do_constant_folding=False)
    verdict = V.verify(broken, size=32, trace_blocks=True)
    assert not verdict.passed and [d["mutants"] for d in verdict.diagnosis] == [["same_padding"]]
    _first_out(verdict, "stem")
    folded = _export(V.load_port(f"{PORT}:ResNet50"), tmp_path / "folded.onnx")  # the exporter's default
    verdict = V.verify(folded, size=32)  # judged against the unfolded function (tests/test_verify_onnx.py)
    assert verdict.passed and verdict.spec.folded and verdict.spec.replace(folded=False).arch == "resnet50"


def test_train_mode_judges_one_step_and_names_a_momentum_bug():
    """torchvision's ResNet-18 (``package.module:NAME``) trained one step passes; with every
    BatchNorm's momentum set to 0.5 it changes no logits and no gradient: only the running
    statistics show it, the diagnosis names it, and eval mode cannot see it. 64 px: at 32 px
    the last stage's BatchNorm normalises 2 values per channel."""
    torchvision = pytest.importorskip("torchvision")
    good = V.verify("torchvision.models:resnet18", size=64, mode="train")
    assert (good.mode, good.spec.arch) == ("train", "resnet18")
    assert good.passed and good.rel <= good.budget and good.detail == ""
    model = torchvision.models.resnet18()
    for module in model.modules():
        if isinstance(module, __import__("torch").nn.BatchNorm2d):
            module.momentum = 0.5
    broken = V.verify(model, size=64, mode="train")
    assert broken.rel == pytest.approx(good.rel) and broken.detail.startswith("running statistics rel")
    assert not broken.passed and [d["mutants"] for d in broken.diagnosis] == [["bn_momentum"]]
    assert "momentum 0.5" in V.report(broken)
    assert V.verify(model, size=64).passed
    # Two bugs at once: no single mutant fits the step, the pair does.
    for module in model.modules():
        if isinstance(module, __import__("torch").nn.BatchNorm2d):
            module.eps = 1e-3
    both = V.verify(model, size=64, mode="train")
    assert not both.passed and [sorted(d["mutants"]) for d in both.diagnosis] == [["bn_epsilon", "bn_momentum"]]


def test_timms_family_passes_and_a_hard_sigmoid_gate_is_named():
    """timm's resnet50 (torchvision's conventions, its own module names) passes, and so do its
    resnet50d (a deep stem, avg-down shortcuts), seresnet18 (SE, width 8 in the first stage)
    and ecaresnet26t (ECA, a Conv1d kernel); timm's seresnet18 built with a hard-sigmoid SE
    gate, and its resnetblur18 with an unnormalised blur, fail, and the diagnosis names each
    convention."""
    import functools

    timm = pytest.importorskip("timm", reason="timm not installed (the test extra installs it)")
    verdict = V.verify(timm.create_model("resnet50", pretrained=False), size=32)
    assert verdict.passed and verdict.rel <= verdict.budget and verdict.spec.arch == "resnet50"
    assert verdict.mapping["layer4.2.bn3.running_var"] == "conv5_block3_3_bn.var"
    for arch in ("resnet50d", "seresnet18", "ecaresnet26t"):  # ECA: a Conv1d (1, 1, k) kernel
        verdict = V.verify(timm.create_model(arch, pretrained=False), size=32)
        assert verdict.passed and verdict.spec.arch == arch
    hard = functools.partial(timm.layers.SEModule, gate_layer="hard_sigmoid")
    broken = V.verify(timm.create_model("seresnet18", block_args=dict(attn_layer=hard)), size=64)
    assert not broken.passed and [d["mutants"] for d in broken.diagnosis] == [["se_hard_sigmoid"]]
    # resnetblur18's arrays fit resnet18 too (its blur has none): each is diagnosed, nearest first
    blur = timm.create_model("resnetblur18")
    for module in blur.modules():
        if isinstance(module, timm.layers.BlurPool2d):
            module.filt.mul_(16.0)  # the [1, 2, 1] x [1, 2, 1] filter not divided by 16
    broken = V.verify(blur, size=64)
    assert broken.spec.arch == "resnetblur18" and [d["mutants"] for d in broken.diagnosis] == [["blur_unnormalised"]]


def test_hugging_faces_resnet50():
    transformers = pytest.importorskip("transformers", reason="transformers not installed: Hugging Face's ResNet "
                                                              "is not judged here")
    model = transformers.ResNetForImageClassification(transformers.ResNetConfig())
    assert V.verify(model, size=32).passed
    # train mode reads the logits out of its output object too (it once blamed the port)
    trained = V.verify(model, size=64, mode="train")
    assert trained.passed and trained.spec.arch == "resnet50"


class _FirstTen(__import__("torch").nn.Module):
    """The seed port with a forward that keeps 10 of its classifier's 1000 classes."""

    def __init__(self):
        super().__init__()
        self.net = V.load_port(f"{PORT}:ResNet50")

    def forward(self, x):
        return self.net(x)[:, :10]


class _NoForward(__import__("torch").nn.Module):
    def __init__(self):
        super().__init__()
        self.net = V.load_port(f"{PORT}:ResNet50")

    def forward(self, x):
        return self.net(x.mean(1))  # a channel too few for its first conv


@pytest.mark.parametrize("make, message", [
    (lambda tmp: f"{tmp / 'syntax.py'}:ResNet50", "syntax.py does not import (SyntaxError"),
    (lambda tmp: f"{tmp / 'imports.py'}:ResNet50", "imports.py does not import (ModuleNotFoundError: No module named"),
    (lambda tmp: "no_such_package_xyz.models:ResNet50", "no_such_package_xyz.models does not import"),
    (lambda tmp: f"{PORT}:ResNet51", "has no callable 'ResNet51'"),
    (lambda tmp: f"{PORT}:ResNet50(depth=3)", "ResNet50(depth=3) fails (TypeError"),
    (lambda tmp: f"{PORT}:ResNet50(3, 10)", "expected NAME(key=literal, ...)"),
    (lambda tmp: "collections:OrderedDict", "a collections.OrderedDict is no torch.nn.Module, keras.Model or flax"),
    (lambda tmp: _NoForward(), "its forward fails on a 2x32x32x3 input (RuntimeError"),
    (lambda tmp: _FirstTen(), "gives logits of shape (2, 10); its classifier net.fc.bias (1000,) has 1000 classes"),
    (lambda tmp: str(tmp / "junk.onnx"), "junk.onnx is no ONNX model"),
    (lambda tmp: (f"{PORT}:ResNet50", "--mode", "train", "--trace"), "--trace compares eval-mode activations"),
    (lambda tmp: (f"{PORT}:ResNet50", "--precision", "bf16", "--trace"), "--precision bf16: judges eval-mode logits"),
    (lambda tmp: (str(tmp / "junk.onnx"), "--precision", "bf16"), "--precision bf16: torch, Keras, Flax ports and OpenVINO"),
    (lambda tmp: (str(tmp / "junk.onnx"), "--mode", "train"), "--mode train: verify trains torch, Keras and Flax"),
])
def test_bad_input_gets_one_line_and_exit_2(tmp_path, capsys, monkeypatch, make, message):
    from shared.tools.cli import main

    (tmp_path / "syntax.py").write_text("def ResNet50(:\n")
    (tmp_path / "imports.py").write_text("import no_such_module_xyz\n")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    port = make(tmp_path)
    if not isinstance(port, (str, tuple)):  # an object: as the CLI would have loaded it
        model, port = port, "object.py:made"
        monkeypatch.setattr(V, "load_port", lambda text, precision="fp32": model)
    assert main(["verify", *((port,) if isinstance(port, str) else port), "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_train_mode_of_a_flax_nnx_port_judges_its_own_variance_rule():
    """Flax updates the running variance with the biased batch variance (torch: unbiased; at 64
    px the last stage's BatchNorm averages 8 values per channel, so the rules differ by 8/7): a
    correct Flax ResNet-18 passes, judged by its own rule; Flax's momentum 0.5 (its meaning: the
    old value's weight) is caught and named, and no variance-rule variant is diagnosed."""
    pytest.importorskip("flax")
    good = V.verify(f"{PORTS / 'flax_resnet.py'}:ResNet18", size=64, mode="train")
    assert (good.framework, good.spec.arch, good.passed, good.detail) == ("flax", "resnet18", True, "")
    broken = V.verify(f"{PORTS / 'flax_resnet.py'}:ResNet18(broken='momentum')", size=64, mode="train")
    assert not broken.passed and broken.detail.startswith("running statistics rel")
    assert [d["mutants"] for d in broken.diagnosis] == [["bn_momentum"]]


def test_train_mode_of_a_keras_port_judges_keras_momentum_convention():
    """A Keras functional ResNet-18 trained one step as check trains ours (training=True, the
    backend's autodiff: tf.GradientTape on tensorflow) passes, its moving statistics judged with
    Keras' biased variance; with BatchNorm momentum 0.5 where the port keeps Keras' default 0.99
    (the old value's weight: the spec's 0.01) only the running statistics show it, and the
    diagnosis names bn_momentum. Seed 0: one pre-ReLU value of conv3_block1_1 lies 2.1e-6 from
    zero and Keras' float32 BatchNorm rounds it below (the float32 reference does not): a flipped
    mask moves the gradients 1.1e-2, and check's train oracle judges them against the reference
    with that ReLU tie taken the other way (``check._tie_alternatives``)."""
    pytest.importorskip("keras")
    port = f"{PORTS / 'keras_resnet.py'}:ResNet18"
    good = V.verify(port, size=64, mode="train", seed=0)
    assert (good.framework, good.spec.arch, good.spec.style) == ("keras", "resnet18", "keras")
    assert good.passed and good.rel <= good.budget and (good.detail, good.diagnosis) == ("", [])
    broken = V.verify(f"{port}(broken='momentum')", size=64, mode="train", seed=0)
    assert broken.rel == pytest.approx(good.rel) and broken.detail.startswith("running statistics rel")
    assert "gradients" not in broken.detail
    assert not broken.passed and [d["mutants"] for d in broken.diagnosis] == [["bn_momentum"]]


def test_a_zero_padded_pool_matters_where_no_relu_precedes_it():
    """keras.applications' ResNet50V2 ported to torch: its stem pools a conv output, so Keras'
    ZeroPadding2D (the spec's V2 pool) and torch's -inf padding differ. The port with Keras'
    padding passes; written with ``nn.MaxPool2d(3, 2, padding=1)`` it fails, is diagnosed as the
    other pool padding, and traced to the stem. (In V1 a ReLU comes first: the Keras port above
    pads its pool with zeros and passes.)"""
    port = PORTS / "torch_resnet_v2.py"
    good = V.verify(f"{port}:ResNet50V2", size=32, trace_blocks=True)
    assert (good.spec.arch, good.spec.style, good.passed, good.diagnosis) == ("resnet50v2", "keras", True, [])
    _first_out(good, None)
    broken = V.verify(f"{port}:ResNet50V2(broken='pool_padding')", size=32, trace_blocks=True)
    assert not broken.passed and broken.rel > 10 * broken.budget
    assert [d["mutants"] for d in broken.diagnosis] == [["pool_zero_pad"]]
    _first_out(broken, "stem")


@pytest.mark.parametrize("framework", ["keras", "flax", "onnx"])
def test_the_command_end_to_end_per_framework(framework, tmp_path, capsys):
    """``resnet-parity verify PORT --json`` through the CLI's main: exit 0, the one-line verdict,
    and a mapping of every canonical weight of the inferred preset, each once."""
    from shared.spec import preset
    from shared.tools.cli import main

    pytest.importorskip({"keras": "keras", "flax": "flax", "onnx": "onnxruntime"}[framework])
    port = {"keras": f"{PORTS / 'keras_resnet.py'}:ResNet50", "flax": f"{PORTS / 'flax_resnet.py'}:ResNet50"}.get(
        framework) or _export(V.load_port(f"{PORT}:ResNet50"), tmp_path / "seed.onnx", do_constant_folding=False)
    assert main(["verify", port, "--size", "32", "--json", str(tmp_path / "v.json")]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"{framework} port of resnet50") and out.endswith("pass") and len(out.splitlines()) == 1
    verdict = json.loads((tmp_path / "v.json").read_text())
    style = "keras" if framework == "keras" else "torchvision"
    assert verdict["style"] == style and verdict["pass"] and verdict["mode"] == "eval"
    assert sorted(verdict["mapping"].values()) == sorted(preset("resnet50", style).param_shapes())


def test_bf16_judges_a_torch_port_under_autocast_against_the_emulated_reference():
    """``--precision bf16``: the port under CPU bf16 autocast, judged by check's emulated-bf16
    oracle and budget (2x the distance between the two legitimate rounding placements):
    torchvision's ResNet-18 passes; with each strided block's stride moved to its second 3x3 it
    fails and is diagnosed at bf16 too."""
    torchvision = pytest.importorskip("torchvision")
    good = V.verify("torchvision.models:resnet18", size=64, precision="bf16")
    assert good.precision == "bf16" and good.passed and good.rel <= good.budget < 0.5
    assert "against the emulated-bf16 reference" in V.report(good)
    model = torchvision.models.resnet18()
    for stage in (model.layer2, model.layer3, model.layer4):
        stage[0].conv1.stride, stage[0].conv2.stride = (1, 1), (2, 2)
    broken = V.verify(model, size=64, precision="bf16")
    assert not broken.passed and broken.rel > 10 * broken.budget
    assert [d["mutants"] for d in broken.diagnosis] == [["stride_on"]]


def _bf16_passes_and_catches_a_moved_stride(model, broken_port: str, framework_style: tuple[str, str]):
    """The correct port passes check's emulated-bf16 rule; the stride on the second 3x3 fails and
    is diagnosed at bf16."""
    good = V.verify(model, size=32, precision="bf16")
    assert (good.framework, good.spec.style, good.precision) == (*framework_style, "bf16")
    assert good.passed and good.rel <= good.budget < 0.5 and good.diagnosis == []
    broken = V.verify(broken_port, size=32, precision="bf16")
    assert not broken.passed and broken.rel > 10 * broken.budget
    assert [d["mutants"] for d in broken.diagnosis] == [["stride_on"]]


def test_bf16_judges_a_keras_port_built_under_mixed_bfloat16():
    """``--precision bf16`` builds a Keras PORT under the mixed_bfloat16 policy (restored after)
    and judges it by check's emulated-bf16 oracle and budget: the Keras ResNet-18 passes; with
    each strided block's stride on its second 3x3 it fails and is diagnosed at bf16. A model
    whose layers compute in another dtype than the verdict's is refused, never judged."""
    keras = pytest.importorskip("keras")
    port = f"{PORTS / 'keras_resnet.py'}:ResNet18"
    model = V.load_port(port, "bf16")
    assert keras.config.dtype_policy().name == "float32"
    _bf16_passes_and_catches_a_moved_stride(model, f"{port}(broken='stride_conv2')", ("keras", "keras"))
    with pytest.raises(V.VerifyError, match=r"--precision fp32: the port's layer conv1_conv \(bfloat16\) does not "
                                            r"compute in float32; it was built under a mixed policy"):
        V.verify(model, size=32)
    with pytest.raises(V.VerifyError, match=r"layer conv1_conv \(float32\) does not compute in bfloat16; verify "
                                            r"builds a PORT under Keras' mixed_bfloat16 policy"):
        V.verify(V.load_port(port), size=32, precision="bf16")


def test_bf16_judges_a_flax_nnx_port_built_with_a_bfloat16_compute_dtype():
    """An nnx port's compute dtype is its constructor's: built with ``dtype="bfloat16"`` (PORT's
    literal keyword) the Flax ResNet-18 passes check's emulated-bf16 rule, and with the stride on
    each strided block's second 3x3 it fails, diagnosed at bf16; built without, it is refused at
    bf16 with how to build it, and a bf16 port is refused at fp32."""
    pytest.importorskip("flax")
    port = f"{PORTS / 'flax_resnet.py'}:ResNet18"
    model = V.load_port(f"{port}(dtype='bfloat16')")
    _bf16_passes_and_catches_a_moved_stride(model, f"{port}(broken='stride_conv2', dtype='bfloat16')",
                                            ("flax", "torchvision"))
    with pytest.raises(V.VerifyError, match=r"layer conv1 \(float32\) does not compute in bfloat16; a Flax port "
                                            r"computes in the dtype its constructor gives its layers"):
        V.verify(port, size=32, precision="bf16")
    with pytest.raises(V.VerifyError, match=r"--precision fp32: the port's layer conv1 \(bfloat16\)"):
        V.verify(model, size=32)


def test_keras_hubs_pre_activation_classifier_is_timms_resnetv2_50():
    """keras-hub's V2 ``ResNetImageClassifier`` (its stem pads with an ``ops.pad`` node, an
    operation without weights, once a traceback here) is judged: timm's resnetv2_50, passing."""
    keras_hub = pytest.importorskip("keras_hub", reason="keras-hub not installed (the test extra installs it)")
    from keras_hub.src.models.resnet.resnet_backbone import ResNetBackbone

    backbone = ResNetBackbone(input_conv_filters=[64], input_conv_kernel_sizes=[7],
                              stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[3, 4, 6, 3],
                              stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block",
                              use_pre_activation=True)
    verdict = V.verify(keras_hub.models.ResNetImageClassifier(backbone=backbone, num_classes=10), size=64)
    assert verdict.passed and (verdict.spec.arch, verdict.spec.style, verdict.spec.num_classes) == (
        "resnetv2_50", "timm", 10)


FORK = str(PORTS / "torch_fork.py")


def test_a_fork_no_preset_has_is_read_off_its_arrays_and_passes():
    """#30: torchvision's own Bottleneck, 48 wide, depths 2-3-4-1, 1 channel, 10 classes."""
    verdict = V.verify(f"{FORK}:ForkResNet", size=32)
    assert verdict.passed and verdict.rel <= verdict.budget, str(verdict)
    spec = verdict.spec
    assert spec.arch is None and (spec.depths, spec.width, spec.image_channels, spec.num_classes) == (
        (2, 3, 4, 1), 48, 1, 10)
    assert str(verdict).startswith("torch port of a ResNet (bottleneck blocks, depths 2-3-4-1, width 48) "
                                   "(torchvision style): logits rel")
    broken = V.verify(f"{FORK}:ForkResNet(stride_on_1x1=True)", size=32)
    assert not broken.passed and [d["mutants"] for d in broken.diagnosis] == [["stride_on"]]


def test_torchvisions_own_classes_with_other_depths_and_timms_resnext101_32x4d():
    from torchvision.models.resnet import Bottleneck, ResNet

    fork = ResNet(Bottleneck, [2, 3, 4, 1], num_classes=10)
    fork.conv1 = __import__("torch").nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    verdict = V.verify(fork, size=32, batch=1)
    assert verdict.passed and verdict.spec.depths == (2, 3, 4, 1) and verdict.spec.image_channels == 1
    timm = pytest.importorskip("timm")
    from shared.tools.adapters import torch as fw

    shapes = fw.port_arrays(timm.create_model("resnext101_32x4d", pretrained=False))
    spec = V.infer_specs(shapes)[0][0]  # its structure only: judging a 101-layer net is the slow suite's
    assert (spec.depths, spec.groups, spec.width_per_group, spec.arch) == ((3, 4, 23, 3), 32, 4, None)


def test_the_pytest_example_in_the_docs_runs_as_a_users_test_suite(tmp_path):
    """docs/verify.md's ``test_my_port.py`` block, run by pytest as a user's CI would run it."""
    page = (Path(__file__).parents[1] / "docs" / "verify.md").read_text()
    block = page.split("<!-- pytest-example -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "test_my_port.py").write_text(block)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_port.py"],
                          cwd=tmp_path, capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout + proc.stderr
