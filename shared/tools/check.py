"""``resnet-parity check``: run every installed framework on the same weights and images and
judge each against the float64 reference and against each other.

Every verdict is against an oracle no framework wrote, with a budget from a peer measured in
the same run (shared.parity):

- fp32 logits (and trace, running statistics): at most 4x the error of the reference's own
  arithmetic in float32 against float64.
- Gradients (``--mode train``): against ``shared.backprop``, the float64 reference's
  hand-derived backward pass; budget 4x the same backward pass run in float32.
- TF32 and bf16: the structure is judged at fp32 in the same run (every framework runs both);
  the low-precision path is judged against the reference with that precision's rounding
  emulated (``reference.ROUNDING``). Its budget is how far two legitimate placements of the
  rounding lie apart (autocast rounds every layer's output; a fused kernel only the matmul
  operands): the resolution of the check at that precision, always below 0.5.
- A check without a limit is "not judged", and the run fails.

Pairwise, two implementations may differ by at most the sum of their budgets at fp32, and by
one budget at TF32 and bf16 (so no pairwise budget reaches 0.5 either).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import tempfile
from typing import Callable
from pathlib import Path

import numpy as np

from shared import backprop, mutants, parity, quant, reference, weights as W
from shared.spec import ResNetSpec
from shared.tools import check_fast
from shared.tools.adapter import KERAS_BACKENDS, NAMES as FRAMEWORKS, PRECISIONS, QUANTIZED, RUNTIMES, VARIANCE, installed
from shared.tools.jobs import Job, environment, launch, random_labels, read_result, stage

from shared.parity import fp32_budget  # noqa: E402  (the one fp32 budget rule: MARGIN x the worst peer, floor parity.FP32_FLOOR)


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
    status: str  # "pass", "FAIL", "not judged", "error", "not installed"
    rel: float | None = None
    max_abs: float | None = None
    top1: tuple[int, int] | None = None
    budget: float | None = None
    first_diverging: str | None = None
    detail: str = ""
    extra: dict = dataclasses.field(default_factory=dict)


OK_STATUSES = ("pass", "not installed")


@dataclasses.dataclass
class Report:
    config: dict
    rows: list[Row]
    pairwise: dict  # "a vs b" -> {"rel", "budget", "pass"}
    versions: dict

    @property
    def ok(self) -> bool:
        return all(r.status in OK_STATUSES for r in self.rows) and all(
            p["pass"] is True for p in self.pairwise.values()) and any(r.status == "pass" for r in self.rows)

    def to_json(self) -> dict:
        return {"config": self.config, "ok": self.ok, "rows": [dataclasses.asdict(r) for r in self.rows],
                "pairwise": self.pairwise, "versions": self.versions}


def run_jobs(target: Target, jobs: list[Job], workdir: Path, timeout: float) -> list[dict[str, np.ndarray]]:
    """Run ``jobs`` in one worker process for ``target``; each job's arrays, or {"error": ...}."""
    why = launch(jobs, workdir, environment(backend=target.backend, device=jobs[0].device), timeout)
    return [read_result(job.out) or {"error": np.array(why or "the worker wrote nothing")} for job in jobs]


LOW_PRECISION_ALT = {"bf16": "bf16-operands", "tf32": "tf32-outputs"}  # the other legitimate rounding
LOW_PRECISION_CAP = 0.5  # no budget at or above this: it could not tell logits from noise
# Low precision: a port may lie this many times as far from the emulated reference as the two
# legitimate roundings lie from each other (frameworks also round conv biases, BatchNorm
# outputs and residual sums at places of their own; measured on CPU: up to 1.5x).
LOW_PRECISION_MARGIN = 2.0


def low_precision_oracle(spec, weights, images, precision: str, hooks=(None, None)) -> tuple[np.ndarray, float]:
    """(the reference's logits with ``precision``'s rounding emulated, the budget a port's
    distance to them may reach: LOW_PRECISION_MARGIN x the distance between the two legitimate
    rounding placements). ``hooks``: per-block hooks for the two emulated runs."""
    emu = reference.forward(spec, weights, images, hook=hooks[0], precision=precision)
    alt = reference.forward(spec, weights, images, hook=hooks[1], precision=LOW_PRECISION_ALT[precision])
    return emu, LOW_PRECISION_MARGIN * parity.rel_error(alt, emu)


@dataclasses.dataclass
class Oracle:
    """What every framework is judged against, computed once per run in numpy."""

    logits: np.ndarray  # float64 reference (eval or train-mode forward)
    budget: float  # for the judged output at the run's precision
    fp32_budget: float
    trace: dict = dataclasses.field(default_factory=dict)  # block -> float64 (fp32) or emulated (low precision)
    trace_budget: dict = dataclasses.field(default_factory=dict)  # block -> budget
    stats: dict = dataclasses.field(default_factory=dict)  # variance rule -> running statistics
    stats_budget: float | None = None
    grads: dict | None = None  # canonical weight -> float64 gradient
    grad_budget: float | None = None
    # Gradients as legitimate as ``grads``: near-zero ReLU pre-activations taken the other way
    # (``_tie_alternatives``); a framework's gradients are judged against the nearest.
    grad_alternatives: list = dataclasses.field(default_factory=list)
    # Pairs of the nearest ties flipped together, computed only for a pass no single flip explains
    # (``_tie_pairs``; the result is kept for the next framework).
    grad_pairs: Callable[[], list] | None = None
    emulated: np.ndarray | None = None  # low precision: the emulated logits the output is judged by
    notes: dict = dataclasses.field(default_factory=dict)


TIE_SINGLES = 8  # near-zero ReLU units flipped one at a time (the nearest first); then all at once
TIE_PAIRS = 4  # then, where no single fits, every pair of the nearest four (a Keras resnetrs50 flipped two)


def _tie_alternatives(spec, weights, images, labels, full, ties) -> list[dict]:
    """The float64 gradients with ReLU ties (``backprop.relu_ties``) taken the other way: each of
    the ``TIE_SINGLES`` nearest alone, then every tie at once. A float32 pass rounds a few of them
    across 0; one flip can move a small network's gradients by 1e-2, far beyond the float32
    peer's own error, so each such pass is judged against the alternative it computed."""
    singles = [_flipped(spec, weights, images, labels, full, [t]) for t in ties[:TIE_SINGLES]]
    return singles + ([_flipped(spec, weights, images, labels, full, ties)] if len(ties) > 1 else [])


def _flipped(spec, weights, images, labels, full, units) -> dict:
    """The float64 gradients with the ReLU ``units`` (``backprop.relu_ties``' entries) flipped."""
    masks = {}
    for name, index, _ in units:
        masks.setdefault(name, np.zeros(full.relu_inputs[name].shape, bool))[index] = True
    return backprop.step(spec, weights, images, labels, relu_flip=masks).grads


def _tie_pairs(spec, weights, images, labels, full, ties) -> Callable[[], list]:
    """The float64 gradients with each pair of the ``TIE_PAIRS`` nearest ties flipped together,
    computed once, on first call."""
    @functools.cache
    def pairs():
        return [_flipped(spec, weights, images, labels, full, pair)
                for pair in itertools.combinations(ties[:TIE_PAIRS], 2)]

    return pairs


def _oracle(spec, weights, images, labels, mode: str, precision: str, trace: bool) -> Oracle:
    low = precision != "fp32"
    traces: dict = {"f64": {}, "f32": {}, "lp": {}, "alt": {}}

    def hook(which):
        return traces[which].__setitem__ if trace else None

    if mode == "train":
        # One forward and backward pass per arithmetic: logits, gradients and the batch statistics
        # both variance rules update from (VARIANCE).
        full = backprop.step(spec, weights, images, labels)
        peer = backprop.step(spec, weights, images, labels, dtype=np.float32)
        stats = {rule: reference.running_update(spec, weights, full.stats, rule) for rule in reference.VARIANCES}
        peer_stats = reference.running_update(spec, weights, peer.stats, "unbiased")
        keys = sorted(full.grads)
        grad_peer = parity.rel_error(_flat(peer.grads, keys), _flat(full.grads, keys))
        fp32 = fp32_budget(parity.rel_error(peer.logits, full.logits))
        ties = backprop.relu_ties(peer, full, parity.MARGIN)
        oracle = Oracle(full.logits, fp32, fp32, stats=stats, grads=full.grads, grad_budget=fp32_budget(grad_peer),
                        grad_alternatives=_tie_alternatives(spec, weights, images, labels, full, ties),
                        grad_pairs=_tie_pairs(spec, weights, images, labels, full, ties),
                        stats_budget=fp32_budget(parity.rel_error(_flat(peer_stats), _flat(stats["unbiased"]))))
        oracle.notes.update(peer_fp32_error=parity.rel_error(peer.logits, full.logits), peer_fp32_grad_error=grad_peer,
                            relu_ties=len(ties))
        if low:
            emu, emu_batch = reference.train_statistics(spec, weights, images, precision=precision)
            alt, alt_batch = reference.train_statistics(spec, weights, images, precision=LOW_PRECISION_ALT[precision])
            oracle.emulated, oracle.budget = emu, LOW_PRECISION_MARGIN * parity.rel_error(alt, emu)
            oracle.stats = {rule: reference.running_update(spec, weights, emu_batch, rule)
                            for rule in reference.VARIANCES}
            alt_stats = reference.running_update(spec, weights, alt_batch, "unbiased")
            oracle.stats_budget = LOW_PRECISION_MARGIN * parity.rel_error(_flat(alt_stats),
                                                                          _flat(oracle.stats["unbiased"]))
        return oracle

    ref = reference.forward(spec, weights, images, hook=hook("f64"))
    peer = reference.forward(spec, weights, images, hook=hook("f32"), dtype=np.float32)
    fp32 = fp32_budget(parity.rel_error(peer, ref))
    oracle = Oracle(ref, fp32, fp32, trace=traces["f64"],
                    trace_budget={b: fp32_budget(parity.rel_error(traces["f32"][b], traces["f64"][b]))
                                  for b in traces["f64"]})
    oracle.notes["peer_fp32_error"] = parity.rel_error(peer, ref)
    if low:
        oracle.emulated, oracle.budget = low_precision_oracle(spec, weights, images, precision,
                                                              (hook("lp"), hook("alt")))
        oracle.trace = traces["lp"]
        oracle.trace_budget = {b: LOW_PRECISION_MARGIN * parity.rel_error(traces["alt"][b], traces["lp"][b])
                               for b in traces["lp"]}
    return oracle


def _flat(arrays: dict, keys=None) -> np.ndarray:
    keys = sorted(arrays) if keys is None else keys
    return np.concatenate([np.asarray(arrays[k], np.float64).ravel() for k in keys])


def compare_trace(result: dict, oracle: Oracle):
    """(per-block rel errors and budgets, first block over its budget or None)."""
    errors, first = {}, None
    for name, ref in oracle.trace.items():
        key = f"trace/{name}"
        if key not in result:
            continue
        err, limit = parity.rel_error(result[key], ref), oracle.trace_budget[name]
        errors[name] = (err, limit)
        if first is None and err > limit:
            first = name
    return errors, first


def validate_request(device: str, precision: str, mode: str, trace: bool, mutant: str = "") -> None:
    """ValueError for a request the check cannot judge honestly."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "tf32" and device == "cpu":
        raise ValueError("--precision tf32: TF32 is a GPU tensor-core mode; on a CPU every framework computes "
                         "fp32, so there is no TF32 path to judge (use --precision fp32, or --device gpu)")
    if mode not in ("eval", "train"):
        raise ValueError(f"mode: expected 'eval' or 'train', got {mode!r}")
    if trace and mode == "train":
        raise ValueError("--trace compares eval-mode activations block by block; it is not available with "
                         "--mode train (train mode judges logits, running statistics and every gradient)")
    if mutant and mutant not in mutants.CATALOGUE:
        raise ValueError(f"mutant: unknown {mutant!r}, expected one of {', '.join(mutants.CATALOGUE)}")


def check(spec: ResNetSpec, weights: dict, *, frameworks=FRAMEWORKS, keras_backends=KERAS_BACKENDS,
          device="cpu", precision="fp32", mode="eval", batch=4, size=96, seed=0, trace=False,
          overrides: dict | None = None, mutant: str = "", timeout: float = 900.0, progress=None,
          fold: bool = False) -> Report:
    """Run every installed target; ``overrides`` maps a framework to spec fields that framework
    alone is built with, and ``mutant`` (shared.mutants) breaks every framework on purpose:
    both are how the suite proves the verdict can fail. ``fold``: the targets run the
    BatchNorm-folded network, judged against the unfolded reference (check_fast)."""
    validate_request(device, precision, mode, trace, mutant)
    W.validate(spec, weights)
    images = reference.random_images(spec, batch, size, seed)
    labels = random_labels(spec, batch, seed)
    found, missing = targets(frameworks, keras_backends)
    rows = [Row(t.label, "not installed") for t in missing]
    run_spec, run_weights, found, note = check_fast.prepare(spec, weights, found, fold=fold, mode=mode,
                                                             device=device, precision=precision)
    found, note = _int8_targets(found, note, mode, device, precision)
    found, note = _runtime_targets(found, note, mode, device, precision)
    config = dict(spec=spec.to_dict(), device=device, precision=precision, mode=mode, batch=batch,
                  size=size, seed=seed, trace=trace, overrides=overrides or {}, mutant=mutant, fold=fold, note=note)
    oracle = _oracle(spec, weights, images, labels, mode, precision, trace)
    low = precision != "fp32"

    results: dict[str, dict] = {}
    structure: dict[str, dict] = {}  # low precision: the same framework at fp32
    with tempfile.TemporaryDirectory(prefix="resnet-parity-") as tmp:
        files = stage(Path(tmp), run_weights, images, labels)
        for t in found:
            if progress:
                progress(t.label)
            fields = {**run_spec.to_dict(), **(overrides or {}).get(t.framework, {})}
            traced = trace and t.framework not in QUANTIZED  # int8: judged point by point (judge_int8)
            jobs = [_job(t, files, fields, device, p, mode, traced and p == precision, mutant, f"{t.label}-{p}")
                    for p in dict.fromkeys((precision, "fp32"))]
            done = run_jobs(t, jobs, Path(tmp), timeout)
            results[t.label] = done[0]
            if low:
                structure[t.label] = done[1]

    for t in found:
        if t.framework in QUANTIZED:
            rows.append(judge_int8(t, results[t.label], run_spec, run_weights, images, oracle))
        else:
            rows.append(_judge(t, results[t.label], structure.get(t.label), oracle, mode, precision, trace))

    pairwise = {}
    judged = [r for r in rows if r.status in ("pass", "FAIL") and r.budget is not None]
    for i, a in enumerate(judged):
        for b in judged[i + 1:]:
            rel = parity.rel_error(results[a.target]["logits"], results[b.target]["logits"])
            # fp32: the triangle rule (the sum). Low precision: both were judged against one
            # emulated oracle, and two legitimate roundings lie within one budget of each other.
            limit = max(a.budget, b.budget) if low else a.budget + b.budget
            agree = parity.top1_agreement(results[a.target]["logits"], results[b.target]["logits"])
            pairwise[f"{a.target} vs {b.target}"] = {"rel": rel, "budget": limit, "top1": agree, "pass": rel <= limit}
    versions = {t.label: json.loads(str(results[t.label]["versions"])) for t in found
                if "versions" in results[t.label]}
    config.update(oracle.notes, budget=oracle.budget, fp32_budget=oracle.fp32_budget,
                  grad_budget=oracle.grad_budget, stats_budget=oracle.stats_budget)
    if low:
        config["emulated_vs_float64"] = parity.rel_error(oracle.emulated, oracle.logits)
    return Report(config, rows, pairwise, versions)


def _job(t: Target, files: dict, fields: dict, device: str, precision: str, mode: str, trace: bool,
         mutant: str, name: str) -> Job:
    out = Path(files["images"]).parent / f"{name}.npz".replace("[", "-").replace("]", "")
    return Job("check", t.framework, fields, str(out), device=device, precision=precision, mode=mode, trace=trace,
               mutant=mutant, **{**files, "labels": files["labels"] if mode == "train" else None})


def _judge(t: Target, res: dict, fp32_res: dict | None, oracle: Oracle, mode: str, precision: str,
           trace: bool) -> Row:
    """One framework's row: its output against the oracle, then (train) running statistics and
    gradients, then (low precision) its fp32 structure run."""
    if "error" in res:
        return Row(t.label, "error", detail=str(res["error"]))
    cmp = parity.Comparison.of(res["logits"], oracle.logits)
    row = Row(t.label, "pass", cmp.rel, cmp.max_abs, cmp.top1, oracle.budget)
    judged = cmp.rel
    if oracle.emulated is not None:
        judged = parity.rel_error(res["logits"], oracle.emulated)
        row.extra["rel_vs_emulated"] = judged
    fails = []
    if oracle.budget >= LOW_PRECISION_CAP:
        fails.append(f"not judged: the {precision} budget {oracle.budget:.2e} is not below {LOW_PRECISION_CAP}")
    elif judged > oracle.budget:
        what = f"rel vs emulated {precision}" if oracle.emulated is not None else "logits rel"
        fails.append(f"{what} {judged:.2e} > {oracle.budget:.2e}")
    if trace:
        errors, first = compare_trace(res, oracle)
        row.extra["trace"] = {k: {"rel": e, "budget": b} for k, (e, b) in errors.items()}
        if first:
            row.first_diverging = first
            fails.append(f"first diverging at {first}")
    if mode == "train":
        fails += _judge_train(row, res, oracle, t.framework)
        if oracle.emulated is None:
            fails += _judge_gradients(row, res, oracle)
    if fp32_res is not None:
        fails += _judge_structure(row, fp32_res, oracle, mode)
    if fails:
        row.status = "not judged" if all(f.startswith("not judged") for f in fails) else "FAIL"
        row.detail = "; ".join(fails)
    return row


def _judge_structure(row: Row, res: dict, oracle: Oracle, mode: str) -> list[str]:
    """Low precision: the same framework at fp32, judged as an fp32 run is."""
    if "error" in res:
        return [f"fp32 structure run: {res['error']}"]
    err = parity.rel_error(res["logits"], oracle.logits)
    row.extra["fp32_rel"] = err
    fails = [f"fp32 structure: logits rel {err:.2e} > {oracle.fp32_budget:.2e}"] if err > oracle.fp32_budget else []
    if mode == "train":
        fails += [f"fp32 structure: {f}" for f in _judge_gradients(row, res, oracle)]
    return fails


def _judge_train(row: Row, res: dict, oracle: Oracle, framework: str) -> list[str]:
    """Running statistics after one update, against the reference with the framework's own
    variance convention (torch: unbiased batch variance; Keras, Flax: biased)."""
    rule = VARIANCE[framework]
    ref_stats = oracle.stats[rule]
    row.extra["variance_convention"] = rule
    if "loss" in res:
        row.extra["loss"] = float(res["loss"])
    keys = [k for k in ref_stats if f"stats/{k}" in res]
    if len(keys) != len(ref_stats):
        return [f"not judged: {len(ref_stats) - len(keys)} running statistics missing from the output"]
    err = parity.rel_error(_flat({k: res[f"stats/{k}"] for k in keys}, keys), _flat(ref_stats, keys))
    row.extra["running_stats_rel"] = err
    row.extra["running_stats_budget"] = oracle.stats_budget
    return [f"running statistics rel {err:.2e} > {oracle.stats_budget:.2e}"] if err > oracle.stats_budget else []


def _judge_gradients(row: Row, res: dict, oracle: Oracle) -> list[str]:
    """Every weight's gradient against ``shared.backprop`` in float64 (or the nearest of its
    ReLU-tie alternatives, ``_tie_alternatives``); budget 4x the same backward pass in float32."""
    keys = sorted(oracle.grads)
    missing = [k for k in keys if f"grad/{k}" not in res]
    if missing:
        return [f"not judged: no gradient for {missing[0]} (and {len(missing) - 1} more)"]
    got = _flat({k: res[f"grad/{k}"] for k in keys}, keys)
    errors = [parity.rel_error(got, _flat(g, keys)) for g in (oracle.grads, *oracle.grad_alternatives)]
    if min(errors) > oracle.grad_budget and oracle.grad_pairs:
        errors += [parity.rel_error(got, _flat(g, keys)) for g in oracle.grad_pairs()]
    err = min(errors)
    row.extra["grad_rel"] = err
    if err < errors[0]:  # nearest to an alternative: say so
        row.extra["grad_rel_no_tie_flipped"] = errors[0]
    row.extra["grad_budget"] = oracle.grad_budget
    return [f"gradients rel {err:.2e} > {oracle.grad_budget:.2e}"] if err > oracle.grad_budget else []


# ----------------------------------------------------------------------- the mutant catch table

@dataclasses.dataclass
class Cell:
    mutant: str
    target: str
    mode: str
    precision: str
    applies: bool
    status: str  # the check's verdict on this mutant: "pass", "FAIL", "not judged", "error"
    detail: str = ""

    @property
    def outcome(self) -> str:
        """caught / missed where the mutant changes the function; passes / false alarm where it
        does not; error where it could not be run."""
        if self.applies and self.status == "error" and mutants.CATALOGUE[self.mutant].fails_to_run:
            return "caught"  # a port that cannot run at this size (the shapes of its two paths differ)
        if self.status == "error":
            return "error"
        if self.applies:
            return "caught" if self.status in ("FAIL", "not judged") else "missed"
        return "passes" if self.status == "pass" else "false alarm"


def catch_table(spec: ResNetSpec, weights: dict, *, names=None, modes=("eval", "train"),
                precisions=("fp32", "bf16"), frameworks=FRAMEWORKS, keras_backends=KERAS_BACKENDS,
                device="cpu", batch=4, size=64, seed=0, timeout: float = 1800.0, progress=None) -> dict:
    """Every mutant (and the unbroken port, which must pass) x framework x mode x precision:
    one worker process per framework runs all of them; each is judged as ``check`` judges."""
    names = list(names or mutants.CATALOGUE)
    for p in precisions:
        validate_request(device, p, "eval", False)
    images = reference.random_images(spec, batch, size, seed)
    labels = random_labels(spec, batch, seed)
    # onnxruntime runs eval fp32 only and has no framework code to break: the table covers the
    # three framework packages.
    found, missing = targets([f for f in frameworks if f != check_fast.ONNX and f not in QUANTIZED + RUNTIMES],
                             keras_backends)
    combos = [(m, p) for m in modes for p in precisions]
    oracles = {}
    for m, p in combos:
        if progress:
            progress(f"float64 oracle, {m} {p}")
        oracles[m, p] = _oracle(spec, weights, images, labels, m, p, False)
    cells, baseline = [], []
    with tempfile.TemporaryDirectory(prefix="resnet-parity-mutants-") as tmp:
        files = stage(Path(tmp), weights, images, labels)
        fields = spec.to_dict()
        for t in found:
            if progress:
                progress(f"{t.label}: {len(names) + 1} ports x {len(combos)} modes/precisions")
            # One job per (port, mode, precision run): a low-precision cell's fp32 structure run
            # is the same job as that mode's fp32 cell, so it runs once.
            jobs = {(name, m, q): _job(t, files, fields, device, q, m, False, name, f"{t.label}-{name or 'clean'}-{m}-{q}")
                    for name in ["", *names] for m, p in combos for q in dict.fromkeys((p, "fp32"))}
            results = dict(zip(jobs, run_jobs(t, list(jobs.values()), Path(tmp), timeout)))
            for name in ["", *names]:
                for m, p in combos:
                    res = [results[name, m, q] for q in dict.fromkeys((p, "fp32"))]
                    row = _judge(t, res[0], res[1] if len(res) > 1 else None, oracles[m, p], m, p, False)
                    if name:
                        cells.append(Cell(name, t.label, m, p, mutants.CATALOGUE[name].applies(spec, m, p, size),
                                          row.status, row.detail))
                    else:
                        baseline.append(Cell("(none)", t.label, m, p, False, row.status, row.detail))
    return {"spec": spec.to_dict(), "device": device, "batch": batch, "size": size, "seed": seed,
            "targets": [t.label for t in found], "not_installed": [t.label for t in missing],
            "combos": combos, "cells": cells, "baseline": baseline,
            "budgets": {f"{m} {p}": {"budget": o.budget, "grad_budget": o.grad_budget, "stats_budget": o.stats_budget}
                        for (m, p), o in oracles.items()}}


def _runtime_targets(found: list, note: str, mode: str, device: str, precision: str) -> tuple[list, str]:
    """OpenVINO joins eval-mode CPU checks at fp32, and at bf16 on a CPU with bf16 instructions
    (elsewhere its bf16 hint runs float32: "not supported here", never a silent fp32 row)."""
    from shared.tools.bench_plan import not_supported

    why = (f"OpenVINO joins eval-mode CPU checks only, not {mode} {device}" if mode != "eval" or device != "cpu"
           else not_supported(RUNTIMES[0], precision) and f"not supported here: {not_supported(RUNTIMES[0], precision)}")
    dropped = [t.label for t in found if t.framework in RUNTIMES]
    if not why or not dropped:
        return found, note
    return [t for t in found if t.framework not in RUNTIMES], "; ".join(filter(None, (note, f"{', '.join(dropped)} not run: {why}")))


# ----------------------------------------------------------------------------------- int8

def _int8_targets(found: list, note: str, mode: str, device: str, precision: str) -> tuple[list, str]:
    """int8 targets join eval-mode CPU checks at fp32 (the float arithmetic around the int8 ops),
    on a CPU with int8 dot-product instructions (without, onnxruntime's u8 x s8 kernels sum
    pairs in 16 bits, which can saturate: not the function the model declares)."""
    from shared.tools.bench_plan import not_supported

    unsupported = not_supported(QUANTIZED[0], "fp32")
    if mode == "eval" and device == "cpu" and precision == "fp32" and not unsupported:
        return found, note
    dropped = [t.label for t in found if t.framework in QUANTIZED]
    if dropped:
        why = (f"not supported here: {unsupported}" if unsupported and mode == "eval" and device == "cpu" else
               f"int8 joins eval-mode fp32 CPU checks only, not {mode} {precision} {device}")
        note = "; ".join(filter(None, (note, f"{', '.join(dropped)} not run: {why}")))
    return [t for t in found if t.framework not in QUANTIZED], note


def judge_int8(t: Target, res: dict, spec: ResNetSpec, weights: dict, images: np.ndarray, oracle: Oracle) -> Row:
    """An int8 row: the model's integers at every quantization point and its logits against
    ``shared.quant.judge`` (each point from the model's own integers before it), with the
    scales and zero points the worker read from the model; beside the verdict, the distance
    and top-1 agreement with the fp32 function (the float64 reference of the unfolded network)."""
    from shared.fold import fold_batchnorm
    from shared.tools.adapters.onnx_int8 import read_integers, read_params
    from shared.tools.adapters.openvino_int8 import read_elided

    if "error" in res:
        return Row(t.label, "error", detail=str(res["error"]))
    folded = (spec, weights) if spec.folded else fold_batchnorm(spec, weights)
    params, elided = read_params(res), read_elided(res)  # elided: points the runtime does not round
    verdict = quant.judge(*folded, images, params, read_integers(res), res["logits"], elided)
    emulated = quant.oracle(*folded, images, params, elided)
    cmp = parity.Comparison.of(res["logits"], oracle.logits)
    summary = (f"int8: {verdict['differ']:,} of {verdict['integers']:,} integers differ from the oracle's, "
               f"{verdict['unexplained']:,} away from a rounding tie (tolerance {verdict['tie_tolerance']:.1e} steps: "
               f"{quant.MARGIN:g}x the float32 peer's largest deviation); logits rel {verdict['logits_rel']:.2e} "
               f"(budget {verdict['logits_budget']:.2e}); top-1 with fp32 {cmp.top1[0]}/{cmp.top1[1]}"
               + (f"; {len(elided)} requantizations not rounded (fused into the residual add): "
                  f"{', '.join(sorted(elided))}" if elided else ""))
    row = Row(t.label, "FAIL" if verdict["fails"] else "pass", cmp.rel, cmp.max_abs, cmp.top1, None,
              verdict["first_diverging"], "; ".join([*verdict["fails"], summary]))
    row.extra.update({k: verdict[k] for k in ("differ", "unexplained", "peer_differ", "integers", "peer_deviation",
                                              "tie_tolerance", "from_tie", "logits_rel", "logits_budget",
                                              "elided")},
                     rel_vs_emulated=parity.rel_error(res["logits"], emulated),
                     top1_vs_emulated=parity.top1_agreement(res["logits"], emulated), points=verdict["points"])
    return row
