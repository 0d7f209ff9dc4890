"""The Flax adapter (``shared.tools.adapter.Adapter``): resnet_flax for ``check`` and ``bench``,
under ``jax.jit`` (always: it is how Flax runs), bf16 as the model's compute dtype, training with
optax SGD. ``bench`` uses the split/merge pattern so each step is one compiled call on the
model's state, not a Python walk of the module graph. Flax ships no ResNet of its own: its bench
reference is keras.applications on the jax backend (``shared.tools.bench_plan``); with ``bench
--recipe``, resnet_flax's ``optimizer`` and ``train_step`` beside our model in Flax's stock loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen, nnx

import resnet_flax
from resnet_flax.model import ResNet
from resnet_flax.weights import variables, load_weights
from shared.spec import is_statistic
from shared.tools.adapter import logits_of, tf32
from shared.tools.bench_timing import LEARNING_RATE, MOMENTUM, Step, recipe_of
from shared.tools.jobs import Job

NAME = "flax"
# The framework's checkpoint formats, for shared.tools.convert
from resnet_flax.checkpoints import READERS, WRITERS  # noqa: E402, F401


def versions() -> dict:
    import flax

    out = {"jax": jax.__version__, "flax": flax.__version__, "device": str(jax.devices()[0].device_kind)}
    with contextlib.suppress(ImportError):
        import jaxlib
        import optax

        out.update(jaxlib=jaxlib.__version__, optax=optax.__version__)
    return out


def _device(device: str):
    if device == "gpu":
        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        if not gpus:
            raise RuntimeError("jax sees no GPU")
        return gpus[0]
    return jax.devices("cpu")[0]


@contextlib.contextmanager
def setup_precision(precision: str, device: str):
    """JAX's default precision runs float32 convolutions and matmuls as TF32 on a GPU: "highest"
    unless the precision is tf32. bf16 is the model's compute dtype (``dtype``)."""
    matmul = "default" if tf32(precision) else "highest"
    with jax.default_device(_device(device)), jax.default_matmul_precision(matmul):
        yield {"default_matmul_precision": matmul, "tf32": device == "gpu" and tf32(precision),
               "compute_dtype": "bfloat16" if precision == "bf16" else "float32"}


def dtype(precision: str):
    return jnp.bfloat16 if precision == "bf16" else None


# ----------------------------------------------------------------------------------- check

def run_check(spec, weights, images, *, labels=None, device="cpu", precision="fp32", mode="eval", trace=False):
    out: dict[str, np.ndarray] = {}
    with setup_precision(precision, device):
        model = ResNet(spec, dtype=dtype(precision))  # a shell, filled below
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
            for key, variable in variables(grad_model):  # statistics: the updated running ones
                out[f"{'stats' if is_statistic(key) else 'grad'}/{key}"] = np.asarray(variable[...], np.float32)
        else:
            model.eval()
            hook = (lambda name, a: out.__setitem__(f"trace/{name}", np.asarray(a, np.float32))) if trace else None
            logits = model(x, hook=hook) if trace else nnx.jit(lambda m, v: m(v))(model, x)
        out["logits"] = np.asarray(logits, np.float32)
    return out


# ----------------------------------------------------------------------------------- bench

def _train_step(graphdef):
    import optax

    def step(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)

        def loss_fn(model):
            logits = model(x).astype(jnp.float32)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss, nnx.state((model, optimizer))

    return jax.jit(step, donate_argnums=0)


def _bench_model(job: Job, spec, weights) -> nnx.Module:
    return load_weights(ResNet(spec, dtype=dtype(job.precision)), weights)


def run_bench(job: Job, spec, weights) -> Step:
    """One jitted eval-mode forward (infer), or one jitted optax SGD step (train); with a
    recipe (``bench --recipe``), one update of it (``recipe_step``)."""
    import optax

    recipe = recipe_of(job)
    if job.impl != "ours" and not recipe:
        raise ValueError("flax: no Flax reference model ships as a package (bench pairs keras.applications[jax])")
    model = _bench_model(job, recipe.train_spec(spec) if recipe and job.impl == "ours" else spec, weights)
    images, labels = job.inputs(spec)
    x, y = jax.device_put(images), jax.device_put(labels)
    trains = {}

    if recipe:
        step, trains = recipe_step(job, recipe, model, images, labels)
    elif job.mode == "train":
        model.train()
        optimizer = nnx.Optimizer(model, optax.sgd(LEARNING_RATE, momentum=MOMENTUM), wrt=nnx.Param)
        graphdef, state = nnx.split((model, optimizer))
        train = _train_step(graphdef)
        holder = [state]

        def step():
            loss, holder[0] = train(holder[0], x, y)
            return loss, holder[0]
    else:
        model.eval()
        graphdef, state = nnx.split(model)
        forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))

        def step():
            return forward(state, x)

    device = _device(job.device)
    gpu = job.device == "gpu"

    def peak():
        return (device.memory_stats() or {}).get("peak_bytes_in_use") if gpu else None

    return Step(step, jax.block_until_ready, device.device_kind if gpu else "cpu", {"jit": True, **trains}, peak)


@nnx.jit
def _stock_update(model, optimizer, x, targets):
    """The training step as the Flax docs write it (the MNIST tutorial's ``train_step``)."""
    import optax

    def loss_fn(model):
        logits = model(x).astype(jnp.float32)
        return optax.softmax_cross_entropy(logits, targets).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def recipe_step(job: Job, recipe, model, images: np.ndarray, labels: np.ndarray):
    """(one update of ``recipe``, what trains it). Ours: ``resnet_flax.optimizer`` and
    ``train_step``, as a user of the package trains. The reference: our model in Flax's stock
    loop, ``nnx.Optimizer`` of a plain ``optax.sgd`` (the recipe's weight decay as
    ``add_decayed_weights`` before it, on every parameter) or ``optax.adamw``, the recipe's
    schedule as a stock optax schedule of updates, smoothed one-hot targets made once, and
    ``_stock_update`` under ``nnx.jit``."""
    import optax

    if job.impl == "ours":
        optimizer = resnet_flax.optimizer(recipe, model)

        def step():
            return resnet_flax.train_step(model, optimizer, images, labels, recipe)

        return step, {"optimizer": "nnx.Optimizer(resnet_flax.transform)", "train_step": "resnet_flax.train_step"}
    unit = recipe.unit
    if recipe.schedule == "steps":
        rate = optax.piecewise_constant_schedule(recipe.lr, {m * unit: recipe.gamma for m in recipe.milestones})
    elif recipe.schedule == "warmup_cosine":
        rate = optax.warmup_cosine_decay_schedule(recipe.lr * recipe.warmup_start, recipe.lr, recipe.warmup * unit,
                                                  (recipe.warmup + recipe.cosine) * unit, recipe.lr_min)
    else:
        rate = recipe.lr
    if recipe.optimizer == "sgd":
        tx = optax.sgd(rate, momentum=recipe.momentum or None, nesterov=recipe.nesterov)
        tx = optax.chain(optax.add_decayed_weights(recipe.weight_decay), tx) if recipe.weight_decay else tx
    else:
        tx = optax.adamw(rate, b1=recipe.betas[0], b2=recipe.betas[1], eps=recipe.eps, weight_decay=recipe.weight_decay)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x = jax.device_put(images)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, model.spec.num_classes), recipe.label_smoothing)
    model.train()

    def step():
        return _stock_update(model, optimizer, x, targets)

    return step, {"optimizer": f"nnx.Optimizer(optax.{recipe.optimizer})", "train_step": "nnx.jit (Flax docs)"}


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
        return nnx.BatchNorm.__call__(self, x, use_running_average, mask=mask)
    flat = x.astype(jnp.float32).reshape(-1, x.shape[-1])
    n = flat.shape[0]
    mean = _bf16_sum(flat) / n
    var = (_bf16_sum(flat * flat) / n - mean * mean).astype(jnp.bfloat16).astype(jnp.float32)  # one pass, in bf16
    self.mean.value = self.momentum * self.mean.value + (1 - self.momentum) * mean
    self.var.value = self.momentum * self.var.value + (1 - self.momentum) * var
    y = (x.astype(jnp.float32) - mean) / jnp.sqrt(var + self.epsilon)
    return (y * self.scale.value + self.bias.value).astype(x.dtype)


class _BF16StatsBatchNorm(nnx.BatchNorm):
    """nnx.BatchNorm whose train-mode statistics are one-pass sums stored in bf16 (the bug of
    ``shared.mutants``' ``bn_stats_bf16``), on the bf16 path only."""

    __call__ = _bf16_stats_call


def inject(mutant: str):
    """Build models with the framework code of a ``native`` mutant, through resnet_flax's public
    hook (``resnet_flax.layers.override``)."""
    from resnet_flax import layers

    if mutant == "relu_backward":
        return layers.override(relu=_scaled_grad_relu)
    if mutant == "bn_stats_bf16":
        return layers.override(batchnorm=_BF16StatsBatchNorm)
    return layers.override()


# ----------------------------------------------------------------- someone else's port (verify)

_WEIGHTS = {nnx.Conv: ("kernel", "bias"), nnx.BatchNorm: ("scale", "bias", "mean", "var"), nnx.Linear: ("kernel", "bias")}
_ORDERS: dict[int, tuple] = {}  # id(model) -> (model, its layers in call order)


@contextlib.contextmanager
def _recording(calls: list, inputs: dict | None = None):
    """Every call of an nnx Conv, BatchNorm or Linear appends the module to ``calls`` (and its
    first input to ``inputs[id(module)]``, once)."""
    originals = {cls: cls.__call__ for cls in _WEIGHTS}

    def recorder(cls):
        def call(self, *args, **kwargs):
            calls.append(self)
            if inputs is not None:
                inputs.setdefault(id(self), args[0])
            return originals[cls](self, *args, **kwargs)
        return call

    try:
        for cls in _WEIGHTS:
            cls.__call__ = recorder(cls)
        yield
    finally:
        for cls, original in originals.items():
            cls.__call__ = original


def _call_order(model) -> list[tuple[str, nnx.Module]]:
    """(path, layer) of each Conv, BatchNorm and Linear in the order a forward first calls it
    (an nnx graph lists attributes alphabetically: no order of the port's own). The input's
    channels are the first that traces among the convs' input widths."""
    if id(model) not in _ORDERS:
        paths = {id(node): ".".join(map(str, path)) for path, node in nnx.iter_graph(model)
                 if type(node) in _WEIGHTS}
        widths = sorted({node.in_features for _, node in nnx.iter_graph(model) if isinstance(node, nnx.Conv)})
        model.eval()
        calls: list = []
        for channels in widths:  # none: no conv, and infer_spec says so
            calls = []
            try:
                with _recording(calls):  # traced, not run: nothing computed or compiled
                    jax.eval_shape(model, jax.ShapeDtypeStruct((1, 32, 32, channels), jnp.float32))
                break
            except Exception as e:  # noqa: BLE001 (not the input width, or the port's own failure: said below)
                error = e
        else:
            if widths:
                raise ValueError(f"PORT: its forward fails on a 1x32x32xC input for every C its convs take {widths} "
                                 f"({type(error).__name__}: {' '.join(str(error).split())[:200]})")
        seen = {}
        for layer in calls:
            seen.setdefault(id(layer), (paths.get(id(layer), type(layer).__name__), layer))
        _ORDERS[id(model)] = (model, list(seen.values()))
    return _ORDERS[id(model)][1]


def _port_variables(model) -> list[tuple[str, nnx.Variable]]:
    return [(f"{path}.{name}", getattr(layer, name)) for path, layer in _call_order(model)
            for name in _WEIGHTS[type(layer)] if getattr(layer, name, None) is not None]


def _torch_layout(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1] if len(shape) == 2 else shape


def port_arrays(model) -> list[tuple[str, tuple[int, ...]]]:
    """(path, torch-layout shape) of every weight of a ``flax.nnx.Module`` ResNet, its layers in
    call order, each layer's in torch's (kernel, bias; BatchNorm scale, bias, mean, var)."""
    if isinstance(model, LinenPort):
        return _linen_arrays(model)
    return [(name, _torch_layout(tuple(v[...].shape))) for name, v in _port_variables(model)]


def port_load(model, arrays: list[np.ndarray]) -> None:
    """Set the model's own variables to ``arrays`` (``port_arrays`` order, torch layouts)."""
    if isinstance(model, LinenPort):
        return _linen_load(model, arrays)
    for (_, variable), value in zip(_port_variables(model), arrays, strict=True):
        value = np.asarray(value, np.float32)
        variable[...] = jnp.asarray(value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T if value.ndim == 2
                                else value)


def port_run(model, images_nhwc: np.ndarray, layout: str = "NHWC", precision: str = "fp32") -> np.ndarray:
    """Eval-mode logits (as float32; running statistics, full-precision matmuls) for NHWC images,
    computed in the dtype the port was built with (``port_off_dtype`` says which), so
    ``precision`` changes nothing here."""
    if isinstance(model, LinenPort):
        return np.asarray(_linen_run(model, images_nhwc, layout)[0], np.float32)
    x = np.asarray(images_nhwc, np.float32)
    model.eval()
    with jax.default_matmul_precision("highest"):
        return np.asarray(logits_of(model(jnp.asarray(x.transpose(0, 3, 1, 2) if layout == "NCHW" else x))),
                          np.float32)


def port_inputs(model, images_nhwc: np.ndarray, layout: str, positions: list[int]) -> list[np.ndarray]:
    """The eval-mode input (NHWC) of the layer holding each array of ``port_arrays`` at
    ``positions`` (recorded as the forward calls it), for ``verify --trace``."""
    if isinstance(model, LinenPort):
        return _linen_inputs(model, images_nhwc, layout, positions)
    owners = [layer for path, layer in _call_order(model) for name in _WEIGHTS[type(layer)]
              if getattr(layer, name, None) is not None]
    inputs: dict = {}
    with _recording([], inputs):
        port_run(model, images_nhwc, layout)
    out = [np.asarray(inputs[id(owners[p])], np.float32) for p in positions]
    return [a.transpose(0, 2, 3, 1) if layout == "NCHW" and a.ndim == 4 else a for a in out]


def port_train(model, images_nhwc: np.ndarray, labels: np.ndarray, layout: str = "NHWC"):
    """One train-mode forward and backward (mean cross-entropy) under nnx.jit, float32 with
    full-precision matmuls: (logits, loss, arrays in ``port_arrays`` order, torch layouts: each
    parameter's gradient, each statistic's value after the update), for ``verify --mode train``."""
    if isinstance(model, LinenPort):
        return _linen_train(model, images_nhwc, labels, layout)
    x = np.asarray(images_nhwc, np.float32)
    x, y = jnp.asarray(x.transpose(0, 3, 1, 2) if layout == "NCHW" else x), jnp.asarray(labels)

    def loss_fn(m):
        logits = logits_of(m(x))
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        return -jnp.take_along_axis(logp, y[:, None], axis=-1).mean(), logits

    variables = _port_variables(model)  # the call order, recorded before training changes the mode
    model.train()
    with jax.default_matmul_precision("highest"):
        (loss, logits), grads = nnx.jit(nnx.value_and_grad(loss_fn, has_aux=True))(model)
    model.eval()
    grads = {".".join(map(str, path)): g for path, g in nnx.to_flat_state(grads)}
    arrays = [np.asarray(v[...] if isinstance(v, nnx.BatchStat) else grads[name][...], np.float32)
              for name, v in variables]
    arrays = [a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T if a.ndim == 2 else a for a in arrays]
    return np.asarray(logits, np.float32), float(loss), arrays


def port_off_dtype(model, precision: str) -> str | None:
    """The first Conv or Linear (call order) that does not compute in ``precision``'s dtype
    (bf16: bfloat16, an nnx layer's ``dtype``; unset, it computes in its parameters'), as "path
    (dtype)"; None when every one does. BatchNorm may normalise in float32 at bf16 (as
    resnet_flax does)."""
    if isinstance(model, LinenPort):
        return _linen_off_dtype(model, precision)
    want = jnp.bfloat16 if precision == "bf16" else jnp.float32
    for path, layer in _call_order(model):
        if isinstance(layer, (nnx.Conv, nnx.Linear)):
            dtype = jnp.dtype(layer.dtype or layer.param_dtype)
            if dtype != want:
                return f"{path} ({dtype.name})"
    return None


# ----------------------------------------------------------------- someone else's linen port (verify)

_LINEN_WEIGHTS = {"Conv": ("params", ("kernel", "bias")), "Dense": ("params", ("kernel", "bias")),
                  "BatchNorm": ("params", ("scale", "bias"), "batch_stats", ("mean", "var"))}
_TRAIN_ARGS = ("train", "training", "is_training")  # the keyword a linen ResNet's __call__ switches modes by


@dataclasses.dataclass
class LinenPort:
    """A ``flax.linen.Module`` and the variables verify judges it with (``port_wrap``): plain
    dicts of collections ('params', 'batch_stats', any other kept as it is), never the caller's."""

    module: linen.Module
    variables: dict
    train_arg: str | None  # the keyword of its __call__ that selects train mode; None: it takes none
    layers: list = dataclasses.field(default_factory=list)  # (path, kind, dtype) in call order
    compiled: dict = dataclasses.field(default_factory=dict)  # what -> its jax.jit function (compiled once per shape)


def port_wrap(model, size: int):
    """What the port_* functions take for ``model``: an nnx module as it is; a
    ``flax.linen.Module``, or a ``(module, variables)`` pair, as a ``LinenPort``. A module alone
    gets the variables of ``init`` on a 1 x size x size x 3 batch (``PRNGKey(0)``; shapes only:
    zeros, as verify overwrites every array); its layers' order is the order a forward calls
    its Conv, BatchNorm and Dense modules (a dict through any jax transform is sorted by key)."""
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], linen.Module):
        module, variables = model
    elif isinstance(model, linen.Module):
        module, variables = (model.unbind() if model.scope is not None else (model, None))
    else:
        return model
    train_arg = next((a for a in _TRAIN_ARGS if a in inspect.signature(module.__call__).parameters), None)
    mode = {train_arg: False} if train_arg else {}
    name = type(module).__name__
    if variables is None:
        x = jnp.zeros((1, size, size, 3), jnp.float32)
        try:
            shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x, **mode))
        except Exception as e:  # noqa: BLE001 (the port's own failure: one line)
            raise ValueError(f"the linen {name} does not initialise on a 1x{size}x{size}x3 batch "
                             f"({type(e).__name__}: {_one_line(e)})") from None
        variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    port = LinenPort(module, _plain(variables), train_arg)
    # The input's channels: 3, else the first that traces among the conv kernels' input widths
    widths = [3, *sorted({v.shape[2] for _, v in _leaves(port.variables.get("params", {})) if v.ndim == 4} - {3})]
    for channels in widths:
        calls = []
        try:
            with linen.intercept_methods(functools.partial(_record, calls)):  # traced: nothing computed or compiled
                jax.eval_shape(lambda v, x: module.apply(v, x, **mode), port.variables,
                               jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32))
            break
        except Exception as e:  # noqa: BLE001 (not the input width, or the port's own failure: said below)
            error = e
    else:
        raise ValueError(f"the linen {name}'s forward fails with its variables on a 1x{size}x{size}xC batch for every "
                         f"C its convs take {widths} ({type(error).__name__}: {_one_line(error)})")
    port.layers = calls
    mapped = {(collection, *path, leaf) for collection, path, leaf, _ in _linen_entries(port)}
    for collection in ("params", "batch_stats"):
        for path, value in _leaves(port.variables.get(collection, {})):
            if (collection, *path) not in mapped:
                raise ValueError(f"{'/'.join((collection, *path))} {tuple(value.shape)} of the linen {name} belongs "
                                 "to no nn.Conv, nn.BatchNorm or nn.Dense its forward calls: verify maps only those")
    return port


def _record(calls: list, call, args, kwargs, context):
    """A linen method interceptor: each Conv, BatchNorm and Dense, as (path, kind, compute
    dtype), the first time it is called."""
    module = context.module
    kind = next((k for k, cls in _linen_kinds().items() if isinstance(module, cls)), None)
    if kind and context.method_name == "__call__" and module.path not in {c[0] for c in calls}:
        calls.append((module.path, kind, getattr(module, "dtype", None) or getattr(module, "param_dtype", None)))
    return call(*args, **kwargs)


def _refusal(message: str) -> Exception:
    """verify's one-line refusal (not the port's own failure, which verify words itself)."""
    from shared.tools.verify import VerifyError

    return VerifyError(message)


def _linen_kinds() -> dict:
    return {"Conv": linen.Conv, "BatchNorm": linen.BatchNorm, "Dense": linen.Dense}


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200]


def _plain(tree):
    """Nested plain dicts (a FrozenDict or a checkpoint's mapping), new ones: the caller's are never written."""
    return {k: _plain(v) for k, v in tree.items()} if hasattr(tree, "items") else tree


def _leaves(tree, path=()):
    for key, value in tree.items():
        yield from (_leaves(value, (*path, key)) if hasattr(value, "items") else [((*path, key), value)])


def _linen_entries(port: LinenPort) -> list[tuple[str, tuple, str, object]]:
    """(collection, module path, leaf name, value) of every array, the layers in call order, each
    layer's in torch's order (kernel, bias; BatchNorm scale, bias, mean, var)."""
    out = []
    for path, kind, _ in port.layers:
        spec = _LINEN_WEIGHTS[kind]
        for collection, names in zip(spec[::2], spec[1::2]):
            node = port.variables.get(collection, {})
            for key in path:
                node = node.get(key, {})
            out += [(collection, path, name, node[name]) for name in names if name in node]
    return out


def _to_torch(a: np.ndarray) -> np.ndarray:
    """A linen kernel in torch's layout: HWIO -> OIHW, WIO -> OIW, (in, out) -> (out, in)."""
    return a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.transpose(2, 1, 0) if a.ndim == 3 else a.T


def _from_torch(a: np.ndarray) -> np.ndarray:
    return a.transpose(2, 3, 1, 0) if a.ndim == 4 else a.transpose(2, 1, 0) if a.ndim == 3 else a.T


def _linen_arrays(port: LinenPort) -> list[tuple[str, tuple[int, ...]]]:
    return [("/".join((c, *p, n)), _to_torch(np.broadcast_to(np.float32(0), v.shape)).shape)
            for c, p, n, v in _linen_entries(port)]


def _linen_load(port: LinenPort, arrays: list[np.ndarray]) -> None:
    variables = _plain(port.variables)
    for (collection, path, name, old), value in zip(_linen_entries(port), arrays, strict=True):
        node = variables[collection]
        for key in path:
            node = node[key]
        node[name] = jnp.asarray(_from_torch(np.asarray(value, np.float32)), old.dtype)
    port.variables = variables


def _linen_x(images_nhwc, layout):
    x = np.asarray(images_nhwc, np.float32)
    return jnp.asarray(x.transpose(0, 3, 1, 2) if layout == "NCHW" else x)


def _linen_run(port: LinenPort, images_nhwc, layout: str, paths: frozenset = frozenset()):
    """Eval-mode logits under jax.jit, and the first input of each layer at ``paths``."""
    mode = {port.train_arg: False} if port.train_arg else {}

    def forward(variables, x):
        seen: dict = {}

        def record(call, args, kwargs, context):
            if context.method_name == "__call__" and context.module.path in paths:
                seen.setdefault(context.module.path, args[0])
            return call(*args, **kwargs)

        with linen.intercept_methods(record):
            return logits_of(port.module.apply(variables, x, **mode)), seen

    run = port.compiled.setdefault(("eval", paths), jax.jit(forward))
    with jax.default_matmul_precision("highest"):
        return run(port.variables, _linen_x(images_nhwc, layout))


def _linen_inputs(port: LinenPort, images_nhwc, layout: str, positions: list[int]) -> list[np.ndarray]:
    entries = _linen_entries(port)
    owners = [entries[p][1] for p in positions]
    _, seen = _linen_run(port, images_nhwc, layout, frozenset(owners))
    out = [np.asarray(seen[path], np.float32) for path in owners]
    return [a.transpose(0, 2, 3, 1) if layout == "NCHW" and a.ndim == 4 else a for a in out]


def _linen_train(port: LinenPort, images_nhwc, labels, layout: str):
    if port.train_arg is None:
        raise _refusal(f"--mode train: the linen {type(port.module).__name__}'s __call__ takes no "
                         f"{', '.join(_TRAIN_ARGS)} argument: verify cannot switch its BatchNorms to batch statistics")
    x, y = _linen_x(images_nhwc, layout), jnp.asarray(labels)
    rest = {k: v for k, v in port.variables.items() if k != "params"}

    def loss_fn(params):
        out, updated = port.module.apply({"params": params, **rest}, x, **{port.train_arg: True},
                                         mutable=["batch_stats"])
        logits = logits_of(out)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        return -jnp.take_along_axis(logp, y[:, None], axis=-1).mean(), (logits, updated)

    with jax.default_matmul_precision("highest"):
        (loss, (logits, updated)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(port.variables["params"])
    values = {"params": grads, "batch_stats": updated.get("batch_stats", {})}
    arrays = []
    for collection, path, name, _ in _linen_entries(port):
        node = values[collection]
        for key in path:
            node = node[key]
        arrays.append(_to_torch(np.asarray(node[name], np.float32)))
    return np.asarray(logits, np.float32), float(loss), arrays


def _linen_off_dtype(port: LinenPort, precision: str) -> str | None:
    want = jnp.bfloat16 if precision == "bf16" else jnp.float32
    for path, kind, dtype in port.layers:
        if kind != "BatchNorm" and jnp.dtype(dtype or jnp.float32) != want:
            return f"{'/'.join(path)} ({jnp.dtype(dtype or jnp.float32).name})"
    return None
