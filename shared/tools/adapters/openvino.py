"""The OpenVINO adapter (target ``openvino``): the spec's ONNX model (``shared.onnx_export``, the
same model the ``onnx`` target runs) compiled by OpenVINO's CPU plugin; inference only.

Precisions, set explicitly (OpenVINO's own default on a CPU with AVX-512 BF16 or AMX is bf16):

- ``fp32``: ``INFERENCE_PRECISION_HINT=f32``; judged by the fp32 rule.
- ``bf16``: ``INFERENCE_PRECISION_HINT=bf16``. What OpenVINO then computes, read off its runtime
  model (``get_runtime_model()``, each node's ``runtimePrecision``) and measured op by op
  (docs/int8-bf16.md): BatchNorm folded into the conv in float32, then every conv's and the
  dense layer's input, weights *and bias* rounded to bf16, float32 accumulation, and each fused
  group's output (conv + bias + ReLU, conv + bias + residual add + ReLU) stored in bf16; the
  global pool reads bf16 and the logits come out float32. Judged by the emulated-bf16 rule of
  ``check``. A CPU without bf16 instructions would run the same hint in float32 without a word:
  ``compile`` refuses a bf16 model whose convolutions did not run in bf16.

``port_*`` run someone else's model (an ``.onnx`` file, or an OpenVINO IR ``.xml`` with its
``.bin``) on OpenVINO for ``verify``: the ONNX ones reuse the onnx adapter's weight slots.
"""

from __future__ import annotations

import contextlib
import platform

import numpy as np

from shared.tools.adapter import no_mutant
from shared.tools.bench_timing import Step
from shared.tools.jobs import Job

NAME = "openvino"
HINTS = {"fp32": "f32", "bf16": "bf16"}
# What OpenVINO's runtime model calls a convolution's precision when it ran in bf16.
RUNTIME_BF16 = "bf16"


def versions() -> dict:
    import onnx
    import openvino

    return {"onnx": onnx.__version__, "openvino": openvino.__version__, "device": platform.processor() or "cpu"}


@contextlib.contextmanager
def setup_precision(precision: str, device: str):
    """OpenVINO runs here on the CPU, fp32 or bf16 (``INFERENCE_PRECISION_HINT``)."""
    if device != "cpu" or precision not in HINTS:
        raise ValueError(f"openvino: CPU fp32 or bf16 only here, got {device} {precision}")
    yield {"INFERENCE_PRECISION_HINT": HINTS[precision]}


def inject(mutant: str):
    return no_mutant(NAME, mutant)


def runtime_precisions(compiled) -> dict[str, list[str]]:
    """{layer type: the runtime precision of each such node} of a compiled model's runtime graph."""
    out: dict[str, list[str]] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        out.setdefault(info["layerType"].astype(str), []).append(info["runtimePrecision"].astype(str))
    return out


def compile_model(model, precision: str = "fp32", threads: int | None = None, config: dict | None = None):
    """An OpenVINO CPU CompiledModel of ``model`` (an onnx ModelProto, a path, or an
    ``openvino.Model``) at ``precision``, with further CPU properties ``config`` (``PERF_COUNT``);
    ValueError where bf16 was asked and a convolution ran in another precision (no silent fp32)."""
    import openvino as ov

    core = ov.Core()
    if not isinstance(model, ov.Model):
        model = core.read_model(model.SerializeToString() if hasattr(model, "SerializeToString") else str(model))
    config = {**(config or {}), "INFERENCE_PRECISION_HINT": HINTS[precision]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(model, "CPU", config)
    if precision == "bf16":
        convs = runtime_precisions(compiled).get("Convolution", [])
        other = sorted(set(convs) - {RUNTIME_BF16})
        if not convs or other:
            raise ValueError(f"openvino bf16: not supported here: the runtime model runs its convolutions in "
                             f"{', '.join(other) or 'none'}, not {RUNTIME_BF16}")
    return compiled


def _nchw(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1, 2))


def _nhwc(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def outputs(compiled, values) -> dict[str, np.ndarray]:
    """A CompiledModel's results by every name of each output."""
    return {name: np.asarray(values[o]) for o in compiled.outputs for name in o.get_names()}


def run_check(spec, weights, images, *, labels=None, device="cpu", precision="fp32", mode="eval", trace=False):
    if mode != "eval":
        raise ValueError(f"mode: OpenVINO runs the exported model for inference only, got {mode!r}")
    from shared.onnx_export import build_model

    with setup_precision(precision, device):
        compiled = compile_model(build_model(spec, weights, trace=trace), precision)
        values = outputs(compiled, compiled(_nchw(images)))
    return {("logits" if n == "output" else n): _nhwc(v).astype(np.float32) for n, v in values.items()}


def run_bench(job: Job, spec, weights) -> Step:
    if job.mode == "train":
        raise ValueError(f"openvino: inference only, got mode {job.mode!r}")
    from shared.onnx_export import build_model

    compiled = compile_model(build_model(spec, weights, layout="NCHW", image_size=job.size), job.precision)
    request = compiled.create_infer_request()
    x = _nchw(job.inputs(spec)[0])
    kinds = runtime_precisions(compiled)
    settings = {"layout": "NCHW", "static_image_size": job.size, "folded": spec.folded,
                "INFERENCE_PRECISION_HINT": HINTS[job.precision],
                "INFERENCE_NUM_THREADS": compiled.get_property("INFERENCE_NUM_THREADS") or "default",
                "convolution_runtime_precisions": sorted(set(kinds.get("Convolution", [])))}
    return Step(lambda: request.infer({0: x}), lambda out: out, "cpu", settings)


# ----------------------------------------------------------------- someone else's port (verify)

def port_open(path: str):
    """An ``.onnx`` file as a ModelProto (the onnx adapter's reader, weights editable in memory),
    or an OpenVINO IR ``.xml`` (with its ``.bin``) as an ``openvino.Model``."""
    if str(path).endswith(".xml"):
        import openvino as ov

        try:
            return ov.Core().read_model(str(path))
        except Exception as e:  # noqa: BLE001 (OpenVINO raises RuntimeError with its own text: one line)
            raise ValueError(f"PORT: {path} is no OpenVINO IR model ({str(e).splitlines()[0]})") from None
    from shared.tools.adapters import onnx as O

    return O.port_open(path)


def _onnx_only(model, what: str):
    if not hasattr(model, "graph"):
        raise ValueError(f"PORT: {what} needs the ONNX file; an OpenVINO IR model holds its weights as "
                         "constants folded at conversion (run the .onnx)")


def port_arrays(model) -> list[tuple[str, tuple[int, ...]]]:
    from shared.tools.adapters import onnx as O

    _onnx_only(model, "reading the weights")
    return O.port_arrays(model)


def port_load(model, arrays: list[np.ndarray]) -> None:
    from shared.tools.adapters import onnx as O

    _onnx_only(model, "loading weights")
    O.port_load(model, arrays)


def _feed(images_nhwc: np.ndarray, layout: str) -> np.ndarray:
    return _nchw(images_nhwc) if layout == "NCHW" else np.ascontiguousarray(images_nhwc, np.float32)


def _port_compiled(model, x: np.ndarray, precision: str = "fp32", names: list[str] | None = None):
    """The port compiled for ``x``'s shape (a batch or image size fixed in the file is reshaped:
    a ResNet is one function at every size), with ``names`` (ONNX tensors) as extra outputs."""
    import onnx
    import openvino as ov

    if hasattr(model, "graph"):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        known = {o.name for o in copy.graph.output}
        copy.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                                 for n in dict.fromkeys(names or []) if n not in known)
        model = ov.Core().read_model(copy.SerializeToString())
    else:
        model = model.clone()
    model.reshape({model.inputs[0]: ov.PartialShape(list(x.shape))})
    return compile_model(model, precision)


def port_run(model, images_nhwc: np.ndarray, layout: str = "NCHW", precision: str = "fp32") -> np.ndarray:
    """The first output of the model compiled by OpenVINO (CPU, ``precision``), for NHWC images
    fed in ``layout``."""
    x = _feed(images_nhwc, layout)
    compiled = _port_compiled(model, x, precision)
    return np.asarray(compiled(x)[compiled.outputs[0]])


def port_inputs(model, images_nhwc: np.ndarray, layout: str, positions: list[int]) -> list[np.ndarray]:
    """The input (NHWC) of the node holding each weight of ``port_arrays`` at ``positions``, as
    extra outputs of an in-memory copy, for ``verify --trace``."""
    from shared.tools.adapters import onnx as O

    _onnx_only(model, "--trace")
    slots = O._slots(model)
    names = [slots[p].data for p in positions]
    x = _feed(images_nhwc, layout)
    compiled = _port_compiled(model, x, names=names)
    values = outputs(compiled, compiled(x))
    return [_nhwc(values[n]) if layout == "NCHW" else values[n] for n in names]
