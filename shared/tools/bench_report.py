"""What ``resnet-parity bench`` shows and keeps: the machine it ran on, the rich table, the
bar chart (matplotlib, imported only when ``--plot`` asks for it)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess


class PlotUnavailable(RuntimeError):
    pass


def machine() -> dict:
    """CPU model and cores from /proc, GPU names from nvidia-smi when there is one."""
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cpus_usable": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity") else os.cpu_count(), "cpus_logical": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = models[0] if models else info["cpu"]
    except OSError:
        pass
    from shared.tools.bench_plan import BF16, VNNI, cpu_flags

    info["cpu_flags"] = sorted(cpu_flags() & {"avx2", "avx512f", *VNNI, *BF16})
    try:
        with open("/proc/meminfo") as f:
            total = next(line for line in f if line.startswith("MemTotal:"))
        info["memory_bytes"] = int(total.split()[1]) * 1024
    except (OSError, StopIteration):
        pass
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            info["gpus"] = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def _rate(run: dict | None, dim: str = "[dim]", undim: str = "[/]") -> str:
    if not run or run.get("status") != "ok":
        return "-"
    r = run["images_per_s"]
    return f"{r['median']:,.1f} {dim}({r['min']:,.1f}-{r['max']:,.1f}){undim}"


def _memory(run: dict | None) -> str:
    if not run or run.get("status") != "ok" or run.get("peak_memory_bytes") is None:
        return "-"
    return f"{run['peak_memory_bytes'] / 2**20:,.0f} MiB"


def _ratio(row: dict, color: bool = True) -> str:
    ratio = row.get("ratio")
    if ratio is None:
        return "-"
    return f"[{'green' if ratio >= 0.95 else 'red'}]{ratio:.3f}[/]" if color else f"{ratio:.3f}"


def _note(row: dict) -> str:
    notes = []
    for side in ("ours", "reference"):
        run = row.get(side)
        if run and run.get("status") != "ok":
            notes.append(f"{run['label']}: {run['status']}" + (f" ({run['error']})" if run.get("error") else ""))
        elif run and run.get("settings", {}).get("vs_fp32"):  # an int8 model beside its own fp32 run
            v = run["settings"]["vs_fp32"]
            notes.append(f"top-1 with fp32 {v['top1_agreement']}/{v['images']}, logits rel distance "
                         f"{v['logits_rel_distance']:.3f}")
    return "; ".join(notes) or ("" if row["status"] == "ok" else row["status"])


COLUMNS = ("framework", "mode", "precision", "ours", "images/s", "reference", "images/s", "ours/ref",
           "ours peak mem", "ref peak mem", "note")


def _cells(row: dict, rich: bool) -> list[str]:
    from rich.markup import escape

    text = escape if rich else str  # labels like "keras[jax]" are not rich markup
    ours, ref = row.get("ours"), row.get("reference")
    marks = ("[dim]", "[/]") if rich else ("", "")
    return [text(row["target"]), row["mode"], row["precision"], text(ours["label"]) if ours else "-",
            _rate(ours, *marks), text(ref["label"]) if ref else "-", _rate(ref, *marks), _ratio(row, rich),
            _memory(ours), _memory(ref), text(_note(row))]


def versions(report: dict) -> dict:
    """Every package version any worker reported, merged: {package: version}."""
    merged = {}
    for found in report["versions"].values():
        merged.update({k: v for k, v in found.items() if k != "keras_backend"})
    return dict(sorted(merged.items()))


def markdown(report: dict) -> str:
    """The table as GitHub markdown, with the command, machine, versions and date above it."""
    m = report["machine"]
    where = f"{m['cpu']}, {m['cpus_usable']} cores usable"
    if m.get("memory_bytes"):
        where += f", {m['memory_bytes'] / 2**30:.0f} GiB RAM"
    if m.get("gpus"):
        where += "; GPU: " + "; ".join(m["gpus"])
    lines = [f"Command: `{report['command']}`  ", f"Machine: {where}  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in versions(report).items()) + "  ",
             f"Date: {report['date']}", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cells(row, rich=False)) + " |" for row in report["rows"]]
    lines += recipe_lines(report) + paired_lines(report)
    lines += anchor_lines(report)
    if busy_warning(report):
        lines += ["", busy_warning(report)]
    return "\n".join(lines) + "\n"


def recipe_lines(report: dict) -> list[str]:
    """``bench --recipe``: the recipe the train rows train, and what trains it on each side."""
    recipe = report.get("recipe")
    if not recipe:
        return []
    return ["", f"Train rows: recipe {recipe['name']} ({recipe['line']}). Ours: each package's optimizer(recipe, model) "
                "and train_step; reference: the framework's own loop with its stock optimizer (torchvision's model, "
                "torch.optim and its scheduler, cross_entropy with label smoothing; keras.applications' model, "
                "keras.optimizers and a stock schedule, train_on_batch; resnet_flax's model, a plain optax optimizer in "
                "nnx.Optimizer, the Flax docs' nnx.jit step). Each run's settings in the JSON name its optimizer and step."]


def paired_lines(report: dict) -> list[str]:
    """``--interleave``, ``--alternate``: each row's ours/ref round by round (median, range)."""
    rows = [r for r in report["rows"] if r.get("paired")]
    if not rows:
        return []
    lines = ["", "ours/ref round by round (each round's two iterations timed next to each other): median (min-max) "
                 "of the rounds' ratios:", "", "| framework | mode | precision | ours/ref paired | rounds |",
             "|---|---|---|---|---|"]
    for r in rows:
        p = r["paired"]
        lines.append(f"| {r['target']} | {r['mode']} | {r['precision']} | {p['median']:.3f} ({p['min']:.3f}-"
                     f"{p['max']:.3f}) | {p['rounds']} |")
    return lines


def anchor_lines(report: dict) -> list[str]:
    """``bench --alternate``: every run's images/s as a ratio to the anchor of the same run, and
    its per-iteration latency (median, p90)."""
    anchor = report.get("anchor")
    if not anchor:
        return []
    runs = {f"{run['label']} {r['precision']}": run for r in report["rows"] for run in (r["ours"], r["reference"])
            if run and run.get("status") == "ok"}
    lines = ["", f"Each run in its own worker process, timed in turn; images/s as a ratio to {anchor['label']} "
                 f"({anchor['images_per_s']:,.1f} images/s) in the same run:", "",
             "| run | images/s | x anchor | latency median (ms) | latency p90 (ms) |", "|---|---|---|---|---|"]
    for name, ratio in anchor["ratios"].items():
        run = runs[name]
        lat = run.get("latency_s", {})
        lines.append(f"| {name} | {run['images_per_s']['median']:,.1f} | {ratio:.2f} | "
                     f"{lat.get('median', float('nan')) * 1e3:.1f} | {lat.get('p90', float('nan')) * 1e3:.1f} |")
    return lines


def busy_warning(report: dict) -> str:
    """A warning when other processes competed for the cores during the runs (the 1-minute load
    average counts this benchmark's own busy threads too, up to one per usable core)."""
    cores = report["machine"].get("cpus_usable") or 1
    loads = [load for r in report["rows"] for side in ("ours", "reference")
             if r.get(side) and r[side].get("loadavg_1m") for load in r[side]["loadavg_1m"]]
    if not loads or max(loads) <= cores + 1:
        return ""
    return (f"warning: load average up to {max(loads):.1f} on {cores} usable cores during the runs: other processes "
            f"competed for the CPU, so these figures understate both sides unevenly")


def print_table(report: dict, console) -> None:
    from rich.table import Table

    cfg, m = report["config"], report["machine"]
    where = ", ".join(m.get("gpus", [])) if cfg["device"] == "gpu" else f"{m['cpu']}, {m['cpus_usable']} cores"
    recipe = f", train: recipe {cfg['recipe']}" if cfg.get("recipe") else ""
    table = Table(title=(f"resnet-parity bench: {arch_label(cfg)}, {cfg['device']} ({where}), batch {cfg['batch']} x "
                         f"{cfg['size']}px{recipe}, images/s median (min-max) of {cfg['iters']} iterations after "
                         f"{cfg['warmup']} warm-up"))
    for col in COLUMNS:
        table.add_column(col, justify="right" if "images" in col or "mem" in col or col == "ours/ref" else "left")
    for row in report["rows"]:
        table.add_row(*_cells(row, rich=True))
    console.print(table)
    for line in recipe_lines(report) + paired_lines(report) + anchor_lines(report):
        console.print(line, markup=False)
    if busy_warning(report):
        console.print(f"[bold yellow]{busy_warning(report)}[/]")
    kinds = {r[s]["memory_kind"] for r in report["rows"] for s in ("ours", "reference")
             if r.get(s) and r[s].get("status") == "ok"}
    if kinds:
        console.print(f"peak memory: {', '.join(sorted(kinds))}; each ours runs its reference's spec style "
                      f"(torchvision beside torch, keras beside keras and flax); '-': the framework ships no "
                      f"model of this architecture")


def arch_label(cfg: dict) -> str:
    depths = cfg.get("depths")
    return f"{cfg['arch']} with depths {','.join(map(str, depths))}" if depths else cfg["arch"]


def check_plot_available() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'resnet-parity[bench]'") from None


def plot(report: dict, path: str) -> None:
    """Horizontal grouped bars, ours beside its reference per row, whiskers at min and max."""
    check_plot_available()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["status"] == "ok"]
    labels = [f"{r['target']} {r['mode']} {r['precision']}" for r in rows]
    fig, ax = plt.subplots(figsize=(9, 1.0 + 0.6 * max(len(rows), 1)))
    for offset, side, color in ((-0.2, "ours", "tab:blue"), (0.2, "reference", "tab:gray")):
        ys, medians, errs = [], [], [[], []]
        for i, r in enumerate(rows):
            run = r.get(side)
            if run and run.get("status") == "ok":
                rate = run["images_per_s"]
                ys.append(i + offset)
                medians.append(rate["median"])
                errs[0].append(rate["median"] - rate["min"])
                errs[1].append(rate["max"] - rate["median"])
        ax.barh(ys, medians, height=0.4, xerr=errs, color=color, label=side, capsize=2)
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("images / s (median; whiskers: min-max)")
    cfg = report["config"]
    ax.set_title(f"{arch_label(cfg)}, {cfg['device']}, batch {cfg['batch']} x {cfg['size']}px", fontsize=10)
    ax.legend(loc="lower right")
    fig.tight_layout()
    from shared.weights import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
