"""The Flax adapter (``shared.tools.adapter.Adapter``): resnet_flax for ``check`` and ``bench``,
under ``jax.jit`` (always: it is how Flax runs), bf16 as the model's compute dtype, training with
optax SGD. ``bench`` uses the split/merge pattern so each step is one compiled call on the
model's state, not a Python walk of the module graph. Flax ships no ResNet of its own: its bench
reference is keras.applications on the jax backend (``shared.tools.bench_plan``).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from resnet_flax.model import ResNet
from resnet_flax.weights import variables, load_weights
from shared.spec import is_statistic
from shared.tools.adapter import tf32
from shared.tools.bench_timing import LEARNING_RATE, MOMENTUM, Step
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


def run_bench(job: Job, spec, weights) -> Step:
    """One jitted eval-mode forward (infer), or one jitted optax SGD step (train)."""
    import optax

    if job.impl != "ours":
        raise ValueError("flax: no Flax reference model ships as a package (bench pairs keras.applications[jax])")
    model = load_weights(ResNet(spec, dtype=dtype(job.precision)), weights)
    images, labels = job.inputs(spec)
    x, y = jax.device_put(images), jax.device_put(labels)

    if job.mode == "train":
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

    return Step(step, jax.block_until_ready, device.device_kind if gpu else "cpu", {"jit": True}, peak)


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
    return [(name, _torch_layout(tuple(v[...].shape))) for name, v in _port_variables(model)]


def port_load(model, arrays: list[np.ndarray]) -> None:
    """Set the model's own variables to ``arrays`` (``port_arrays`` order, torch layouts)."""
    for (_, variable), value in zip(_port_variables(model), arrays, strict=True):
        value = np.asarray(value, np.float32)
        variable[...] = jnp.asarray(value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T if value.ndim == 2
                                else value)


def port_run(model, images_nhwc: np.ndarray, layout: str = "NHWC", precision: str = "fp32") -> np.ndarray:
    """Eval-mode logits (as float32; running statistics, full-precision matmuls) for NHWC images,
    computed in the dtype the port was built with (``port_off_dtype`` says which), so
    ``precision`` changes nothing here."""
    x = np.asarray(images_nhwc, np.float32)
    model.eval()
    with jax.default_matmul_precision("highest"):
        return np.asarray(model(jnp.asarray(x.transpose(0, 3, 1, 2) if layout == "NCHW" else x)), np.float32)


def port_inputs(model, images_nhwc: np.ndarray, layout: str, positions: list[int]) -> list[np.ndarray]:
    """The eval-mode input (NHWC) of the layer holding each array of ``port_arrays`` at
    ``positions`` (recorded as the forward calls it), for ``verify --trace``."""
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
    x = np.asarray(images_nhwc, np.float32)
    x, y = jnp.asarray(x.transpose(0, 3, 1, 2) if layout == "NCHW" else x), jnp.asarray(labels)

    def loss_fn(m):
        logits = m(x)
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
    want = jnp.bfloat16 if precision == "bf16" else jnp.float32
    for path, layer in _call_order(model):
        if isinstance(layer, (nnx.Conv, nnx.Linear)):
            dtype = jnp.dtype(layer.dtype or layer.param_dtype)
            if dtype != want:
                return f"{path} ({dtype.name})"
    return None
