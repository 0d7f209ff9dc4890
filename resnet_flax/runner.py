"""resnet_flax's side of ``resnet-parity check`` (called by ``shared.worker`` in its own process):
run the model at a device, precision and mode and return named numpy arrays."""

from __future__ import annotations


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
