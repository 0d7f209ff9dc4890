"""One data-parallel SGD step on the engine of the Keras backend in use.

- jax: ``keras.distribution.DataParallel`` over N devices. Variables are created replicated
  under the distribution, the global batch is placed with the distribution's data layout
  (``distribute_tensor``), and one jitted step runs ``stateless_call``, ``jax.grad`` and the
  optimiser's ``stateless_apply``: what ``model.fit`` does under a distribution. XLA partitions
  it, so BatchNorm sees the global batch. On a CPU the devices are virtual
  (``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before jax is imported).
- tensorflow: ``tf.distribute.MirroredStrategy`` over N logical CPU devices (made here, before
  TensorFlow starts its runtime). Each replica runs forward and backward on its shard; the
  loss is ``tf.nn.compute_average_loss`` over the global batch size, and the Keras optimiser
  sums the replicas' gradients (its all-reduce) before the update. BatchNormalization
  normalises with each replica's own statistics unless ``synchronized=True``, which this module
  sets on every BatchNormalization layer of the built model (``sync_bn``).

``run`` returns ``loss``, ``grad/<weight>``, ``weights/<weight>`` (after the step) and
``stats/<bn>.mean|var`` (replica 0's running statistics), plus ``rank<r>/stats/...`` for
every other replica where the engine keeps a copy per replica (MirroredStrategy).
"""

from __future__ import annotations

import importlib

import keras
import numpy as np

from resnet_keras.model import build
from resnet_keras.weights import variables, load_weights

BACKEND = keras.backend.backend()


def versions() -> dict:
    return {"keras": keras.__version__, "keras_backend": BACKEND,
            BACKEND: importlib.import_module(BACKEND).__version__}


def _split(model, trainable_values, grads, stats_of):
    key_of = {id(v): key for key, v in variables(model)}
    out = {}
    for v, value, g in zip(model.trainable_variables, trainable_values, grads):
        out[f"weights/{key_of[id(v)]}"] = np.asarray(value, np.float32)
        out[f"grad/{key_of[id(v)]}"] = np.asarray(g, np.float32)
    for v in model.non_trainable_variables:
        for r, value in enumerate(stats_of(v)):
            out[f"{'' if r == 0 else f'rank{r}/'}stats/{key_of[id(v)]}"] = np.asarray(value, np.float32)
    return out


def _run_jax(spec, weights, images, labels, replicas, lr, momentum):
    import jax

    devices = keras.distribution.list_devices("cpu")
    if len(devices) < replicas:
        raise RuntimeError(
            f"replicas: keras sees {len(devices)} CPU device(s), {replicas} are needed; set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={replicas} before jax is imported")
    distribution = keras.distribution.DataParallel(devices=devices[:replicas])
    with jax.default_matmul_precision("highest"), distribution.scope():
        model = build(spec)
        load_weights(model, weights)
        optimizer = keras.optimizers.SGD(learning_rate=lr, momentum=momentum)
        optimizer.build(model.trainable_variables)
        x = keras.distribution.distribute_tensor(np.asarray(images, np.float32),
                                                 distribution.get_data_layout(images.shape))
        y = keras.distribution.distribute_tensor(np.asarray(labels, np.int32),
                                                 distribution.get_data_layout(labels.shape))

        def loss_fn(trainable, frozen):
            logits, frozen = model.stateless_call(trainable, frozen, x, training=True)
            loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
            return loss, frozen

        @jax.jit
        def step(trainable, frozen, opt_vars):
            (loss, frozen), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, frozen)
            trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
            return loss, grads, trainable, frozen, opt_vars

        loss, grads, trainable, frozen, _ = step([v.value for v in model.trainable_variables],
                                                 [v.value for v in model.non_trainable_variables],
                                                 [v.value for v in optimizer.variables])
        stats = {id(v): value for v, value in zip(model.non_trainable_variables, frozen)}
        out = {"loss": np.asarray(loss), "shards": np.array(len(x.sharding.device_set))}
        out.update(_split(model, trainable, grads, lambda v: [stats[id(v)]]))
    return out


def logical_cpus(replicas: int):
    """Split the one physical CPU into ``replicas`` logical devices (before TF initialises)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError as e:
        raise RuntimeError(f"replicas: TensorFlow was initialised before the logical CPUs were made ({e})") from None
    return [d.name for d in tf.config.list_logical_devices("CPU")][:replicas]


def _run_tensorflow(spec, weights, images, labels, replicas, lr, momentum, sync_bn):
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(logical_cpus(replicas))
    with strategy.scope():
        model = build(spec)
        load_weights(model, weights)
        if sync_bn:
            for layer in model.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.synchronized = True  # read at call time (ops.moments(synchronized=...))
        optimizer = keras.optimizers.SGD(learning_rate=lr, momentum=momentum)
        optimizer.build(model.trainable_variables)
    per = len(images) // replicas
    global_batch = len(images)

    def shard(array):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(array[ctx.replica_id_in_sync_group * per:(ctx.replica_id_in_sync_group + 1) * per]))

    x, y = shard(np.asarray(images, np.float32)), shard(np.asarray(labels, np.int32))

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            per_example = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, grads

    @tf.function
    def step(x, y):
        loss, grads = strategy.run(replica_step, args=(x, y))
        total = strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
        return total, [strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None) for g in grads]

    loss, grads = step(x, y)
    out = {"loss": np.asarray(loss), "shards": np.array(replicas)}
    # Reading a mirrored variable (what export_weights and a checkpoint do) gives one copy:
    # record whether it is replica 0's.
    stats = model.non_trainable_variables
    out["read_is_rank0"] = np.array(all(np.array_equal(v.numpy(), strategy.experimental_local_results(v.value)[0].numpy())
                                        for v in stats))
    out.update(_split(model, [v.numpy() for v in model.trainable_variables], [g.numpy() for g in grads],
                      lambda v: [t.numpy() for t in strategy.experimental_local_results(v.value)]))
    return out


def run(spec, weights, images, labels, *, replicas: int, lr: float, momentum: float,
        sync_bn: bool = False) -> dict[str, np.ndarray]:
    if replicas < 1 or len(images) % replicas:
        raise ValueError(f"replicas: {replicas} does not split a batch of {len(images)} into equal shards")
    if BACKEND == "jax":
        if sync_bn:
            raise ValueError("sync_bn: keras.distribution on jax has no per-replica BatchNorm to synchronise")
        return _run_jax(spec, weights, images, labels, replicas, lr, momentum)
    if BACKEND == "tensorflow":
        return _run_tensorflow(spec, weights, images, labels, replicas, lr, momentum, sync_bn)
    raise RuntimeError(f"shared.tools.adapters.keras_dp: no data-parallel engine on the {BACKEND} backend "
                       "(keras.distribution runs on jax; MirroredStrategy on tensorflow)")
