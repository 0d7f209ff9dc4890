"""The PyTorch adapter (``shared.tools.adapter.Adapter``): resnet_torch for ``check`` and, for
``bench``, resnet_torch or the peer's ResNet (torchvision's, or timm's for a preset of timm's
``resnet.py`` family) with the fast paths a PyTorch user reaches for (channels_last, bf16
autocast, torch.compile), the same ones for both. Runs in a worker process.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import platform
import warnings
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import torch
import torch.nn.functional as F

import resnet_torch
from resnet_torch import build, load_weights
from shared import interop, parity, reference
from shared.spec import PRESETS, is_statistic
from shared.tools.adapter import tf32
from shared.tools.bench_timing import LEARNING_RATE, MOMENTUM, Step, recipe_of
from shared.tools.jobs import Job

NAME = "torch"
# The framework's checkpoint formats, for shared.tools.convert
from resnet_torch.checkpoints import READERS, WRITERS  # noqa: E402, F401

def versions() -> dict:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    out = {"torch": torch.__version__, "device": device}
    with contextlib.suppress(PackageNotFoundError):
        out["torchvision"] = version("torchvision")
    return out


def _device(device: str) -> torch.device:
    if device == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA GPU")
    return torch.device("cuda" if device == "gpu" else "cpu")


@contextlib.contextmanager
def setup_precision(precision: str, device: str):
    """TF32 for convolutions and matmuls exactly when ``precision`` is tf32; bf16's autocast is
    ``autocast`` (it wraps the forward pass only)."""
    _device(device)
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32(precision)
    try:
        yield {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
               "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
               "autocast": "bfloat16" if precision == "bf16" else None}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def autocast(precision: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _nhwc(t: torch.Tensor) -> np.ndarray:
    t = t.detach().float().cpu()
    return (t.permute(0, 2, 3, 1) if t.ndim == 4 else t).numpy()


# ----------------------------------------------------------------------------------- check

def run_check(spec, weights, images, *, labels=None, device="cpu", precision="fp32", mode="eval", trace=False):
    dev = _device(device)
    dtype = torch.float64 if precision == "fp64" else torch.float32
    model = load_weights(build(spec), weights).to(dev, dtype).train(mode == "train")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(dev, dtype)

    out: dict[str, np.ndarray] = {}
    hooks = []
    if trace:
        stem = getattr(model, model.stem_path[-1])  # the stem's last module (its pool, if it has one)
        hooks.append(stem.register_forward_hook(lambda m, i, o: out.__setitem__("trace/stem", _nhwc(o))))
        for module in model.modules():
            if hasattr(module, "block_name"):  # one per spec Block
                hooks.append(module.register_forward_hook(
                    lambda m, i, o: out.__setitem__(f"trace/{m.block_name}", _nhwc(o))))
    with setup_precision("fp32" if precision == "fp64" else precision, device), \
            torch.set_grad_enabled(mode == "train"):
        with autocast(precision, dev):
            logits = model(x)
        if mode == "train":
            loss = F.cross_entropy(logits.float(), torch.from_numpy(labels).long().to(dev))
            loss.backward()
    for h in hooks:
        h.remove()
    out["logits"] = _nhwc(logits)
    if trace and spec.head():
        out["trace/head"] = out["logits"]
    if mode == "train":
        out["loss"] = np.array(loss.item())
        # The state_dict with every parameter replaced by its gradient maps to canonical names
        # through the same rule as the weights: grads of kernels, gammas...; buffers stay the
        # updated running statistics.
        grads = {k: p.grad for k, p in model.named_parameters()}
        state = {k: (grads[k] if k in grads else v).detach().float().cpu()
                 for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
        canonical = interop.from_torchvision({k: v.numpy() for k, v in state.items()}, spec=spec)[1]
        for key, value in canonical.items():
            out[f"{'stats' if is_statistic(key) else 'grad'}/{key}"] = value
    return out


# ----------------------------------------------------------------------------------- bench

def _timm_peer(spec) -> bool:
    """Whether the peer is timm's: a preset of timm's ``resnet.py`` family (its state_dict keys
    are resnet_torch's)."""
    preset = PRESETS.get(spec.arch)
    return preset is not None and preset.peer.startswith("timm.") and spec.block != "preact"


def _bench_model(job: Job, spec, weights) -> torch.nn.Module:
    if job.impl == "ours":
        return load_weights(build(spec), weights)
    state = {k: torch.from_numpy(v) for k, v in interop.to_torchvision(spec, weights).items()}
    if _timm_peer(spec):
        import timm

        model = timm.create_model(spec.arch, num_classes=spec.num_classes)
        model.load_state_dict(state)
        return model
    import torchvision
    from torchvision.models.resnet import Bottleneck, ResNet

    if spec.arch and hasattr(torchvision.models, spec.arch):
        model = getattr(torchvision.models, spec.arch)(weights=None, num_classes=spec.num_classes)
    elif len(spec.depths) == 4 and spec.block == "bottleneck":  # a smaller network (tests)
        model = ResNet(Bottleneck, list(spec.depths), num_classes=spec.num_classes)
    else:
        raise ValueError(f"torchvision has no ResNet with {spec.block} blocks and depths {spec.depths}")
    model.load_state_dict(state)
    return model


def run_bench(job: Job, spec, weights) -> Step:
    """One step: an eval-mode forward (infer), or forward, backward and SGD (train); with
    ``job.impl == "int8"``, torch.ao's int8 torchvision model (``int8_bench``); with a recipe
    (``bench --recipe``), one update of it (``recipe_step``)."""
    if job.impl == "int8":
        return int8_bench(job, spec, weights)
    # Loaded on both sides: peak RSS then compares the models, not whether torchvision's (or
    # timm's) libraries (about 250 MiB) were imported.
    with contextlib.suppress(ImportError):
        import torchvision  # noqa: F401
        if _timm_peer(spec):
            import timm  # noqa: F401

    device = _device(job.device)
    layout = torch.channels_last if job.channels_last else torch.contiguous_format
    recipe = recipe_of(job)
    built = recipe.train_spec(spec) if recipe and job.impl == "ours" else spec
    model = _bench_model(job, built, weights).to(device, memory_format=layout).train(job.mode == "train")
    images, labels = job.inputs(spec)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(device, memory_format=layout)
    y = torch.from_numpy(labels).long().to(device)
    net = torch.compile(model) if job.compile else model
    cast = autocast(job.precision, device)
    trains = {}

    if recipe:
        step, trains = recipe_step(job, recipe, model, net, x, y, cast)
    elif job.mode == "train":
        optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

        def step():
            optimizer.zero_grad(set_to_none=True)
            with cast:
                logits = net(x)
            loss = F.cross_entropy(logits.float(), y)
            loss.backward()
            optimizer.step()
            return loss
    else:
        def step():
            with torch.inference_mode(), cast:
                return net(x)

    def sync(_):
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    settings = {"channels_last": job.channels_last, "compile": job.compile, "threads": torch.get_num_threads(),
                **trains}
    peak = (lambda: torch.cuda.max_memory_allocated()) if device.type == "cuda" else (lambda: None)
    return Step(step, sync, name, settings, peak)


def recipe_step(job: Job, recipe, model: torch.nn.Module, net, x: torch.Tensor, y: torch.Tensor, cast):
    """(one update of ``recipe``, what trains it). Ours: ``resnet_torch.optimizer`` and
    ``train_step``, as a user of the package trains. The reference: torch's own loop as
    torchvision's references/classification/train.py writes it, stock ``torch.optim.SGD`` (or
    ``AdamW``) over ``model.parameters()`` with the recipe's ``weight_decay``, ``cross_entropy``
    with its label smoothing, its torch scheduler stepped every ``recipe.unit`` updates."""
    if job.impl == "ours":
        optimizer, labels = resnet_torch.optimizer(recipe, model), y.cpu().numpy()

        def step():
            with cast:
                return resnet_torch.train_step(net, optimizer, x, labels, recipe)

        return step, {"optimizer": type(optimizer[0]).__name__, "train_step": "resnet_torch.train_step"}
    if recipe.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                    nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=recipe.betas, eps=recipe.eps,
                                      weight_decay=recipe.weight_decay)
    lr = torch.optim.lr_scheduler
    if recipe.schedule == "steps":
        scheduler = lr.MultiStepLR(optimizer, list(recipe.milestones), recipe.gamma)
    elif recipe.schedule == "warmup_cosine":
        scheduler = lr.CosineAnnealingLR(optimizer, T_max=recipe.cosine, eta_min=recipe.lr_min)
        if recipe.warmup:  # LinearLR refuses a start factor of 0
            warmup = lr.LinearLR(optimizer, start_factor=max(recipe.warmup_start, 1e-8), total_iters=recipe.warmup)
            scheduler = lr.SequentialLR(optimizer, [warmup, scheduler], milestones=[recipe.warmup])
    else:
        scheduler = None  # a constant rate
    updates = iter(range(1, 1 << 62))

    def step():
        optimizer.zero_grad(set_to_none=True)
        with cast:
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
        loss.backward()
        optimizer.step()
        if scheduler and next(updates) % recipe.unit == 0:
            scheduler.step()
        return loss.detach()

    return step, {"optimizer": type(optimizer).__name__, "train_step": "torch loop (torchvision train.py)"}


# ------------------------------------------------- torch's own int8 path (bench --frameworks torch-int8)

def quantize_int8(model: torch.nn.Module, calibration: torch.Tensor) -> torch.nn.Module:
    """A copy of ``model`` (float32) quantized by torch.ao's FX graph mode static post-training
    quantization, x86 backend, its default qconfig mapping (histogram-observed quint8
    activations with reduce_range, per-channel symmetric int8 weights; conv-BatchNorm-ReLU fused,
    the residual add-ReLU quantized), calibrated on ``calibration`` (NCHW) one image at a time."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (calibration[:1],))
        with torch.no_grad():
            for image in calibration:
                prepared(image[None])
        return convert_fx(prepared)


def int8_bench(job: Job, spec, weights) -> Step:
    """torchvision's model quantized by ``quantize_int8`` on the images onnx-int8 calibrates on,
    eval, CPU; its settings hold, on the bench images, its top-1 agreement with and logits
    distance to the fp32 torchvision model, built and run apart."""
    from shared.tools.adapters.onnx_int8 import CALIBRATION_IMAGES, CALIBRATION_SEED

    if job.mode != "infer" or job.device != "cpu" or job.precision != "fp32":
        raise ValueError(f"torch.ao int8: CPU inference with fp32 around the int8 ops, got {job.mode} {job.device} "
                         f"{job.precision}")
    layout = torch.channels_last if job.channels_last else torch.contiguous_format
    calibration = reference.random_images(spec, CALIBRATION_IMAGES, job.size, CALIBRATION_SEED)
    fp32 = _bench_model(dataclasses.replace(job, impl="reference"), spec, weights).eval()
    model = quantize_int8(fp32, torch.from_numpy(calibration).permute(0, 3, 1, 2).contiguous())
    x = torch.from_numpy(job.inputs(spec)[0]).permute(0, 3, 1, 2).contiguous(memory_format=layout)

    def step():
        with torch.inference_mode():
            return model(x)

    with torch.inference_mode():
        ref = fp32(x).numpy()
    del fp32
    out = step().numpy()
    agree, n = parity.top1_agreement(out, ref)
    settings = {"channels_last": job.channels_last, "threads": torch.get_num_threads(),
                "int8": "torch.ao FX static PTQ, x86 (torchvision model)", "engine": torch.backends.quantized.engine,
                "vs_fp32": {"top1_agreement": agree, "images": n, "logits_rel_distance": parity.rel_error(out, ref)}}
    return Step(step, lambda out: out, "cpu", settings)


# ----------------------------------------------------------------- broken ports (shared.mutants)

def _bf16_sum(x: torch.Tensor) -> torch.Tensor:
    """(N, C) -> (C,): a pairwise reduction whose every partial sum is stored in bf16."""
    x = x.to(torch.bfloat16)
    while x.shape[0] > 1:
        if x.shape[0] % 2:
            x = torch.cat([x, x.new_zeros(1, x.shape[1])])
        x = x[0::2] + x[1::2]
    return x[0].float()


class _ScaledGradReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x > 0) * 1.5


class _BF16StatsBatchNorm(torch.nn.BatchNorm2d):
    """BatchNorm whose train-mode statistics are one-pass sums stored in bf16 (the bug of
    ``shared.mutants``' ``bn_stats_bf16``), on the bf16 path only."""

    def forward(self, x):
        if not self.training or x.dtype != torch.bfloat16:  # the bug lives on the bf16 path
            return super().forward(x)
        flat = x.float().permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        n = flat.shape[0]
        mean = _bf16_sum(flat) / n
        var = (_bf16_sum(flat * flat) / n - mean * mean).to(torch.bfloat16).float()  # one pass, in bf16
        with torch.no_grad():
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * var * n / max(n - 1, 1))
        shape = (1, -1, 1, 1)
        y = (x.float() - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return (y * self.weight.view(shape) + self.bias.view(shape)).to(x.dtype)


def inject(mutant: str):
    """Build models with the framework code of a ``native`` mutant, through resnet_torch's public
    hook (``resnet_torch.layers.override``)."""
    from resnet_torch import layers

    if mutant == "relu_backward":
        return layers.override(relu=_ScaledGradReLU.apply)
    if mutant == "bn_stats_bf16":
        return layers.override(batchnorm=_BF16StatsBatchNorm)
    return layers.override()


# ----------------------------------------------------------------- someone else's port (verify)

def port_arrays(module) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every parameter and BatchNorm statistic of a ``torch.nn.Module``, in the
    order its state_dict lists them (``num_batches_tracked`` left out: no weight). A tensor
    listed under two names (a module used twice: tied weights) is refused, naming both."""
    seen, out = {}, []
    for k, v in module.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        key = (v.data_ptr(), tuple(v.shape), v.stride()) if v.numel() else (id(v),)
        if key in seen:
            raise ValueError(f"PORT: {k} {tuple(v.shape)} is the very tensor of {seen[key]} (a module used twice: "
                             "tied weights); every layer of a ResNet has arrays of its own")
        seen[key] = k
        out.append((k, tuple(v.shape)))
    return out


def port_load(module, arrays: list[np.ndarray]) -> None:
    """Copy ``arrays`` (in ``port_arrays`` order, torch layouts) into the module's own tensors."""
    names = [k for k, _ in port_arrays(module)]
    state = module.state_dict()
    with torch.no_grad():
        for name, value in zip(names, arrays, strict=True):
            state[name].copy_(torch.from_numpy(np.ascontiguousarray(value)))


def port_run(module, images_nhwc: np.ndarray, layout: str = "NCHW", precision: str = "fp32") -> np.ndarray:
    """Eval-mode logits of the module for NHWC numpy images, fed in ``layout``: float32, or
    under CPU bf16 autocast (``precision="bf16"``, as ``check`` runs torch at bf16)."""
    x = torch.from_numpy(np.ascontiguousarray(images_nhwc, dtype=np.float32))
    if layout == "NCHW":
        x = x.permute(0, 3, 1, 2).contiguous()
    module.eval()
    with torch.no_grad(), autocast(precision, torch.device("cpu")):
        out = _logits(module(x))
    return out.float().numpy()


def _logits(out) -> torch.Tensor:
    """A port's logits out of what its forward returns (``adapter.logits_of``)."""
    from shared.tools.adapter import logits_of

    return logits_of(out)


def port_inputs(module, images_nhwc: np.ndarray, layout: str, positions: list[int]) -> list[np.ndarray]:
    """The eval-mode input (NHWC) of the module holding each array of ``port_arrays`` at
    ``positions`` (forward pre-hooks), for ``verify --trace``."""
    names = [k for k, _ in port_arrays(module)]
    targets = [module.get_submodule(names[p].rpartition(".")[0]) for p in positions]
    seen: dict[int, torch.Tensor] = {}
    hooks = [t.register_forward_pre_hook(lambda m, args, i=i: seen.setdefault(i, args[0].detach()))
             for i, t in enumerate(targets)]
    try:
        port_run(module, images_nhwc, layout)
    finally:
        for h in hooks:
            h.remove()
    return [(_nhwc(seen[i]) if layout == "NCHW" else seen[i].float().numpy()) for i in range(len(targets))]


def port_train(module, images_nhwc: np.ndarray, labels: np.ndarray, layout: str = "NCHW"):
    """One train-mode forward and backward (mean cross-entropy) of the module, float32: (logits,
    loss, arrays in ``port_arrays`` order: each parameter's gradient, each statistic's value after
    the update), for ``verify --mode train``. Nothing is stepped."""
    x = torch.from_numpy(np.ascontiguousarray(images_nhwc, dtype=np.float32))
    if layout == "NCHW":
        x = x.permute(0, 3, 1, 2).contiguous()
    module.train()
    module.zero_grad(set_to_none=True)
    logits = _logits(module(x))
    loss = F.cross_entropy(logits.float(), torch.from_numpy(labels).long())
    loss.backward()
    module.eval()
    grads = {k: p.grad for k, p in module.named_parameters()}
    state = module.state_dict()
    arrays = []
    for name, _ in port_arrays(module):
        if name in grads and grads[name] is None:
            raise ValueError(f"PORT: parameter {name} gets no gradient: the forward does not use it")
        arrays.append((grads[name] if name in grads else state[name]).detach().float().numpy())
    return logits.detach().float().numpy(), float(loss.detach()), arrays
