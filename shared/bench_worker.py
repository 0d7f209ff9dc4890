"""One run of ``resnet-parity bench`` in its own process: ``python -m shared.bench_worker JOB.json``.

Builds one model (ours or the framework's reference) through ``shared.bench_<runner>``, times
it with ``shared.bench_timing.measure`` and writes every figure as JSON to ``job.out``. A fresh
process per run keeps TensorFlow, JAX and PyTorch apart (Keras fixes its backend at import),
and gives each model its own peak-memory reading.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np

from shared import spec as S
from shared import weights as W
from shared.bench_timing import measure_in_turn, peak_rss_bytes, rss_bytes

LEARNING_RATE = 0.01
MOMENTUM = 0.9


@dataclasses.dataclass
class Job:
    runner: str
    impl: str
    backend: str
    mode: str
    precision: str
    style: str
    arch: str
    device: str
    batch: int
    size: int
    iters: int
    warmup: int
    compile: bool
    channels_last: bool
    seed: int
    out: str
    depths: tuple[int, ...] | None = None  # a custom depth instead of the preset's (tests)
    partner: dict | None = None  # runner, impl, backend, style, fold of a second model timed in turn
    fold: bool = False  # build the BatchNorm-folded spec (shared.fold)

    def spec(self) -> S.ResNetSpec:
        return S.preset(self.arch, self.style, **({"depths": tuple(self.depths)} if self.depths else {}))

    def model_inputs(self) -> tuple[S.ResNetSpec, dict]:
        """(spec, seeded weights) the model is built from: folded when ``fold``."""
        spec = self.spec()
        weights = W.init(spec, self.seed)
        if self.fold:
            from shared.fold import fold_batchnorm

            spec, weights = fold_batchnorm(spec, weights)
        return spec, weights

    def inputs(self, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """Seeded standard-normal NHWC float32 images (never zeros) and int32 labels."""
        rng = np.random.Generator(np.random.PCG64(self.seed))
        images = rng.standard_normal((self.batch, self.size, self.size, 3)).astype(np.float32)
        return images, rng.integers(0, num_classes, self.batch).astype(np.int32)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def read(cls, path: str) -> "Job":
        return cls(**json.loads(Path(path).read_text()))


def run(job: Job) -> dict:
    """The job's figures; with ``job.partner``, the partner's too (under "partner"), the two
    models built in this one process and timed in turn."""
    jobs = [job] + ([dataclasses.replace(job, partner=None, **job.partner)] if job.partner else [])
    modules = [importlib.import_module(f"shared.bench_{j.runner}") for j in jobs]
    baseline = rss_bytes()
    prepared = [m.prepare(j, *j.model_inputs()) for m, j in zip(modules, jobs)]
    load_before = os.getloadavg()[0]
    timings = measure_in_turn([(p.step, p.sync) for p in prepared], warmup=job.warmup, iters=job.iters)
    load = [load_before, os.getloadavg()[0]]
    results = []
    for module, p, timing in zip(modules, prepared, timings):
        device_peak = p.peak_memory()
        peak, kind = (device_peak, "device max allocated") if device_peak is not None else (peak_rss_bytes(), "peak RSS")
        if job.partner:  # one process held both models: its peak belongs to neither
            peak, kind = None, "not separable (interleaved)"
        results.append({
            "times_s": timing.times_s,
            "first_call_s": timing.first_call_s,
            "images_per_s": timing.images_per_s(job.batch),
            "peak_memory_bytes": peak,
            "memory_kind": kind,
            "baseline_rss_bytes": baseline,
            "device_name": p.device_name,
            "settings": p.settings,
            "versions": module.versions(),
            # Other processes competing for the cores show here (quiet: about 1 per busy core).
            "loadavg_1m": load,
        })
    if job.partner:
        results[0]["partner"] = results[1]
    return results[0]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job = Job.read(argv[0])
    try:
        result = run(job)
    except Exception as e:  # reported to the parent as one line plus the traceback
        result = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                  "traceback": traceback.format_exc()}
    out = Path(job.out)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
