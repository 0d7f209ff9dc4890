"""resnet_torch's side of ``resnet-parity check`` (called by ``shared.worker`` in its own process):
run the model at a device, precision and mode and return named numpy arrays."""

from __future__ import annotations

import contextlib
import platform

import numpy as np
import torch
import torch.nn.functional as F

from shared import interop
from resnet_torch.model import Bottleneck, build
from resnet_torch.weights import load_weights


def versions() -> dict:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"torch": torch.__version__, "device": device}


@contextlib.contextmanager
def precision_mode(device: torch.device, precision: str):
    """fp32/fp64: TF32 off; tf32: TF32 on (GPU convs and matmuls); bf16: autocast."""
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        if precision == "bf16":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def _nhwc(t: torch.Tensor) -> np.ndarray:
    t = t.detach().float().cpu()
    return (t.permute(0, 2, 3, 1) if t.ndim == 4 else t).numpy()


def run(spec, weights, images, *, labels=None, device="cpu", precision="fp32", mode="eval", trace=False):
    if device == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA GPU")
    dev = torch.device("cuda" if device == "gpu" else "cpu")
    dtype = torch.float64 if precision == "fp64" else torch.float32
    model = load_weights(build(spec), weights).to(dev, dtype).train(mode == "train")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(dev, dtype)

    out: dict[str, np.ndarray] = {}
    hooks = []
    if trace:
        hooks.append(model.maxpool.register_forward_hook(lambda m, i, o: out.__setitem__("trace/stem", _nhwc(o))))
        for module in model.modules():
            if isinstance(module, Bottleneck):
                hooks.append(module.register_forward_hook(
                    lambda m, i, o: out.__setitem__(f"trace/{m.block_name}", _nhwc(o))))
    with precision_mode(dev, precision), torch.set_grad_enabled(mode == "train"):
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
            if key.endswith((".mean", ".var")):
                out[f"stats/{key}"] = value
            else:
                out[f"grad/{key}"] = value
    return out


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


@contextlib.contextmanager
def inject(mutant: str):
    """Swap in the framework code of a ``native`` mutant while models are built and run."""
    saved = torch.nn.ReLU, torch.nn.BatchNorm2d
    relu_cls, bn_cls = saved

    class ScaledReLU(relu_cls):
        def forward(self, x):
            return _ScaledGradReLU.apply(x)

    class BF16StatsBatchNorm(bn_cls):
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

    if mutant == "relu_backward":
        torch.nn.ReLU = ScaledReLU
    elif mutant == "bn_stats_bf16":
        torch.nn.BatchNorm2d = BF16StatsBatchNorm
    try:
        yield
    finally:
        torch.nn.ReLU, torch.nn.BatchNorm2d = saved
