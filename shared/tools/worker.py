"""The worker process: ``python -m shared.tools.worker JOB.json [JOB.json ...]``.

Runs each ``shared.tools.jobs.Job`` in turn (one framework import for many runs, as the mutant
table needs) and writes its result to ``job.out``; an exception becomes ``error`` (its type and message)
and ``traceback`` in the result, for the parent to report. Three tasks:

- ``check``: the adapter's ``run_check`` with the job's mutant injected: ``.npz`` of named
  arrays (``logits``; ``trace/<block>``; in train mode ``loss``, ``grad/<weight>``,
  ``stats/<bn>.mean|var``) and ``versions``.
- ``bench``: the adapter's ``run_bench`` (and its partner's, timed in turn), timed by
  ``shared.tools.bench_timing``: ``.json`` of figures.
- ``data_parallel``: one step of ``job.engine`` (``shared.tools.adapters.<framework>_dp``), whose
  ``run(spec, weights, images, labels, replicas=, lr=, momentum=, **options)`` returns arrays.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import traceback

import numpy as np

from shared import mutants as M
from shared.tools import adapter as A
from shared.tools.bench_timing import measure_in_turn, peak_rss_bytes, rss_bytes
from shared.tools.jobs import Job, write_result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    for path in argv:
        job = Job.read(path)
        try:
            result = TASKS[job.task](job)
        except Exception as e:  # reported back to the parent, which shows the line it needs
            result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        write_result(job.out, result)
    return 0


def run_check(job: Job) -> dict:
    """The adapter's ``run_check``, with the job's mutant (if any) injected the way its kind says."""
    adapter = A.load(job.framework)
    spec, weights = job.model_inputs()
    images, labels = job.inputs(spec)
    name = job.mutant
    built_spec = M.mutate_spec(name, spec) if name else spec
    weights = M.mutate_weights(name, spec, weights) if name else weights
    native = name and M.CATALOGUE[name].how == "native"
    with adapter.inject(name) if native else contextlib.nullcontext():
        result = adapter.run_check(built_spec, weights, images, labels=labels, device=job.device,
                                   precision=job.precision, mode=job.mode, trace=job.trace)
    if name and job.mode == "train":
        stats = {k[len("stats/"):]: v for k, v in result.items() if k.startswith("stats/")}
        counts = M.bn_counts(spec, *images.shape[:3])
        stats = M.mutate_stats(name, stats, weights, counts, built_spec.bn_momentum, A.VARIANCE[job.framework])
        result.update({f"stats/{k}": v for k, v in stats.items()})
    result["versions"] = np.array(json.dumps(adapter.versions()))
    return result


def run_bench(job: Job) -> dict:
    """The job's figures; with ``job.partner``, the partner's too (under "partner"), the two
    models built in this one process and timed in turn."""
    jobs = job.with_partner()
    adapters = [A.load(j.framework) for j in jobs]
    baseline = rss_bytes()
    with contextlib.ExitStack() as scope:
        settings = [scope.enter_context(a.setup_precision(j.precision, j.device)) for a, j in zip(adapters, jobs)]
        prepared = [a.run_bench(j, *j.model_inputs()) for a, j in zip(adapters, jobs)]
        load_before = os.getloadavg()[0]
        timings = measure_in_turn([(p.step, p.sync) for p in prepared], warmup=job.warmup, iters=job.iters)
        load = [load_before, os.getloadavg()[0]]
    results = []
    for a, p, timing, precision in zip(adapters, prepared, timings, settings):
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
            "settings": {**precision, **p.settings},
            "versions": a.versions(),
            # Other processes competing for the cores show here (quiet: about 1 per busy core).
            "loadavg_1m": load,
        })
    if job.partner:
        results[0]["partner"] = results[1]
    return results[0]


def run_data_parallel(job: Job) -> dict:
    module = importlib.import_module(job.engine)
    spec, weights = job.model_inputs()
    images, labels = job.inputs(spec)
    result = module.run(spec, weights, images, labels, replicas=job.replicas, lr=job.lr, momentum=job.momentum,
                        **job.options)
    result["versions"] = np.array(json.dumps(module.versions()))
    return result


def run_fit(job: Job) -> dict:
    """``check --mode fit``: ``job.engine``'s ``run(spec, weights, **job.options)`` (its
    framework's optimizer and train step over a recipe's updates, shared.tools.check_fit)."""
    module = importlib.import_module(job.engine)
    spec, weights = job.model_inputs()
    result = module.run(spec, weights, **job.options)
    result["versions"] = np.array(json.dumps(module.versions()))
    return result


TASKS = {"check": run_check, "bench": run_bench, "data_parallel": run_data_parallel, "fit": run_fit}


if __name__ == "__main__":
    raise SystemExit(main())
