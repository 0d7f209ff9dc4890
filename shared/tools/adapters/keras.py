"""resnet_keras's side of ``resnet-parity check`` (called by ``shared.worker`` in its own process,
on the backend KERAS_BACKEND chose there): run the model at a device, precision and mode and
return named numpy arrays: ``logits``; with ``trace``, ``trace/stem``, ``trace/<block>`` and
``trace/head``; in train mode ``loss``, ``grad/<weight>`` and ``stats/<bn>.mean|var`` (the
running statistics after one update, from Keras' biased batch variance).

Keras has no backend-neutral gradient, so train mode takes each backend's own: jax.grad over
``stateless_call``, torch autograd, tf.GradientTape.
"""

from __future__ import annotations

import contextlib
import importlib

import keras
import numpy as np
from keras import ops

from resnet_keras.model import build
from resnet_keras.weights import _variables, export_weights, load_weights

BACKEND = keras.backend.backend()
PRECISIONS = ("fp32", "tf32", "bf16")


def versions() -> dict:
    return {"keras": keras.__version__, "keras_backend": BACKEND,
            BACKEND: importlib.import_module(BACKEND).__version__}


def has_gpu() -> bool:
    if BACKEND == "jax":
        import jax
        return any(d.platform == "gpu" for d in jax.devices())
    if BACKEND == "torch":
        import torch
        return torch.cuda.is_available()
    import tensorflow as tf
    return bool(tf.config.list_physical_devices("GPU"))


@contextlib.contextmanager
def precision_scope(device: str = "cpu", precision: str = "fp32"):
    """Place work on the device and set the precision: fp32 with TF32 off (every framework's
    GPU convs default to TF32), tf32 on, bf16 as Keras' mixed_bfloat16 policy. Restores all."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: resnet_keras runs {PRECISIONS}, got {precision!r}")
    if device == "gpu" and not has_gpu():
        raise RuntimeError(f"the {BACKEND} backend sees no GPU")
    with contextlib.ExitStack() as undo:
        if BACKEND == "jax" and precision == "fp32":
            import jax
            undo.enter_context(jax.default_matmul_precision("highest"))
        elif BACKEND == "torch" and precision != "bf16":
            import torch
            for flags in (torch.backends.cudnn, torch.backends.cuda.matmul):
                undo.callback(setattr, flags, "allow_tf32", flags.allow_tf32)
                flags.allow_tf32 = precision == "tf32"
        elif BACKEND == "tensorflow" and precision != "bf16":
            import tensorflow as tf
            undo.callback(tf.config.experimental.enable_tensor_float_32_execution,
                          tf.config.experimental.tensor_float_32_execution_enabled())
            tf.config.experimental.enable_tensor_float_32_execution(precision == "tf32")
        if precision == "bf16":
            undo.callback(keras.config.set_dtype_policy, keras.config.dtype_policy())
            keras.config.set_dtype_policy("mixed_bfloat16")
        undo.enter_context(keras.device(device))  # "cpu:0" would copy torch variables off their leaves
        yield


def _numpy(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float32)


def _eval(model, x, trace: bool) -> dict:
    if not trace:
        return {"logits": _numpy(model(x, training=False))}
    spec = model.spec
    taps = {"stem": spec.stem()[-1].name, **{block.name: block.out.name for block in spec.blocks()}}
    traced = keras.Model(model.inputs, [model.get_layer(n).output for n in taps.values()] + model.outputs)
    *activations, logits = traced(x, training=False)
    out = {f"trace/{name}": _numpy(a) for name, a in zip(taps, activations)}
    if spec.head():
        out["trace/head"] = _numpy(logits)
    return {**out, "logits": _numpy(logits)}


def _train(model, x, labels) -> dict:
    y = keras.ops.convert_to_tensor(np.asarray(labels, dtype=np.int32))

    def loss_of(logits):
        logits = keras.ops.cast(logits, "float32")
        return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))

    if BACKEND == "jax":
        import jax

        frozen = [v.value for v in model.non_trainable_variables]

        def loss_fn(trainable):
            logits, updated = model.stateless_call(trainable, frozen, x, training=True)
            return loss_of(logits), (logits, updated)

        (loss, (logits, updated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            [v.value for v in model.trainable_variables])
        for variable, value in zip(model.non_trainable_variables, updated):
            variable.assign(value)
    elif BACKEND == "torch":
        logits = model(x, training=True)
        loss = loss_of(logits)
        loss.backward()
        grads = [v.value.grad for v in model.trainable_variables]
    else:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = loss_of(logits)
        grads = tape.gradient(loss, model.trainable_variables)

    key_of = {id(v): key for key, v in _variables(model)}
    out = {"loss": np.asarray(keras.ops.convert_to_numpy(loss)), "logits": _numpy(logits)}
    out.update({f"grad/{key_of[id(v)]}": _numpy(g) for v, g in zip(model.trainable_variables, grads)})
    out.update({f"stats/{k}": v for k, v in export_weights(model).items() if k.endswith((".mean", ".var"))})
    return out


def run(spec, weights, images, *, labels=None, device="cpu", precision="fp32", mode="eval", trace=False):
    if mode not in ("eval", "train"):
        raise ValueError(f"mode: expected 'eval' or 'train', got {mode!r}")
    with precision_scope(device, precision):
        model = build(spec)
        load_weights(model, weights)
        x = keras.ops.convert_to_tensor(np.asarray(images, dtype=np.float32))
        return _train(model, x, labels) if mode == "train" else _eval(model, x, trace)


# ----------------------------------------------------------------- broken ports (shared.mutants)

def _bf16_sum(x):
    """(N, C) -> (C,): a pairwise reduction whose every partial sum is stored in bf16."""
    x = ops.cast(x, "bfloat16")
    while x.shape[0] > 1:
        if x.shape[0] % 2:
            x = ops.concatenate([x, ops.zeros((1, x.shape[1]), "bfloat16")])
        x = x[0::2] + x[1::2]
    return ops.cast(x[0], "float32")


def _bf16_moments(self, inputs, mask):
    if self.compute_dtype != "bfloat16":  # the bug lives on the bf16 path
        return _keras_moments(self, inputs, mask)
    flat = ops.reshape(ops.cast(inputs, "float32"), (-1, inputs.shape[-1]))
    n = flat.shape[0]
    mean = _bf16_sum(flat) / n
    var = ops.cast(ops.cast(_bf16_sum(flat * flat) / n - mean * mean, "bfloat16"), "float32")  # one pass, in bf16
    return mean, var


_keras_moments = None  # BatchNormalization._moments, while a mutant replaces it


@ops.custom_gradient
def _scaled_grad_relu(x):
    def grad(*args, upstream=None):
        upstream = args[0] if upstream is None else upstream
        return upstream * ops.cast(x > 0, upstream.dtype) * 1.5

    return ops.relu(x), grad


@contextlib.contextmanager
def inject(mutant: str):
    """Swap in the framework code of a ``native`` mutant while models are built and run."""
    from keras import layers
    from resnet_keras import model as model_module

    global _keras_moments
    saved = model_module._APPLY["relu"], layers.BatchNormalization._moments
    _keras_moments = saved[1]
    if mutant == "relu_backward":
        model_module._APPLY["relu"] = lambda layer, x, _: layers.Activation(_scaled_grad_relu, name=layer.name)(x)
    elif mutant == "bn_stats_bf16":
        layers.BatchNormalization._moments = _bf16_moments
    try:
        yield
    finally:
        model_module._APPLY["relu"], layers.BatchNormalization._moments = saved
