"""``bench --alternate``: every run in a worker process of its own, all alive at once, timed in
turn across the processes (one iteration each, round after round), so each figure comes from a
process holding one runtime alone (runtimes sharing a process disturb each other: onnxruntime's
int8 ran at 60 images/s in a process that had loaded OpenVINO's models, 77-80 alone) while every
runtime sees the same background load as the others, and every ratio is taken within one run.

The parent (``alternate``) starts the workers one after another and waits until each has built
its model and run its warm-up iterations; then, round by round, it tells each worker in turn to
time one iteration (``go``), waits for the time, and pauses ``PAUSE_S`` so that threads a
runtime leaves spinning after a call (onnxruntime's, OpenMP's, TBB's) are idle before the next
process's turn. Every other round takes the workers in reverse order, so no run always follows
the same other: in plan order a reference always ran right after its own ours, and ours right
after another framework's run, whose threads may still be winding down.
``end`` makes each worker report its figures as ``shared.tools.worker`` does.

The worker: ``python -m shared.tools.bench_turns JOB.json``, reading its turns on stdin.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from shared.tools.jobs import Job, environment, write_json

PAUSE_S = 0.05
READY, GO, END = "ready", "go", "end"


def _latency(times: list[float]) -> dict[str, float]:
    """Median and 90th percentile of the per-iteration times (seconds)."""
    ordered = sorted(times)
    p90 = statistics.quantiles(ordered, n=10, method="inclusive")[-1] if len(ordered) > 1 else ordered[0]
    return {"median": statistics.median(ordered), "p90": p90}


def serve(job: Job) -> None:
    """The worker: build, warm up, say ``ready``; time one iteration per ``go``; on ``end``
    write the figures to ``job.out``."""
    from shared.tools import adapter as A
    from shared.tools.bench_timing import Timing, peak_rss_bytes

    adapter = A.load(job.framework)
    result: dict = {}
    try:
        with adapter.setup_precision(job.precision, job.device) as precision:
            prepared = adapter.run_bench(job, *job.model_inputs())
            start = time.perf_counter()
            prepared.sync(prepared.step())
            first = time.perf_counter() - start
            for _ in range(job.warmup - 1):
                prepared.sync(prepared.step())
            print(READY, flush=True)
            times, loads = [], [os.getloadavg()[0]]
            for line in sys.stdin:
                if line.strip() != GO:
                    break
                start = time.perf_counter()
                prepared.sync(prepared.step())
                times.append(time.perf_counter() - start)
                print(times[-1], flush=True)
            loads.append(os.getloadavg()[0])
        timing = Timing(times, first)
        result = {"times_s": times, "first_call_s": first, "images_per_s": timing.images_per_s(job.batch),
                  "latency_s": _latency(times), "peak_memory_bytes": peak_rss_bytes(), "memory_kind": "peak RSS",
                  "device_name": prepared.device_name, "settings": {**precision, **prepared.settings},
                  "versions": adapter.versions(), "loadavg_1m": loads, "pid": os.getpid()}
    except Exception as e:  # reported to the parent in its result
        result = {"error": f"{type(e).__name__}: {e}"}
        print(f"error {result['error']}", flush=True)
    write_json(job.out, result)


def alternate(jobs: list[Job], workdir: Path, iters: int, timeout: float, progress=None) -> list[dict]:
    """Each job in a worker of its own, timed in turn ``iters`` rounds; each job's figures (or
    ``{"error": ...}``) in order."""
    procs = []
    try:
        for job in jobs:
            path = job.write(workdir / f"{Path(job.out).stem}.job.json")
            if progress:
                progress(f"building {job.framework} {job.impl} {job.precision}")
            proc = subprocess.Popen([sys.executable, "-m", "shared.tools.bench_turns", str(path)],
                                    env=environment(backend=job.backend, device=job.device), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                    start_new_session=True)
            line = proc.stdout.readline().strip()
            procs.append(proc if line == READY else None)
            if line != READY:
                proc.wait(timeout=timeout)
        live = [p for p in procs if p]
        for round_ in range(iters):
            if progress:
                progress(f"round {round_ + 1} of {iters}")
            for proc in live if round_ % 2 == 0 else live[::-1]:
                proc.stdin.write(GO + "\n")
                proc.stdin.flush()
                proc.stdout.readline()
                time.sleep(PAUSE_S)
        for proc in live:
            proc.stdin.write(END + "\n")
            proc.stdin.flush()
            proc.wait(timeout=timeout)
    finally:
        for proc in procs:
            if proc and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    out = []
    for job in jobs:
        path = Path(job.out)
        out.append(json.loads(path.read_text()) if path.exists() else {"error": "the worker wrote nothing"})
    return out


if __name__ == "__main__":
    serve(Job.read(sys.argv[1]))
