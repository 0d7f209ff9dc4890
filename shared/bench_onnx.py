"""The onnxruntime side of ``resnet-parity bench``: the spec's ONNX model (``shared.onnx_export``,
NCHW, static image size: the plan onnxruntime optimises best) in an onnxruntime CPU session with
its default graph optimisations. Imported only inside a bench worker process."""

from __future__ import annotations

import numpy as np

from shared.bench_timing import Step
from shared.bench_worker import Job


def versions() -> dict:
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def prepare(job: Job, spec, weights) -> Step:
    if job.mode != "infer":
        raise ValueError(f"onnxruntime: inference only, got mode {job.mode!r}")
    if job.device != "cpu" or job.precision != "fp32":
        raise ValueError(f"onnxruntime: CPU fp32 only here, got {job.device} {job.precision}")
    from shared.onnx_runner import session

    sess = session(spec, weights, layout="NCHW", image_size=job.size)
    images, _ = job.inputs(spec.num_classes)
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    options = sess.get_session_options()
    settings = {"layout": "NCHW", "static_image_size": job.size, "folded": spec.folded,
                "graph_optimization_level": str(options.graph_optimization_level),
                "intra_op_num_threads": options.intra_op_num_threads or "default",
                "providers": sess.get_providers()}
    return Step(lambda: sess.run(["output"], {"images": x}), lambda out: out, "cpu", settings)
