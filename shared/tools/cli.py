"""The ``resnet-parity`` command line: ``check`` (the parity suite), ``bench``, ``convert``, ``info``.

Frameworks are imported only inside the commands that need them, by name, so ``resnet-parity``
runs with any subset installed. Bad input ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from shared import mutants, spec as S
from shared.tools import bench
from shared.tools.adapter import KERAS_BACKENDS, NAMES as FRAMEWORKS, PRECISIONS, QUANTIZED, RUNTIMES
from shared.tools.jobs import write_json
from shared.tools.options import CliError, csv_choices, depths, literal
from shared.weights import WeightsError


class Parser(argparse.ArgumentParser):
    """Usage errors in one line (``--help`` has the usage), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def read_weights(path: str, style: str | None):
    """(spec, canonical weights) from any checkpoint (``shared.tools.convert``: the core's formats,
    and every framework's through its adapter), given by path or by a ``shared.hub`` name
    (fetched into the cache; ``shared.checkpoint.resolve``, the one resolution)."""
    from shared import checkpoint, hub
    from shared.tools import convert

    try:
        p = checkpoint.resolve(path)
    except FileNotFoundError:
        raise CliError(f"--weights: no such file {path}") from None
    except hub.HubError as e:
        raise CliError(str(e)) from None
    try:
        return convert.read(p, style=style)
    except convert.FrameworkMissing as e:
        raise CliError(f"--weights: {e}") from None
    except WeightsError as e:
        raise CliError(f"--weights: {str(e).splitlines()[0]} {' '.join(str(e).splitlines()[1:3]).strip()}".strip()) from None


def _fmt(x, spec=".2e"):
    return "-" if x is None else format(x, spec)


def print_check(report, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    cfg = report.config
    spec = S.ResNetSpec.from_dict(cfg["spec"])
    title = (f"resnet-parity check: {'x'.join(map(str, spec.depths))} ({spec.style}), {cfg['device']}, "
             f"{cfg['precision']}, {cfg['mode']} mode, batch {cfg['batch']} x {cfg['size']}px, seed {cfg['seed']}"
             f"{', BatchNorm folded (vs the unfolded reference)' if cfg.get('fold') else ''}")
    table = Table(title=title)
    train = cfg["mode"] == "train"
    low = cfg["precision"] != "fp32"
    columns = ["framework", "backend", "device", "precision", "rel vs float64", "max abs", "top-1"]
    columns += [f"rel vs emulated {cfg['precision']}", "budget", "fp32 rel"] if low else ["budget"]
    columns += ["running stats rel", "variance rule", "grad rel", "grad budget", "loss"] if train else []
    for col in columns + ["result"]:
        table.add_column(col, justify="left" if col in ("framework", "backend", "result") else "right")
    for r in report.rows:
        result = {"pass": "[green]pass[/]", "FAIL": "[bold red]FAIL[/]", "error": "[red]error[/]",
                  "not judged": "[bold red]not judged[/]", "not installed": "[dim]not installed[/]"}[r.status]
        if r.first_diverging:
            result += f" (first diverging: {r.first_diverging})"
        if r.detail:
            result += f" {escape(r.detail)}"
        top1 = f"{r.top1[0]}/{r.top1[1]}" if r.top1 else "-"
        framework, _, backend = r.target.rstrip("]").partition("[")
        precision = "int8" if r.target in QUANTIZED else cfg["precision"]
        cells = [framework, backend or "-", cfg["device"], precision, _fmt(r.rel), _fmt(r.max_abs), top1]
        cells += ([_fmt(r.extra.get("rel_vs_emulated")), _fmt(r.budget), _fmt(r.extra.get("fp32_rel"))] if low
                  else [_fmt(r.budget)])
        if train:
            cells += [_fmt(r.extra.get("running_stats_rel")), r.extra.get("variance_convention", "-"),
                      _fmt(r.extra.get("grad_rel")), _fmt(r.extra.get("grad_budget")), _fmt(r.extra.get("loss"), ".6f")]
        table.add_row(*cells, result)
    console.print(table)
    if report.pairwise:
        pairs = Table(title="pairwise")
        for col in ("pair", "rel", "top-1", "budget", "result"):
            pairs.add_column(col)
        for name, p in report.pairwise.items():
            top1 = f"{p['top1'][0]}/{p['top1'][1]}" if p.get("top1") else "-"
            verdict = p.get("note") or ("[green]pass[/]" if p["pass"] else "[bold red]FAIL[/]")
            pairs.add_row(escape(name), _fmt(p["rel"]), top1, _fmt(p["budget"]), verdict)
        console.print(pairs)
    if cfg["mode"] == "train":
        console.print("running statistics: torch updates running_var with the unbiased batch variance, "
                      "Keras and Flax with the biased one; each is judged against the reference with its own rule.")
    if cfg.get("note"):
        console.print(escape(cfg["note"]))
    console.print("[bold green]all checks passed[/]" if report.ok else "[bold red]parity check failed[/]")


def cmd_check(args) -> int:
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from shared import reference
    from shared.tools import check

    console = Console(width=None if sys.stdout.isatty() else 150)
    if args.mode == "fit":  # a training recipe's trajectory: shared.tools.check_fit
        from shared.tools import check_fit

        return check_fit.cli(args, console, read_weights)
    if args.markdown:
        raise CliError("--markdown: with --mode fit --mutants (the training catch table)")
    if args.replicas is not None:  # bad --replicas fails before any weights are made
        from shared.tools import check_dp

        check_dp.check_args(args)
    check.validate_request(args.device, args.precision, args.mode, args.trace, args.mutant or "")
    if args.weights:
        spec, weights = read_weights(args.weights, args.style if args.style_given else None)
        if args.arch_given or args.style_given:
            console.print("[yellow]--arch/--style ignored: the spec comes from --weights[/]")
    else:
        spec = S.preset(args.arch, args.style)
        if args.depths or args.width:  # a smaller network of the same style (the mutant table's)
            spec = spec.replace(depths=args.depths or spec.depths, width=args.width or spec.width)
        weights = reference.calibrated_weights(spec, seed=args.seed, size=args.size)
    if args.replicas is not None:  # data-parallel engines: shared.tools.check_dp
        return check_dp.cli(args, spec, weights, console)
    overrides = {}
    for item in args.override or []:
        fw, _, assignment = item.partition(":")
        field, _, value = assignment.partition("=")
        if fw not in FRAMEWORKS or not field:
            raise CliError(f"--override: expected FRAMEWORK:FIELD=VALUE, got {item!r}")
        overrides.setdefault(fw, {})[field] = literal(value)
        S.ResNetSpec.from_dict({**spec.to_dict(), **overrides[fw]})  # a bad override fails here, not in a worker
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task("float64 reference")

        def step(label):
            progress.update(task, description=f"building and running {label}")

        if args.mutants:
            table = check.catch_table(spec, weights, frameworks=args.frameworks, keras_backends=args.keras_backends,
                                      device=args.device, precisions=args.mutant_precisions, batch=args.batch,
                                      size=args.size, seed=args.seed, progress=step)
        else:
            report = check.check(spec, weights, frameworks=args.frameworks, keras_backends=args.keras_backends,
                                 device=args.device, precision=args.precision, mode=args.mode, batch=args.batch,
                                 size=args.size, seed=args.seed, trace=args.trace, overrides=overrides,
                                 mutant=args.mutant or "", progress=step, fold=args.fold)
    if args.mutants:
        return print_catch_table(table, console, args.json)
    print_check(report, console)
    if args.trace:
        for r in report.rows:
            if r.extra.get("trace") and r.first_diverging:
                t = r.extra["trace"][r.first_diverging]
                console.print(f"{r.target}: first leaves its budget at {r.first_diverging} "
                              f"(rel {t['rel']:.2e} > {t['budget']:.2e})")
    if args.json:
        write_json(args.json, report.to_json())
    return 0 if report.ok else 1


def print_catch_table(table: dict, console, json_path: str | None) -> int:
    """Mutant x framework, one column per mode/precision; exit 0 only when every applicable cell
    is caught, every other cell passes, and the unbroken ports pass."""
    from rich.markup import escape
    from rich.table import Table

    combos = [f"{m} {p}" for m, p in table["combos"]]
    styles = {"caught": "[green]caught[/]", "passes": "[dim]n/a, passes[/]", "missed": "[bold red]MISSED[/]",
              "false alarm": "[bold red]false alarm[/]", "error": "[red]error[/]"}
    spec = S.ResNetSpec.from_dict(table["spec"])
    out = Table(title=f"resnet-parity check --mutants: {'x'.join(map(str, spec.depths))} ({spec.style}), "
                      f"{table['device']}, batch {table['batch']} x {table['size']}px")
    for col in ("broken port", "framework", *combos):
        out.add_column(col)
    cells = {(c.mutant, c.target, f"{c.mode} {c.precision}"): c for c in [*table["baseline"], *table["cells"]]}
    for name in ["(none)", *mutants.CATALOGUE]:
        for target in table["targets"]:
            row = [cells.get((name, target, k)) for k in combos]
            if not any(row):
                continue
            if name == "(none)":
                texts = ["[green]pass[/]" if c.status == "pass" else f"[bold red]{c.status}[/]" for c in row]
            else:
                texts = [styles[c.outcome] for c in row]
            out.add_row(name if name == "(none)" else f"{name}: {mutants.CATALOGUE[name].what}", escape(target), *texts)
    console.print(out)
    bad = [c for c in table["cells"] if c.outcome not in ("caught", "passes")]
    bad += [c for c in table["baseline"] if c.status != "pass"]
    for c in bad:
        console.print(f"[red]{c.mutant} {c.target} {c.mode} {c.precision}: {c.status} {c.detail}[/]")
    caught = sum(c.outcome == "caught" for c in table["cells"])
    applicable = sum(c.applies for c in table["cells"])
    console.print(f"caught {caught} of {applicable} applicable cells; "
                  f"{sum(c.outcome == 'passes' for c in table['cells'])} cells where the port changes nothing pass")
    if json_path:
        write_json(json_path, {**table, "cells": [dataclasses.asdict(c) | {"outcome": c.outcome} for c in table["cells"]],
                                "baseline": [dataclasses.asdict(c) for c in table["baseline"]]})
    return 0 if not bad else 1


def cmd_info(args) -> int:
    from rich.console import Console
    from rich.table import Table

    preset = S.PRESETS[args.arch]
    spec = preset.spec(args.style)
    table = Table(title=f"{args.arch} ({spec.style})")
    table.add_column("fact")
    table.add_column("value", justify="right")
    table.add_row("peer", preset.peer)
    table.add_row("block / groups / width per group", f"{spec.block} / {spec.groups} / {spec.width_per_group}")
    table.add_row("stage depths", str(spec.depths))
    table.add_row("stride on / in block", f"{spec.stride_on} / {spec.stride_block}")
    table.add_row("conv bias / BN epsilon / BN momentum (torch meaning)",
                  f"{spec.conv_bias} / {spec.bn_epsilon} / {spec.bn_momentum}")
    table.add_row("learnable parameters", f"{spec.num_params():,}")
    table.add_row("with BatchNorm statistics", f"{spec.num_params(True):,}")
    table.add_row("published (peer's count)", f"{preset.params:,}" if spec.style == preset.styles[0] else "-")
    table.add_row(f"output shape at {args.size}px", str(spec.output_shape(args.size)))
    table.add_row("layers", str(len(spec.layers())))
    Console().print(table)
    return 0


def cmd_verify(args) -> int:
    from shared.tools import verify

    try:
        return verify.cli(args)
    except verify.VerifyError as e:
        raise CliError(str(e)) from None


def cmd_convert(args) -> int:
    """Any supported checkpoint -> any other (canonical safetensors by default, spec in its metadata)."""
    from shared.tools import convert

    spec, weights = read_weights(args.source, args.style)
    try:
        fmt = convert.write(spec, weights, args.dest, format=args.format)
    except (convert.FrameworkMissing, FileExistsError) as e:
        raise CliError(str(e)) from None
    print(f"wrote {args.dest} ({fmt}, {spec.style} style, {spec.num_params():,} parameters)")
    return 0


def cmd_export(args) -> int:
    """A preset (random weights, ``--seed``) or a checkpoint -> an ONNX file built from the spec."""
    from shared import fold, onnx_export, weights as W

    if args.source in S.ARCHS:
        spec = S.preset(args.source, args.style)
        weights = W.init(spec, seed=args.seed)
        what = f"{args.source} with random weights (seed {args.seed})"
    else:
        spec, weights = read_weights(args.source, args.style)
        what = args.source
    if args.int8:
        return export_int8(args, spec, weights, what)
    if args.fold and not spec.folded:
        spec, weights = fold.fold_batchnorm(spec, weights)
    try:
        path = onnx_export.to_onnx(spec, weights, args.dest, layout=args.layout, opset=args.opset,
                                   image_size=args.image_size)
    except (ImportError, OSError) as e:
        raise CliError(str(e)) from None
    print(f"wrote {path} from {what}: {spec.style} style{', BatchNorm folded' if spec.folded else ''}, "
          f"{args.layout}, dynamic batch")
    return 0


def export_int8(args, spec, weights, what: str) -> int:
    """``export --int8``: the spec's model quantized by the onnx-int8 adapter, written atomically."""
    import numpy as np

    from shared.tools.adapter import installed, load

    if args.layout != "NCHW" or args.opset is not None:
        raise CliError("--int8: the quantized model is NCHW at the default opset; drop --layout/--opset")
    if not installed("onnx-int8"):
        raise CliError("--int8 needs onnx and onnxruntime: pip install 'resnet-parity[onnx]'")
    size = args.image_size or 224
    images = None
    if args.calibration:
        try:
            images = np.load(args.calibration, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CliError(f"--calibration: cannot read {args.calibration} as a .npy array ({e})") from None
    int8 = load("onnx-int8")
    _, _, model = int8.build(spec, weights, size, images)
    path = int8.write(model, args.dest)
    source = f"{len(images)} images from {args.calibration}" if images is not None else (
        f"{int8.CALIBRATION_IMAGES} seeded images")
    print(f"wrote {path} from {what}: int8 QDQ (per-channel weights), BatchNorm folded, NCHW {size}x{size}, "
          f"calibrated on {source}")
    return 0


def add_export_parser(sub) -> None:
    export = sub.add_parser("export", help="export a preset or checkpoint as an ONNX model built from the spec")
    export.add_argument("source", metavar="ARCH_OR_WEIGHTS",
                        help=f"one of {', '.join(S.ARCHS)} (random weights), or a .safetensors/.pth/.h5 checkpoint")
    export.add_argument("dest", help="the .onnx file to write")
    export.add_argument("--format", choices=("onnx",), default="onnx")
    export.add_argument("--fold", action="store_true", help="fold every BatchNorm into the conv before it")
    export.add_argument("--style", choices=S.STYLES, default=None)
    export.add_argument("--layout", choices=("NCHW", "NHWC"), default="NCHW")
    export.add_argument("--opset", type=int, default=None)
    export.add_argument("--image-size", type=int, default=None, help="fix height and width (default: dynamic)")
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--int8", action="store_true",
                        help="static int8 (onnxruntime QDQ, per-channel weights, BatchNorm folded), NCHW at "
                             "--image-size (default 224), calibrated on --calibration or seeded images")
    export.add_argument("--calibration", metavar="IMAGES.npy",
                        help="with --int8: NHWC float32 images (N, size, size, C), preprocessed as the model's inputs")
    export.set_defaults(func=cmd_export)


def cmd_predict(args) -> int:
    """Images -> each framework's top-k and the largest probability difference (shared.tools.predict)."""
    from shared.tools import predict

    return predict.cli(args, read_weights)


def add_predict_parser(sub) -> None:
    from shared.tools.options import positive

    predict = sub.add_parser("predict", help="classify photos in every framework: top-k side by side, and the "
                                             "largest probability difference against its budget")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...: anything Pillow reads)")
    predict.add_argument("--weights", required=True, metavar="NAME|FILE",
                         help="a shared.hub name (its preprocessing is known) or a checkpoint file (needs --style)")
    predict.add_argument("--style", choices=S.STYLES, default=None,
                         help="the preprocessing (and conventions of a weights-only file) instead of the name's")
    predict.add_argument("--frameworks", type=csv_choices(FRAMEWORKS + QUANTIZED + RUNTIMES, precisions=("fp32",)),
                         default=list(FRAMEWORKS), help=f"default: {','.join(FRAMEWORKS)}; {', '.join(QUANTIZED)} "
                                                        f"(int8) and {', '.join(RUNTIMES)} only when named")
    predict.add_argument("--top", type=positive, default=5)
    predict.add_argument("--json", help="write every label, probability and budget to this file")
    predict.set_defaults(func=cmd_predict)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="resnet-parity", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="prove the frameworks compute the same function (default job)")
    check.add_argument("--arch", choices=S.ARCHS, default=None)
    check.add_argument("--style", choices=S.STYLES, default=None)
    check.add_argument("--frameworks", type=csv_choices(FRAMEWORKS + QUANTIZED + RUNTIMES, PRECISIONS),
                       default=list(FRAMEWORKS),
                       help=f"default: {','.join(FRAMEWORKS)}; {', '.join(QUANTIZED)} (int8) and "
                            f"{', '.join(RUNTIMES)} only when named")
    check.add_argument("--keras-backends", type=csv_choices(KERAS_BACKENDS), default=list(KERAS_BACKENDS))
    check.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    check.add_argument("--precision", choices=PRECISIONS, default="fp32")
    check.add_argument("--weights", help="a checkpoint: .safetensors (canonical or torchvision keys), torchvision "
                       ".pth/.pt, Keras .h5, .weights.h5 or .keras, an Orbax checkpoint directory, or a "
                       "shared.hub name (torchvision/resnet50.IMAGENET1K_V2)")
    check.add_argument("--batch", type=int, default=None, help="default 4 (fit: 8)")
    check.add_argument("--size", type=int, default=None, help="default 96 (fit: 32)")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--mode", choices=("eval", "train", "fit"), default="eval",
                       help="fit: train a recipe's updates in every framework, judged against the float64 trajectory")
    check.add_argument("--recipe", default=None,
                       help="with --mode fit: a shared.recipe preset, or the check's own: check (the default), "
                            "check-flax-imagenet, check-adamw; with --mutants a comma list (default: those three)")
    check.add_argument("--steps", type=int, default=None, help="with --mode fit: updates (default 8)")
    check.add_argument("--plot", default=None, metavar="FILE.png", help="with --mode fit: loss and error per update")
    check.add_argument("--replicas", type=int, default=None, metavar="N",
                       help="with --mode train: one data-parallel step on each framework's own engine over N CPU replicas")
    check.add_argument("--trace", action="store_true", help="compare every block; name the first that leaves its budget")
    check.add_argument("--fold", action="store_true",
                       help="run every target with BatchNorm folded into the convs, judged against the unfolded reference")
    check.add_argument("--json", help="write every figure to this file")
    check.add_argument("--depths", type=depths, default=None,
                       help="blocks per stage instead of the arch's (e.g. 1,1 for a quick mutant table)")
    check.add_argument("--width", type=int, default=None, help="stem width instead of 64")
    check.add_argument("--mutant", choices=list(mutants.CATALOGUE), default=None,
                       help="inject one broken port (shared.mutants) into every framework: the check must fail")
    check.add_argument("--mutants", action="store_true",
                       help="the catch table: every broken port x framework x eval/train x --mutant-precisions; "
                            "with --mode fit: every training port (shared.recipe_mutants) that applies x framework x recipe")
    check.add_argument("--markdown", default=None, metavar="FILE.md",
                       help="with --mode fit --mutants: write the catch table as a results page")
    check.add_argument("--mutant-precisions", type=csv_choices(PRECISIONS), default=["fp32", "bf16"])
    check.add_argument("--override", action="append", metavar="FRAMEWORK:FIELD=VALUE",
                       help="build one framework from a changed spec (proves a broken port is caught)")
    check.set_defaults(func=cmd_check)

    verify = sub.add_parser("verify", help="judge anyone's ResNet port against the float64 reference and name "
                                           "the convention it broke (torch, Keras, Flax NNX, ONNX; docs/verify.md)")
    verify.add_argument("port", help="FILE.py:NAME or package.module:NAME, optionally NAME(k=v,...) with literals; "
                                     "or a .onnx file")
    verify.add_argument("--arch", choices=S.ARCHS, default=None, help="default: inferred from the port's shapes")
    verify.add_argument("--style", choices=S.STYLES, default=None)
    verify.add_argument("--layout", choices=("NCHW", "NHWC"), default=None, help="default: the framework's (torch, ONNX NCHW; Keras, Flax NHWC)")
    verify.add_argument("--size", type=int, default=64)
    verify.add_argument("--batch", type=int, default=2)
    verify.add_argument("--seed", type=int, default=0)
    verify.add_argument("--json", default=None, help="write the verdict, mapping and diagnosis here")
    verify.add_argument("--trace", action="store_true", help="name the first block out of budget")
    verify.add_argument("--runtime", choices=("onnxruntime", "openvino"), default="onnxruntime",
                        help="what runs an .onnx PORT (an OpenVINO IR .xml runs on OpenVINO)")
    verify.add_argument("--plot", default=None, metavar="FILE.png",
                        help="with --trace: each traced activation's error against its budget, stem to head")
    verify.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16 (torch ports): CPU autocast, judged against the emulated-bf16 reference")
    verify.add_argument("--mode", choices=("eval", "train"), default="eval",
                        help="train (torch, Flax ports): batch-statistics logits, running statistics, gradients")
    verify.set_defaults(func=cmd_verify)

    info = sub.add_parser("info", help="facts of a preset: parameters, conventions, output shape")
    info.add_argument("--arch", choices=S.ARCHS, default="resnet50")
    info.add_argument("--style", choices=S.STYLES, default=None, help="default: the architecture's first style")
    info.add_argument("--size", type=int, default=224)
    info.set_defaults(func=cmd_info)

    from shared.formats import FORMATS

    convert = sub.add_parser("convert", help="convert between checkpoint formats (.safetensors, .pth, .h5, "
                                             ".weights.h5, .keras, Orbax directory)")
    convert.add_argument("source", help="a checkpoint file or directory, or a shared.hub name")
    convert.add_argument("dest", help="by type: .safetensors (canonical), .pth/.pt, .h5 (Keras Applications), "
                                      ".weights.h5, .keras; no suffix: an Orbax checkpoint directory")
    convert.add_argument("--format", choices=FORMATS, default=None,
                         help="write this format whatever dest's type says (torchvision-safetensors: "
                              "torchvision's keys in a .safetensors file)")
    convert.add_argument("--style", choices=S.STYLES, default=None,
                         help="conventions for a weights-only file without a stored spec")
    convert.set_defaults(func=cmd_convert)

    bench.add_parser(sub)
    add_export_parser(sub)
    add_predict_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "check":
        args.arch_given, args.style_given = args.arch is not None, args.style is not None
        args.arch = args.arch or "resnet50"
        args.style = args.style or S.PRESETS[args.arch].styles[0]
        fit = args.mode == "fit"
        args.batch = (8 if fit else 4) if args.batch is None else args.batch
        args.size = (32 if fit else 96) if args.size is None else args.size
        if args.batch < 1 or args.size < 1:
            parser.error("--batch and --size must be >= 1")
    try:
        return args.func(args)
    except (CliError, ValueError, FileNotFoundError) as e:
        print(f"resnet-parity {args.command}: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
