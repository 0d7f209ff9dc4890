"""The PyTorch side of ``resnet-parity bench``: resnet_torch or torchvision's ResNet, with the
fast paths a PyTorch user reaches for (channels_last, bf16 autocast, torch.compile), the same
ones for both. Imported only inside a bench worker process."""

from __future__ import annotations

import contextlib
from importlib.metadata import PackageNotFoundError, version

import torch
import torch.nn.functional as F

from shared import interop
from shared.bench_timing import Step
from shared.bench_worker import LEARNING_RATE, MOMENTUM, Job

# Loaded on both sides, before the worker's baseline: peak RSS then compares the models, not
# whether torchvision's libraries (about 250 MiB) were imported.
with contextlib.suppress(ImportError):
    import torchvision  # noqa: F401


def versions() -> dict:
    out = {"torch": torch.__version__}
    with contextlib.suppress(PackageNotFoundError):
        out["torchvision"] = version("torchvision")
    return out


def _model(job: Job, spec, weights) -> torch.nn.Module:
    if job.impl == "ours":
        import resnet_torch

        return resnet_torch.load_weights(resnet_torch.build(spec), weights)
    import torchvision
    from torchvision.models.resnet import Bottleneck, ResNet

    if job.depths:
        if len(job.depths) != 4:
            raise ValueError(f"depths: torchvision's ResNet has 4 stages, got {len(job.depths)}")
        model = ResNet(Bottleneck, list(job.depths), num_classes=spec.num_classes)
    else:
        model = getattr(torchvision.models, job.arch)(weights=None, num_classes=spec.num_classes)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in interop.to_torchvision(spec, weights).items()})
    return model


def _precision(job: Job) -> dict:
    """fp32 on a GPU: TF32 off; tf32: PyTorch's defaults (TF32 convolutions); bf16: autocast."""
    if job.device == "gpu" and job.precision == "fp32":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "autocast": "bfloat16" if job.precision == "bf16" else None}


def prepare(job: Job, spec, weights) -> Step:
    if job.device == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA GPU")
    device = torch.device("cuda" if job.device == "gpu" else "cpu")
    settings = _precision(job)
    layout = torch.channels_last if job.channels_last else torch.contiguous_format
    model = _model(job, spec, weights).to(device, memory_format=layout).train(job.mode == "train")
    images, labels = job.inputs(spec.num_classes)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(device, memory_format=layout)
    y = torch.from_numpy(labels).long().to(device)
    net = torch.compile(model) if job.compile else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=job.precision == "bf16")

    if job.mode == "infer":
        def step():
            with torch.inference_mode(), autocast:
                return net(x)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

        def step():
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                logits = net(x)
            loss = F.cross_entropy(logits.float(), y)
            loss.backward()
            optimizer.step()
            return loss

    def sync(_):
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        name = torch.cuda.get_device_name()
    else:
        name = "cpu"
    settings.update(channels_last=job.channels_last, compile=job.compile, threads=torch.get_num_threads())
    peak = (lambda: torch.cuda.max_memory_allocated()) if device.type == "cuda" else (lambda: None)
    return Step(step, sync, name, settings, peak)
