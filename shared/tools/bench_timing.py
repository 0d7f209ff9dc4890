"""How one benchmark step is timed, and how memory is read, the same way for every framework.

A step launches device work and returns something to wait on; ``sync`` waits for it (torch
synchronize, jax block_until_ready, numpy conversion). The clock is read only after ``sync``,
and the warm-up calls (compilation, autotuning, allocator growth) are never timed.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import sys
import time
from typing import Callable

# A bench train step is one SGD update with momentum, the same in every framework; with
# ``bench --recipe``, one update of the recipe (``recipe_of``).
LEARNING_RATE = 0.01
MOMENTUM = 0.9


def recipe_of(job):
    """The ``shared.recipe.Recipe`` a train job trains (``bench --recipe``), else None."""
    from shared.recipe import Recipe

    fields = job.options.get("recipe") if job.mode == "train" else None
    return Recipe.from_dict(fields) if fields else None


@dataclasses.dataclass
class Step:
    """What a framework's bench module hands the worker: one step, how to wait for it, and
    what it knows about the device and its memory."""

    step: Callable[[], object]
    sync: Callable[[object], object]
    device_name: str
    settings: dict  # the fast paths actually in effect (jit, layout, autocast, TF32...)
    peak_memory: Callable[[], int | None] = lambda: None  # device bytes; None on the CPU


@dataclasses.dataclass
class Timing:
    times_s: list[float]  # one per timed iteration
    first_call_s: float  # the first warm-up call, compilation included

    def images_per_s(self, batch: int) -> dict[str, float]:
        """Median (the figure) and spread of images per second over the timed iterations."""
        rates = sorted(batch / t for t in self.times_s)
        q1, _, q3 = statistics.quantiles(rates, n=4, method="inclusive") if len(rates) > 1 else (rates * 3)
        return {"median": statistics.median(rates), "min": rates[0], "max": rates[-1], "q1": q1, "q3": q3}


def measure(step: Callable[[], object], sync: Callable[[object], object], *, warmup: int, iters: int,
            clock: Callable[[], float] = time.perf_counter) -> Timing:
    """``warmup`` untimed calls, then ``iters`` timed ones; each call waits for its device work."""
    return measure_in_turn([(step, sync)], warmup=warmup, iters=iters, clock=clock)[0]


def measure_in_turn(steps: list[tuple[Callable[[], object], Callable[[object], object]]], *, warmup: int,
                    iters: int, clock: Callable[[], float] = time.perf_counter) -> list[Timing]:
    """Every step's warm-up first, then the timed iterations taken in turn (A, B, A, B...), so
    models sharing a busy machine see the same background load."""
    if warmup < 1 or iters < 1:
        raise ValueError(f"warmup and iters: need at least 1 each, got warmup={warmup}, iters={iters}")

    def timed(step, sync) -> float:
        start = clock()
        sync(step())
        return clock() - start

    firsts = []
    for step, sync in steps:
        firsts.append(timed(step, sync))
        for _ in range(warmup - 1):
            timed(step, sync)
    times = [[] for _ in steps]
    for _ in range(iters):
        for k, (step, sync) in enumerate(steps):
            times[k].append(timed(step, sync))
    return [Timing(t, first) for t, first in zip(times, firsts)]


def rss_bytes(field: str = "VmRSS") -> int | None:
    """This process's resident set (``VmRSS``) or its peak (``VmHWM``) from /proc (Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    if field == "VmHWM":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere
    return None


def peak_rss_bytes() -> int | None:
    return rss_bytes("VmHWM")
