"""int8 from the spec: onnxruntime's static QDQ quantization (shared/tools/adapters/onnx_int8.py)
judged by the emulated int8 oracle (shared.quant): the oracle's weight integers equal the
quantizer's to the bit; the model's integers at every quantization point within the float32
peer's count, on every block kind and on ResNet-50 through ``check``; the unfused QDQ graph (a
legitimate alternative) passes; four broken int8 models are caught; bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from shared import parity, quant, reference
from shared import spec as S
from shared.tools import check, cli
from shared.tools.adapters import onnx_int8 as A
from shared.tools.bench_plan import not_supported

# Without VNNI onnxruntime's u8 x s8 kernels may saturate: the int8 check (rightly) fails them,
# and check and bench call int8 "not supported here" (tested below with other CPUs' flags).
needs_vnni = pytest.mark.skipif(bool(not_supported("onnx-int8", "fp32")), reason=not_supported("onnx-int8", "fp32"))

SIZE = 32
TINY = {"depths": (1, 1, 1, 1), "width": 16, "num_classes": 10}


def _case(arch, size=SIZE, batch=2, **fields):
    spec = S.preset(arch, **{**TINY, **fields})
    weights = reference.calibrated_weights(spec, seed=3, size=size)
    return spec, weights, reference.random_images(spec, batch, size, seed=4)


def _verdict(spec, weights, images, **kwargs):
    result = A.run_int8(spec, weights, images, **kwargs)
    folded, folded_weights, _ = A.float_model(spec, weights, images.shape[1])
    return quant.judge(folded, folded_weights, images, A.read_params(result), A.read_integers(result),
                       result["logits"]), result


@pytest.fixture(scope="module")
def tiny():
    return _case("resnet18")


def test_the_oracle_quantizes_weights_and_biases_as_the_quantizer_does():
    """Per-channel int8 weights and int32 biases of all 54 layers of a ResNet-50: numpy's rule
    against onnxruntime's quantizer, to the bit (a float32 bias division differs in 7 channels:
    caught here); exposing the integers leaves onnxruntime's logits equal to the bit."""
    spec = S.resnet50()
    weights = reference.calibrated_weights(spec, seed=0, size=SIZE)
    images = reference.random_images(spec, 2, SIZE, seed=4)
    folded, fw, model = A.build(spec, weights, SIZE)
    inits = A._initializers(model)
    act = A.params(model)
    inputs = {n.input[1].removesuffix("_DequantizeLinear_Output"): n.input[0].removesuffix("_DequantizeLinear_Output")
              for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    checked = 0
    for layer in folded.layers():
        if f"{layer.name}.kernel" not in fw:
            continue
        kernel = fw[f"{layer.name}.kernel"]
        ints = inits[f"{layer.name}.kernel_quantized"]
        ints = ints.transpose(2, 3, 1, 0) if ints.ndim == 4 else ints  # OIHW -> HWIO
        scales = quant.weight_scales(kernel)
        np.testing.assert_array_equal(quant.weight_ints(kernel, scales), ints)
        np.testing.assert_array_equal(scales, inits[f"{layer.name}.kernel_scale"])
        step = np.float32(act[inputs[f"{layer.name}.kernel"]][0]) * scales
        np.testing.assert_array_equal(quant.bias_ints(fw[f"{layer.name}.bias"], step),
                                      inits[f"{layer.name}.bias_quantized"])
        checked += 1
    assert checked == sum(isinstance(layer, (S.Conv, S.Dense)) for layer in folded.layers())
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    plain = A.session(model).run(["output"], {"images": x})[0]
    assert np.array_equal(plain, A.run_int8(spec, weights, images)["logits"])


# One architecture per block kind (basic, bottleneck, grouped bottleneck, pre-activation), two
# blocks in the first stage so an identity shortcut is quantized too.
@needs_vnni
@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnext50_32x4d", "resnet50v2"])
def test_onnxruntime_int8_passes_on_every_block_kind(arch):
    spec, weights, images = _case(arch, depths=(2, 1, 1, 1))
    verdict, result = _verdict(spec, weights, images)
    print(arch, {k: verdict[k] for k in ("differ", "unexplained", "peer_differ", "tie_tolerance", "logits_rel")})
    assert verdict["fails"] == [] and verdict["unexplained"] == 0
    assert verdict["tie_tolerance"] < 1e-2  # a tie's neighbourhood, not a step
    # It really ran in int8: far from the fp32 function, as far as the emulated int8 model is.
    ref = reference.forward(spec, weights, images)
    emulated = quant.oracle(*A.float_model(spec, weights, SIZE)[:2], images, A.read_params(result))
    assert parity.rel_error(result["logits"], ref) > 1e-3
    assert parity.rel_error(emulated, ref) > 1e-3


def test_the_unfused_qdq_graph_is_a_legitimate_alternative(tiny):
    """onnxruntime with its graph optimisations off runs the QDQ graph as written (dequantize,
    float32 conv, quantize): the other placement the budget is drawn from, and it passes."""
    verdict, _ = _verdict(*tiny, fused=False)
    assert verdict["fails"] == []


@pytest.mark.parametrize("arch", ["resnet18", "resnext50_32x4d", "resnet50v2"])
@pytest.mark.parametrize("mutant", list(A.MUTANTS))
def test_broken_int8_models_are_caught(arch, mutant):
    verdict, _ = _verdict(*_case(arch, depths=(2, 1, 1, 1)), mutant=mutant)
    print(arch, mutant, verdict["fails"])
    assert verdict["fails"] and verdict["first_diverging"]
    assert verdict["unexplained"] > 0.9 * verdict["differ"]  # not roundings near a tie


@needs_vnni
def test_check_passes_onnx_int8_on_resnet50_and_reports_top1():
    spec = S.resnet50()
    weights = reference.calibrated_weights(spec, seed=0, size=64)
    report = check.check(spec, weights, frameworks=["onnx-int8"], batch=2, size=64)
    row, = report.rows
    print(row.detail)
    assert report.ok and row.status == "pass", row.detail
    assert row.top1 is not None and "top-1 with fp32" in row.detail
    assert row.extra["integers"] > 1_000_000 and row.extra["unexplained"] == 0


def test_check_leaves_int8_out_of_other_precisions_and_modes(monkeypatch):
    from shared.tools import bench_plan

    monkeypatch.setattr(bench_plan, "cpu_flags", lambda: frozenset({"avx512_vnni"}))
    found, note = check._int8_targets([check.Target("onnx-int8"), check.Target("torch")], "", "eval", "cpu", "bf16")
    assert [t.label for t in found] == ["torch"] and "onnx-int8 not run" in note
    assert check._int8_targets([check.Target("onnx-int8")], "", "train", "cpu", "fp32")[0] == []
    assert check._int8_targets([check.Target("onnx-int8")], "", "eval", "cpu", "fp32")[0]
    monkeypatch.setattr(bench_plan, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))  # no VNNI
    found, note = check._int8_targets([check.Target("onnx-int8")], "", "eval", "cpu", "fp32")
    assert found == [] and "onnx-int8 not run: not supported here: no int8 dot-product" in note


def test_bad_calibration_and_quantized_models_are_refused(tiny):
    spec, weights, images = tiny
    with pytest.raises(ValueError, match=r"calibration images: expected shape \(N, 32, 32, 3\) NHWC float32, "
                                         r"got \(4, 16, 16, 3\)"):
        A.build(spec, weights, SIZE, calibration=np.zeros((4, 16, 16, 3), np.float32))
    _, _, model = A.build(spec, weights, SIZE)
    with pytest.raises(ValueError, match="model: already quantized .*DequantizeLinear.*QuantizeLinear"):
        A.quantize(model, np.zeros((1, 3, SIZE, SIZE), np.float32))
    with pytest.raises(ValueError, match="mutant: expected one of int8-wrong-scale"):
        A.build(spec, weights, SIZE, mutant="nope")
    folded, fw, _ = A.float_model(spec, weights, SIZE)
    params = A.params(model)
    del params["conv1_relu"]
    with pytest.raises(ValueError, match="no quantization for tensor 'conv1_relu'"):
        quant.forward(folded, fw, images, params)


def test_cli_export_int8_writes_a_model_that_runs(tmp_path, capsys):
    spec = S.preset("resnet18")
    calibration = reference.random_images(spec, 2, SIZE, seed=9)
    np.save(tmp_path / "cal.npy", calibration)
    dest = tmp_path / "r18-int8.onnx"
    assert cli.main(["export", "resnet18", str(dest), "--int8", "--image-size", str(SIZE),
                     "--calibration", str(tmp_path / "cal.npy")]) == 0
    assert "int8 QDQ" in capsys.readouterr().out
    sess = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    assert sess.run(["output"], {"images": np.zeros((1, 3, SIZE, SIZE), np.float32)})[0].shape == (1, 1000)
    np.save(tmp_path / "bad.npy", calibration[:, :16])
    assert cli.main(["export", "resnet18", str(tmp_path / "bad.onnx"), "--int8", "--image-size", str(SIZE),
                     "--calibration", str(tmp_path / "bad.npy")]) == 2
    assert "calibration images: expected shape (N, 32, 32, 3)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npy", "cal.npy", "r18-int8.onnx"]


def test_bench_plans_int8_and_bf16_rows_only_where_the_cpu_has_them(monkeypatch):
    from shared.tools import bench_plan

    vnni_bf16 = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"})
    assert bench_plan.not_supported("onnx-int8", "fp32", vnni_bf16) == ""
    assert bench_plan.not_supported("torch", "bf16", vnni_bf16) == ""
    assert "avx512_vnni" in bench_plan.not_supported("onnx-int8", "fp32", frozenset({"avx2"}))
    assert "emulated" in bench_plan.not_supported("torch", "bf16", frozenset({"avx2", "avx512_vnni"}))
    assert "no bf16 conv kernel" in bench_plan.not_supported("onnx", "bf16", vnni_bf16)
    monkeypatch.setattr(bench_plan, "cpu_flags", lambda: frozenset({"avx2"}))  # an AVX2-only CPU
    rows = {(p.target, p.precision): p for p in bench_plan.plan(["torch", "onnx-int8"], modes=["infer"],
                                                                 precisions=["fp32", "bf16"])}
    assert rows["torch", "fp32"].skipped == ""
    assert rows["torch", "bf16"].skipped.startswith("not supported here: no bf16 instructions")
    assert rows["onnx-int8", "fp32"].skipped.startswith("not supported here: no int8 dot-product")
    assert rows["onnx-int8", "fp32"].reference.label == "torchvision"
    monkeypatch.setattr(bench_plan, "cpu_flags", lambda: vnni_bf16)
    rows = {(p.target, p.precision): p for p in bench_plan.plan(["torch", "onnx-int8"], modes=["infer"],
                                                                 precisions=["fp32", "bf16"])}
    assert rows["onnx-int8", "fp32"].skipped == rows["torch", "bf16"].skipped == ""
    assert rows["onnx-int8", "fp32"].ours.label == "onnxruntime-int8"
    # torch.ao's int8 of torchvision's model, beside the same torchvision fp32 run: CPU inference only.
    rows = {(p.target, p.mode): p for p in bench_plan.plan(["torch", "torch-int8"], fold=True)}
    peer = rows["torch-int8", "infer"]
    assert (peer.skipped, peer.ours.label, peer.ours.impl) == ("", "torch.ao-int8", "int8")
    assert peer.reference == rows["torch", "infer"].reference and "torch-int8+fold" not in {t for t, _ in rows}
    assert rows["torch-int8", "train"].skipped == "skipped: inference only"
    assert "torch.ao x86 runs on the CPU" in bench_plan.plan(["torch-int8"], modes=["infer"], device="gpu")[0].skipped
    monkeypatch.setattr(bench_plan, "cpu_flags", lambda: frozenset({"avx2"}))
    peer, = bench_plan.plan(["torch-int8"], modes=["infer"])
    assert peer.skipped.startswith("not supported here: no int8 dot-product")


TINY_R50 = {"depths": (1, 1, 1, 1), "num_classes": 10}  # torchvision builds a ResNet of these depths


@needs_vnni
def test_bench_times_torch_ao_int8_beside_torchvision_fp32_and_reports_its_distance():
    pytest.importorskip("torchvision")
    from shared.tools import bench, bench_report
    from shared.tools.cli import build_parser

    args = build_parser().parse_args(["bench", "--frameworks", "torch-int8", "--mode", "infer", "--depths", "1,1,1,1",
                                      "--size", "32", "--batch", "2", "--iters", "1", "--warmup", "1",
                                      "--channels-last", "--interleave"])
    report = bench.run_bench(args)
    row, = report["rows"]
    assert row["status"] == "ok" and row["ratio"] > 0, row
    ours, ref = row["ours"], row["reference"]
    assert (ours["label"], ref["label"]) == ("torch.ao-int8", "torchvision")
    assert ours["images_per_s"]["median"] > 0 and ours["settings"]["engine"] == "x86"
    figures = ours["settings"]["vs_fp32"]
    assert figures["images"] == 2 and 0 <= figures["top1_agreement"] <= 2 and 0 < figures["logits_rel_distance"] < 1
    note = f"top-1 with fp32 {figures['top1_agreement']}/2, logits rel distance {figures['logits_rel_distance']:.3f}"
    assert note in bench_report.markdown(report)


def test_torch_ao_int8_figures_are_against_an_independent_fp32_run():
    """The bench row's top-1 and distance are the int8 logits against the fp32 function, here
    the float64 reference: equal to the figures, and far from zero (not the int8 model itself)."""
    pytest.importorskip("torchvision")
    from shared.tools.adapters import torch as T
    from shared.tools.jobs import Job

    spec = S.preset("resnet50", "torchvision", **TINY_R50)
    weights = reference.calibrated_weights(spec, seed=3, size=SIZE)
    job = Job("bench", "torch", spec.to_dict(), "unused.json", mode="infer", batch=4, size=SIZE, impl="int8")
    step = T.run_bench(job, spec, weights)
    int8 = step.step().numpy()
    fp32 = reference.forward(spec, weights, job.inputs(spec)[0])
    figures = step.settings["vs_fp32"]
    print(figures)
    assert figures["logits_rel_distance"] == pytest.approx(parity.rel_error(int8, fp32), rel=1e-3)
    assert figures["logits_rel_distance"] > 1e-3  # int8: far from fp32, as onnx-int8 is
    assert (figures["top1_agreement"], figures["images"]) == parity.top1_agreement(int8, fp32)


def test_torch_bf16_channels_last_on_cpu_against_emulated_bf16():
    """The benched bf16 path (resnet_torch, channels_last, CPU autocast) judged by the check's
    emulated-bf16 rule; the same case as test_parity's contiguous one."""
    torch = pytest.importorskip("torch")
    from resnet_torch import build, load_weights

    spec = S.preset_spec("torchvision", depths=(1, 1, 1, 1), width=16, num_classes=100)
    weights = reference.calibrated_weights(spec, seed=1, size=64)
    images = reference.random_images(spec, 4, 64, seed=2)
    model = load_weights(build(spec), weights).eval().to(memory_format=torch.channels_last)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x).float().numpy()
    emulated, budget = check.low_precision_oracle(spec, weights, images, "bf16")
    err = parity.rel_error(out, emulated)
    print(f"torch bf16 channels_last: vs emulated {err:.2e}, budget {budget:.2e}")
    assert parity.rel_error(out, reference.forward(spec, weights, images)) > 1e-3  # it ran in bf16
    assert err <= budget < 0.5
