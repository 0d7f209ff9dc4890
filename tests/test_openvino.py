"""OpenVINO as a fifth runtime (shared/tools/adapters/openvino.py, openvino_int8.py), judged by the
existing oracles: fp32 by the fp32 rule; bf16 by the emulated-bf16 rule, with OpenVINO's own
placement measured op by op (bf16 operands including the bias, float32 accumulation, each fused
group's output stored in bf16); int8 by shared.quant with teacher forcing on its own integers,
the requantizations it fuses into the residual add read from its runtime model and passed exactly.
Broken models are caught; a CPU without the instructions gets "not supported here"."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("openvino")

from shared import parity, quant, reference
from shared import spec as S
from shared.fold import fold_batchnorm
from shared.onnx_export import build_model, to_onnx
from shared.tools import bench_plan, check
from shared.tools.adapters import onnx_int8, openvino as OV, openvino_int8 as V

SIZE = 32
TINY = {"depths": (1, 1, 1, 1), "width": 16, "num_classes": 10}
needs_vnni = pytest.mark.skipif(bool(bench_plan.not_supported("openvino-int8", "fp32")),
                                reason=bench_plan.not_supported("openvino-int8", "fp32"))
needs_bf16 = pytest.mark.skipif(bool(bench_plan.not_supported("openvino", "bf16")),
                                reason=bench_plan.not_supported("openvino", "bf16"))


def _case(arch, size=SIZE, batch=2, **fields):
    spec = S.preset(arch, **{**TINY, **fields})
    weights = reference.calibrated_weights(spec, seed=3, size=size)
    return spec, weights, reference.random_images(spec, batch, size, seed=4)


def _bf16(x):
    return reference.round_mantissa(x, 16)


def test_openvino_fp32_computes_the_reference_function_and_a_broken_model_fails():
    """fp32 (the hint set to f32: OpenVINO's own default here is bf16) within the fp32 rule of
    the float64 reference; the same model exported with BatchNorm's epsilon 1e-3 is not."""
    spec, weights, images = _case("resnet50")
    ref = reference.forward(spec, weights, images)
    budget = parity.fp32_budget(parity.rel_error(reference.forward(spec, weights, images, dtype=np.float32), ref))
    logits = OV.run_check(spec, weights, images)["logits"]
    assert parity.rel_error(logits, ref) <= budget
    broken = OV.run_check(spec.replace(bn_epsilon=1e-3), weights, images)["logits"]
    assert parity.rel_error(broken, ref) > budget


@needs_bf16
def test_openvino_bf16_rounds_operands_bias_and_each_fused_output():
    """One conv with a bias, as OpenVINO runs it at bf16: input, weights and bias rounded to
    bf16, float32 accumulation, the output stored in bf16: equal on every element but float32
    near-ties. Without the bias rounding a tenth of the elements differ."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 64, 16, 16)).astype(np.float32)
    kernel = (rng.standard_normal((64, 64, 3, 3)) / 24).astype(np.float32)
    bias = (rng.standard_normal(64) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         ], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(kernel, "w"), numpy_helper.from_array(bias, "b")])
    compiled = OV.compile_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), "bf16")
    assert set(OV.runtime_precisions(compiled)["Convolution"]) == {"bf16"}
    got = compiled(x)[compiled.outputs[0]].transpose(0, 2, 3, 1).astype(np.float64)
    acc = reference.conv(_bf16(x.transpose(0, 2, 3, 1)), _bf16(kernel.transpose(2, 3, 1, 0)), 1, (1, 1, 1, 1), None, 1)
    exact = _bf16(acc + _bf16(bias))
    assert np.mean(got != exact) < 1e-3
    assert np.mean(got != _bf16(acc + bias)) > 0.02


def _ov_bf16_emulation(spec, weights, images):
    """OpenVINO's bf16 placement in float64: BatchNorm folded, conv and dense operands (input,
    weights, bias) rounded to bf16, each fused group's output (conv+bias+ReLU; conv+bias+add+ReLU;
    a shortcut conv) stored in bf16, the main path's last conv kept float32 into the add."""
    fspec, fw = fold_batchnorm(spec, weights)
    w = {k: np.asarray(v, np.float64) for k, v in fw.items()}

    def chain(layers, x):
        for layer in layers:
            if isinstance(layer, S.Conv):
                x = reference.conv(_bf16(x), _bf16(w[f"{layer.name}.kernel"]), layer.stride, layer.padding,
                                   _bf16(w[f"{layer.name}.bias"]), layer.groups)
            elif isinstance(layer, S.Dense):
                x = _bf16(x) @ _bf16(w[f"{layer.name}.kernel"]) + _bf16(w[f"{layer.name}.bias"])
            else:
                x = reference._apply_exact(layer, x, w, None)
        return x

    x = _bf16(chain(fspec.stem(), np.asarray(images, np.float64)))
    for block in fspec.blocks():
        x = block.walk(x, chain, lambda layer, main, shortcut: _bf16(main + _bf16(shortcut)))
    return chain(fspec.head(), x)


@needs_bf16
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_openvino_bf16_is_its_measured_placement_and_passes_the_emulated_rule(arch):
    """OpenVINO bf16 lies far closer to its own placement, emulated, than the rule's two
    placements lie apart, and passes the emulated-bf16 rule check judges every bf16 run by."""
    spec, weights, images = _case(arch, size=64)
    got = OV.run_check(spec, weights, images, precision="bf16")["logits"]
    emulated, budget = check.low_precision_oracle(spec, weights, images, "bf16")
    own = parity.rel_error(got, _ov_bf16_emulation(spec, weights, images))
    print(arch, "vs own placement", own, "vs the rule's", parity.rel_error(got, emulated), "budget", budget)
    assert own < budget / 8
    assert parity.rel_error(got, emulated) <= budget
    assert parity.rel_error(got, reference.forward(spec, weights, images)) > 1e-3  # it really ran bf16


def test_bf16_is_never_a_silent_fp32(monkeypatch):
    """A runtime model whose convolutions did not run bf16 is refused; check leaves openvino out
    of bf16 (with the reason) on a CPU without bf16 instructions, and out of train mode."""
    spec, weights, _ = _case("resnet18")
    monkeypatch.setattr(OV, "RUNTIME_BF16", "an instruction set this CPU lacks")
    with pytest.raises(ValueError, match="not supported here"):
        OV.compile_model(build_model(spec, weights), "bf16")
    monkeypatch.setattr(bench_plan, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    found, note = check._runtime_targets([check.Target("openvino"), check.Target("torch")], "", "eval", "cpu", "bf16")
    assert [t.label for t in found] == ["torch"] and "openvino not run: not supported here: no bf16" in note
    assert check._runtime_targets([check.Target("openvino")], "", "eval", "cpu", "fp32")[0]
    assert check._runtime_targets([check.Target("openvino")], "", "train", "cpu", "fp32")[0] == []


def _int8(arch, mutant=""):
    spec, weights, images = _case(arch, depths=(2, 1, 1, 1))
    result = V.run_int8(spec, weights, images, mutant=mutant)
    fspec, fw, _ = onnx_int8.float_model(spec, weights, SIZE)
    params, elided = onnx_int8.read_params(result), V.read_elided(result)
    verdict = quant.judge(fspec, fw, images, params, onnx_int8.read_integers(result), result["logits"], elided)
    return verdict, result, (fspec, fw, images, params, elided)


@needs_vnni
@pytest.mark.parametrize("arch", ["resnet50"])  # identity and projection shortcuts (basic blocks: the mutant tests)
def test_openvino_int8_computes_the_qdq_model_with_its_residual_requantizations_fused(arch):
    """The QDQ model of export --int8 on OpenVINO: every integer it rounds equal to the oracle's
    (teacher forced), its logits the oracle's with the requantizations it fuses into a residual
    add passed exactly; the declared model (onnxruntime's) lies far from it: those roundings are
    real, and the row names them."""
    verdict, result, (fspec, fw, images, params, elided) = _int8(arch)
    print(arch, {k: verdict[k] for k in ("differ", "unexplained", "integers", "logits_rel")}, sorted(elided))
    assert verdict["fails"] == [] and verdict["unexplained"] == 0 and verdict["integers"] > 10_000
    assert elided and all(e.endswith("_conv") for e in elided)
    blocks = [b for b in fspec.blocks()]
    assert len(elided) == len(blocks) - 1  # the last block's fused conv writes float32: rounded as declared
    # The declared placement, teacher forced on the same integers: the block outputs after the
    # roundings OpenVINO leaves out differ by the hundred, away from any tie.
    record: dict = {}

    class Declared(dict):  # OpenVINO's integers; the points it does not round, rounded as declared
        def __missing__(self, name):
            _, zero_point, kind = params[name]
            return np.clip(np.rint(record[name]) + zero_point, *quant.RANGES[kind])

    ints = onnx_int8.read_integers(result)
    quant.forward(fspec, fw, images, params, given=Declared(ints), record=record)
    off = sum(int((quant._as_held(ints[t].astype(np.float64), record[t].shape)
                   != np.clip(np.rint(record[t]) + params[t][1], *quant.RANGES[params[t][2]])).sum()) for t in ints)
    print("declared placement: integers off", off)
    assert off > 20 * max(verdict["differ"], 5)
    plain = V.compile_model(V.build(*_case(arch, depths=(2, 1, 1, 1))[:2], SIZE)[2])
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2).astype(np.float32))
    assert np.array_equal(plain(x)[plain.outputs[0]], result["logits"])  # the deployed model's logits


@needs_vnni
@pytest.mark.parametrize("mutant", list(onnx_int8.MUTANTS))
def test_broken_int8_models_are_caught_on_openvino(mutant):
    verdict, _, _ = _int8("resnet18", mutant)
    print(mutant, verdict["fails"])
    assert verdict["fails"] and verdict["first_diverging"]
    assert verdict["unexplained"] > 0.9 * verdict["differ"]


def test_bench_plans_openvino_rows(monkeypatch):
    vnni_bf16 = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"})
    monkeypatch.setattr(bench_plan, "cpu_flags", lambda: vnni_bf16)
    rows = {(p.target, p.mode, p.precision): p
            for p in bench_plan.plan(["openvino", "openvino-int8"], precisions=["fp32", "bf16"])}
    assert rows["openvino", "infer", "bf16"].skipped == rows["openvino-int8", "infer", "fp32"].skipped == ""
    assert rows["openvino", "infer", "bf16"].reference.label == "torchvision"
    assert rows["openvino", "train", "fp32"].skipped == "skipped: inference only"
    assert "OpenVINO's int8 ops is fp32 only" in rows["openvino-int8", "infer", "bf16"].skipped
    monkeypatch.setattr(bench_plan, "cpu_flags", lambda: frozenset({"avx2"}))
    rows = {(p.target, p.precision): p for p in bench_plan.plan(["openvino", "openvino-int8"], modes=["infer"],
                                                                precisions=["fp32", "bf16"])}
    assert rows["openvino", "fp32"].skipped == ""
    assert rows["openvino", "bf16"].skipped.startswith("not supported here: no bf16 instructions")
    assert rows["openvino-int8", "fp32"].skipped.startswith("not supported here: no int8 dot-product")


def test_bench_alternate_times_each_run_in_its_own_process():
    """bench --alternate: onnxruntime beside torchvision, each in a worker of its own, timed in
    turn; the anchor ratio is the two medians' ratio; batch latency median and p90."""
    pytest.importorskip("torchvision")
    pytest.importorskip("onnxruntime")
    from shared.tools import bench, bench_report
    from shared.tools.cli import build_parser

    args = build_parser().parse_args(["bench", "--arch", "resnet50", "--frameworks", "onnx", "--mode", "infer",
                                      "--depths", "1,1,1,1", "--size", "32", "--batch", "1", "--iters", "3",
                                      "--warmup", "1", "--alternate"])
    report = bench.run_bench(args)
    row, = report["rows"]
    ours, ref = row["ours"], row["reference"]
    assert row["status"] == "ok" and ours["pid"] != ref["pid"]
    assert len(ours["times_s"]) == len(ref["times_s"]) == 3
    assert report["anchor"]["ratios"]["onnxruntime fp32"] == pytest.approx(row["ratio"])
    assert ours["latency_s"]["median"] <= ours["latency_s"]["p90"] <= max(ours["times_s"])
    assert "x anchor" in bench_report.markdown(report)


def test_verify_runs_onnx_and_ir_files_on_openvino(tmp_path):
    """port_run on an .onnx file and on the OpenVINO IR converted from it: within the fp32 rule
    of the reference; an IR saved with OpenVINO's default float16 weights is not."""
    import openvino as ov

    spec, weights, images = _case("resnet18", batch=3)
    onnx_path = to_onnx(spec, weights, tmp_path / "r.onnx", image_size=SIZE)
    ir, half = tmp_path / "r.xml", tmp_path / "half.xml"
    # read_model, not convert_model: convert_model leaves numpy's OpenBLAS threads hung in this process
    # (the next float64 matmul spins forever; openvino 2026.4, numpy 2.4's scipy-openblas)
    ov.save_model(ov.Core().read_model(str(onnx_path)), str(ir), compress_to_fp16=False)
    ov.save_model(ov.Core().read_model(str(onnx_path)), str(half))  # OpenVINO's default: float16 weights
    ref = reference.forward(spec, weights, images)
    budget = parity.fp32_budget(parity.rel_error(reference.forward(spec, weights, images, dtype=np.float32), ref))
    for path in (onnx_path, ir):
        model = OV.port_open(str(path))
        assert parity.rel_error(OV.port_run(model, images), ref) <= budget
    assert parity.rel_error(OV.port_run(OV.port_open(str(half)), images), ref) > budget  # caught
    with pytest.raises(ValueError, match="ONNX file"):
        OV.port_arrays(OV.port_open(str(ir)))
    with pytest.raises(ValueError, match="no OpenVINO IR"):
        OV.port_open(str(tmp_path / "missing.xml"))
    # the command: an .onnx file with --runtime openvino is judged end to end; an IR is one line
    from shared.tools import verify

    verdict = verify.verify(str(onnx_path), size=SIZE, runtime="openvino")
    assert verdict.passed and verdict.framework == "openvino" and verdict.spec.depths == (1, 1, 1, 1), str(verdict)
    with pytest.raises(verify.VerifyError, match="needs the ONNX file"):
        verify.verify(str(ir), size=SIZE)


def test_predict_runs_openvino_and_judges_openvino_int8_by_the_int8_rule(tmp_path):
    """predict --frameworks openvino,openvino-int8 on a photo: OpenVINO's probabilities within
    the budget of the float64 softmax computed here; the int8 target judged integer by integer
    (it passes, its distance to the float64 logits the quantization's), and the same result with
    one block output's integers moved two steps fails."""
    import json

    from PIL import Image

    from shared import preprocess as pre, weights as W
    from shared.tools import predict
    from shared.tools.cli import main

    spec = S.ResNetSpec(depths=(1, 1, 1, 1), width=8)  # 1000 classes: predict's head
    weights = reference.calibrated_weights(spec, seed=1)
    W.save(weights, tmp_path / "w.safetensors", spec=spec)
    photo = tmp_path / "cat.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(photo)
    args = ["predict", str(photo), "--weights", str(tmp_path / "w.safetensors"), "--style", "torchvision",
            "--frameworks", "openvino,openvino-int8", "--top", "3", "--json", str(tmp_path / "out.json")]
    assert main(args) == 0
    report = json.loads((tmp_path / "out.json").read_text())
    x = pre.preprocess([str(photo)], style=pre.for_style("torchvision"))
    ref = reference.forward(spec, weights, x)
    budget = parity.fp32_budget(parity.rel_error(reference.forward(spec, weights, x, dtype=np.float32), ref))
    probs = np.exp(ref - ref.max()) / np.exp(ref - ref.max()).sum()
    for index, _, p in report["top"]["openvino"][0]:
        assert abs(p - probs[0, index]) <= budget * np.linalg.norm(ref) / 2
    row = report["int8"]["openvino-int8"]
    assert row["pass"] and row["integers"] > 100_000 and row["unexplained"] == 0 and row["rel_vs_float64"] > 1e-3
    assert list(report["frameworks"]) == ["openvino"] and "openvino-int8" in report["top"]
    result = V.run_int8(spec, weights, x)
    point = next(k for k in result if k.startswith("int8/") and k.endswith("block1_out"))
    result[point] = np.clip(result[point].astype(np.int64) + 2, 0, 255).astype(result[point].dtype)
    broken = predict.judge_int8(spec, weights, x, {"openvino-int8": result}, ref)["openvino-int8"]
    assert not broken["pass"] and broken["unexplained"] > 0, broken["detail"]


@pytest.mark.parametrize("command", ["check", "bench", "predict"])
def test_a_target_named_with_a_precision_is_refused_in_one_line(command, capsys):
    """bf16 is a precision, as for torch: ``--frameworks openvino --precision bf16``;
    ``openvino-bf16`` says so (predict runs fp32 only)."""
    from shared.tools.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([command, *(["cat.jpg", "--weights", "w"] if command == "predict" else []),
              "--frameworks", "onnx,openvino-bf16"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "'openvino-bf16': bf16 is a precision, not a target: " + (
        "this command runs fp32 only" if command == "predict" else "--frameworks openvino --precision bf16") in err


@needs_vnni
def test_the_int8_profile_names_every_conv_of_the_spec_and_its_int8_kernel():
    """openvino_profile groups OpenVINO's per-node counters by the spec's layer kinds: one
    runtime conv per spec conv, each on an int8 kernel (no conv left in float32), every block's
    residual add fused into a conv, each conv's time positive."""
    from shared.tools.adapters import openvino_profile as P

    spec, weights, _ = _case("resnet50")
    found = P.openvino_int8(spec, weights, SIZE, [1, 2], iters=2)
    convs = [layer for layer in spec.layers() if isinstance(layer, S.Conv)]
    for batch in (1, 2):
        kinds = found[batch]["kinds"]
        conv_rows = {k: v for k, v in kinds.items() if k.startswith("conv ")}
        assert sum(v["nodes"] for v in conv_rows.values()) == len(convs)
        assert sum(v["nodes"] for k, v in conv_rows.items() if k.endswith("+ add")) == len(spec.blocks())
        assert all(e.endswith("_I8") for v in conv_rows.values() for e in v["exec_types"]), conv_rows
        assert kinds["conv stem 7x7/2"]["nodes"] == 1 and kinds["conv 3x3/2"]["nodes"] == 3
        assert all(v["ms"] > 0 for v in conv_rows.values()) and found[batch]["wall_ms"] > 0
    assert "| conv stem 7x7/2 |" in P.table(found)


@needs_vnni
def test_a_block_output_fused_with_the_next_pre_activation_is_read_as_elided():
    """ResNet-50 V2: OpenVINO fuses a block's last conv, its requantization, the residual add and
    the next block's pre-activation (BatchNorm, ReLU, quantization) into one conv that writes
    float32 (a reorder turns it into uint8) and drops the conv's own rounding, as where the
    fused conv writes integers. Read as elided the check passes; rounded as declared, the next
    pre-activation's integers differ away from any tie (found at 224 px: 85,599 integers)."""
    verdict, result, (fspec, fw, images, params, elided) = _int8("resnet50v2")
    assert verdict["fails"] == [] and verdict["unexplained"] == 0 and verdict["integers"] > 10_000
    spec, weights, _ = _case("resnet50v2", depths=(2, 1, 1, 1))
    plain = V.compile_model(V.build(spec, weights, SIZE)[2])
    writes_integers = {op.get_friendly_name().split("/")[0] for op in plain.get_runtime_model().get_ordered_ops()
                       if op.get_rt_info()["layerType"].astype(str) == "Convolution"
                       and op.get_rt_info()["outputPrecisions"].astype(str) in ("u8", "i8")}
    writes_float = elided - writes_integers
    assert writes_float, sorted(elided)
    record: dict = {}

    class Declared(dict):  # OpenVINO's integers; the float-written points rounded as declared
        def __missing__(self, name):
            _, zero_point, kind = params[name]
            return np.clip(np.rint(record[name]) + zero_point, *quant.RANGES[kind])

    ints = onnx_int8.read_integers(result)
    quant.forward(fspec, fw, images, params, given=Declared(ints), record=record, elided=elided - writes_float)
    off = {t: int((quant._as_held(ints[t].astype(np.float64), record[t].shape)
                   != np.clip(np.rint(record[t]) + params[t][1], *quant.RANGES[params[t][2]])).sum()) for t in ints}
    print(sorted(writes_float), {t: n for t, n in off.items() if n})
    assert writes_float == {"conv2_block2_3_conv"}  # stage 2's last block, into stage 3's pre-activation
    assert {t for t, n in off.items() if n > 20} == {"conv3_block1_preact_relu"}
