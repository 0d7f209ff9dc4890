"""One data-parallel SGD step on torch's own engine: DistributedDataParallel over the gloo
backend, one CPU process per replica.

Each rank builds the model from the same canonical weights, wraps it in DDP (which averages the
gradients over the ranks in backward and, by default, broadcasts rank 0's buffers at the start
of each forward), takes its contiguous shard of the global batch, and runs forward, cross-entropy, backward and
``torch.optim.SGD(lr, momentum)``. BatchNorm normalises with each rank's own batch statistics
and each rank updates its own running statistics; ``sync_bn=True`` converts the model with
``nn.SyncBatchNorm.convert_sync_batchnorm`` (global statistics), which torch runs on GPU
modules only.

Every rank writes what it holds after the step (``loss``, ``grad/<weight>``, ``weights/<weight>``,
``stats/<bn>.mean|var``) to ``rank<r>.npz`` in a folder; ``run`` returns rank 0's arrays and
every other rank's statistics as ``rank<r>/stats/...``; ``next/stats/...`` (and
``rank<r>/next/stats/...``) are each rank's running statistics after one more forward, in eval
mode, which shows whose statistics DDP carries on with. A rank that fails makes
``torch.multiprocessing.start_processes`` terminate the others; the caller (``shared.tools.check_dp``)
kills the whole process group on a timeout.
"""

from __future__ import annotations

import datetime
import os
import socket
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import torch.multiprocessing as mp
from torch import nn

from shared import interop
from shared.spec import ResNetSpec
from resnet_torch.model import build
from resnet_torch.weights import export_weights, load_weights

ENGINE = "torch DistributedDataParallel (gloo)"


def versions() -> dict:
    return {"torch": torch.__version__, "backend": "gloo"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, world, port, spec_fields, weights, images, labels, lr, momentum, sync_bn, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300))
    try:
        spec = ResNetSpec.from_dict(spec_fields)
        model = load_weights(build(spec), weights).train()
        if sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp = nn.parallel.DistributedDataParallel(model)  # buffers broadcast from rank 0: the default
        optimizer = torch.optim.SGD(ddp.parameters(), lr=lr, momentum=momentum)
        per = len(images) // world
        x = torch.from_numpy(np.ascontiguousarray(images[rank * per:(rank + 1) * per])).permute(0, 3, 1, 2)
        y = torch.from_numpy(np.asarray(labels[rank * per:(rank + 1) * per], np.int64))
        optimizer.zero_grad()
        loss = F.cross_entropy(ddp(x.contiguous()), y)
        loss.backward()
        # DDP has all-reduced (averaged) the gradients; map them to canonical names by the
        # state_dict rule, as the torch adapter (shared.tools.adapters.torch) does.
        grads = {k: p.grad for k, p in model.named_parameters()}
        state = {k: (grads[k] if k in grads else v).detach().float().numpy()
                 for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
        grad_canonical = interop.from_torchvision(state, spec=spec)[1]
        optimizer.step()
        after = export_weights(model)
        out = {"loss": np.array(loss.item())}
        for key, value in after.items():
            if key.endswith((".mean", ".var")):
                out[f"stats/{key}"] = value
            else:
                out[f"weights/{key}"] = value
                out[f"grad/{key}"] = grad_canonical[key]
        # Whose running statistics does training go on with? DDP broadcasts rank 0's buffers at
        # the start of a forward; an eval-mode forward changes none itself.
        ddp.eval()
        with torch.no_grad():
            ddp(x.contiguous())
        out.update({f"next/stats/{k}": v for k, v in export_weights(model).items() if k.endswith((".mean", ".var"))})
        np.savez(Path(folder) / f"rank{rank}.npz", **out)
    finally:
        dist.destroy_process_group()


def run(spec: ResNetSpec, weights, images, labels, *, replicas: int, lr: float, momentum: float,
        sync_bn: bool = False) -> dict[str, np.ndarray]:
    if replicas < 1 or len(images) % replicas:
        raise ValueError(f"replicas: {replicas} does not split a batch of {len(images)} into equal shards")
    with tempfile.TemporaryDirectory(prefix="resnet-parity-ddp-") as folder:
        # fork: the ranks inherit the imported torch instead of importing it again (seconds each)
        mp.start_processes(_rank, args=(replicas, _free_port(), spec.to_dict(), dict(weights), np.asarray(images),
                                        np.asarray(labels), lr, momentum, sync_bn, folder),
                           nprocs=replicas, join=True, start_method="fork" if os.name == "posix" else "spawn")
        ranks = []
        for r in range(replicas):
            with np.load(Path(folder) / f"rank{r}.npz") as data:
                ranks.append({k: data[k] for k in data.files})
    out = dict(ranks[0])
    out["losses"] = np.array([float(r["loss"]) for r in ranks])
    for r, arrays in enumerate(ranks[1:], start=1):
        out.update({f"rank{r}/{k}": v for k, v in arrays.items() if k.startswith(("stats/", "next/stats/"))})
    return out
