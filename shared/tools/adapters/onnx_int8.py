"""The onnxruntime int8 adapter (target ``onnx-int8``): the spec's ONNX model (BatchNorm folded)
quantized by onnxruntime's static post-training quantization, run in an onnxruntime CPU session.

The recipe (``quantize``): QDQ format, uint8 activations (calibrated, MinMax, on the images
given or on seeded ``reference.random_images``), int8 weights symmetric per output channel,
ops Conv, Gemm, Relu (fused into its conv) and MaxPool; the residual add and the logits stay
float. The family's layers take the same recipe as the ONNX export writes them: a blur's and
ECA's convs and SE's 1x1 convs are Convs (quantized), the average pools, the gates and the
attention's scale float. ``run_check`` hands back, beside the logits, every activation's scale and zero point
read from the model (``params``): what ``shared.quant`` emulates. ``MUTANTS`` are broken
quantized models the int8 check must catch.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import tempfile
from pathlib import Path

import numpy as np

from shared import fold, onnx_export, quant, reference
from shared.tools.adapter import no_mutant
from shared.tools.adapters.onnx import versions  # noqa: F401  (the same runtime as the onnx target)
from shared.tools.bench_timing import Step
from shared.tools.jobs import Job

NAME = "onnx-int8"
OPS = ("Conv", "Gemm", "Relu", "MaxPool")
CALIBRATION_IMAGES, CALIBRATION_SEED = 8, 1_000_003  # seeded images no check draws (check seeds are small)
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                 "MatMulInteger", "QLinearAdd", "DynamicQuantizeLinear"}


def int8_precision(runtime: str, settings: dict):
    """The ``setup_precision`` of an int8 target run by ``runtime``: int8 on the CPU, and
    ``precision`` is the float arithmetic around it: fp32 only."""
    @contextlib.contextmanager
    def setup_precision(precision: str, device: str):
        """int8 on the CPU; ``precision`` is the float arithmetic around it: fp32 only."""
        if device != "cpu" or precision != "fp32":
            raise ValueError(f"{runtime} int8: CPU with fp32 between the int8 ops only, got {device} {precision}")
        yield settings

    return setup_precision


setup_precision = int8_precision("onnxruntime", {"int8": "QDQ, uint8 activations, int8 per-channel weights"})


def inject(mutant: str):
    return no_mutant(NAME, mutant)


def refuse_quantized(model) -> None:
    """ValueError when ``model`` (an onnx ModelProto) is already quantized."""
    found = sorted({n.op_type for n in model.graph.node} & QUANTIZED_OPS)
    if found:
        raise ValueError(f"model: already quantized ({', '.join(found)} nodes); expected a float32 model")


def check_calibration(spec, images, size: int) -> np.ndarray:
    """The calibration batch as NCHW float32; ValueError naming the expected and actual shape."""
    want = f"(N, {size}, {size}, {spec.image_channels}) NHWC float32"
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4 or tuple(shape[1:]) != (size, size, spec.image_channels) or not shape[0]:
        raise ValueError(f"calibration images: expected shape {want}, got {tuple(shape) if shape is not None else type(images).__name__}")
    return np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1, 2))


def float_model(spec, weights, size: int):
    """(folded spec, folded weights, the float32 ONNX model at static ``size``)."""
    if not spec.folded:
        spec, weights = fold.fold_batchnorm(spec, weights)
    return spec, weights, onnx_export.build_model(spec, weights, image_size=size)


def quantize(model, calibration: np.ndarray):
    """``model`` (float32, NCHW, static size) quantized on ``calibration`` (NCHW float32): the
    int8 ModelProto."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    refuse_quantized(model)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{onnx_export.INPUT: calibration[i:i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self.batches, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "consider pre-processing": the spec's model is already folded and shaped
    try:
        with tempfile.TemporaryDirectory(prefix="resnet-parity-int8-") as tmp:
            src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
            onnx.save_model(model, str(src))
            quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=list(OPS),
                            extra_options={"OpTypesToExcludeOutputQuantization": ["Gemm"]})
            return onnx.load_model(str(dst))
    finally:
        root.setLevel(level)


def _initializers(model) -> dict:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def params(model) -> dict[str, tuple[float, int, str]]:
    """Every activation the model quantizes: tensor -> (scale, zero point, dtype), read from its
    QuantizeLinear (weights are stored quantized and have none)."""
    inits = _initializers(model)
    out = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            zero_point = inits[node.input[2]]
            out[node.input[0]] = (float(inits[node.input[1]]), int(zero_point), str(zero_point.dtype))
    return out


def session(model, threads: int | None = None, fused: bool = True, optimized: str | None = None):
    """An onnxruntime CPU session; ``fused=False`` runs the QDQ graph as written (no graph
    optimisations: dequantize, float32 op, quantize); ``optimized``: a path where onnxruntime
    saves the graph it runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if optimized:
        options.optimized_model_filepath = optimized
    if not fused:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def build(spec, weights, size: int, calibration: np.ndarray | None = None, mutant: str = ""):
    """(folded spec, folded weights, the int8 model): ``calibration`` NHWC images of ``size``
    (default: seeded ones), ``mutant`` one of ``MUTANTS`` applied to the quantized model."""
    if calibration is None:
        calibration = reference.random_images(spec, CALIBRATION_IMAGES, size, CALIBRATION_SEED)
    nchw = check_calibration(spec, calibration, size)
    spec, weights, model = float_model(spec, weights, size)
    model = quantize(model, nchw)
    if mutant:
        if mutant not in MUTANTS:
            raise ValueError(f"mutant: expected one of {', '.join(MUTANTS)}, got {mutant!r}")
        MUTANTS[mutant][1](model)
    return spec, weights, model


def expose_integers(model):
    """(a copy of ``model`` whose every QuantizeLinear output, the integers at a quantization
    point, is also a graph output, {tensor: that output}); onnxruntime fuses the same kernels
    and computes the same logits, to the bit (tests/test_int8.py)."""
    import onnx
    from onnx import TensorProto, helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits, names = _initializers(model), {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            kind = TensorProto.UINT8 if inits[node.input[2]].dtype == np.uint8 else TensorProto.INT8
            out.graph.output.append(helper.make_tensor_value_info(node.output[0], kind, None))
            names[node.input[0]] = node.output[0]
    return out, names


def run_int8(spec, weights, images, calibration=None, mutant: str = "", fused: bool = True) -> dict[str, np.ndarray]:
    """The int8 logits of ``images`` (NHWC); the model's integers at every quantization point
    (``int8/<tensor>``, NHWC) and its scales and zero points (``qscale/``, ``qzero/``,
    ``qtype/<tensor>``; ``read_params`` turns them back into a dict)."""
    reference.check_images(spec, images)
    size = images.shape[1]
    if images.shape[2] != size:
        raise ValueError(f"images: int8 models are built at one square size, got {images.shape[1]}x{images.shape[2]}")
    _, _, model = build(spec, weights, size, calibration, mutant)
    x = np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1, 2))
    found = params(model)
    exposed, outputs = expose_integers(model)
    sess = session(exposed, fused=fused)
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(names, {onnx_export.INPUT: x})))
    out = {"logits": values[onnx_export.OUTPUT]}
    for tensor, (scale, zero_point, dtype) in found.items():
        q = values[outputs[tensor]]
        out[f"int8/{tensor}"] = q.transpose(0, 2, 3, 1) if q.ndim == 4 else q
        out[f"qscale/{tensor}"], out[f"qzero/{tensor}"] = np.float64(scale), np.int64(zero_point)
        out[f"qtype/{tensor}"] = np.array(dtype)
    return out


def read_params(result: dict) -> dict[str, tuple[float, int, str]]:
    """``run_int8``'s flattened params back as ``{tensor: (scale, zero point, dtype)}``."""
    return {k[len("qscale/"):]: (float(v), int(result[f"qzero/{k[7:]}"]), str(result[f"qtype/{k[7:]}"]))
            for k, v in result.items() if k.startswith("qscale/")}


def read_integers(result: dict) -> dict[str, np.ndarray]:
    return {k[len("int8/"):]: v for k, v in result.items() if k.startswith("int8/")}


def int8_check(runtime: str, setup, run):
    """The ``run_check`` of an int8 target run by ``runtime``: eval mode, no trace (judged point by
    point instead), ``run(spec, weights, images)`` inside ``setup(precision, device)``."""
    def run_check(spec, weights, images, *, labels=None, device="cpu", precision="fp32", mode="eval", trace=False):
        if mode != "eval" or trace:
            raise ValueError(f"{runtime} int8: eval-mode logits only, got mode {mode!r}{' with trace' if trace else ''}")
        with setup(precision, device):
            return run(spec, weights, images)

    return run_check


run_check = int8_check("onnxruntime", setup_precision, run_int8)


def bench_model(runtime: str, job: Job, spec, weights) -> tuple[object, np.ndarray, dict]:
    """What an int8 target's ``run_bench`` times, run by ``runtime``: (the int8 model at
    ``job.size``, the batch NCHW, the settings every int8 row records); train mode refused."""
    if job.mode == "train":
        raise ValueError(f"{runtime} int8: inference only, got mode {job.mode!r}")
    _, _, model = build(spec, weights, job.size)
    x = np.ascontiguousarray(np.asarray(job.inputs(spec)[0], np.float32).transpose(0, 3, 1, 2))
    return model, x, {"layout": "NCHW", "static_image_size": job.size, "folded": True, "int8": "QDQ u8s8 per-channel"}


def run_bench(job: Job, spec, weights) -> Step:
    import onnx

    model, x, settings = bench_model("onnxruntime", job, spec, weights)
    with tempfile.TemporaryDirectory(prefix="resnet-parity-int8-") as tmp:  # which QDQ groups it fused
        sess = session(model, optimized=str(Path(tmp) / "optimized.onnx"))
        ops = collections.Counter(n.op_type for n in onnx.load_model(str(Path(tmp) / "optimized.onnx")).graph.node)
    settings.update(ops=list(OPS), intra_op_num_threads=sess.get_session_options().intra_op_num_threads or "default",
                    providers=sess.get_providers(), graph_ops_after_optimisation=dict(sorted(ops.items())))
    return Step(lambda: sess.run([onnx_export.OUTPUT], {onnx_export.INPUT: x}), lambda out: out, "cpu", settings)


# ----------------------------------------------------------------------- broken int8 models

def _set(model, name: str, array: np.ndarray) -> str:
    from onnx import numpy_helper

    model.graph.initializer.append(numpy_helper.from_array(array, name))
    return name


def _wrong_scale(model) -> None:
    """The image input dequantized with twice the scale it was quantized with."""
    inits = _initializers(model)
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] == f"{onnx_export.INPUT}_QuantizeLinear_Output":
            node.input[1] = _set(model, "mutant/images_scale", (inits[node.input[1]] * 2).astype(np.float32))


def _per_tensor(model) -> None:
    """Every conv's weights quantized with one scale for the whole tensor."""
    inits = _initializers(model)
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].endswith(".kernel_quantized"):
            q, s = inits[node.input[0]], inits[node.input[1]]
            if q.ndim != 4:
                continue
            w = q.astype(np.float32) * s.reshape(-1, 1, 1, 1)
            scale = np.float32(np.abs(w).max() * 2 / 254)
            ints = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
            node.input[0] = _set(model, f"mutant/{node.input[0]}", ints)
            node.input[1] = _set(model, f"mutant/{node.input[1]}", np.full_like(s, scale))


def _zero_point(model) -> None:
    """Every activation dequantized with its zero point off by one (the QuantizeLinear keeps it)."""
    inits = _initializers(model)
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].endswith("_QuantizeLinear_Output"):
            zp = inits[node.input[2]]
            node.input[2] = _set(model, f"mutant/{node.output[0]}_zp", np.clip(zp.astype(np.int32) + 1, *quant.RANGES[str(zp.dtype)]).astype(zp.dtype))


def _quantized_add(model) -> None:
    """Every residual sum quantized (uint8, zero point 128, twice the scale of the block output
    quantized after it, else of the add's main input)."""
    from onnx import helper

    inits = _initializers(model)
    q_of = {n.input[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear"}
    dq_by_output = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    nodes = list(model.graph.node)
    for node in nodes:
        if node.op_type != "Add":
            continue
        relu = next((n for n in nodes if n.op_type == "Relu" and n.input[0] == node.output[0]), None)
        source = q_of.get(relu.output[0]) if relu else None
        source = source or dq_by_output.get(node.input[0])
        if source is None:
            continue
        s = _set(model, f"mutant/{node.name}_scale", np.asarray(inits[source.input[1]] * 2, np.float32))
        z = _set(model, f"mutant/{node.name}_zp", np.asarray(128, np.uint8))
        raw = f"{node.output[0]}/raw"
        q = helper.make_node("QuantizeLinear", [raw, s, z], [f"{raw}/q"], name=f"mutant/{node.name}_q")
        dq = helper.make_node("DequantizeLinear", [f"{raw}/q", s, z], [node.output[0]], name=f"mutant/{node.name}_dq")
        node.output[0] = raw
        index = list(model.graph.node).index(node)
        model.graph.node.insert(index + 1, q)
        model.graph.node.insert(index + 2, dq)


MUTANTS = {
    "int8-wrong-scale": ("the image input dequantized with twice its quantization scale", _wrong_scale),
    "int8-per-tensor": ("conv weights quantized per tensor, not per output channel", _per_tensor),
    "int8-zero-point": ("every activation dequantized with its zero point off by one", _zero_point),
    "int8-quantized-add": ("the residual sum quantized where the model keeps it float", _quantized_add),
}


def write(model, path):
    """``model`` saved to ``path`` atomically (``shared.weights.atomic_path``); the path."""
    import onnx

    from shared.weights import atomic_path

    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))
    return Path(path)
