"""What a worker process is asked to do, and how the tools start one.

Every framework runs in a process of its own (``python -m shared.tools.worker JOB.json ...``):
Keras fixes its backend at import, TensorFlow, JAX and PyTorch each claim the device, and a
benchmark's peak memory must belong to one model. The parent writes one ``Job`` per run as
JSON, starts the worker with ``launch`` and reads back what the worker wrote to ``job.out``
(``read_result``): named arrays (``.npz``) from a check or a data-parallel step, figures
(``.json``) from a benchmark.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from shared import spec as S
from shared import weights as W

TASKS = ("check", "bench", "data_parallel", "fit")


@dataclasses.dataclass
class Job:
    """One run: which adapter, on what spec and inputs, at which device, precision and mode."""

    task: str  # one of TASKS
    framework: str  # the adapter that runs it (shared.tools.adapters.<framework>)
    spec: dict  # ResNetSpec.to_dict()
    out: str  # where the worker writes its result: .npz (check, data_parallel) or .json (bench)
    device: str = "cpu"
    precision: str = "fp32"  # shared.tools.adapter.PRECISIONS
    mode: str = "eval"  # check: eval or train; bench: infer or train; data_parallel: train
    weights: str | None = None  # canonical .safetensors; None: seeded random weights (W.init)
    images: str | None = None  # NHWC .npy; None: seeded standard-normal images, batch x size
    labels: str | None = None  # int .npy; None: seeded labels
    seed: int = 0
    batch: int = 1
    size: int = 224
    fold: bool = False  # the worker folds BatchNorm into the convs (shared.fold) after loading
    # check
    trace: bool = False  # block-by-block activations as trace/<block>
    mutant: str = ""  # a broken port from shared.mutants, injected into this framework
    # bench
    impl: str = "ours"  # "ours" or "reference" (the framework's own ResNet)
    backend: str = ""  # the Keras backend the launcher set (KERAS_BACKEND)
    iters: int = 1
    warmup: int = 1
    compile: bool = False
    channels_last: bool = False
    partner: dict | None = None  # fields of a second bench job timed in turn in this process
    # data_parallel
    engine: str = ""  # the engine module (shared.tools.adapters.<framework>_dp)
    replicas: int = 1
    lr: float = 0.0
    momentum: float = 0.0
    options: dict = dataclasses.field(default_factory=dict)  # what the worker passes on: engine options (sync_bn), bench --recipe

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task: expected one of {TASKS}, got {self.task!r}")

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(dataclasses.asdict(self)))
        return path

    @classmethod
    def read(cls, path: str | os.PathLike) -> "Job":
        return cls(**json.loads(Path(path).read_text()))

    def with_partner(self) -> list["Job"]:
        """This job, and its partner's (bench, timed in turn) if it has one."""
        return [self] + ([dataclasses.replace(self, partner=None, **self.partner)] if self.partner else [])

    def model_inputs(self) -> tuple[S.ResNetSpec, dict]:
        """(spec, weights) the model is built from: the job's weights file, or seeded random
        weights (``W.init(spec, seed)``); folded when ``fold``."""
        spec = S.ResNetSpec.from_dict(self.spec)
        weights = W.load(self.weights, spec) if self.weights else W.init(spec, self.seed)
        if self.fold:
            from shared.fold import fold_batchnorm

            spec, weights = fold_batchnorm(spec, weights)
        return spec, weights

    def inputs(self, spec: S.ResNetSpec) -> tuple[np.ndarray, np.ndarray | None]:
        """(images, labels): the job's files, or seeded standard-normal NHWC float32 images
        (never zeros), batch x size, and int32 labels."""
        if self.images:
            return np.load(self.images), (np.load(self.labels) if self.labels else None)
        rng = np.random.Generator(np.random.PCG64(self.seed))
        images = rng.standard_normal((self.batch, self.size, self.size, spec.image_channels)).astype(np.float32)
        return images, rng.integers(0, max(spec.num_classes, 1), self.batch).astype(np.int32)


def stage(workdir: Path, weights: dict, images: np.ndarray, labels: np.ndarray) -> dict[str, str]:
    """Write a run's inputs once for every worker: {"weights", "images", "labels"} -> path,
    the ``Job`` fields that name them."""
    files = {"weights": workdir / "weights.safetensors", "images": workdir / "images.npy",
             "labels": workdir / "labels.npy"}
    W.save(weights, files["weights"])
    np.save(files["images"], images)
    np.save(files["labels"], labels)
    return {k: str(v) for k, v in files.items()}


def random_labels(spec: S.ResNetSpec, batch: int, seed: int) -> np.ndarray:
    """The labels a check trains on: seeded class indices."""
    return np.random.Generator(np.random.PCG64(seed)).integers(0, max(spec.num_classes, 1), batch)


def environment(*, backend: str = "", device: str = "", env: dict | None = None) -> dict:
    """The worker's environment: unbuffered output, no JAX preallocation, quiet TensorFlow; the
    Keras ``backend``; with ``device="cpu"`` every framework kept off any GPU the machine has."""
    out = dict(os.environ, PYTHONUNBUFFERED="1", XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_CPP_MIN_LOG_LEVEL="3")
    if backend:
        out["KERAS_BACKEND"] = backend
    if device == "cpu":
        out.update(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    out.update(env or {})
    return out


def launch(jobs: list[Job], workdir: Path, env: dict, timeout: float) -> str:
    """Run ``jobs`` in turn in one worker process, in a process group of its own; on a timeout
    the whole group (the worker and every process it started) is killed. Returns "" when the
    worker exited cleanly, else why it did not (its last lines of output, or the timeout)."""
    paths = [str(job.write(workdir / f"{Path(job.out).stem}.job.json")) for job in jobs]
    proc = subprocess.Popen([sys.executable, "-m", "shared.tools.worker", *paths], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"timed out after {timeout:.0f} s"
    finally:
        try:  # a worker that died leaves no orphan: whatever is left of its group goes too
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if proc.returncode == 0:
        return ""
    tail = " | ".join((stderr or stdout).strip().splitlines()[-3:])
    return f"worker exited {proc.returncode}: {tail}"


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Atomically (``shared.weights.atomic_path``); what JSON cannot hold is written as text."""
    with W.atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))


def write_result(path: str | os.PathLike, result: dict) -> None:
    """A worker's result, atomically: named arrays as ``.npz``, figures as ``.json``."""
    if Path(path).suffix != ".npz":
        return write_json(path, result)
    with W.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in result.items()})


def read_result(path: str | os.PathLike) -> dict | None:
    """What a worker wrote (None: nothing, it died first)."""
    path = Path(path)
    if not path.exists():
        return None
    if path.suffix == ".npz":
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    return json.loads(path.read_text())
