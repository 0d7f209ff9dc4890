"""``resnet-parity bench``: images per second and peak memory of our three implementations, each
beside its framework's own reference measured in the same run with the same settings.

Every measurement (one model, one mode, one precision) runs in a fresh process
(``shared.bench_worker``) so TensorFlow, JAX and PyTorch never share one, Keras gets its backend,
and peak memory belongs to that model alone; this parent only plans, collects the JSON each
worker writes, and reports. Missing frameworks are reported as not installed, not as failures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from shared import spec as S
from shared.bench_plan import MODES, PRECISIONS, Pair, Run, plan, unique_runs
from shared.bench_worker import Job


def _csv(choices):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(map(repr, bad)) or 'empty list'}; "
                                             f"expected some of {', '.join(choices)}")
        return list(dict.fromkeys(items))

    return parse


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _depths(text: str) -> tuple[int, ...]:
    try:
        depths = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected stage depths like 1,1,1,1, got {text!r}") from None
    if not depths or min(depths) < 1:
        raise argparse.ArgumentTypeError(f"every stage needs at least 1 block, got {text!r}")
    return depths


def add_parser(sub) -> None:
    from shared.check import FRAMEWORKS, KERAS_BACKENDS

    p = sub.add_parser("bench", help="images/s and peak memory, ours beside each framework's reference")
    p.add_argument("--arch", choices=S.ARCHS, default="resnet50")
    p.add_argument("--frameworks", type=_csv(FRAMEWORKS), default=list(FRAMEWORKS))
    p.add_argument("--keras-backends", type=_csv(KERAS_BACKENDS), default=list(KERAS_BACKENDS))
    p.add_argument("--mode", type=_csv(MODES), default=list(MODES),
                   help="infer (eval-mode forward) and/or train (forward, backward, SGD momentum 0.9)")
    p.add_argument("--precision", type=_csv(PRECISIONS), default=["fp32"],
                   help="fp32 (TF32 off on a GPU), tf32 (the frameworks' GPU defaults), bf16 (autocast / mixed)")
    p.add_argument("--batch", type=_positive, default=32)
    p.add_argument("--size", type=_positive, default=224)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile for torch; jit_compile=True for Keras (Flax is always jitted)")
    p.add_argument("--channels-last", action="store_true", help="torch: channels_last model and inputs")
    p.add_argument("--fold", action="store_true",
                   help="add rows where ours runs with BatchNorm folded into the convs (inference only)")
    p.add_argument("--iters", type=_positive, default=10, help="timed iterations")
    p.add_argument("--warmup", type=_positive, default=2, help="untimed iterations first (compilation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--depths", type=_depths, default=None, help=argparse.SUPPRESS)  # tiny specs for tests
    p.add_argument("--interleave", action="store_true",
                   help="ours and its reference in one process, timed iterations in turn: a fair ratio on a "
                        "busy machine (peak memory is then not separable)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
    p.add_argument("--json", help="write every figure to this file")
    p.add_argument("--plot", help="draw a bar chart to this .png (needs matplotlib)")
    p.add_argument("--markdown", help="write the table, command, machine and versions as markdown")
    p.set_defaults(func=cmd_bench)


def command_line(args) -> str:
    """The command with every option spelt out: what reproduces this run."""
    words = ["resnet-parity", "bench", "--arch", args.arch, "--frameworks", ",".join(args.frameworks),
             "--keras-backends", ",".join(args.keras_backends), "--mode", ",".join(args.mode),
             "--precision", ",".join(args.precision), "--batch", str(args.batch), "--size", str(args.size),
             "--device", args.device, "--iters", str(args.iters), "--warmup", str(args.warmup),
             "--seed", str(args.seed)]
    words += ["--compile"] * args.compile + ["--channels-last"] * args.channels_last + ["--interleave"] * args.interleave
    words += ["--fold"] * getattr(args, "fold", False)
    if args.depths:
        words += ["--depths", ",".join(map(str, args.depths))]
    for opt in ("json", "plot", "markdown"):
        if getattr(args, opt):
            words += [f"--{opt}", getattr(args, opt)]
    return shlex.join(words)


def _env(runs: list[Run], device: str) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_CPP_MIN_LOG_LEVEL="3")
    for run in runs:
        if run.backend:  # a process holds one Keras backend; plan() pairs at most one
            env["KERAS_BACKEND"] = run.backend
    if device == "cpu":  # keep every framework off any GPU the machine may have
        env.update(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    return env


def measure(run: Run, args, workdir: Path, timeout: float, partner: Run | None = None) -> dict:
    """One run in its own process: the worker's figures, or its error. With ``partner``, both
    models share the process and are timed in turn; the partner's figures come under "partner"."""
    name = f"{run.label}-{run.mode}-{run.precision}".replace("[", "-").replace("]", "")
    name += f"-with-{partner.label}".replace("[", "-").replace("]", "") if partner else ""
    out = workdir / f"{name}.json"
    with_partner = {k: getattr(partner, k) for k in ("runner", "impl", "backend", "style", "fold")} if partner else None
    job = Job(run.runner, run.impl, run.backend, run.mode, run.precision, run.style, args.arch, args.device,
              args.batch, args.size, args.iters, args.warmup, args.compile, args.channels_last, args.seed, str(out),
              args.depths, with_partner, run.fold)
    job.write(workdir / f"{name}.job.json")
    heads = [{"label": r.label, "style": r.style} for r in (run, partner) if r]
    try:
        proc = subprocess.run([sys.executable, "-m", "shared.bench_worker", str(workdir / f"{name}.job.json")],
                              env=_env([r for r in (run, partner) if r], args.device), timeout=timeout,
                              capture_output=True, text=True)
        result = json.loads(out.read_text()) if out.exists() else None
    except subprocess.TimeoutExpired:
        result = {"status": "timed out", "error": f"after {timeout:.0f} s"}
    if result is None:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        result = {"error": f"worker exited {proc.returncode}: {tail}"}
    results = [result, result.pop("partner", result)] if partner else [result]
    merged = [{**head, "status": "error" if "error" in r else "ok", **r} for head, r in zip(heads, results)]
    if partner:
        merged[0]["partner"] = merged[1]
    return merged[0]


def _result(pair: Pair, side: str, results: dict) -> dict | None:
    """A side's figures: measured alone (key: the run) or with its partner (key: the pair's runs)."""
    runs = tuple(pair.runs())
    if len(runs) == 2 and runs in results:
        return results[runs] if side == "ours" else results[runs].get("partner")
    return results.get((getattr(pair, side),))


def _row(pair: Pair, results: dict) -> dict:
    row = {"target": pair.target, "mode": pair.mode, "precision": pair.precision, "status": pair.skipped or "ok",
           "ours": None, "reference": None, "ratio": None}
    for side in ("ours", "reference"):
        run = getattr(pair, side)
        if run is None or pair.skipped:
            continue
        missing = run.missing()
        status = f"not installed: {', '.join(missing)}" if missing else "not run"
        row[side] = _result(pair, side, results) or {"label": run.label, "style": run.style, "status": status}
    if not pair.skipped and row["ours"]["status"] != "ok":
        row["status"] = row["ours"]["status"]
    ours, ref = row["ours"], row["reference"]
    if ours and ref and ours["status"] == ref["status"] == "ok":
        row["ratio"] = ours["images_per_s"]["median"] / ref["images_per_s"]["median"]
    return row


def run_bench(args, progress=None, partial=None) -> dict:
    """Plan, run every measurement once, pair them up. ``progress(label)`` before each run;
    ``partial(report)`` after each, with the runs still to come marked "not run"."""
    from shared.bench_report import machine

    pairs = plan(args.frameworks, args.keras_backends, args.mode, args.precision, args.device,
                 getattr(args, "fold", False))
    config = {k: getattr(args, k, False) for k in ("arch", "frameworks", "keras_backends", "mode", "precision", "batch",
                                                   "size", "device", "compile", "channels_last", "iters", "warmup",
                                                   "seed", "depths", "interleave", "fold")}
    head = {"command": command_line(args), "argv": sys.argv,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "config": config}

    def report(results: dict) -> dict:
        found = [*results.values(), *(r["partner"] for r in results.values() if r.get("partner"))]
        versions = {r["label"]: r["versions"] for r in found if r.get("versions")}
        return {**head, "versions": versions, "rows": [_row(p, results) for p in pairs]}

    results = {}
    with tempfile.TemporaryDirectory(prefix="resnet-parity-bench-") as tmp:
        for runs in _batches(pairs, args.interleave):
            if progress:
                progress(" beside ".join(r.label for r in runs) + f" {runs[0].mode} {runs[0].precision}")
            run, partner = runs[0], (runs[1] if len(runs) > 1 else None)
            results[runs] = measure(run, args, Path(tmp), args.timeout, partner)
            if partial:
                partial(report(results))
    return report(results)


def _batches(pairs: list[Pair], interleave: bool) -> list[tuple[Run, ...]]:
    """What each process measures: one run, or (interleaved) a pair's ours and reference."""
    if not interleave:
        return [(run,) for run in unique_runs(pairs)]
    return list(dict.fromkeys(tuple(p.runs()) for p in pairs if p.runs()))


def cmd_bench(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from shared import bench_report
    from shared.cli import CliError, _write_json

    if args.plot:
        try:
            bench_report.check_plot_available()
        except bench_report.PlotUnavailable as e:
            raise CliError(str(e)) from None
    total = len(_batches(plan(args.frameworks, args.keras_backends, args.mode, args.precision, args.device,
                              args.fold), args.interleave))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("bench", total=total)
        started = []

        def step(label):
            if started:
                progress.advance(task)
            started.append(label)
            progress.update(task, description=f"timing {label}")

        # With --json, the file holds every figure so far after each run: a killed run keeps them.
        report = run_bench(args, step, (lambda r: _write_json(args.json, r)) if args.json else None)
    console = Console()
    if not console.is_terminal:  # a pipe or a log file: don't squeeze the table to 80 columns
        console = Console(width=200)
    bench_report.print_table(report, console)
    console.print(f"[dim]{report['command']}  ({report['date']})[/]")
    if args.json:
        _write_json(args.json, report)
    if args.plot:
        bench_report.plot(report, args.plot)
    if args.markdown:
        from shared.weights import atomic_path

        with atomic_path(args.markdown) as tmp:
            tmp.write_text(bench_report.markdown(report))
    failed = [run for r in report["rows"] for run in (r["ours"], r["reference"])
              if run and run["status"] in ("error", "timed out")]
    return 1 if failed else 0
