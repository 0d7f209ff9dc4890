"""``resnet-parity check``: run every installed framework on the same weights and images and
judge each against the float64 reference and against each other.

Budgets (shared.parity): fp32 may be at most 4x the error of a trusted fp32 peer on the same
weights and input. The peer here is the reference's own arithmetic in float32, measured in the
same run at every block, so the budget follows depth and size without a table. TF32 and bf16
use the measured H100/CPU table (4x), per depth; a spec with no table entry there falls back to
the ResNet-50 row. Pairwise, two implementations may differ by at most the sum of their budgets.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from shared import check_fast, parity, reference, weights as W
from shared.spec import ResNetSpec
from shared.worker import Job

FRAMEWORKS = ("torch", "keras", "flax", "onnx")
KERAS_BACKENDS = ("tensorflow", "jax", "torch")
# What a framework (or Keras backend) needs installed, by import name.
REQUIRES = {"torch": ("torch",), "flax": ("jax", "flax"), "keras": ("keras",),
            "tensorflow": ("tensorflow",), "jax": ("jax",), "onnx": ("onnx", "onnxruntime")}
# Running-variance convention each framework's BatchNorm update uses (see reference.forward_train).
VARIANCE = {"torch": "unbiased", "keras": "biased", "flax": "biased"}
FP32_FLOOR = 1e-6  # a peer error of exactly 0 (identical arithmetic) would give a zero budget


def installed(name: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in REQUIRES.get(name, (name,)))


@dataclasses.dataclass(frozen=True)
class Target:
    framework: str
    backend: str = ""  # Keras backend

    @property
    def label(self) -> str:
        return f"{self.framework}[{self.backend}]" if self.backend else self.framework

    @property
    def requires(self) -> tuple[str, ...]:
        return (self.framework, self.backend) if self.backend else (self.framework,)


def targets(frameworks, keras_backends) -> tuple[list[Target], list[Target]]:
    """(installed targets, targets whose framework or backend is not installed)."""
    found, missing = [], []
    for fw in frameworks:
        for t in ([Target(fw, b) for b in keras_backends] if fw == "keras" else [Target(fw)]):
            (found if all(installed(r) for r in t.requires) else missing).append(t)
    return found, missing


@dataclasses.dataclass
class Row:
    target: str
    status: str  # "pass", "FAIL", "error", "not installed"
    rel: float | None = None
    max_abs: float | None = None
    top1: tuple[int, int] | None = None
    budget: float | None = None
    first_diverging: str | None = None
    detail: str = ""
    extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Report:
    config: dict
    rows: list[Row]
    pairwise: dict  # "a vs b" -> {"rel", "budget", "pass"}
    versions: dict

    @property
    def ok(self) -> bool:
        return all(r.status in ("pass", "not installed") for r in self.rows) and all(
            p["pass"] for p in self.pairwise.values()) and any(r.status == "pass" for r in self.rows)

    def to_json(self) -> dict:
        return {"config": self.config, "ok": self.ok, "rows": [dataclasses.asdict(r) for r in self.rows],
                "pairwise": self.pairwise, "versions": self.versions}


def table_budget(spec: ResNetSpec, device: str, precision: str) -> float:
    depth = parity.depth_name(spec.depths) or "resnet50"
    try:
        return parity.budget(depth=depth, device=device, precision=precision)
    except KeyError:
        return parity.budget(depth="resnet50", device="gpu" if precision == "tf32" else device, precision=precision)


def run_worker(target: Target, job: Job, workdir: Path, timeout: float) -> dict[str, np.ndarray]:
    path = workdir / f"{target.label}.json"
    job.write(path)
    env = dict(os.environ, PYTHONUNBUFFERED="1", XLA_PYTHON_CLIENT_PREALLOCATE="false",
               TF_CPP_MIN_LOG_LEVEL="3")
    if target.backend:
        env["KERAS_BACKEND"] = target.backend
    proc = subprocess.run([sys.executable, "-m", "shared.worker", str(path)], env=env, timeout=timeout,
                          capture_output=True, text=True)
    out = Path(job.out)
    if not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": np.array(f"worker exited {proc.returncode}: {' | '.join(tail)}")}
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def compare_trace(result: dict, ref_trace: dict, peer_trace: dict, budget: float, fp32: bool):
    """(per-block rel errors, first block over its budget or None)."""
    errors, first = {}, None
    for name, ref in ref_trace.items():
        key = f"trace/{name}"
        if key not in result:
            continue
        err = parity.rel_error(result[key], ref)
        limit = fp32_budget(parity.rel_error(peer_trace[name], ref)) if fp32 else budget
        errors[name] = (err, limit)
        if first is None and err > limit:
            first = name
    return errors, first


def check(spec: ResNetSpec, weights: dict, *, frameworks=FRAMEWORKS, keras_backends=KERAS_BACKENDS,
          device="cpu", precision="fp32", mode="eval", batch=4, size=96, seed=0, trace=False,
          overrides: dict | None = None, timeout: float = 900.0, progress=None, fold: bool = False) -> Report:
    """Run every installed target; ``overrides`` maps a framework to spec fields that framework
    alone is built with (how the suite proves it catches a broken port). ``fold``: the targets
    run the BatchNorm-folded network, judged against the unfolded reference (check_fast)."""
    W.validate(spec, weights)
    images = reference.random_images(spec, batch, size, seed)
    labels = np.random.Generator(np.random.PCG64(seed)).integers(0, max(spec.num_classes, 1), batch)
    found, missing = targets(frameworks, keras_backends)
    rows = [Row(t.label, "not installed") for t in missing]
    run_spec, run_weights, found, note = check_fast.prepare(spec, weights, found, fold=fold, mode=mode,
                                                             device=device, precision=precision)
    config = dict(spec=spec.to_dict(), device=device, precision=precision, mode=mode, batch=batch,
                  size=size, seed=seed, trace=trace, overrides=overrides or {}, fold=fold, note=note)

    ref_trace, peer_trace, train_ref = {}, {}, {}
    if mode == "train":
        # Running statistics after one update, under each framework's variance rule (VARIANCE).
        ref_logits, train_ref["unbiased"] = reference.forward_train(spec, weights, images, variance="unbiased")
        train_ref["biased"] = reference.forward_train(spec, weights, images, variance="biased")[1]
        peer_logits, _ = reference.forward_train(spec, weights, images, dtype=np.float32)
    else:
        ref_logits = reference.forward(spec, weights, images, hook=ref_trace.__setitem__ if trace else None)
        peer_logits = reference.forward(spec, weights, images, hook=peer_trace.__setitem__ if trace else None,
                                        dtype=np.float32)
    peer_error = parity.rel_error(peer_logits, ref_logits)
    fp32 = precision == "fp32"
    budget = fp32_budget(peer_error) if fp32 else table_budget(spec, device, precision)
    if mode == "train" and installed("torch"):
        # Gradients have no numpy oracle: resnet_torch in float64 on the CPU is the oracle.
        found.append(Target("torch", "float64 oracle"))

    results, versions = {}, {}
    with tempfile.TemporaryDirectory(prefix="resnet-parity-") as tmp:
        workdir = Path(tmp)
        W.save(run_weights, workdir / "weights.safetensors")
        np.save(workdir / "images.npy", images)
        np.save(workdir / "labels.npy", labels)
        for t in found:
            if progress:
                progress(t.label)
            fields = {**run_spec.to_dict(), **(overrides or {}).get(t.framework, {})}
            oracle = t.backend == "float64 oracle"
            job = Job(t.framework, "cpu" if oracle else device, "fp64" if oracle else precision, mode, fields, str(workdir / "weights.safetensors"),
                      str(workdir / "images.npy"), str(workdir / "labels.npy") if mode == "train" else None,
                      trace, str(workdir / f"{t.label}.npz"))
            try:
                results[t.label] = run_worker(t, job, workdir, timeout)
            except subprocess.TimeoutExpired:
                results[t.label] = {"error": np.array(f"timed out after {timeout:.0f} s")}

    oracle = results.pop("torch[float64 oracle]", None)
    found = [t for t in found if t.backend != "float64 oracle"]
    for t in found:
        res = results[t.label]
        if "error" in res:
            rows.append(Row(t.label, "error", detail=str(res["error"])))
            continue
        versions[t.label] = json.loads(str(res["versions"]))
        out = res["logits"]
        cmp = parity.Comparison.of(out, ref_logits)
        row = Row(t.label, "pass" if cmp.rel <= budget else "FAIL", cmp.rel, cmp.max_abs, cmp.top1, budget)
        if trace:
            errors, first = compare_trace(res, ref_trace, peer_trace, budget, fp32)
            row.extra["trace"] = {k: {"rel": e, "budget": b} for k, (e, b) in errors.items()}
            row.first_diverging = first
            if first and row.status == "pass":
                row.status = "FAIL"
        if mode == "train":
            _judge_train(row, res, train_ref[VARIANCE[t.framework]], budget)
        rows.append(row)

    pairwise = {}
    ok = [r for r in rows if r.status in ("pass", "FAIL") and r.budget is not None]
    for i, a in enumerate(ok):
        for b in ok[i + 1:]:
            rel = parity.rel_error(results[a.target]["logits"], results[b.target]["logits"])
            limit = a.budget + b.budget
            agree = parity.top1_agreement(results[a.target]["logits"], results[b.target]["logits"])
            pairwise[f"{a.target} vs {b.target}"] = {"rel": rel, "budget": limit, "top1": agree, "pass": rel <= limit}
    if mode == "train":
        pairwise.update(_judge_gradients(ok, results, oracle, fp32))
    config["peer_fp32_error"] = peer_error
    return Report(config, rows, pairwise, versions)


def fp32_budget(peer_error: float) -> float:
    return parity.MARGIN * max(peer_error, FP32_FLOOR / parity.MARGIN)


def _judge_train(row: Row, res: dict, ref_stats: dict, budget: float) -> None:
    """Running statistics after one update, against the reference with the framework's own
    variance convention (torch: unbiased batch variance; Keras, Flax: biased)."""
    keys = [k for k in ref_stats if f"stats/{k}" in res]
    if keys:
        ours = np.concatenate([res[f"stats/{k}"].ravel() for k in keys])
        ref = np.concatenate([ref_stats[k].ravel() for k in keys])
        err = parity.rel_error(ours, ref)
        row.extra["running_stats_rel"] = err
        if err > budget:
            row.status = "FAIL"
            row.detail = f"running statistics rel {err:.2e} > {budget:.2e}"
    if "loss" in res:
        row.extra["loss"] = float(res["loss"])
    row.extra["variance_convention"] = VARIANCE[row.target.split("[")[0]]


def _flat_grads(res: dict, keys: list[str]) -> np.ndarray:
    return np.concatenate([res[k].ravel() for k in keys])


def _judge_gradients(rows: list[Row], results: dict, oracle: dict | None, fp32: bool) -> dict:
    """Every weight's gradient against resnet_torch in float64; budget 4x torch fp32's own
    gradient error (the design's rule, with torch as the trusted peer)."""
    if oracle is None or "error" in oracle:
        why = "torch not installed" if oracle is None else str(oracle["error"])
        return {"gradients": {"rel": None, "budget": None, "top1": None, "pass": True, "note": f"not judged: {why}"}}
    keys = sorted(k for k in oracle if k.startswith("grad/"))
    ref = _flat_grads(oracle, keys)
    judged = [r for r in rows if all(k in results[r.target] for k in keys)]
    errors = {r.target: parity.rel_error(_flat_grads(results[r.target], keys), ref) for r in judged}
    peer = errors.get("torch")
    out = {}
    for r in judged:
        # fp32: 4x torch's own fp32 gradient error; other precisions: the logits' table budget.
        limit = fp32_budget(peer) if (fp32 and peer is not None) else (None if fp32 else r.budget)
        err = errors[r.target]
        out[f"grad {r.target} vs float64"] = {"rel": err, "budget": limit, "top1": None,
                                             "pass": limit is None or err <= limit}
    return out
