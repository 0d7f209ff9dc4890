"""The onnxruntime adapter (``shared.tools.adapter.Adapter``): the ONNX model ``shared.onnx_export``
builds from the spec, in an onnxruntime CPU session with its default graph optimisations; fp32,
inference only. ``check`` runs it dynamic-size (with the trace outputs when asked); ``bench`` NCHW
at a static image size, the plan onnxruntime optimises best.
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
from pathlib import Path

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
#
# An ONNX file as users export it: torch's default (dynamo) exporter writes ``.onnx`` + ``.onnx.data``
# and folds every BatchNorm into its conv (a Conv with weight and bias, no BatchNormalization; a
# bias that folded to 0 is left out); the old exporter with constant folding does the same; without
# it the BatchNormalization nodes stay. The classifier is a Gemm (transB 0 or 1), MatMul + Add or
# a 1x1 Conv on the pooled features, after a Flatten or a Reshape. Exporters share equal tensors
# (one initializer, or Identity nodes on it): port_load gives each weight its own (the sharing is
# of values, not of layers). A weight reaches its node from an initializer or a Constant, directly
# or through Identity/Cast; one a node computes (a Mul, a DequantizeLinear) is refused, naming it.
# The files are read into memory and never written; port_run frees an input fixed to the
# exporter's example size and feeds a fixed batch in chunks.

# The weight inputs of each op, by input index (Conv W, B; BatchNormalization scale, B, mean, var;
# Gemm B, C; MatMul B, whose bias is the Add after it).
_SLOTS = {"Conv": ("weight", "bias"), "BatchNormalization": ("scale", "bias", "mean", "var"),
          "Gemm": ("weight", "bias"), "MatMul": ("weight",)}
_PASS = ("Identity", "Cast")  # nodes between a stored weight and its use that change no value
_LOADED = "resnet_parity_verify/"  # the initializers port_load writes
_GLOBAL_POOLS = ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax")


def _line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def port_open(path) -> object:
    """The ModelProto of an ONNX file, read into memory with its external data (``.onnx.data``,
    beside it); the files are never written."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"PORT: no such file {path}")
    try:
        model = onnx.load(str(file), load_external_data=False)
    except Exception as e:  # noqa: BLE001 (protobuf's DecodeError and onnx's own: one line)
        raise ValueError(f"PORT: {path} is no ONNX model ({type(e).__name__}: {_line(e)})") from None
    tensors = [*model.graph.initializer, *(a.t for n in model.graph.node for a in n.attribute if a.HasField("t"))]
    for tensor in tensors:
        location = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if uses_external_data(tensor) and not (file.parent / str(location)).is_file():
            raise ValueError(f"PORT: {path} keeps its tensor {tensor.name} in the file {location}, which is not "
                             f"beside it in {file.parent} (keep the two files of the export together)")
    try:
        load_external_data_for_model(model, str(file.parent))
    except Exception as e:  # noqa: BLE001 (a truncated or foreign data file: one line)
        raise ValueError(f"PORT: {path}: its external data does not read ({type(e).__name__}: {_line(e)})") from None
    return model


@dataclasses.dataclass
class _Slot:
    node: object  # the NodeProto the weight feeds
    index: int  # its input index there
    name: str  # "node.role", as port_arrays names it
    source: str | None  # the stored tensor it reads; None: a folded conv's zero bias the exporter left out
    shape: tuple[int, ...]  # as stored
    dtype: int  # the TensorProto element type the node receives
    transposed: bool  # stored (in, out): MatMul's B, Gemm's B without transB
    data: str  # the node's activation input (port_inputs)
    squeezed: bool = False  # a classifier written as a 1x1 Conv on the pooled features: (out, in, 1, 1)

    @property
    def torch_shape(self) -> tuple[int, ...]:
        shape = self.shape[::-1] if self.transposed else self.shape
        return shape[:2] if self.squeezed else shape


class _Graph:
    """Where each value of a graph comes from: a stored tensor (an initializer or a Constant
    node), directly or through Identity/Cast nodes, or a node that computes it."""

    def __init__(self, model):
        self.stored = {i.name: i for i in model.graph.initializer}
        self.producer, self.consumers = {}, {}
        for node in model.graph.node:
            for name in node.output:
                self.producer[name] = node
            for index, name in enumerate(node.input):
                self.consumers.setdefault(name, []).append((node, index))
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if node.op_type == "Constant" and value is not None:
                self.stored[node.output[0]] = value

    def resolve(self, name: str):
        """(stored tensor's name, element type arriving through the Casts) or the node computing it."""
        dtype = None
        while name not in self.stored:
            node = self.producer.get(name)
            if node is None or node.op_type not in _PASS:
                return None, node
            if node.op_type == "Cast" and dtype is None:  # the last Cast before the use decides
                dtype = next(a.i for a in node.attribute if a.name == "to")
            name = node.input[0]
        return name, dtype or self.stored[name].data_type

    def source(self, node, index: int, role: str):
        name, dtype = self.resolve(node.input[index])
        if name is None:
            what = (f"a {dtype.op_type} node ({dtype.name or dtype.output[0]})" if dtype is not None
                    else f"the graph input {node.input[index]!r}")
            raise ValueError(f"PORT: the {role} of {node.op_type} node {node.name or node.output[0]} is computed by "
                             f"{what}, not stored: verify loads weights only into initializers (reached directly or "
                             "through Identity/Cast nodes)")
        return name, dtype

    def array(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        return numpy_helper.to_array(self.stored[name])


def port_folded(model) -> bool:
    """Whether the file's BatchNorms were folded into its convs: it has convs and no
    BatchNormalization node takes a conv's output."""
    graph = _Graph(model)
    nodes = model.graph.node
    return any(n.op_type == "Conv" for n in nodes) and not any(
        n.op_type == "BatchNormalization" and getattr(graph.producer.get(n.input[0]), "op_type", None) == "Conv"
        for n in nodes)


def _attr(node, name: str, default=None):
    return next((a for a in node.attribute if a.name == name), default)


def _slots(model) -> list[_Slot]:
    """Every weight input of the graph, in graph order (a MatMul's bias right after it). In a
    folded file every conv with a 2-D kernel has a bias (a zero one the exporter left out is a
    slot without a source), as the folded spec has. A blur's fixed filter is no weight."""
    graph = _Graph(model)
    folded = port_folded(model)
    out: list[_Slot] = []

    def fixed_filter(node, name):
        """A depthwise Conv's weight whose every channel is one filter: a blur (timm's BlurPool2d
        keeps it out of its state_dict; our export's ``<name>.taps``), no learned weight."""
        dims = tuple(graph.stored[name].dims)
        group = getattr(_attr(node, "group"), "i", 1)
        if not (len(dims) == 4 and dims[1] == 1 and group == dims[0] > 1):
            return False
        w = graph.array(name)
        return bool((w == w[:1]).all())

    for node in model.graph.node:
        label = node.name or node.output[0]
        for index, role in enumerate(_SLOTS.get(node.op_type, ()), start=1):
            if index < len(node.input) and node.input[index]:
                name, dtype = graph.source(node, index, role)
                if node.op_type == "Conv" and fixed_filter(node, name):
                    break  # and no bias
                trans = role == "weight" and (node.op_type == "MatMul" or (
                        node.op_type == "Gemm" and not getattr(_attr(node, "transB"), "i", 0)))
                out.append(_Slot(node, index, f"{label}.{role}", name, tuple(graph.stored[name].dims), dtype, trans,
                                 node.input[0]))
            elif folded and node.op_type == "Conv" and role == "bias" and out[-1].node is node \
                    and len(out[-1].shape) == 4:
                kernel = out[-1]
                out.append(_Slot(node, index, f"{label}.bias", None, kernel.shape[:1], kernel.dtype, False,
                                 node.input[0]))
        if node.op_type == "MatMul" and len(graph.consumers.get(node.output[0], ())) == 1:
            add, position = graph.consumers[node.output[0]][0]
            other = 1 - position
            if add.op_type == "Add" and len(add.input) == 2 and graph.resolve(add.input[other])[0] is not None:
                name, dtype = graph.resolve(add.input[other])
                out.append(_Slot(add, other, f"{label}.bias", name, tuple(graph.stored[name].dims), dtype, False,
                                 node.input[0]))
    head = next((s for s in reversed(out) if s.name.endswith(".weight")), None)
    pooled = getattr(graph.producer.get(head.data if head else ""), "op_type", None) in _GLOBAL_POOLS
    if head and head.node.op_type == "Conv" and head.shape[2:] == (1, 1) and pooled:
        head.squeezed = True  # timm's resnetv2 head: its fc is a Conv2d
    return out


def port_arrays(model) -> list[tuple[str, tuple[int, ...]]]:
    """(node.role, torch-layout shape) of every weight input of an ONNX model, in graph order:
    a Conv's kernel (O, I, kh, kw) then its bias (O,) if it has one (every conv of a folded file
    has), a BatchNormalization's scale, bias, mean, var, the classifier's (out, in) then its bias
    (a Gemm's or MatMul's, or a 1x1 Conv's on the globally pooled features, as timm's resnetv2 has)."""
    return [(s.name, s.torch_shape) for s in _slots(model)]


def _untied(model, slots: list[_Slot]) -> None:
    """port_load gives every slot its own tensor: a stored tensor that exporters shared between
    weights because their values were equal is untied. One that also feeds a node that is no
    weight slot would keep its old value there while the slot gets a new one: refused."""
    graph = _Graph(model)
    sources = {s.source: s for s in slots if s.source}
    taken = {(id(s.node), s.index) for s in slots}
    for node in model.graph.node:
        if node.op_type in _PASS:
            continue
        for index, name in enumerate(node.input):
            source = graph.resolve(name)[0] if name else None
            if source in sources and (id(node), index) not in taken:
                raise ValueError(f"PORT: the tensor {source} is the weight {sources[source].name} and also input "
                                 f"#{index} of {node.op_type} node {node.name or node.output[0]}: verify would give "
                                 "them different values")


def port_load(model, arrays: list[np.ndarray]) -> None:
    """Give every weight input its own initializer holding ``arrays`` (the torch layouts of
    ``port_arrays``; stored transposed where the file stores (in, out)), in memory, in the
    element type the node receives."""
    from onnx import helper, numpy_helper

    slots = _slots(model)
    if len(arrays) != len(slots):
        raise ValueError(f"port_load: {len(arrays)} arrays for the file's {len(slots)} weights")
    _untied(model, slots)
    stored = {i.name: i for i in model.graph.initializer}
    for k, (slot, value) in enumerate(zip(slots, arrays)):
        value = np.asarray(value)
        if value.shape != slot.torch_shape:
            raise ValueError(f"port_load: {slot.name} is {slot.torch_shape}, got an array of {value.shape}")
        value = (value.T if slot.transposed else value).reshape(slot.shape)
        tensor = numpy_helper.from_array(np.ascontiguousarray(value, helper.tensor_dtype_to_np_dtype(slot.dtype)),
                                         f"{_LOADED}{k}")
        if tensor.name in stored:
            stored[tensor.name].CopyFrom(tensor)
        else:
            model.graph.initializer.append(tensor)
        while len(slot.node.input) <= slot.index:  # a bias the exporter left out
            slot.node.input.append("")
        slot.node.input[slot.index] = tensor.name
    _prune(model.graph)


def _prune(graph) -> None:
    """Drop what the rewiring left unread: Identity, Cast and Constant nodes whose outputs no
    node reads, then initializers no node reads (and their graph inputs, in an old file)."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {name for n in graph.node for name in n.input} | outputs
        dead = [n for n in graph.node if n.op_type in (*_PASS, "Constant") and not set(n.output) & read]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    gone = [i for i in graph.initializer if i.name not in read]
    for tensor in gone:
        graph.initializer.remove(tensor)
    gone = {t.name for t in gone}
    for value in [i for i in graph.input if i.name in gone]:
        graph.input.remove(value)


def _run(model, images_nhwc: np.ndarray, layout: str, names: list[str] | None = None) -> list[np.ndarray]:
    """``names`` (default: the first output) of an in-memory copy of the model in an onnxruntime
    CPU session. An input fixed to other image sizes than the images' is freed there (a ResNet is
    one function at every size; a shape baked into the graph fails in its own words); a fixed
    batch (the exporters write the example's) is fed in chunks of it, the last padded."""
    import onnx
    import onnxruntime as ort

    x = _nchw(images_nhwc) if layout == "NCHW" else np.ascontiguousarray(images_nhwc, np.float32)
    runnable = onnx.ModelProto()
    runnable.CopyFrom(model)
    graph = runnable.graph
    initializers = {i.name for i in graph.initializer}
    feed = next(i for i in graph.input if i.name not in initializers)
    dims = feed.type.tensor_type.shape.dim
    step = dims[0].dim_value if len(dims) == x.ndim and dims[0].HasField("dim_value") else len(x)
    for axis, dim in enumerate(dims):
        if axis and axis < x.ndim and dim.HasField("dim_value") and dim.dim_value != x.shape[axis]:
            dim.dim_param = f"resnet_parity_verify_{axis}"
    del graph.value_info[:]  # the exporter's shapes at its example's size
    for output in graph.output:
        output.type.tensor_type.ClearField("shape")
    names = names or [graph.output[0].name]
    known = {o.name for o in graph.output}
    graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                        for n in dict.fromkeys(names) if n not in known)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # onnxruntime's warnings on a user's graph are not verify's output
    sess = ort.InferenceSession(runnable.SerializeToString(), options, providers=["CPUExecutionProvider"])
    pad = -len(x) % step
    padded = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    parts = [sess.run(names, {feed.name: padded[i:i + step]}) for i in range(0, len(padded), step)]
    return [np.concatenate(chunks)[:len(x)] for chunks in zip(*parts)]


def port_run(model, images_nhwc: np.ndarray, layout: str = "NCHW") -> np.ndarray:
    """The first output of the model in an onnxruntime CPU session, for NHWC images fed in ``layout``."""
    return _run(model, images_nhwc, layout)[0]


def port_inputs(model, images_nhwc: np.ndarray, layout: str, positions: list[int]) -> list[np.ndarray]:
    """The input (NHWC) of the node holding each weight of ``port_arrays`` at ``positions``
    (made extra graph outputs of an in-memory copy), for ``verify --trace``."""
    slots = [_slots(model)[p] for p in positions]
    out = _run(model, images_nhwc, layout, [s.data for s in slots])
    return [a.reshape(a.shape[:2]) if s.squeezed else _nhwc(a) if layout == "NCHW" else a for s, a in zip(slots, out)]
