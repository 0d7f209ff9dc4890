"""``resnet-parity predict IMAGE... --weights NAME|FILE``: photos in, each framework's top-k
labels and probabilities side by side, and the largest probability difference between them,
judged against a budget measured in the same run.

Every framework runs the same preprocessed batch (``shared.preprocess``, the weight set's own
recipe or ``--style``'s) in a worker process of its own (``shared.tools.jobs``, as ``check``
runs them). Keras runs on ``$KERAS_BACKEND`` (default tensorflow).

The budget, per image n. Let z be the float64 reference's logits (``shared.reference.forward``)
and B = ``parity.fp32_budget(rel(z32, z))`` the project's fp32 logits budget, z32 the same
reference computed in float32 on the same image. Each framework's logits z_a are judged as
``check`` judges them, ||z_a - z||_2 <= B ||z||_2, so two frameworks' logits lie within
2 B ||z||_2 of each other (the triangle rule). Softmax's Jacobian diag(p) - p p^T is symmetric
and its rows' absolute sums are 2 p_i (1 - p_i) <= 1/2, so its spectral norm is at most 1/2 and
softmax is 1/2-Lipschitz in L2. Hence for every class |p_a - p_b| <= ||p_a - p_b||_2
<= 1/2 * 2 B ||z||_2 = B ||z||_2: the probability budget. It holds only where both logits are
within B, so the verdict checks that too.

An int8 target (``onnx-int8``, ``openvino-int8``: the QDQ model ``export --int8`` writes, at the
photos' size) is judged as ``check`` judges it (``shared.quant``: every integer it rounds from its
own integers before it, its logits by the fp32 rule of the emulated int8 model), not by B: its
distance to the float64 logits is the quantization itself. Its top-k is shown beside the others,
and its top-1 agreement with the float64 reference is reported, not judged; it takes no part in
the probability differences.

Exit 0 when at least one framework ran and none failed to (one not installed is left out), the
logits lie within B, the float frameworks' top-1 agree on every image, every probability
difference lies within its budget and every int8 target passes its check; 1 otherwise; 2 on
usage errors.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from shared import parity, reference
from shared import preprocess as pre
from shared.spec import ResNetSpec
from shared.tools import check
from shared.tools.adapter import QUANTIZED
from shared.tools.jobs import Job, stage, write_json
from shared.tools.options import CliError

CLASSES = 1000  # the ImageNet-1k head decode_predictions names


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def budgets(ref: np.ndarray, peer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: (the fp32 logits budget B, the probability budget B ||z||_2, at most 1)."""
    b = np.array([parity.fp32_budget(parity.rel_error(p, r)) for p, r in zip(peer, ref)])
    return b, np.minimum(b * np.linalg.norm(ref, axis=1), 1.0)


def judge(logits: dict[str, np.ndarray], ref: np.ndarray, peer: np.ndarray) -> dict:
    """Every framework's logits (N, 1000) against the float64 reference ``ref`` with the budget
    its float32 twin ``peer`` gives, and against each other (the module's rule)."""
    logit_budget, prob_budget = budgets(ref, peer)
    rows = {}
    for label, z in logits.items():
        rel = np.array([parity.rel_error(a, r) for a, r in zip(z, ref)])
        rows[label] = {"rel": rel.tolist(), "budget": logit_budget.tolist(), "pass": bool(np.all(rel <= logit_budget))}
    probs = {label: softmax(z) for label, z in logits.items()}
    labels = list(probs)
    images = []
    for n in range(ref.shape[0]):
        top1 = {label: int(np.argmax(probs[label][n])) for label in labels}
        worst = (0.0, None, None)
        for i, a in enumerate(labels):
            for b in labels[i + 1:]:
                diff = np.abs(probs[a][n] - probs[b][n])
                k = int(np.argmax(diff))
                if diff[k] > worst[0] or worst[1] is None:
                    worst = (float(diff[k]), f"{a} vs {b}", k)
        images.append({"top1": top1, "top1_agree": len(set(top1.values())) <= 1, "max_prob_diff": worst[0],
                       "pair": worst[1], "class": worst[2], "prob_budget": float(prob_budget[n]),
                       "prob_pass": bool(worst[0] <= prob_budget[n])})
    ok = bool(logits) and all(r["pass"] for r in rows.values()) and all(
        im["top1_agree"] and im["prob_pass"] for im in images)
    return {"frameworks": rows, "images": images, "ok": ok}


def judge_int8(spec: ResNetSpec, weights: dict, images: np.ndarray, results: dict[str, dict],
               ref: np.ndarray) -> dict[str, dict]:
    """Each int8 target's worker result (integers, scales, logits) judged as ``check`` judges it;
    beside the verdict, its logits' distance to and top-1 agreement with the float64 ``ref``."""
    rows = {}
    for label, res in results.items():
        row = check.judge_int8(check.Target(label), res, spec, weights, images, check.Oracle(ref, 0.0, 0.0))
        rows[label] = {"pass": row.status == "pass", "rel_vs_float64": row.rel, "top1_vs_float64": row.top1,
                       "first_diverging": row.first_diverging, "detail": row.detail,
                       **{k: row.extra[k] for k in ("integers", "differ", "unexplained", "logits_rel",
                                                    "logits_budget", "elided") if k in row.extra}}
    return rows


def recipe(weights: str, style: str | None, spec: ResNetSpec | None = None) -> pre.Preprocessing:
    """``--style``'s recipe (V2's [-1, 1] for a pre-activation spec), else the weight set's;
    a file or a name without known preprocessing is refused, naming ``--style``."""
    if style:
        return pre.for_style(spec if spec is not None and spec.block == "preact" else style)
    if weights in pre.PREPROCESSING:
        return pre.PREPROCESSING[weights]
    what = "a file" if os.path.exists(weights) else "a weights name"
    raise CliError(f"--weights {weights}: {what} without known preprocessing; "
                   "pass --style torchvision or --style keras")


def decode(paths: list[str]) -> tuple[list, list[str]]:
    """(RGB PIL images, notes on what was converted); a missing or unreadable file is refused."""
    from PIL import Image

    images, notes = [], []
    for path in paths:
        images.append(pre.load_image(path))  # FileNotFoundError / ValueError naming the file
        with Image.open(path) as raw:
            if raw.mode != "RGB":
                dropped = " (alpha dropped)" if "A" in raw.getbands() else ""
                notes.append(f"{path}: Pillow mode {raw.mode}, not RGB: converted to RGB{dropped}")
    return images, notes


def run(spec: ResNetSpec, weights: dict, images: np.ndarray, frameworks, keras_backend: str,
        timeout: float = 900.0, progress=None, int8: dict | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """({target: logits}, {target: why it gave none}): each framework in a worker of its own, as
    many at once as there are cores (each mostly imports its framework, on one core). ``int8``
    (a dict) receives each int8 target's whole result, its integers and scales, for judging."""
    found, missing = check.targets(frameworks, [keras_backend])
    logits, failed = {}, {t.label: "not installed" for t in missing}
    with tempfile.TemporaryDirectory(prefix="resnet-parity-predict-") as tmp:
        files = stage(Path(tmp), weights, images, np.zeros(len(images), np.int64))

        def one(t):
            job = Job("check", t.framework, spec.to_dict(), str(Path(tmp) / f"{t.framework}.npz"),
                      weights=files["weights"], images=files["images"])
            (res,) = check.run_jobs(t, [job], Path(tmp), timeout)
            if progress:
                progress(t.label)
            return res

        with ThreadPoolExecutor(max(1, min(len(found), os.cpu_count() or 1))) as pool:
            results = list(pool.map(one, found))
    for t, res in zip(found, results):
        if "error" in res:
            failed[t.label] = str(res["error"]).splitlines()[0]
        else:
            logits[t.label] = np.asarray(res["logits"], np.float64)
            if t.framework in QUANTIZED and int8 is not None:
                int8[t.label] = res
    return logits, failed


def cli(args, read_weights) -> int:
    """The command; ``read_weights(weights, style)`` -> (spec, canonical weights) is the CLI's
    one reader of ``--weights`` (``shared.tools.cli.read_weights``: a file or a hub name)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(width=None if sys.stdout.isatty() else 150)
    if args.json and not Path(args.json).absolute().parent.is_dir():
        raise CliError(f"--json {args.json}: no such folder {Path(args.json).absolute().parent}")
    if not args.style:
        recipe(args.weights, None)  # refused before anything is read or fetched
    pictures, notes = decode(args.images)
    spec, weights = read_weights(args.weights, args.style)
    if not spec.include_top or spec.num_classes != CLASSES:
        raise CliError(f"--weights {args.weights}: predict needs an ImageNet head of {CLASSES} classes, "
                       f"the checkpoint has {spec.num_classes if spec.include_top else 'no top'}")
    p = recipe(args.weights, args.style, spec)
    images = pre.preprocess(pictures, style=p)
    for note in notes:
        console.print(f"[yellow]{escape(note)}[/]")
    backend = os.environ.get("KERAS_BACKEND") or "tensorflow"
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task("float64 reference")
        ref = reference.forward(spec, weights, images)
        peer = reference.forward(spec, weights, images, dtype=np.float32)
        bar.update(task, description=f"running {', '.join(args.frameworks)}")
        quantized: dict = {}
        logits, failed = run(spec, weights, images, args.frameworks, backend, int8=quantized,
                             progress=lambda label: bar.update(task, description=f"{label} done"))
        bar.update(task, description="judging")
        verdict = judge({k: z for k, z in logits.items() if k not in quantized}, ref, peer)
        verdict["int8"] = judge_int8(spec, weights, images, quantized, ref)
    floats_ok = verdict["ok"] or not verdict["frameworks"] and bool(quantized)  # int8 targets alone
    verdict["ok"] = floats_ok and all(r["pass"] for r in verdict["int8"].values()) and all(
        why == "not installed" for why in failed.values())
    tops = {label: pre.decode_predictions(z, top=args.top, probabilities=False) for label, z in logits.items()}
    show(console, args.images, tops, verdict, failed)
    if args.json:
        write_json(args.json, {"weights": args.weights, "preprocessing": dataclasses.asdict(p),
                               "spec": spec.to_dict(), "images": args.images, "top": tops, "failed": failed,
                               **verdict})
    return 0 if verdict["ok"] else 1


def show(console, paths, tops: dict, verdict: dict, failed: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    mark = {True: "[green]pass[/]", False: "[bold red]FAIL[/]"}
    for n, path in enumerate(paths):
        table = Table(title=escape(path))
        table.add_column("#", justify="right")
        for label in tops:
            table.add_column(escape(label))
        for k in range(len(next(iter(tops.values()))[n]) if tops else 0):
            table.add_row(str(k + 1), *[f"{escape(t[n][k][1])} {t[n][k][2]:.4f}" for t in tops.values()])
        console.print(table)
        im = verdict["images"][n]
        if len(verdict["frameworks"]) > 1:
            where = escape(f"{im['pair']}, {pre.imagenet_classes()[im['class']]}")
            console.print(f"top-1 {'agree' if im['top1_agree'] else '[bold red]DIFFER[/]'}; largest probability "
                          f"difference {im['max_prob_diff']:.2e} ({where}), budget {im['prob_budget']:.2e}: "
                          f"{mark[im['prob_pass']]}")
    summary = Table(title="logits against the float64 reference (the image nearest its budget)")
    for col in ("framework", "rel", "budget", "result"):
        summary.add_column(col)
    for label, row in verdict["frameworks"].items():
        n = int(np.argmax(np.array(row["rel"]) / np.array(row["budget"])))
        summary.add_row(escape(label), f"{row['rel'][n]:.2e}", f"{row['budget'][n]:.2e}", mark[row["pass"]])
    for label, row in verdict["int8"].items():
        summary.add_row(escape(label), f"{row['rel_vs_float64']:.2e}", "int8 rule", f"{mark[row['pass']]} {escape(row['detail'])}")
    for label, why in failed.items():
        summary.add_row(escape(label), "-", "-", "[dim]not installed[/]" if why == "not installed" else
                        f"[red]error[/] {escape(why)}")
    console.print(summary)
    console.print("[bold green]the frameworks agree[/]" if verdict["ok"] else "[bold red]the frameworks disagree[/]")
