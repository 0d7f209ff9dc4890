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
