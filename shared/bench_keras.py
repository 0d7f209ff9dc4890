"""The Keras side of ``resnet-parity bench``: resnet_keras or keras.applications' ResNet on the
backend the worker was started with (``KERAS_BACKEND``), through the calls a Keras user makes
(``predict_on_batch``, ``train_on_batch``) with the same compile settings for both: XLA as Keras
chooses it ("auto"; ``--compile`` forces ``jit_compile=True``), ``mixed_bfloat16`` for bf16.
Imported only inside a bench worker process."""

from __future__ import annotations

import keras
import numpy as np

from shared.bench_plan import ARCH_CLASS
from shared.bench_timing import Step
from shared.bench_worker import LEARNING_RATE, MOMENTUM, Job
from shared.keras_h5 import KERAS_PARAM

BACKEND = keras.backend.backend()


def versions() -> dict:
    out = {"keras": keras.__version__, "keras_backend": BACKEND}
    if BACKEND == "jax":
        import jax
        import jaxlib

        out.update(jax=jax.__version__, jaxlib=jaxlib.__version__)
    elif BACKEND == "torch":
        import torch

        out["torch"] = torch.__version__
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        out["tensorflow"] = tf.__version__
    return out


def _assign_by_name(model: keras.Model, spec, weights) -> None:
    """Canonical weights into a keras.applications model: its layers carry the spec's names."""
    for layer in spec.layers():
        if layer.params:
            native = model.get_layer(layer.name)
            for param in layer.params:
                getattr(native, KERAS_PARAM[param]).assign(weights[f"{layer.name}.{param}"])


def _model(job: Job, spec, weights) -> keras.Model:
    shape = (job.size, job.size, spec.image_channels)
    if job.impl == "ours":
        import resnet_keras

        model = resnet_keras.keras_model(spec, input_shape=shape)
        resnet_keras.load_weights(model, weights)
        return model
    build = _custom_depth(job.depths) if job.depths else getattr(keras.applications, ARCH_CLASS[job.arch])
    model = build(weights=None, input_shape=shape, classes=spec.num_classes, classifier_activation=None)
    _assign_by_name(model, spec, weights)
    return model


def _custom_depth(depths):
    """keras.applications' ResNet builder with other stage depths (a private module: tests only)."""
    from keras.src.applications import resnet

    def stack_fn(x):
        for i, depth in enumerate(depths):
            x = resnet.stack_residual_blocks_v1(x, 64 * 2**i, depth, stride1=1 if i == 0 else 2, name=f"conv{i + 2}")
        return x

    def build(**kwargs):
        return resnet.ResNet(stack_fn, preact=False, use_bias=True, name="resnet", **kwargs)

    return build


class _Device:
    """What differs between backends: TF32 off, the GPU's name, its peak memory."""

    def __init__(self, job: Job):
        self.gpu = job.device == "gpu"
        fp32 = job.precision == "fp32"
        if BACKEND == "jax":
            import jax

            if self.gpu and jax.default_backend() != "gpu":
                raise RuntimeError(f"jax sees no GPU (default backend {jax.default_backend()!r})")
            if self.gpu and fp32:
                jax.config.update("jax_default_matmul_precision", "highest")
            self.dev = jax.local_devices()[0]
            self.name = self.dev.device_kind
            self.tf32 = self.gpu and not fp32
        elif BACKEND == "torch":
            import torch

            if self.gpu and not torch.cuda.is_available():
                raise RuntimeError("torch sees no CUDA GPU")
            if self.gpu and fp32:
                torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
            self.name = torch.cuda.get_device_name() if self.gpu else ""
            self.tf32 = self.gpu and torch.backends.cudnn.allow_tf32
        else:
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if self.gpu and not gpus:
                raise RuntimeError("tensorflow sees no GPU")
            if self.gpu and fp32:
                tf.config.experimental.enable_tensor_float_32_execution(False)
            self.name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if self.gpu else ""
            self.tf32 = self.gpu and tf.config.experimental.tensor_float_32_execution_enabled()
        self.name = self.name or "cpu"

    def peak_memory(self) -> int | None:
        if not self.gpu:
            return None
        if BACKEND == "jax":
            return (self.dev.memory_stats() or {}).get("peak_bytes_in_use")
        if BACKEND == "torch":
            import torch

            return torch.cuda.max_memory_allocated()
        import tensorflow as tf

        return tf.config.experimental.get_memory_info("GPU:0")["peak"]


def prepare(job: Job, spec, weights) -> Step:
    device = _Device(job)
    if job.precision == "bf16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    model = _model(job, spec, weights)
    jit = True if job.compile else "auto"
    if job.mode == "infer":
        model.compile(jit_compile=jit)
    else:
        model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
    images, labels = job.inputs(spec.num_classes)
    x, y = keras.ops.convert_to_tensor(images), keras.ops.convert_to_tensor(labels)

    if job.mode == "infer":
        def step():
            return model.predict_on_batch(x)  # BatchNorm in inference mode
    else:
        def step():
            return model.train_on_batch(x, y)  # BatchNorm in training mode

    settings = {"jit_compile": model.jit_compile, "dtype_policy": keras.config.dtype_policy().name,
                "tf32": device.tf32}
    # Both calls hand back numpy (or Python floats): the device work is done when they return.
    return Step(step, np.asarray, device.name, settings, device.peak_memory)
