"""The Flax side of ``resnet-parity bench``: resnet_flax under ``jax.jit`` (always: it is how
Flax runs), bf16 as the model's compute dtype, training with optax SGD. Uses the split/merge
pattern so each step is one compiled call on the model's state, not a Python walk of the
module graph. Imported only inside a bench worker process."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from shared.bench_timing import Step
from shared.bench_worker import LEARNING_RATE, MOMENTUM, Job


def versions() -> dict:
    import flax
    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
            "optax": optax.__version__}


def _train_step(graphdef):
    def step(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)

        def loss_fn(model):
            logits = model(x).astype(jnp.float32)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss, nnx.state((model, optimizer))

    return jax.jit(step, donate_argnums=0)


def prepare(job: Job, spec, weights) -> Step:
    import resnet_flax

    gpu = job.device == "gpu"
    if gpu and jax.default_backend() != "gpu":
        raise RuntimeError(f"jax sees no GPU (default backend {jax.default_backend()!r})")
    highest = gpu and job.precision == "fp32"
    if highest:
        jax.config.update("jax_default_matmul_precision", "highest")
    model = resnet_flax.ResNet(spec, dtype=jnp.bfloat16 if job.precision == "bf16" else None)
    resnet_flax.load_weights(model, weights)
    images, labels = job.inputs(spec.num_classes)
    x, y = jax.device_put(images), jax.device_put(labels)

    if job.mode == "infer":
        model.eval()
        graphdef, state = nnx.split(model)
        forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))

        def step():
            return forward(state, x)
    else:
        model.train()
        optimizer = nnx.Optimizer(model, optax.sgd(LEARNING_RATE, momentum=MOMENTUM), wrt=nnx.Param)
        graphdef, state = nnx.split((model, optimizer))
        train = _train_step(graphdef)
        holder = [state]

        def step():
            loss, holder[0] = train(holder[0], x, y)
            return loss, holder[0]

    device = jax.local_devices()[0]
    settings = {"jit": True, "compute_dtype": "bfloat16" if job.precision == "bf16" else "float32",
                "default_matmul_precision": "highest" if highest else "default", "tf32": gpu and job.precision != "fp32"}

    def peak():
        return (device.memory_stats() or {}).get("peak_bytes_in_use") if gpu else None

    return Step(step, jax.block_until_ready, device.device_kind if gpu else "cpu", settings, peak)
