"""resnet_flax's side of ``resnet-parity check`` (called by ``shared.worker`` in its own process):
run the model at a device, precision and mode and return named numpy arrays."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from resnet_flax.model import ResNet
from resnet_flax.weights import _variables, load_weights

# fp32 on a GPU means TF32 off: XLA's default precision runs f32 convs and matmuls as TF32.
MATMUL_PRECISION = {"fp32": "highest", "tf32": "default", "bf16": "default"}


def versions() -> dict:
    import flax

    return {"jax": jax.__version__, "flax": flax.__version__, "device": str(jax.devices()[0].device_kind)}


def _device(device: str):
    if device == "gpu":
        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        if not gpus:
            raise RuntimeError("jax sees no GPU")
        return gpus[0]
    return jax.devices("cpu")[0]


def run(spec, weights, images, *, labels=None, device="cpu", precision="fp32", mode="eval", trace=False):
    if precision not in MATMUL_PRECISION:
        raise ValueError(f"precision: resnet_flax runs fp32, tf32 or bf16, got {precision!r}")
    out: dict[str, np.ndarray] = {}
    with jax.default_device(_device(device)), jax.default_matmul_precision(MATMUL_PRECISION[precision]):
        model = ResNet(spec, dtype=jnp.bfloat16 if precision == "bf16" else None)  # a shell, filled below
        load_weights(model, weights)
        x = jnp.asarray(images)
        if mode == "train":
            model.train()
            y = jnp.asarray(labels)

            def loss_fn(m):
                logits = m(x)
                logp = jax.nn.log_softmax(logits.astype(jnp.float32))
                loss = -jnp.take_along_axis(logp, y[:, None], axis=-1).mean()
                return loss, logits

            # Under nnx.jit, as a training loop runs it (and as the max pool must differentiate).
            (loss, logits), grads = nnx.jit(nnx.value_and_grad(loss_fn, has_aux=True))(model)
            out["loss"] = np.asarray(loss)
            graphdef, _, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
            grad_model = nnx.merge(graphdef, grads, stats)  # the model's layout, holding gradients
            for key, variable in _variables(grad_model):
                if key.endswith((".mean", ".var")):
                    out[f"stats/{key}"] = np.asarray(variable[...], np.float32)  # updated running stats
                else:
                    out[f"grad/{key}"] = np.asarray(variable[...], np.float32)
        else:
            model.eval()
            hook = (lambda name, a: out.__setitem__(f"trace/{name}", np.asarray(a, np.float32))) if trace else None
            logits = model(x, hook=hook) if trace else nnx.jit(lambda m, v: m(v))(model, x)
        out["logits"] = np.asarray(logits, np.float32)
    return out


# ----------------------------------------------------------------- broken ports (shared.mutants)

@jax.custom_vjp
def _scaled_grad_relu(x):
    return jnp.maximum(x, 0)


_scaled_grad_relu.defvjp(lambda x: (jnp.maximum(x, 0), x), lambda x, g: (g * (x > 0) * 1.5,))


def _bf16_sum(x):
    """(N, C) -> (C,): a pairwise reduction whose every partial sum is stored in bf16."""
    x = x.astype(jnp.bfloat16)
    while x.shape[0] > 1:
        if x.shape[0] % 2:
            x = jnp.concatenate([x, jnp.zeros((1, x.shape[1]), x.dtype)])
        x = x[0::2] + x[1::2]
    return x[0].astype(jnp.float32)


def _bf16_stats_call(self, x, use_running_average=None, *, mask=None):
    running = self.use_running_average if use_running_average is None else use_running_average
    if running or x.dtype != jnp.bfloat16:  # the bug lives on the bf16 path
        return _batchnorm_call(self, x, use_running_average, mask=mask)
    flat = x.astype(jnp.float32).reshape(-1, x.shape[-1])
    n = flat.shape[0]
    mean = _bf16_sum(flat) / n
    var = (_bf16_sum(flat * flat) / n - mean * mean).astype(jnp.bfloat16).astype(jnp.float32)  # one pass, in bf16
    self.mean.value = self.momentum * self.mean.value + (1 - self.momentum) * mean
    self.var.value = self.momentum * self.var.value + (1 - self.momentum) * var
    y = (x.astype(jnp.float32) - mean) / jnp.sqrt(var + self.epsilon)
    return (y * self.scale.value + self.bias.value).astype(x.dtype)


_batchnorm_call = nnx.BatchNorm.__call__


@contextlib.contextmanager
def inject(mutant: str):
    """Swap in the framework code of a ``native`` mutant while models are built and run."""
    saved = nnx.relu, nnx.BatchNorm.__call__
    if mutant == "relu_backward":
        nnx.relu = _scaled_grad_relu
    elif mutant == "bn_stats_bf16":
        nnx.BatchNorm.__call__ = _bf16_stats_call
    try:
        yield
    finally:
        nnx.relu, nnx.BatchNorm.__call__ = saved
