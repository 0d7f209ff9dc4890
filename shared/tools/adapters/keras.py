"""The Keras adapter (``shared.tools.adapter.Adapter``), on the backend KERAS_BACKEND chose for
this worker process: resnet_keras for ``check`` and, for ``bench``, resnet_keras or
keras.applications' ResNet through the calls a Keras user makes (``predict_on_batch``,
``train_on_batch``) with the same compile settings for both: XLA as Keras chooses it ("auto";
``--compile`` forces ``jit_compile=True``), ``mixed_bfloat16`` for bf16.

Keras has no backend-neutral gradient, so ``check --mode train`` takes each backend's own:
jax.grad over ``stateless_call``, torch autograd, tf.GradientTape.
"""

from __future__ import annotations

import contextlib
import importlib

import keras
import numpy as np
from keras import ops

import resnet_keras
from resnet_keras import build, keras_model, load_weights
from resnet_keras.weights import variables, export_weights
from shared.keras_h5 import KERAS_PARAM
from shared import spec as S
from shared.spec import is_statistic
from shared.tools.adapter import logits_of, tf32
from shared.tools.bench_timing import LEARNING_RATE, MOMENTUM, Step, recipe_of
from shared.tools.jobs import Job

NAME = "keras"
# The framework's checkpoint formats, for shared.tools.convert
from resnet_keras.checkpoints import READERS, WRITERS  # noqa: E402, F401
BACKEND = keras.backend.backend()
# keras.applications' class of each architecture it ships (from the presets table)
APPLICATIONS = {a: p.keras_applications for a, p in S.PRESETS.items() if p.keras_applications}


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
def setup_precision(precision: str, device: str):
    """Place work on the device and apply the precision rule (``shared.tools.adapter``) through
    the backend's own switch, bf16 as Keras' mixed_bfloat16 policy. Restores all on exit."""
    use_tf32 = tf32(precision)
    if device == "gpu" and not has_gpu():
        raise RuntimeError(f"the {BACKEND} backend sees no GPU")
    with contextlib.ExitStack() as undo:
        if BACKEND == "jax":
            import jax
            undo.enter_context(jax.default_matmul_precision("default" if use_tf32 else "highest"))
        elif BACKEND == "torch":
            import torch
            for flags in (torch.backends.cudnn, torch.backends.cuda.matmul):
                undo.callback(setattr, flags, "allow_tf32", flags.allow_tf32)
                flags.allow_tf32 = use_tf32
        else:
            import tensorflow as tf
            undo.callback(tf.config.experimental.enable_tensor_float_32_execution,
                          tf.config.experimental.tensor_float_32_execution_enabled())
            tf.config.experimental.enable_tensor_float_32_execution(use_tf32)
        if precision == "bf16":
            undo.callback(keras.config.set_dtype_policy, keras.config.dtype_policy())
            keras.config.set_dtype_policy("mixed_bfloat16")
        undo.enter_context(keras.device(device))  # "cpu:0" would copy torch variables off their leaves
        yield {"tf32": use_tf32 and device == "gpu", "dtype_policy": keras.config.dtype_policy().name}


def _numpy(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float32)


def _eval(model, x, trace: bool) -> dict:
    if not trace:
        return {"logits": _numpy(model(x, training=False))}
    spec = model.spec
    taps = {"stem": spec.stem()[-1].name, **{block.name: block.output.name for block in spec.blocks()}}
    traced = keras.Model(model.inputs, [model.get_layer(n).output for n in taps.values()] + model.outputs)
    *activations, logits = traced(x, training=False)
    out = {f"trace/{name}": _numpy(a) for name, a in zip(taps, activations)}
    if spec.head():
        out["trace/head"] = _numpy(logits)
    return {**out, "logits": _numpy(logits)}


def _gradients(model, x, labels):
    """One train-mode forward and backward (mean cross-entropy) with the backend's own autodiff,
    the running statistics updated: (loss, logits, the gradient of each trainable variable)."""
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
    return loss, logits, grads


def _train(model, x, labels) -> dict:
    loss, logits, grads = _gradients(model, x, labels)
    key_of = {id(v): key for key, v in variables(model)}
    out = {"loss": np.asarray(keras.ops.convert_to_numpy(loss)), "logits": _numpy(logits)}
    out.update({f"grad/{key_of[id(v)]}": _numpy(g) for v, g in zip(model.trainable_variables, grads)})
    out.update({f"stats/{k}": v for k, v in export_weights(model).items() if is_statistic(k)})
    return out


# ----------------------------------------------------------------------------------- check

def run_check(spec, weights, images, *, labels=None, device="cpu", precision="fp32", mode="eval", trace=False):
    if mode not in ("eval", "train"):
        raise ValueError(f"mode: expected 'eval' or 'train', got {mode!r}")
    with setup_precision(precision, device):
        model = load_weights(build(spec), weights)
        x = keras.ops.convert_to_tensor(np.asarray(images, dtype=np.float32))
        return _train(model, x, labels) if mode == "train" else _eval(model, x, trace)


# ----------------------------------------------------------------------------------- bench

def _assign_by_name(model: keras.Model, spec, weights) -> None:
    """Canonical weights into a keras.applications model: its layers carry the spec's names."""
    for layer in spec.layers():
        if layer.params:
            native = model.get_layer(layer.name)
            for param in layer.params:
                getattr(native, KERAS_PARAM[param]).assign(weights[f"{layer.name}.{param}"])


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


def _bench_model(job: Job, spec, weights) -> keras.Model:
    shape = (job.size, job.size, spec.image_channels)
    if job.impl == "ours":
        return load_weights(keras_model(spec, input_shape=shape), weights)
    if spec.arch in APPLICATIONS:
        build = getattr(keras.applications, APPLICATIONS[spec.arch])
    elif spec.block == "bottleneck":  # a smaller network (tests)
        build = _custom_depth(spec.depths)
    else:
        raise ValueError(f"keras.applications has no ResNet with {spec.block} blocks and depths {spec.depths}")
    model = build(weights=None, input_shape=shape, classes=spec.num_classes, classifier_activation=None)
    _assign_by_name(model, spec, weights)
    return model


def _peak_memory() -> int | None:
    if BACKEND == "jax":
        import jax
        return (jax.local_devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    if BACKEND == "torch":
        import torch
        return torch.cuda.max_memory_allocated()
    import tensorflow as tf
    return tf.config.experimental.get_memory_info("GPU:0")["peak"]


def _device_name(device: str) -> str:
    if device != "gpu":
        return "cpu"
    if BACKEND == "jax":
        import jax
        return jax.local_devices()[0].device_kind
    if BACKEND == "torch":
        import torch
        return torch.cuda.get_device_name()
    import tensorflow as tf
    return tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0]).get("device_name", "GPU")


def run_bench(job: Job, spec, weights) -> Step:
    """One ``predict_on_batch`` (infer: BatchNorm in inference mode) or ``train_on_batch``; with
    a recipe (``bench --recipe``), one update of it (``recipe_step``)."""
    recipe = recipe_of(job)
    model = _bench_model(job, recipe.train_spec(spec) if recipe and job.impl == "ours" else spec, weights)
    jit = True if job.compile else "auto"
    images, labels = job.inputs(spec)
    trains = {}
    if recipe:
        step, trains = recipe_step(job, recipe, model, images, labels)
    elif job.mode == "train":
        model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
        x, y = keras.ops.convert_to_tensor(images), keras.ops.convert_to_tensor(labels)

        def step():
            return model.train_on_batch(x, y)
    else:
        model.compile(jit_compile=jit)
        x = keras.ops.convert_to_tensor(images)

        def step():
            return model.predict_on_batch(x)

    settings = {"jit_compile": model.jit_compile, "keras_backend": BACKEND, **trains}
    # Both calls hand back numpy (or Python floats): the device work is done when they return.
    return Step(step, np.asarray, _device_name(job.device), settings,
                _peak_memory if job.device == "gpu" else (lambda: None))


def recipe_step(job: Job, recipe, model: keras.Model, images: np.ndarray, labels: np.ndarray):
    """(one update of ``recipe``, what trains it). Ours: ``resnet_keras.optimizer`` and
    ``train_step``, as a user of the package trains. The reference: Keras' own way, a stock
    ``keras.optimizers.SGD`` (or ``AdamW``) with the recipe's ``weight_decay`` and its schedule
    as a stock schedule of iterations, ``CategoricalCrossentropy(label_smoothing=)`` on one-hot
    targets, ``train_on_batch``, compiled with the jit_compile every bench row uses."""
    if job.impl == "ours":
        optimizer = resnet_keras.optimizer(recipe, model)

        def step():
            return resnet_keras.train_step(model, optimizer, images, labels, recipe)

        return step, {"optimizer": type(optimizer).__name__, "train_step": "resnet_keras.train_step"}
    schedules, unit = keras.optimizers.schedules, recipe.unit
    if recipe.schedule == "steps":
        rate = schedules.PiecewiseConstantDecay([m * unit for m in recipe.milestones],
                                                [recipe.lr * recipe.gamma**i for i in range(len(recipe.milestones) + 1)])
    elif recipe.schedule == "warmup_cosine":
        rate = schedules.CosineDecay(recipe.lr * (recipe.warmup_start if recipe.warmup else 1.0), recipe.cosine * unit,
                                     alpha=recipe.lr_min / recipe.lr, warmup_target=recipe.lr if recipe.warmup else None,
                                     warmup_steps=recipe.warmup * unit)
    else:
        rate = recipe.lr
    if recipe.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(rate, momentum=recipe.momentum, nesterov=recipe.nesterov,
                                         weight_decay=recipe.weight_decay or None)
    else:
        optimizer = keras.optimizers.AdamW(rate, beta_1=recipe.betas[0], beta_2=recipe.betas[1], epsilon=recipe.eps,
                                           weight_decay=recipe.weight_decay)
    model.compile(optimizer=optimizer, jit_compile=True if job.compile else "auto",
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=recipe.label_smoothing))
    x = keras.ops.convert_to_tensor(images)
    y = keras.ops.convert_to_tensor(np.eye(model.output_shape[-1], dtype=np.float32)[labels])

    def step():
        return model.train_on_batch(x, y)

    return step, {"optimizer": type(optimizer).__name__, "train_step": "train_on_batch"}


# ----------------------------------------------------------------- broken ports (shared.mutants)

def _bf16_sum(x):
    """(N, C) -> (C,): a pairwise reduction whose every partial sum is stored in bf16."""
    x = ops.cast(x, "bfloat16")
    while x.shape[0] > 1:
        if x.shape[0] % 2:
            x = ops.concatenate([x, ops.zeros((1, x.shape[1]), "bfloat16")])
        x = x[0::2] + x[1::2]
    return ops.cast(x[0], "float32")


class _BF16StatsBatchNorm(keras.layers.BatchNormalization):
    """BatchNormalization whose train-mode statistics are one-pass sums stored in bf16 (the bug
    of ``shared.mutants``' ``bn_stats_bf16``), on the bf16 path only."""

    def _moments(self, inputs, mask):
        if self.compute_dtype != "bfloat16":  # the bug lives on the bf16 path
            return super()._moments(inputs, mask)
        flat = ops.reshape(ops.cast(inputs, "float32"), (-1, inputs.shape[-1]))
        n = flat.shape[0]
        mean = _bf16_sum(flat) / n
        var = ops.cast(ops.cast(_bf16_sum(flat * flat) / n - mean * mean, "bfloat16"), "float32")  # one pass, in bf16
        return mean, var


@ops.custom_gradient
def _scaled_grad_relu(x):
    def grad(*args, upstream=None):
        upstream = args[0] if upstream is None else upstream
        return upstream * ops.cast(x > 0, upstream.dtype) * 1.5

    return ops.relu(x), grad


def inject(mutant: str):
    """Build models with the framework code of a ``native`` mutant, through resnet_keras' public
    hook (``resnet_keras.layers.override``)."""
    from resnet_keras import layers

    if mutant == "relu_backward":
        return layers.override(relu=_scaled_grad_relu)
    if mutant == "bn_stats_bf16":
        return layers.override(batchnorm=_BF16StatsBatchNorm)
    return layers.override()


# ----------------------------------------------------------------- someone else's port (verify)

def _dataflow_order(model) -> list:
    """A functional model's layers in a depth-first topological order: each branch of a fork
    runs to its join before the other starts (Keras' own order interleaves a residual block's
    shortcut with its main path by depth). Other models: ``model.layers``."""
    layers = list(getattr(model, "operations", model.layers))
    known = {id(layer) for layer in layers}
    parents = {id(layer): [n.operation for node in getattr(layer, "_inbound_nodes", ()) for n in node.parent_nodes
                           if id(n.operation) in known] for layer in layers}
    if not any(parents.values()):
        return list(model.layers)
    children = {id(layer): [] for layer in layers}
    for layer in layers:
        for parent in parents[id(layer)]:
            children[id(parent)].append(layer)
    waiting = {id(layer): len(parents[id(layer)]) for layer in layers}
    stack, order = [layer for layer in reversed(layers) if not parents[id(layer)]], []
    while stack:
        layer = stack.pop()
        order.append(layer)
        for child in reversed(children[id(layer)]):
            waiting[id(child)] -= 1
            if not waiting[id(child)]:
                stack.append(child)
    return order


def _port_weights(model) -> list:
    """(layer, variable) of every weight of a keras.Model in dataflow order (nested models
    walked), each layer's in its own order (Conv2D kernel, bias; BatchNormalization gamma, beta,
    moving_mean, moving_variance). A graph node that is an operation, not a layer (``ops.pad``
    in keras-hub's V2 stem: a ``Pad``), holds none."""
    out = []
    for layer in _dataflow_order(model):
        out.extend(_port_weights(layer) if hasattr(layer, "layers")
                   else [(layer, v) for v in getattr(layer, "weights", ())])
    return out


def _port_variables(model) -> list:
    return [v for _, v in _port_weights(model)]


def _torch_layout(a: np.ndarray) -> np.ndarray:
    """HWIO -> OIHW, (in, out) -> (out, in): the layouts ``verify`` matches shapes in."""
    return a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T if a.ndim == 2 else a


def port_arrays(model) -> list[tuple[str, tuple[int, ...]]]:
    """(path, torch-layout shape) of every weight of a ``keras.Model``, in layer order."""
    return [(v.path, _torch_layout(np.empty(v.shape, np.uint8)).shape) for v in _port_variables(model)]


def port_load(model, arrays: list[np.ndarray]) -> None:
    """Assign ``arrays`` (``port_arrays`` order, torch layouts) to the model's own variables."""
    for variable, value in zip(_port_variables(model), arrays, strict=True):
        value = np.asarray(value, np.float32)
        value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T if value.ndim == 2 else value
        if value.ndim == 3:  # a Conv1D kernel (ECA's): torch's (out, in, k) -> (k, in, out)
            value = value.transpose(2, 1, 0)
        # ECA's kernel held flat, (k,)
        variable.assign(value.reshape(variable.shape) if value.shape != tuple(variable.shape) else value)


def port_run(model, images_nhwc: np.ndarray, layout: str = "NHWC", precision: str = "fp32") -> np.ndarray:
    """Inference-mode logits (as float32) of the model for NHWC numpy images, fed in ``layout``;
    it computes in the dtype it was built with (``port_off_dtype`` says which: bf16 under Keras'
    mixed_bfloat16 policy), so ``precision`` changes nothing here."""
    x = np.asarray(images_nhwc, np.float32)
    return _numpy(logits_of(model(x.transpose(0, 3, 1, 2) if layout == "NCHW" else x, training=False)))


def port_inputs(model, images_nhwc: np.ndarray, layout: str, positions: list[int]) -> list[np.ndarray]:
    """The inference-mode input (NHWC) of the layer holding each array of ``port_arrays`` at
    ``positions`` (a functional model's intermediate outputs), for ``verify --trace``."""
    layers = [_port_weights(model)[p][0] for p in positions]
    taps = keras.Model(model.inputs[0] if len(model.inputs) == 1 else model.inputs, [layer.input for layer in layers])
    x = np.asarray(images_nhwc, np.float32)
    out = taps(x.transpose(0, 3, 1, 2) if layout == "NCHW" else x, training=False)
    return [_numpy(a).transpose(0, 2, 3, 1) if layout == "NCHW" and a.ndim == 4 else _numpy(a) for a in out]


def port_train(model, images_nhwc: np.ndarray, labels: np.ndarray, layout: str = "NHWC"):
    """One train step of a ``keras.Model`` as ``check`` takes ours (``_gradients``: training=True,
    mean cross-entropy, the backend's autodiff), float32: (logits, loss, arrays in ``port_arrays``
    order, torch layouts: each trainable weight's gradient, each moving statistic's value after
    Keras' update), for ``verify --mode train``. Nothing is stepped."""
    x = np.asarray(images_nhwc, np.float32)
    x = keras.ops.convert_to_tensor(x.transpose(0, 3, 1, 2) if layout == "NCHW" else x)
    loss, logits, grads = _gradients(model, x, labels)
    grad_of = {id(v): g for v, g in zip(model.trainable_variables, grads)}
    arrays = []
    for _, v in _port_weights(model):
        if v.trainable and grad_of.get(id(v)) is None:
            raise ValueError(f"PORT: weight {v.path} gets no gradient: the forward does not use it")
        arrays.append(_torch_layout(_numpy(grad_of[id(v)] if v.trainable else v)))
    return _numpy(logits), float(keras.ops.convert_to_numpy(loss)), arrays


def port_off_dtype(model, precision: str) -> str | None:
    """The first conv or dense layer (``port_arrays`` order) that does not compute in
    ``precision``'s dtype (bf16: bfloat16, as Keras' mixed_bfloat16 policy builds it), as
    "path (dtype)"; None when every one does."""
    want = "bfloat16" if precision == "bf16" else "float32"
    layers = dict.fromkeys(layer for layer, v in _port_weights(model) if hasattr(layer, "kernel"))
    return next((f"{layer.name} ({layer.compute_dtype})" for layer in layers if layer.compute_dtype != want), None)
