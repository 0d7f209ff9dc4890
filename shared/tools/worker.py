"""One framework's side of a parity check, run in its own process.

``python -m shared.worker JOB.json`` builds the framework's model from the job's spec, loads the
canonical weights, runs it at the job's device, precision and mode, and writes an ``.npz`` of
named arrays (``logits``; ``trace/<block>``; in train mode ``loss``, ``grad/<weight>``,
``stats/<bn>.mean|var``). One process per framework (and per Keras backend, which Keras fixes at
import) keeps TensorFlow, JAX and PyTorch out of each other's way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np

from shared.spec import ResNetSpec

RUNNERS = {"torch": "resnet_torch.runner", "keras": "resnet_keras.runner", "flax": "resnet_flax.runner",
           "onnx": "shared.onnx_runner"}


@dataclasses.dataclass
class Job:
    framework: str
    device: str
    precision: str
    mode: str
    spec: dict
    weights: str
    images: str
    labels: str | None
    trace: bool
    out: str
    mutant: str = ""  # a broken port from shared.mutants, injected into this framework

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def read(cls, path: str) -> "Job":
        return cls(**json.loads(Path(path).read_text()))


def main(argv: list[str] | None = None) -> int:
    """``python -m shared.worker JOB.json [JOB.json ...]``: the jobs run in turn in this process
    (one import of the framework for many runs, as the mutant table needs)."""
    argv = sys.argv[1:] if argv is None else argv
    for path in argv:
        run_job(Job.read(path))
    return 0


def run_job(job: Job) -> None:
    from shared import weights as W

    try:
        runner = importlib.import_module(RUNNERS[job.framework])
        spec = ResNetSpec.from_dict(job.spec)
        weights = W.load(job.weights, spec)
        images = np.load(job.images)
        labels = np.load(job.labels) if job.labels else None
        result = run_mutated(runner, job, spec, weights, images, labels)
        result["versions"] = np.array(json.dumps(runner.versions()))
    except Exception as e:  # reported back to the parent as one line plus the traceback
        result = {"error": np.array(f"{type(e).__name__}: {e}"), "traceback": np.array(traceback.format_exc())}
    out = Path(job.out)
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".npz", delete=False) as f:
        np.savez(f, **{k: np.asarray(v) for k, v in result.items()})
    Path(f.name).replace(out)


def run_mutated(runner, job: Job, spec: ResNetSpec, weights: dict, images, labels) -> dict:
    """``runner.run``, with the job's mutant (if any) injected the way its kind says."""
    from shared import mutants as M

    name = job.mutant
    built_spec = M.mutate_spec(name, spec) if name else spec
    weights = M.mutate_weights(name, spec, weights) if name else weights
    native = name and M.CATALOGUE[name].how == "native"
    if native and not hasattr(runner, "inject"):
        raise ValueError(f"mutant {name}: {job.framework} has no framework code to swap")
    with runner.inject(name) if native else contextlib.nullcontext():
        result = runner.run(built_spec, weights, images, labels=labels, device=job.device,
                            precision=job.precision, mode=job.mode, trace=job.trace)
    if name and job.mode == "train":
        stats = {k[len("stats/"):]: v for k, v in result.items() if k.startswith("stats/")}
        counts = M.bn_counts(spec, *images.shape[:3])
        variance = "unbiased" if job.framework == "torch" else "biased"
        stats = M.mutate_stats(name, stats, weights, counts, built_spec.bn_momentum, variance)
        result.update({f"stats/{k}": v for k, v in stats.items()})
    return result


if __name__ == "__main__":
    raise SystemExit(main())
