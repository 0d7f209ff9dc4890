"""The onnxruntime adapter (``shared.tools.adapter.Adapter``): the ONNX model ``shared.onnx_export``
builds from the spec, in an onnxruntime CPU session with its default graph optimisations; fp32,
inference only. ``check`` runs it dynamic-size (with the trace outputs when asked); ``bench`` NCHW
at a static image size, the plan onnxruntime optimises best.
"""

from __future__ import annotations

import contextlib
import platform

import numpy as np

from shared.tools.adapter import no_mutant
from shared.tools.bench_timing import Step
from shared.tools.jobs import Job

NAME = "onnx"


def versions() -> dict:
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "device": platform.processor() or "cpu"}


@contextlib.contextmanager
def setup_precision(precision: str, device: str):
    """onnxruntime runs here on the CPU in fp32 only."""
    if device != "cpu" or precision != "fp32":
        raise ValueError(f"onnxruntime: CPU fp32 only here, got {device} {precision}")
    yield {}


def inject(mutant: str):
    return no_mutant(NAME, mutant)


def session(spec, weights, *, layout: str = "NCHW", image_size: int | None = None, trace: bool = False,
            threads: int | None = None):
    """An onnxruntime CPU InferenceSession of the spec's ONNX model, built in memory."""
    import onnxruntime as ort

    from shared.onnx_export import build_model

    model = build_model(spec, weights, layout=layout, image_size=image_size, trace=trace)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _nhwc(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def _nchw(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1, 2))


def run_check(spec, weights, images, *, labels=None, device="cpu", precision="fp32", mode="eval", trace=False):
    if mode != "eval":
        raise ValueError(f"mode: onnxruntime runs the exported model for inference only, got {mode!r}")
    with setup_precision(precision, device):
        sess = session(spec, weights, trace=trace)
        names = [o.name for o in sess.get_outputs()]
        values = sess.run(names, {"images": _nchw(images)})
    return {("logits" if n == "output" else n): _nhwc(v) for n, v in zip(names, values)}


def run_bench(job: Job, spec, weights) -> Step:
    if job.mode == "train":
        raise ValueError(f"onnxruntime: inference only, got mode {job.mode!r}")
    sess = session(spec, weights, layout="NCHW", image_size=job.size)
    x = _nchw(job.inputs(spec)[0])
    options = sess.get_session_options()
    settings = {"layout": "NCHW", "static_image_size": job.size, "folded": spec.folded,
                "graph_optimization_level": str(options.graph_optimization_level),
                "intra_op_num_threads": options.intra_op_num_threads or "default",
                "providers": sess.get_providers()}
    return Step(lambda: sess.run(["output"], {"images": x}), lambda out: out, "cpu", settings)


# ----------------------------------------------------------------- someone else's port (verify)

# The weight inputs of each op, by input index (Conv W, B; BatchNormalization scale, B, mean, var; Gemm B, C).
_SLOTS = {"Conv": ("weight", "bias"), "BatchNormalization": ("scale", "bias", "mean", "var"),
          "Gemm": ("weight", "bias")}


def port_open(path: str):
    """The ModelProto of an ONNX file, read once into memory (the file is never written)."""
    import onnx

    try:
        return onnx.load(path)
    except FileNotFoundError:
        raise ValueError(f"PORT: no such file {path}") from None
    except Exception as e:  # noqa: BLE001 (protobuf's DecodeError and onnx's own: one line)
        raise ValueError(f"PORT: {path} is no ONNX model ({type(e).__name__}: {e})") from None


def _slots(model) -> list[tuple[object, int, str, bool]]:
    """(node, input index, name, transposed) of every weight input, in graph order. A weight is
    an initializer, directly or through Identity nodes (the torch exporter shares equal tensors
    that way), except a blur's fixed filter; transposed: a (in, out) matrix (Gemm without transB)."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    source = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}

    def weight(name):
        while name in source:
            name = source[name]
        return name in initializers

    def fixed_filter(node, index):
        """A depthwise Conv's weight whose every channel is one filter: a blur (timm's BlurPool2d
        keeps it out of its state_dict; our export's ``<name>.taps``), no learned weight."""
        if node.op_type != "Conv" or index != 1:
            return False
        w = _value(model, node.input[1])
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return w.ndim == 4 and w.shape[1] == 1 and group == w.shape[0] > 1 and bool((w == w[:1]).all())

    if not any(n.op_type == "BatchNormalization" for n in graph.node) and any(
            n.op_type == "Conv" and len(n.input) > 2 for n in graph.node):
        raise ValueError("PORT: the ONNX model has no BatchNormalization node: its BatchNorms were folded into "
                         "the convs at export (verify needs them: export in eval mode with do_constant_folding=False)")
    out = []
    for node in graph.node:
        for index, role in enumerate(_SLOTS.get(node.op_type, ()), start=1):
            if index < len(node.input) and node.input[index] and weight(node.input[index]) \
                    and not fixed_filter(node, index):
                trans = node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute)
                out.append((node, index, f"{node.name or node.op_type}.{role}", trans and role == "weight"))
    return out


def _value(model, name: str) -> np.ndarray:
    from onnx import numpy_helper

    source = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}
    while name in source:
        name = source[name]
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def port_arrays(model) -> list[tuple[str, tuple[int, ...]]]:
    """(node.role, torch-layout shape) of every weight input of an ONNX model, in graph order."""
    return [(name, tuple(_value(model, node.input[i]).shape[::-1] if trans else _value(model, node.input[i]).shape))
            for node, i, name, trans in _slots(model)]


def port_load(model, arrays: list[np.ndarray]) -> None:
    """Give every weight input its own initializer holding ``arrays`` (torch layouts), in memory."""
    from onnx import numpy_helper

    for k, ((node, i, _, trans), value) in enumerate(zip(_slots(model), arrays, strict=True)):
        value = np.ascontiguousarray(np.asarray(value, np.float32).T if trans else value, dtype=np.float32)
        model.graph.initializer.append(numpy_helper.from_array(value, f"resnet_parity_verify/{k}"))
        node.input[i] = f"resnet_parity_verify/{k}"


def port_run(model, images_nhwc: np.ndarray, layout: str = "NCHW") -> np.ndarray:
    """The first output of the model in an onnxruntime CPU session, for NHWC images fed in ``layout``."""
    import onnxruntime as ort

    initializers = {i.name for i in model.graph.initializer}
    feed = next(i.name for i in model.graph.input if i.name not in initializers)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the initializers port_load replaced are unused: no warning per one
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = _nchw(images_nhwc) if layout == "NCHW" else np.ascontiguousarray(images_nhwc, np.float32)
    return sess.run(None, {feed: x})[0]


def port_inputs(model, images_nhwc: np.ndarray, layout: str, positions: list[int]) -> list[np.ndarray]:
    """The input (NHWC) of the node holding each weight of ``port_arrays`` at ``positions``
    (made extra graph outputs of an in-memory copy), for ``verify --trace``."""
    import onnx
    import onnxruntime as ort

    slots = _slots(model)
    names = [slots[p][0].input[0] for p in positions]
    traced = onnx.ModelProto()
    traced.CopyFrom(model)
    traced.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    initializers = {i.name for i in traced.graph.initializer}
    feed = next(i.name for i in traced.graph.input if i.name not in initializers)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(traced.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = _nchw(images_nhwc) if layout == "NCHW" else np.ascontiguousarray(images_nhwc, np.float32)
    out = sess.run(names, {feed: x})
    return [_nhwc(a) if layout == "NCHW" else a for a in out]
