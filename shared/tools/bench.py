"""``resnet-parity bench``: images per second and peak memory of our three implementations, each
beside its framework's own reference measured in the same run with the same settings.

Every measurement (one model, one mode, one precision) runs in a fresh process
(``shared.tools.worker``) so TensorFlow, JAX and PyTorch never share one, Keras gets its backend,
and peak memory belongs to that model alone; this parent only plans, collects the JSON each
worker writes, and reports. Missing frameworks are reported as not installed, not as failures.

``--recipe NAME`` (a ``shared.recipe`` preset): the train rows train the recipe, ours by each
package's ``optimizer(recipe, model)`` and ``train_step`` as a user of it would, the reference
by the framework's own loop with its stock optimizer (``shared.tools.bench_plan``): does our
recipe mapping cost throughput beside the loop a user of the framework writes?
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from shared import recipe as R, spec as S
from shared.tools.adapter import KERAS_BACKENDS, NAMES as FRAMEWORKS, PRECISIONS, QUANTIZED, RUNTIMES
from shared.tools.bench_plan import MODES, PEERS, Pair, Run, plan, unique_runs
from shared.tools.jobs import Job, environment, launch, read_result, write_json
from shared.tools.options import CliError, csv_choices as _csv, depths as _depths, positive as _positive


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="images/s and peak memory, ours beside each framework's reference")
    p.add_argument("--arch", choices=S.ARCHS, default="resnet50")
    p.add_argument("--frameworks", type=_csv(FRAMEWORKS + QUANTIZED + PEERS + RUNTIMES, PRECISIONS),
                   default=list(FRAMEWORKS),
                   help=f"default: {','.join(FRAMEWORKS)}; {', '.join(QUANTIZED + PEERS)} (int8, beside torchvision "
                        "fp32) and openvino when named; torch-int8: torch.ao's x86 int8 of torchvision's model")
    p.add_argument("--keras-backends", type=_csv(KERAS_BACKENDS), default=list(KERAS_BACKENDS))
    p.add_argument("--mode", type=_csv(MODES), default=list(MODES),
                   help="infer (eval-mode forward) and/or train (forward, backward, SGD momentum 0.9)")
    p.add_argument("--recipe", type=_recipe, default=None,
                   help="train: a shared.recipe preset, ours by the package's optimizer and train_step beside the "
                        "framework's own loop and stock optimizer (default: plain SGD momentum 0.9 on both sides)")
    p.add_argument("--precision", type=_csv(PRECISIONS), default=["fp32"],
                   help="fp32 (TF32 off on a GPU), tf32 (TF32 convolutions and matmuls), bf16 (autocast / "
                        "mixed): the meanings check gives them (shared.tools.adapter)")
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
    p.add_argument("--alternate", action="store_true",
                   help="every run in a worker process of its own, all timed in turn (one iteration each, round "
                        "after round): each ratio to torchvision fp32 within one run, no two runtimes in a process")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
    p.add_argument("--json", help="write every figure to this file")
    p.add_argument("--plot", help="draw a bar chart to this .png (needs matplotlib)")
    p.add_argument("--markdown", help="write the table, command, machine and versions as markdown")
    p.set_defaults(func=cmd_bench)


def _recipe(name: str) -> str:
    """``--recipe``: a preset's name (``shared.recipe.preset`` says which exist)."""
    try:
        return R.preset(name).name
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("recipe: ")) from None


def command_line(args) -> str:
    """The command with every option spelt out: what reproduces this run."""
    words = ["resnet-parity", "bench", "--arch", args.arch, "--frameworks", ",".join(args.frameworks),
             "--keras-backends", ",".join(args.keras_backends), "--mode", ",".join(args.mode),
             "--precision", ",".join(args.precision), "--batch", str(args.batch), "--size", str(args.size),
             "--device", args.device, "--iters", str(args.iters), "--warmup", str(args.warmup),
             "--seed", str(args.seed)]
    words += ["--compile"] * args.compile + ["--channels-last"] * args.channels_last + ["--interleave"] * args.interleave
    words += ["--fold"] * getattr(args, "fold", False) + ["--alternate"] * getattr(args, "alternate", False)
    if getattr(args, "recipe", None):
        words += ["--recipe", args.recipe]
    if args.depths:
        words += ["--depths", ",".join(map(str, args.depths))]
    for opt in ("json", "plot", "markdown"):
        if getattr(args, opt):
            words += [f"--{opt}", getattr(args, opt)]
    return shlex.join(words)


def _job(run: Run, args, out: Path) -> Job:
    spec = S.preset(args.arch, run.style, **({"depths": tuple(args.depths)} if args.depths else {}))
    return Job("bench", run.framework, spec.to_dict(), str(out), device=args.device, precision=run.precision,
               mode=run.mode, seed=args.seed, batch=args.batch, size=args.size, fold=run.fold, impl=run.impl,
               backend=run.backend, iters=args.iters, warmup=args.warmup, compile=args.compile,
               channels_last=args.channels_last,
               options={"recipe": R.preset(run.recipe).to_dict()} if run.recipe else {})


def _plan(args) -> list[Pair]:
    return plan(args.frameworks, args.keras_backends, args.mode, args.precision, args.device,
                getattr(args, "fold", False), args.arch, getattr(args, "recipe", None) or "", args.compile)


def measure(run: Run, args, workdir: Path, timeout: float, partner: Run | None = None) -> dict:
    """One run in its own process: the worker's figures, or its error. With ``partner``, both
    models share the process and are timed in turn; the partner's figures come under "partner"."""
    name = f"{run.label}-{run.mode}-{run.precision}".replace("[", "-").replace("]", "")
    name += f"-with-{partner.label}".replace("[", "-").replace("]", "") if partner else ""
    job = _job(run, args, workdir / f"{name}.json")
    if partner:  # the fields where the partner's job differs
        other = dataclasses.asdict(_job(partner, args, workdir / f"{name}.json"))
        job.partner = {k: v for k, v in other.items() if v != getattr(job, k)}
    heads = [{"label": r.label, "style": r.style} for r in (run, partner) if r]
    backend = next((r.backend for r in (run, partner) if r and r.backend), "")  # plan() pairs at most one
    why = launch([job], workdir, environment(backend=backend, device=args.device), timeout)
    result = read_result(job.out)
    if result is None:
        result = {"status": "timed out", "error": why} if why.startswith("timed out") else {"error": why}
    elif "error" in result:
        result["error"] = result["error"].strip().splitlines()[0]
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


def _row(pair: Pair, results: dict, in_turn: bool = False) -> dict:
    row = {"target": pair.target, "mode": pair.mode, "precision": pair.precision, "status": pair.skipped or "ok",
           "ours": None, "reference": None, "ratio": None}
    if pair.ours.recipe:
        row["recipe"] = pair.ours.recipe
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
        if in_turn and len(ours.get("times_s", ())) == len(ref.get("times_s", ())) > 0:
            row["paired"] = paired(ours["times_s"], ref["times_s"])
    return row


def paired(ours_s: list[float], ref_s: list[float]) -> dict:
    """Ours' images/s over its reference's, round by round (timed next to each other, with
    ``--interleave`` or ``--alternate``): the median and range of the rounds' ratios, which a
    burst of background load hitting one round shifts less than it shifts one side's median."""
    ratios = sorted(r / o for o, r in zip(ours_s, ref_s))
    return {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1], "rounds": len(ratios)}


def run_bench(args, progress=None, partial=None) -> dict:
    """Plan, run every measurement once, pair them up. ``progress(label)`` before each run;
    ``partial(report)`` after each, with the runs still to come marked "not run"."""
    from shared.tools.bench_report import machine

    pairs = _plan(args)
    config = {k: getattr(args, k, False) for k in ("arch", "frameworks", "keras_backends", "mode", "precision", "batch",
                                                   "size", "device", "compile", "channels_last", "iters", "warmup",
                                                   "seed", "depths", "interleave", "fold", "alternate")}
    config["recipe"] = getattr(args, "recipe", None)
    head = {"command": command_line(args), "argv": sys.argv,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "config": config}
    if config["recipe"]:
        recipe = R.preset(config["recipe"])
        head["recipe"] = {"name": recipe.name, "source": recipe.source, "line": recipe.describe(),
                          "fields": recipe.to_dict()}

    def report(results: dict) -> dict:
        found = [*results.values(), *(r["partner"] for r in results.values() if r.get("partner"))]
        versions = {r["label"]: r["versions"] for r in found if r.get("versions")}
        in_turn = args.interleave or getattr(args, "alternate", False)
        return {**head, "versions": versions, "rows": [_row(p, results, in_turn) for p in pairs]}

    results = {}
    if getattr(args, "alternate", False):
        return _alternated(args, pairs, report, progress)
    with tempfile.TemporaryDirectory(prefix="resnet-parity-bench-") as tmp:
        for runs in _batches(pairs, args.interleave):
            if progress:
                progress(" beside ".join(r.label for r in runs) + f" {runs[0].mode} {runs[0].precision}")
            run, partner = runs[0], (runs[1] if len(runs) > 1 else None)
            results[runs] = measure(run, args, Path(tmp), args.timeout, partner)
            if partial:
                partial(report(results))
    return report(results)


def _alternated(args, pairs: list[Pair], report, progress=None) -> dict:
    """``--alternate``: every run of the plan in its own worker, timed in turn
    (``shared.tools.bench_turns``); beside each row, each run's images/s as a ratio to the
    torchvision (or timm) fp32 run of the same run, or resnet_torch's where neither ships the
    architecture (``anchor``)."""
    from shared.tools.bench_turns import alternate

    runs = unique_runs(pairs)
    with tempfile.TemporaryDirectory(prefix="resnet-parity-bench-") as tmp:
        jobs = [_job(run, args, Path(tmp) / f"{i}.json") for i, run in enumerate(runs)]
        found = alternate(jobs, Path(tmp), args.iters, args.timeout, progress)
    heads = [{"label": r.label, "style": r.style} for r in runs]
    results = {(run,): {**head, "status": "error" if "error" in r else "ok", **r}
               for run, head, r in zip(runs, heads, found)}
    out = report(results)
    # Ratios within the first mode of the plan (an infer and a train image/s do not compare).
    mode = runs[0].mode if runs else None
    fp32_torch = [r for r in runs if r.framework == "torch" and r.precision == "fp32" and r.impl != "int8"
                  and r.mode == mode and results[(r,)]["status"] == "ok"]
    # torchvision's (or timm's) model where it has one, else ours (e.g. ResNet-50 V2)
    anchor = next((results[(r,)] for r in sorted(fp32_torch, key=lambda r: r.impl != "reference")), None)
    if anchor:
        rate = anchor["images_per_s"]["median"]
        in_mode = f" {mode}" if len({r.mode for r in runs}) > 1 else ""
        out["anchor"] = {"label": f"{anchor['label']} fp32{in_mode}", "images_per_s": rate,
                         "ratios": {f"{r.label} {r.precision}": results[(r,)]["images_per_s"]["median"] / rate
                                    for r in runs if r.mode == mode and results[(r,)]["status"] == "ok"}}
    return out


def _batches(pairs: list[Pair], interleave: bool) -> list[tuple[Run, ...]]:
    """What each process measures: one run, or (interleaved) a pair's ours and reference."""
    if not interleave:
        return [(run,) for run in unique_runs(pairs)]
    return list(dict.fromkeys(tuple(p.runs()) for p in pairs if p.runs()))


def cmd_bench(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from shared.tools import bench_report

    if args.recipe and "train" not in args.mode:
        raise CliError(f"--recipe: times training; --mode {','.join(args.mode)} has no train rows (add train)")
    if args.plot:
        try:
            bench_report.check_plot_available()
        except bench_report.PlotUnavailable as e:
            raise CliError(str(e)) from None
    total = len(_batches(_plan(args), args.interleave)) if not args.alternate else 1
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
        report = run_bench(args, step, (lambda r: write_json(args.json, r)) if args.json else None)
    console = Console()
    if not console.is_terminal:  # a pipe or a log file: don't squeeze the table to 80 columns
        console = Console(width=200)
    bench_report.print_table(report, console)
    console.print(f"[dim]{report['command']}  ({report['date']})[/]")
    if args.json:
        write_json(args.json, report)
    if args.plot:
        bench_report.plot(report, args.plot)
    if args.markdown:
        from shared.weights import atomic_path

        with atomic_path(args.markdown) as tmp:
            tmp.write_text(bench_report.markdown(report))
    failed = [run for r in report["rows"] for run in (r["ours"], r["reference"])
              if run and run["status"] in ("error", "timed out")]
    return 1 if failed else 0
