"""The OpenVINO int8 adapter (target ``openvino-int8``): the very QDQ model ``export --int8``
writes (``onnx_int8.build``: the spec's ONNX model, BatchNorm folded, quantized by onnxruntime's
static post-training quantization), compiled unchanged by OpenVINO's CPU plugin with float32
between the int8 ops (``INFERENCE_PRECISION_HINT=f32``; its default here is bf16).

What OpenVINO computes, measured against ``shared.quant`` (docs/int8-bf16.md): each conv runs
u8 x s8 with its requantization fused, as the model declares, except where a conv's output is
quantized only to be dequantized into a residual add: OpenVINO fuses conv, requantization, add,
ReLU and the block output's quantization into one conv with a sum post-op and does *not* round
the conv's output to its declared uint8 grid (the last block, whose fused conv writes float32,
keeps that rounding). Those points are ``elided``: read from the runtime model
(``get_runtime_model()``, each fused node's original layers and output precision) and handed to
the oracle, which then passes the value exactly; the row names them.

How the integers are read: every ``QuantizeLinear`` output is a graph output (``expose``),
except the tensors that enter a residual add (``hidden``): exposing one of those stops OpenVINO
fusing that add, and the logits change. With the rest exposed the logits equal the plain
model's to the bit (checked on every run). Each hidden point is read in a run of its own where
it alone is exposed besides the rest: it is computed upstream of the one add that exposure
unfuses, so its integers are the ones the plain model computes.
"""

from __future__ import annotations

import numpy as np

from shared import onnx_export
from shared.tools.adapter import no_mutant
from shared.tools.adapters import onnx_int8
from shared.tools.adapters.onnx_int8 import CALIBRATION_IMAGES, MUTANTS, build  # noqa: F401  (the same model)
from shared.tools.adapters.openvino import compile_model, outputs, runtime_precisions, versions  # noqa: F401
from shared.tools.bench_timing import Step
from shared.tools.jobs import Job

NAME = "openvino-int8"


setup_precision = onnx_int8.int8_precision(
    "openvino", {"int8": "the QDQ model of export --int8, unchanged", "INFERENCE_PRECISION_HINT": "f32"})


def inject(mutant: str):
    return no_mutant(NAME, mutant)


def _quantize_nodes(model) -> dict[str, object]:
    """{quantized tensor: its QuantizeLinear node}."""
    return {n.input[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear"}


def hidden(model) -> set[str]:
    """The quantized tensors whose dequantized value enters a residual add (main path or shortcut)."""
    graph = model.graph
    source = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    quantized = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    added = {i for n in graph.node if n.op_type == "Add" for i in n.input}
    return {quantized[source[i]] for i in added if source.get(i) in quantized}


def expose(model, points) -> tuple[object, dict[str, str]]:
    """(a copy of ``model`` with the integers of ``points`` as graph outputs, {tensor: output})."""
    import onnx
    from onnx import TensorProto, helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = onnx_int8._initializers(model)
    names = {}
    for tensor, node in _quantize_nodes(model).items():
        if tensor in points:
            kind = TensorProto.UINT8 if inits[node.input[2]].dtype == np.uint8 else TensorProto.INT8
            out.graph.output.append(helper.make_tensor_value_info(node.output[0], kind, None))
            names[tensor] = node.output[0]
    return out, names


def elided(compiled, model) -> list[str]:
    """The quantized tensors OpenVINO does not round: a conv's output whose quantization the
    runtime model fused, with a residual add and a quantization after it (the block output's,
    or in a pre-activation network the next block's BatchNorm, ReLU and quantization), into one
    conv. The conv then writes integers (or float32 that a reorder turns into them) and its own
    rounding is gone; a conv fused with an add and no later quantization (the last block's, into
    the global pool) keeps it."""
    adds = {n.name for n in model.graph.node if n.op_type == "Add"}
    points = {f"{t}_QuantizeLinear": t for t in _quantize_nodes(model)}
    found = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        fused = info["originalLayersNames"].astype(str).split(",")
        quantized = [points[f] for f in fused if f in points]  # the conv's own output first
        if info["layerType"].astype(str) == "Convolution" and adds & set(fused) and len(quantized) > 1:
            found.append(quantized[0])
    return found


def _nchw(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1, 2))


def _held(q: np.ndarray) -> np.ndarray:
    return q.transpose(0, 2, 3, 1) if q.ndim == 4 else q


def run_int8(spec, weights, images, calibration=None, mutant: str = "") -> dict[str, np.ndarray]:
    """The logits of the int8 model on OpenVINO, run as it is, for ``images`` (NHWC); the
    integers at every quantization point OpenVINO rounds (``int8/<tensor>``), the model's scales
    and zero points (as ``onnx_int8.run_int8``) and ``elided`` (the points it does not round)."""
    from shared import reference

    reference.check_images(spec, images)
    size = images.shape[1]
    if images.shape[2] != size:
        raise ValueError(f"images: int8 models are built at one square size, got {images.shape[1]}x{images.shape[2]}")
    _, _, model = build(spec, weights, size, calibration, mutant)
    x = _nchw(images)
    plain = compile_model(model)
    logits = np.asarray(plain(x)[plain.outputs[0]])
    skipped = set(elided(plain, model))
    found = onnx_int8.params(model)
    inside = hidden(model)
    exposed, names = expose(model, set(found) - inside)
    compiled = compile_model(exposed)
    values = outputs(compiled, compiled(x))
    if not np.array_equal(values[onnx_export.OUTPUT], logits):
        raise RuntimeError("openvino int8: exposing the integers changed the logits OpenVINO computes "
                           f"(rel {np.linalg.norm(values[onnx_export.OUTPUT] - logits) / np.linalg.norm(logits):.1e}): "
                           "they would not be the deployed model's")
    ints = {t: values[q] for t, q in names.items()}
    for tensor in sorted(inside - skipped):  # one run each: it unfuses only the add it enters
        one, name = expose(model, set(found) - inside | {tensor})
        compiled = compile_model(one)
        ints[tensor] = outputs(compiled, compiled(x))[name[tensor]]
    out = {"logits": logits, "elided": np.array(sorted(skipped))}
    for tensor, (scale, zero_point, dtype) in found.items():
        if tensor in ints:
            out[f"int8/{tensor}"] = _held(ints[tensor])
        out[f"qscale/{tensor}"], out[f"qzero/{tensor}"] = np.float64(scale), np.int64(zero_point)
        out[f"qtype/{tensor}"] = np.array(dtype)
    return out


def read_elided(result: dict) -> frozenset[str]:
    return frozenset(str(t) for t in np.atleast_1d(result.get("elided", np.array([], str))))


run_check = onnx_int8.int8_check("openvino", setup_precision, run_int8)


def run_bench(job: Job, spec, weights) -> Step:
    model, x, settings = onnx_int8.bench_model("openvino", job, spec, weights)
    compiled = compile_model(model)
    request = compiled.create_infer_request()
    kinds = runtime_precisions(compiled)
    settings.update({"INFERENCE_PRECISION_HINT": "f32",
                     "INFERENCE_NUM_THREADS": compiled.get_property("INFERENCE_NUM_THREADS") or "default",
                     "convolution_runtime_precisions": sorted(set(kinds.get("Convolution", []))),
                     "elided_requantizations": len(elided(compiled, model))})
    return Step(lambda: request.infer({0: x}), lambda out: out, "cpu", settings)
