"""onnxruntime's side of ``resnet-parity check`` (called by ``shared.worker`` in its own process,
like each framework's ``runner``): the ONNX model ``shared.onnx_export`` builds from the spec,
run by onnxruntime on the CPU in fp32, eval mode only."""

from __future__ import annotations

import platform

import numpy as np


def versions() -> dict:
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "device": platform.processor() or "cpu"}


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


def run(spec, weights, images, *, labels=None, device="cpu", precision="fp32", mode="eval", trace=False):
    if mode != "eval":
        raise ValueError(f"mode: onnxruntime runs the exported model for inference only, got {mode!r}")
    if device != "cpu" or precision != "fp32":
        raise ValueError(f"onnxruntime row: CPU fp32 only, got {device} {precision}")
    sess = session(spec, weights, trace=trace)
    names = [o.name for o in sess.get_outputs()]
    x = np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1, 2))  # NHWC -> NCHW
    values = sess.run(names, {"images": x})
    out = {("logits" if n == "output" else n): _nhwc(v) for n, v in zip(names, values)}
    return out
