"""One data-parallel SGD step on JAX's own engine: ``nnx.jit`` over a batch sharded with a
``NamedSharding`` across a one-axis device mesh, the model and optimiser state replicated.

XLA's partitioner, not this code, decides every collective: BatchNorm's batch mean and variance
reduce over the sharded batch axis, so they are the global batch's statistics, and the gradient
of the mean loss over the global batch comes out replicated. On a CPU the N devices are virtual:
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` must be set before jax is imported, so
``shared.tools.check_dp`` runs this in a process of its own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from resnet_flax.model import build
from resnet_flax.weights import variables, load_weights

ENGINE = "Flax NNX under nnx.jit, batch sharded by NamedSharding over a device mesh"


def versions() -> dict:
    import flax

    return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}


def mesh(replicas: int) -> Mesh:
    devices = jax.devices("cpu")
    if len(devices) < replicas:
        raise RuntimeError(
            f"replicas: jax sees {len(devices)} CPU device(s), {replicas} are needed; set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={replicas} before jax is imported")
    return Mesh(np.array(devices[:replicas]), ("data",))


def run(spec, weights, images, labels, *, replicas: int, lr: float, momentum: float) -> dict[str, np.ndarray]:
    m = mesh(replicas)
    data, replicated = NamedSharding(m, PartitionSpec("data")), NamedSharding(m, PartitionSpec())
    with jax.default_matmul_precision("highest"):
        model = build(spec)
        load_weights(model, weights)
        model.train()
        optimizer = nnx.Optimizer(model, optax.sgd(lr, momentum=momentum), wrt=nnx.Param)
        state = nnx.state((model, optimizer))
        nnx.update((model, optimizer), jax.device_put(state, replicated))
        x = jax.device_put(jnp.asarray(images), data)
        y = jax.device_put(jnp.asarray(labels, jnp.int32), data)

        @nnx.jit
        def step(model, optimizer, x, y):
            def loss_fn(model):
                logp = jax.nn.log_softmax(model(x).astype(jnp.float32))
                return -jnp.take_along_axis(logp, y[:, None], axis=-1).mean()

            loss, grads = nnx.value_and_grad(loss_fn)(model)
            optimizer.update(model, grads)
            return loss, grads

        loss, grads = step(model, optimizer, x, y)
        out = {"loss": np.asarray(loss), "shards": np.array(len(x.sharding.device_set))}
        graphdef, _, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        grad_model = nnx.merge(graphdef, grads, stats)
        grad_of = dict(variables(grad_model))
        for key, variable in variables(model):
            value = np.asarray(variable[...], np.float32)
            if key.endswith((".mean", ".var")):
                out[f"stats/{key}"] = value
            else:
                out[f"weights/{key}"] = value
                out[f"grad/{key}"] = np.asarray(grad_of[key][...], np.float32)
    return out
