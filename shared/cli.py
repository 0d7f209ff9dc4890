"""The ``resnet-parity`` command line: ``check`` (the parity suite), ``bench``, ``convert``, ``info``.

Frameworks are imported only inside the commands that need them, by name, so ``resnet-parity``
runs with any subset installed. Bad input ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared import spec as S
from shared.weights import WeightsError


class CliError(Exception):
    """A one-line error for the user (exit code 2, no traceback)."""


class Parser(argparse.ArgumentParser):
    """Usage errors in one line (``--help`` has the usage), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _csv(choices):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(map(repr, bad))}; expected some of {', '.join(choices)}")
        return items

    return parse


def read_weights(path: str, style: str | None):
    """(spec, canonical weights) from safetensors, a torchvision .pth/.pt, or a Keras .h5, given
    by path or by a ``shared.hub`` name (fetched into the cache)."""
    from shared import interop, weights as W

    p = Path(path)
    if not p.is_file():
        p = _fetch(path) or p
    if not p.is_file():
        raise CliError(f"--weights: no such file {path}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".safetensors":
            weights = W.load(p)  # a truncated or foreign file fails here, by name
            spec = W.read_spec(p)
            if spec is None:
                spec = interop.spec_from_canonical(weights, style=style)  # None: read off the conv biases
            W.validate(spec, weights, source=str(p))
            return spec, weights
        if suffix in (".pth", ".pt"):
            try:
                import torch
            except ImportError:
                raise CliError(f"--weights: reading {p.name} needs torch (pip install 'resnet-parity[torch]')") from None
            try:
                state = torch.load(p, map_location="cpu", weights_only=True)
            except Exception as e:
                raise CliError(f"--weights: {p.name} is not a readable torch checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from None
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            return interop.from_torchvision(state)
        if suffix in (".h5", ".hdf5"):
            return interop.from_keras_applications(str(p))
    except WeightsError as e:
        raise CliError(f"--weights: {str(e).splitlines()[0]} {' '.join(str(e).splitlines()[1:3]).strip()}".strip()) from None
    raise CliError(f"--weights: unknown file type {suffix!r}; expected .safetensors, .pth/.pt or .h5")


def _fetch(name: str) -> Path | None:
    """The cached file of a registered name; None for a string that is no name (a missing path)."""
    from shared import hub

    if not hub.is_registered(name):
        if "/" in name and Path(name).suffix.lower() not in (".safetensors", ".pth", ".pt", ".h5", ".hdf5"):
            hub.entry(name)  # a ValueError naming close matches
        return None
    try:
        return hub.fetch(name)
    except hub.HubError as e:
        raise CliError(str(e)) from None


def _fmt(x, spec=".2e"):
    return "-" if x is None else format(x, spec)


def print_check(report, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    cfg = report.config
    spec = S.ResNetSpec.from_dict(cfg["spec"])
    title = (f"resnet-parity check: {'x'.join(map(str, spec.depths))} ({spec.style}), {cfg['device']}, "
             f"{cfg['precision']}, {cfg['mode']} mode, batch {cfg['batch']} x {cfg['size']}px, seed {cfg['seed']}")
    table = Table(title=title)
    train = cfg["mode"] == "train"
    columns = ["framework", "backend", "device", "precision", "rel vs float64", "max abs", "top-1", "budget"]
    columns += ["running stats rel", "variance rule", "loss"] if train else []
    for col in columns + ["result"]:
        table.add_column(col, justify="left" if col in ("framework", "backend", "result") else "right")
    for r in report.rows:
        result = {"pass": "[green]pass[/]", "FAIL": "[bold red]FAIL[/]", "error": "[red]error[/]",
                  "not installed": "[dim]not installed[/]"}[r.status]
        if r.first_diverging:
            result += f" (first diverging: {r.first_diverging})"
        if r.detail:
            result += f" {escape(r.detail)}"
        top1 = f"{r.top1[0]}/{r.top1[1]}" if r.top1 else "-"
        framework, _, backend = r.target.rstrip("]").partition("[")
        cells = [framework, backend or "-", cfg["device"], cfg["precision"], _fmt(r.rel), _fmt(r.max_abs), top1,
                 _fmt(r.budget)]
        if train:
            cells += [_fmt(r.extra.get("running_stats_rel")), r.extra.get("variance_convention", "-"),
                      _fmt(r.extra.get("loss"), ".6f")]
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
    console.print("[bold green]all checks passed[/]" if report.ok else "[bold red]parity check failed[/]")


def cmd_check(args) -> int:
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from shared import check, reference

    console = Console(width=None if sys.stdout.isatty() else 150)
    if args.weights:
        spec, weights = read_weights(args.weights, args.style if args.style_given else None)
        if args.arch_given or args.style_given:
            console.print("[yellow]--arch/--style ignored: the spec comes from --weights[/]")
    else:
        spec = S.preset(args.arch, args.style)
        weights = reference.calibrated_weights(spec, seed=args.seed, size=args.size)
    overrides = {}
    for item in args.override or []:
        fw, _, assignment = item.partition(":")
        field, _, value = assignment.partition("=")
        if fw not in check.FRAMEWORKS or not field:
            raise CliError(f"--override: expected FRAMEWORK:FIELD=VALUE, got {item!r}")
        overrides.setdefault(fw, {})[field] = _literal(value)
        S.ResNetSpec.from_dict({**spec.to_dict(), **overrides[fw]})  # a bad override fails here, not in a worker
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task("float64 reference")

        def step(label):
            progress.update(task, description=f"building and running {label}")

        report = check.check(spec, weights, frameworks=args.frameworks, keras_backends=args.keras_backends,
                             device=args.device, precision=args.precision, mode=args.mode, batch=args.batch,
                             size=args.size, seed=args.seed, trace=args.trace, overrides=overrides, progress=step)
    print_check(report, console)
    if args.trace:
        for r in report.rows:
            if r.extra.get("trace") and r.first_diverging:
                t = r.extra["trace"][r.first_diverging]
                console.print(f"{r.target}: first leaves its budget at {r.first_diverging} "
                              f"(rel {t['rel']:.2e} > {t['budget']:.2e})")
    if args.json:
        _write_json(args.json, report.to_json())
    return 0 if report.ok else 1


def _literal(text: str):
    """A JSON value (``1e-3``, ``true``, ``[1, 2]``), else the text itself (``1x1``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _write_json(path: str, data: dict) -> None:
    import os
    import tempfile

    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, target)


def cmd_info(args) -> int:
    from rich.console import Console
    from rich.table import Table

    spec = S.preset(args.arch, args.style)
    table = Table(title=f"{args.arch} ({args.style})")
    table.add_column("fact")
    table.add_column("value", justify="right")
    table.add_row("stage depths", str(spec.depths))
    table.add_row("stride on", spec.stride_on)
    table.add_row("conv bias / BN epsilon / BN momentum (torch meaning)",
                  f"{spec.conv_bias} / {spec.bn_epsilon} / {spec.bn_momentum}")
    table.add_row("learnable parameters", f"{spec.num_params():,}")
    table.add_row("with BatchNorm statistics", f"{spec.num_params(True):,}")
    table.add_row(f"output shape at {args.size}px", str(spec.output_shape(args.size)))
    table.add_row("layers", str(len(spec.layers())))
    Console().print(table)
    return 0


def cmd_convert(args) -> int:
    """Any supported checkpoint -> canonical safetensors (spec in its metadata), or back."""
    from shared import interop, weights as W

    spec, weights = read_weights(args.source, args.style)
    out = Path(args.dest)
    suffix = out.suffix.lower()
    if suffix == ".safetensors":
        W.save(weights, out, spec=spec)
    elif suffix in (".h5", ".hdf5"):
        interop.to_keras_applications_h5(spec, weights, out)
    elif suffix in (".pth", ".pt"):
        import torch

        from shared.weights import atomic_path

        with atomic_path(out) as tmp:
            torch.save({k: torch.from_numpy(v) for k, v in interop.to_torchvision(spec, weights).items()}, tmp)
    else:
        raise CliError(f"convert: unknown output type {suffix!r}; expected .safetensors, .pth/.pt or .h5")
    print(f"wrote {out} ({spec.style} style, {spec.num_params():,} parameters)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from shared.check import FRAMEWORKS, KERAS_BACKENDS

    parser = Parser(prog="resnet-parity", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="prove the frameworks compute the same function (default job)")
    check.add_argument("--arch", choices=S.ARCHS, default=None)
    check.add_argument("--style", choices=S.STYLES, default=None)
    check.add_argument("--frameworks", type=_csv(FRAMEWORKS), default=list(FRAMEWORKS))
    check.add_argument("--keras-backends", type=_csv(KERAS_BACKENDS), default=list(KERAS_BACKENDS))
    check.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    check.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32")
    check.add_argument("--weights", help="canonical .safetensors, torchvision .pth/.pt, Keras Applications .h5, "
                                         "or a shared.hub name (torchvision/resnet50.IMAGENET1K_V2)")
    check.add_argument("--batch", type=int, default=4)
    check.add_argument("--size", type=int, default=96)
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--mode", choices=("eval", "train"), default="eval")
    check.add_argument("--trace", action="store_true", help="compare every block; name the first that leaves its budget")
    check.add_argument("--json", help="write every figure to this file")
    check.add_argument("--override", action="append", metavar="FRAMEWORK:FIELD=VALUE",
                       help="build one framework from a changed spec (proves a broken port is caught)")
    check.set_defaults(func=cmd_check)

    info = sub.add_parser("info", help="facts of a preset: parameters, conventions, output shape")
    info.add_argument("--arch", choices=S.ARCHS, default="resnet50")
    info.add_argument("--style", choices=S.STYLES, default="torchvision")
    info.add_argument("--size", type=int, default=224)
    info.set_defaults(func=cmd_info)

    convert = sub.add_parser("convert", help="convert between .safetensors, torchvision .pth and Keras .h5")
    convert.add_argument("source", help="a checkpoint file or a shared.hub name")
    convert.add_argument("dest")
    convert.add_argument("--style", choices=S.STYLES, default=None,
                         help="conventions for a .safetensors file without a stored spec")
    convert.set_defaults(func=cmd_convert)

    from shared import bench

    bench.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "check":
        args.arch_given, args.style_given = args.arch is not None, args.style is not None
        args.arch, args.style = args.arch or "resnet50", args.style or "torchvision"
        if args.batch < 1 or args.size < 1:
            parser.error("--batch and --size must be >= 1")
    try:
        return args.func(args)
    except (CliError, ValueError, FileNotFoundError) as e:
        print(f"resnet-parity {args.command}: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
