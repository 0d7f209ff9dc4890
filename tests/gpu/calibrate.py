"""Raw logits for calibrating the low-precision verdict: torchvision (the trusted peer) and
resnet_torch, correct and with broken ports injected, at fp32 / TF32 / bf16 on the GPU, beside
the float64 reference on the same weights and images. Everything is saved (npz), so the rule
that separates "bf16 noise" from "a broken port" is chosen offline from measured data.

    python3 tests/gpu/calibrate.py OUT.npz [--size 224] [--batch 32] [--device cuda]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
import torchvision

from shared import interop, reference, spec as S
from resnet_torch import build, load_weights


def swap(weights: dict, a: str, b: str) -> dict:
    w = dict(weights)
    w[a], w[b] = weights[b], weights[a]
    return w


def drop_relu(model: torch.nn.Module) -> torch.nn.Module:
    """The ReLU of one bottleneck (layer3.1, used three times there) becomes the identity."""
    model.layer3[1].relu = torch.nn.Identity()
    return model


def logits(model, images, device, precision):
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
        return model(x).float().cpu().numpy()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    device = torch.device(args.device)
    spec = S.resnet50()
    saved = {}
    for seed in range(args.seeds):
        t0 = time.time()
        w = reference.calibrated_weights(spec, seed=seed, size=args.size)
        images = reference.random_images(spec, args.batch, args.size, seed=11 + seed)
        saved[f"s{seed}/f64"] = reference.forward(spec, w, images)
        saved[f"s{seed}/f32numpy"] = reference.forward(spec, w, images, dtype=np.float32)
        tv = torchvision.models.resnet50()
        tv.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                            for k, v in interop.to_torchvision(spec, w).items()})
        mutants = {
            "ours": lambda: load_weights(build(spec), w),
            "bn_epsilon": lambda: load_weights(build(dataclasses.replace(spec, bn_epsilon=1e-3)), w),
            "stride_on": lambda: load_weights(build(dataclasses.replace(spec, stride_on="1x1")), w),
            "swap": lambda: load_weights(build(spec), swap(w, "conv2_block2_1_conv.kernel", "conv2_block3_1_conv.kernel")),
            "no_relu": lambda: drop_relu(load_weights(build(spec), w)),
        }
        models = {"torchvision": tv.eval(), **{k: f().eval() for k, f in mutants.items()}}
        for name, model in models.items():
            model = model.to(device)
            for precision in ("fp32", "tf32", "bf16"):
                saved[f"s{seed}/{name}/{precision}"] = logits(model, images, device, precision)
            model.cpu()
        ref = saved[f"s{seed}/f64"]
        for key in sorted(k for k in saved if k.startswith(f"s{seed}/")):
            rel = np.linalg.norm(saved[key] - ref) / np.linalg.norm(ref)
            print(f"{key:32s} rel vs f64 {rel:.3e}")
        print(f"seed {seed}: {time.time() - t0:.0f} s", flush=True)
    np.savez_compressed(args.out, **saved)


if __name__ == "__main__":
    main()
