"""``resnet-parity check --mode train --replicas N``: one data-parallel SGD step on each
framework's own engine, judged against the float64 oracle of ``shared.reference_dp``.

Every engine runs in its own process group from the same canonical weights and global batch.
Its loss, gradients, running statistics (every replica's copy where the engine keeps one per
replica) and updated weights are compared with the oracle under both BatchNorm semantics,
global and per-replica statistics. The semantics whose every figure is within budget is the one
the engine *measured*; it must be the one the engine *promises* (its documentation, ``ENGINES``),
else the engine fails. An engine that matches neither fails too.

Budgets follow the design's rule, ``parity.fp32_budget``: 4x the largest error among the
legitimate fp32 peers on the same weights and batch, per quantity and per semantics (floor
``parity.FP32_FLOOR``). The peers are the oracle's own arithmetic in float32
(``dp_step(dtype=np.float32)``) with BatchNorm's batch variance computed two ways, both correct:
two-pass, ``mean((x - mean)^2)`` (numpy's ``x.var()``), and one-pass,
``E[x^2] - E[x]^2`` from an all-reduced sum and sum of squares (a synchronized BatchNorm:
TF's MirroredStrategy ``synchronized=True``). The one-pass peer cancels: measured on
ResNet-50 (96 px, batch 4, 2 replicas, global statistics) its float32 error is 3.4x the
two-pass one's in the logits, 2.9x in the gradients, 3.5x in the running statistics, so a
budget from the two-pass peer alone is one a correct synchronized BatchNorm need not meet.

The loss is a scalar, and a scalar's error in one peer is one random draw: to first order it
is ``<dL/dz, dz>``, the projection of the peer's logits error ``dz`` on the loss gradient,
which cancellation can make arbitrarily small (measured: ResNet-50, 96 px, 1.8e-6 for the
two-pass peer against 1.3e-5 for the one-pass one). Its budget is therefore derived from the
logits, a vector whose error is not a single draw (``loss_error_scale``). That bound is wide
(ResNet-50 above: 3.1e-3, where the two semantics' losses differ by 4.5e-3), so on deep
networks the loss alone barely tells the semantics apart; the gradients and running
statistics do (there 5x and 600x their budgets; on the tests' tiny spec over 1000x).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from shared import backprop, parity, reference, reference_dp
from shared import weights as W
from shared.spec import ResNetSpec
from shared.tools.adapter import installed
from shared.tools.jobs import Job, environment, launch, random_labels, read_result, stage, write_json

LR, MOMENTUM = 0.1, 0.9


@dataclasses.dataclass(frozen=True)
class Engine:
    name: str
    framework: str  # which package runs it; also the --frameworks filter
    module: str
    requires: tuple[str, ...]  # import names
    bn: str  # promised BatchNorm statistics: "global" or "per_replica"
    variance: str  # running-variance rule: torch "unbiased", Keras and Flax "biased"
    kept: str  # whose running statistics the engine keeps, as documented
    options: dict = dataclasses.field(default_factory=dict)
    env: dict = dataclasses.field(default_factory=dict)
    virtual_devices: bool = False  # XLA_FLAGS=--xla_force_host_platform_device_count=N
    gpu_only: str = ""  # an error message that means "this engine needs a GPU"


ENGINES = (
    Engine("torch DDP (gloo)", "torch", "shared.tools.adapters.torch_dp", ("torch",), "per_replica", "unbiased",
           "each rank its own, until the next forward broadcasts rank 0's"),
    Engine("torch DDP + SyncBatchNorm", "torch", "shared.tools.adapters.torch_dp", ("torch",), "global", "unbiased",
           "global", options={"sync_bn": True}, gpu_only="only work with GPU modules"),
    Engine("flax nnx.jit + NamedSharding", "flax", "shared.tools.adapters.flax_dp", ("jax", "flax", "optax"), "global",
           "biased", "global (replicated)", virtual_devices=True),
    Engine("keras[jax] DataParallel", "keras", "shared.tools.adapters.keras_dp", ("keras", "jax"), "global", "biased",
           "global (replicated)", env={"KERAS_BACKEND": "jax"}, virtual_devices=True),
    Engine("keras[tensorflow] MirroredStrategy", "keras", "shared.tools.adapters.keras_dp", ("keras", "tensorflow"),
           "per_replica", "biased", "each replica its own", env={"KERAS_BACKEND": "tensorflow"}),
    Engine("keras[tensorflow] MirroredStrategy, synchronized BN", "keras", "shared.tools.adapters.keras_dp",
           ("keras", "tensorflow"), "global", "biased", "global", options={"sync_bn": True},
           env={"KERAS_BACKEND": "tensorflow"}),
)
QUANTITIES = ("loss", "gradients", "running stats", "weight update")


@dataclasses.dataclass
class DPRow:
    engine: str
    status: str  # "pass", "FAIL", "error", "not installed", "needs a GPU"
    promised: str = ""
    measured: str = ""
    kept: str = ""
    variance: str = ""
    errors: dict = dataclasses.field(default_factory=dict)  # semantics -> quantity -> rel error
    budgets: dict = dataclasses.field(default_factory=dict)  # semantics -> quantity -> budget
    replicas_differ: bool | None = None  # do the replicas' running statistics differ after the step?
    next_forward: str | None = None  # whose statistics every replica holds after one more forward
    shards: int | None = None
    detail: str = ""


@dataclasses.dataclass
class DPReport:
    config: dict
    rows: list[DPRow]
    versions: dict
    results: dict = dataclasses.field(default_factory=dict, repr=False)  # engine -> its arrays
    oracle: "Oracle | None" = dataclasses.field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return all(r.status in ("pass", "not installed", "needs a GPU") for r in self.rows) and any(
            r.status == "pass" for r in self.rows)

    def to_json(self) -> dict:
        return {"config": self.config, "ok": self.ok, "rows": [dataclasses.asdict(r) for r in self.rows],
                "versions": self.versions}


def check_replicas(replicas, batch: int) -> None:
    """ValueError for a replica count that cannot shard the batch."""
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"--replicas: expected an integer >= 1, got {replicas!r}")
    if replicas > batch:
        raise ValueError(f"--replicas: {replicas} replicas need at least {replicas} images, --batch is {batch}")
    if batch % replicas:
        raise ValueError(f"--replicas: a batch of {batch} images does not split into {replicas} equal shards")


def run_engine(engine: Engine, job: Job, workdir: Path, timeout: float) -> dict:
    """Run one engine's step in a worker of its own (killed with every process it started on a
    timeout); its arrays, or {"error": ...} with the error's last line (a rank's traceback ends there)."""
    stem = "".join(c if c.isalnum() else "-" for c in engine.name)
    job = dataclasses.replace(job, framework=engine.framework, engine=engine.module, options=engine.options,
                              out=str(workdir / f"{stem}.npz"))
    env = dict(engine.env)
    if engine.virtual_devices:
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
        env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={job.replicas}"])
    why = launch([job], workdir, environment(env=env), timeout)
    result = read_result(job.out)
    if result is None:
        return {"error": np.array(why or "the worker wrote nothing")}
    if "error" in result:
        kind, _, message = str(result["error"]).partition(": ")
        result["error"] = np.array(f"{kind}: {(message.strip().splitlines() or [''])[-1]}")
    return result


def _figures(res: dict, oracle: reference_dp.DPStep, weights: dict, replicas: int) -> dict[str, float]:
    keys = sorted(oracle.grads)
    figures = {}
    loss = float(np.mean(res["losses"])) if "losses" in res else float(res["loss"])
    figures["loss"] = abs(loss - oracle.loss) / abs(oracle.loss)
    figures["gradients"] = parity.rel_error(np.concatenate([res[f"grad/{k}"].ravel() for k in keys]),
                                            np.concatenate([oracle.grads[k].ravel() for k in keys]))
    step = np.concatenate([(res[f"weights/{k}"].astype(np.float64) - weights[k]).ravel() for k in keys])
    ref_step = np.concatenate([(oracle.updated[k] - weights[k]).ravel() for k in keys])
    figures["weight update"] = parity.rel_error(step, ref_step)
    stat_keys = sorted(oracle.running[0])
    ours, ref = [], []
    for r in range(replicas):
        prefix = "" if r == 0 else f"rank{r}/"
        if all(f"{prefix}stats/{k}" in res for k in stat_keys):
            ours += [res[f"{prefix}stats/{k}"].ravel() for k in stat_keys]
            ref += [oracle.running[r][k].ravel() for k in stat_keys]
    figures["running stats"] = parity.rel_error(np.concatenate(ours), np.concatenate(ref))
    return figures


def _peer_figures(peer: reference_dp.DPStep, oracle: reference_dp.DPStep, weights: dict) -> dict[str, float]:
    res = {"loss": np.array(peer.loss)}
    for k, g in peer.grads.items():
        res[f"grad/{k}"] = g
        res[f"weights/{k}"] = peer.updated[k]
    for r, running in enumerate(peer.running):
        res.update({f"{'' if r == 0 else f'rank{r}/'}stats/{k}": v.astype(np.float32) for k, v in running.items()})
    return _figures(res, oracle, weights, peer.replicas)


def loss_error_scale(peer: reference_dp.DPStep, oracle: reference_dp.DPStep, labels) -> float:
    """The relative loss error an implementation within the design's rule may show, per
    ``MARGIN``: ``fp32_budget`` of it is the loss budget.

    Every engine's loss is the mean softmax cross-entropy ``L(z)`` of the global batch's
    logits ``z`` (B rows; under either semantics the mean of the replicas' equal-shard means).
    An implementation whose logits are off by ``dz`` has, by Taylor's theorem,

        |L(z + dz) - L(z)| <= ||g||_2 ||dz||_2 + ||dz||_2^2 / (4 B),   g = dL/dz,

    (Cauchy-Schwarz on the first-order term ``<g, dz>``; the Hessian of L is block-diagonal
    with blocks ``(diag(p) - p p^T) / B``, whose eigenvalues lie in [0, 1 / (2B)]). The design
    allows logits off by up to ``MARGIN`` x the peer's, ``||dz|| <= MARGIN ||dz_peer||``, so

        |dL| / |L| <= MARGIN * (||g|| ||dz_peer|| + MARGIN ||dz_peer||^2 / (4 B)) / |L|,

    the bracket being what this returns (the largest with the peer's own loss error, which
    also carries the rounding of the loss itself). It needs no alignment of ``dz`` with ``g``:
    the bound holds whatever direction a legitimate port's rounding takes, on any machine."""
    z = np.asarray(oracle.logits, np.float64)
    dz = np.linalg.norm(np.asarray(peer.logits, np.float64) - z)
    _, g = backprop.cross_entropy(z, np.asarray(labels).astype(int))
    first = float(np.linalg.norm(g)) * dz + parity.MARGIN * dz * dz / (4 * len(z))
    return max(first, abs(peer.loss - oracle.loss)) / abs(oracle.loss)


def _replicas_differ(res: dict, replicas: int) -> bool | None:
    others = [k for k in res if k.startswith("rank1/stats/")]
    if replicas < 2 or not others:
        return None
    return any(not np.array_equal(res[k], res[k.split("/", 1)[1]]) for k in others)


def check_dp(spec: ResNetSpec, weights: dict, *, replicas: int, frameworks=("torch", "keras", "flax"),
             keras_backends=("tensorflow", "jax", "torch"), batch: int = 4, size: int = 64, seed: int = 0,
             timeout: float = 900.0, progress=None, engines=ENGINES) -> DPReport:
    W.validate(spec, weights)
    check_replicas(replicas, batch)
    if not spec.include_top:
        raise ValueError("--mode train: the loss needs the classifier; got a spec without include_top")
    images = reference.random_images(spec, batch, size, seed)
    labels = random_labels(spec, batch, seed)
    config = dict(spec=spec.to_dict(), mode="train", replicas=replicas, batch=batch, size=size, seed=seed,
                  lr=LR, momentum=MOMENTUM, device="cpu", frameworks=list(frameworks),
                  keras_backends=list(keras_backends))
    chosen = [e for e in engines if e.framework in frameworks
              and (e.framework != "keras" or e.env.get("KERAS_BACKEND") in keras_backends)]

    oracle = Oracle(spec, weights, images, labels, replicas, progress)
    rows, versions, results = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="resnet-parity-dp-") as tmp:
        workdir = Path(tmp)
        job = Job("data_parallel", "", spec.to_dict(), "", mode="train", replicas=replicas, lr=LR, momentum=MOMENTUM,
                  **stage(workdir, weights, images, labels))
        for engine in chosen:
            row = DPRow(engine.name, "", promised=engine.bn, kept=engine.kept, variance=engine.variance)
            rows.append(row)
            if not installed(*engine.requires):
                row.status = "not installed"
                row.detail = "needs " + ", ".join(engine.requires)
                continue
            if progress:
                progress(f"running {engine.name} on {replicas} replicas")
            res = run_engine(engine, job, workdir, timeout)
            if "error" in res:
                message = str(res["error"])
                gpu = bool(engine.gpu_only) and engine.gpu_only in message
                row.status, row.detail = ("needs a GPU" if gpu else "error"), message
                continue
            versions[engine.name] = json.loads(str(res["versions"]))
            results[engine.name] = res
            try:
                judge(row, engine, res, oracle)
            except KeyError as e:  # an engine that left out an array fails, naming it
                row.status, row.detail = "FAIL", f"the engine returned no {e.args[0]!r}"
    config["oracle_distance"] = oracle.distance()
    return DPReport(config, rows, versions, results, oracle)


def judge(row: DPRow, engine: Engine, res: dict, oracle: "Oracle") -> DPRow:
    """Compare one engine's arrays with the oracle under both semantics. Pass only when the
    measured semantics is the promised one."""
    replicas, w64 = oracle.replicas, oracle.w64
    row.shards = int(res["shards"]) if "shards" in res else None
    row.replicas_differ = _replicas_differ(res, replicas)
    nxt = [k for k in res if k.startswith("rank1/next/stats/")]
    if nxt:
        same = all(np.array_equal(res[f"rank{r}/next/stats/{k.split('/', 3)[3]}"], res[f"stats/{k.split('/', 3)[3]}"])
                   for r in range(1, replicas) for k in nxt)
        row.next_forward = "rank 0's on every rank" if same else "each rank its own"
    if "read_is_rank0" in res:
        row.kept += "; a read gives replica 0's" if bool(res["read_is_rank0"]) else ""
    matched = []
    for bn in reference_dp.BN_MODES:
        exact, budget = oracle(bn, engine.variance)
        errors = _figures(res, exact, w64, replicas)
        row.errors[bn], row.budgets[bn] = errors, budget
        if all(errors[q] <= budget[q] for q in QUANTITIES):
            matched.append(bn)
    row.measured = matched[0] if len(matched) == 1 else ("neither" if not matched else "both")
    if replicas == 1 and engine.bn in matched:
        row.measured = engine.bn  # one replica: the two semantics are the same step
    over = [f"{q} rel {row.errors[engine.bn][q]:.2e} > {row.budgets[engine.bn][q]:.2e}"
            for q in QUANTITIES if row.errors[engine.bn][q] > row.budgets[engine.bn][q]]
    if row.measured == engine.bn:
        row.status = "pass"
    else:
        row.status = "FAIL"
        row.detail = f"promises {engine.bn} statistics, measured {row.measured}" + (f": {'; '.join(over)}" if over else "")
    return row


class Oracle:
    """``oracle(bn, variance)`` -> (float64 ``DPStep``, budget per quantity), computed once each:
    the budget is ``parity.fp32_budget`` of the float32 peers' errors against the float64 oracle,
    one peer per ``backprop.VARIANCE_FORMULAS`` (module docstring); the loss's error is
    ``loss_error_scale``'s, derived from the peers' logits."""

    def __init__(self, spec, weights, images, labels, replicas, progress=None):
        self.spec, self.weights, self.images, self.labels = spec, weights, images, labels
        self.replicas, self.progress = replicas, progress
        self.w64 = {k: np.asarray(v, np.float64) for k, v in weights.items()}
        self.cache: dict = {}
        self.steps: dict = {}
        self.peers: dict = {}  # (bn, variance) -> variance formula -> quantity -> the peer's error

    def __call__(self, bn: str, variance: str):
        if (bn, variance) not in self.cache:
            if self.progress:
                self.progress(f"float64 oracle: {bn} statistics, {variance} variance")
            args = (self.spec, self.weights, self.images, self.labels, self.replicas, bn)
            runs = [(np.float64, "two_pass")] + [(np.float32, f) for f in backprop.VARIANCE_FORMULAS]
            for dtype, formula in runs:  # the running-variance rule changes no step: one each
                if (bn, dtype, formula) not in self.steps:
                    self.steps[bn, dtype, formula] = reference_dp.replica_steps(
                        *args, dtype=dtype, variance_formula=formula)
            exact = reference_dp.dp_step(*args, variance, LR, MOMENTUM, steps=self.steps[bn, np.float64, "two_pass"])
            peers = {}
            for formula in backprop.VARIANCE_FORMULAS:
                peer = reference_dp.dp_step(*args, variance, LR, MOMENTUM, dtype=np.float32,
                                            steps=self.steps[bn, np.float32, formula])
                peers[formula] = _peer_figures(peer, exact, self.w64)
                peers[formula]["loss"] = loss_error_scale(peer, exact, self.labels)
            self.peers[bn, variance] = peers
            budget = {q: parity.fp32_budget(*(p[q] for p in peers.values())) for q in QUANTITIES}
            self.cache[bn, variance] = exact, budget
        return self.cache[bn, variance]

    def distance(self) -> dict:
        """How far apart the two semantics are (the gradients' rel distance), per variance rule:
        what tells them apart, far above every budget."""
        out = {}
        for variance in reference.VARIANCES:
            if ("global", variance) in self.cache and ("per_replica", variance) in self.cache:
                a, b = self.cache["global", variance][0], self.cache["per_replica", variance][0]
                keys = sorted(a.grads)
                out[variance] = parity.rel_error(np.concatenate([b.grads[k].ravel() for k in keys]),
                                                 np.concatenate([a.grads[k].ravel() for k in keys]))
        return out


def print_report(report: DPReport, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    cfg = report.config
    spec = ResNetSpec.from_dict(cfg["spec"])
    table = Table(title=f"resnet-parity check: one data-parallel SGD step (lr {cfg['lr']}, momentum "
                        f"{cfg['momentum']}), {'x'.join(map(str, spec.depths))} ({spec.style}), "
                        f"{cfg['replicas']} CPU replicas, global batch {cfg['batch']} x {cfg['size']}px, "
                        f"seed {cfg['seed']}")
    for col in ("engine", "BN statistics promised", "measured", "running statistics kept",
                "replicas' running stats differ", "variance rule", *(f"{q} rel" for q in QUANTITIES), "result"):
        table.add_column(col, justify="right" if col.endswith("rel") else "left")
    for r in report.rows:
        result = {"pass": "[green]pass[/]", "FAIL": "[bold red]FAIL[/]", "error": "[red]error[/]",
                  "not installed": "[dim]not installed[/]", "needs a GPU": "[yellow]needs a GPU[/]"}[r.status]
        if r.detail:
            result += f" {escape(r.detail)}"
        semantics = r.measured if r.measured in reference_dp.BN_MODES else r.promised
        figures = [f"{r.errors[semantics][q]:.2e} (<= {r.budgets[semantics][q]:.1e})" if r.errors else "-"
                   for q in QUANTITIES]
        differ = "-" if r.replicas_differ is None else ("yes" if r.replicas_differ else "no")
        if r.next_forward:
            differ += f"; after the next forward: {r.next_forward}"
        table.add_row(escape(r.engine), r.promised, r.measured or "-", escape(r.kept), escape(differ), r.variance,
                      *figures, result)
    console.print(table)
    for variance, distance in cfg.get("oracle_distance", {}).items():
        console.print(f"global vs per-replica statistics ({variance} variance): the oracles' gradients "
                      f"differ by rel {distance:.2e}")
    if "keras" in cfg.get("frameworks", ()) and "torch" in cfg.get("keras_backends", ()):
        console.print("keras\\[torch]: not run; Keras has no data-parallel engine on the torch backend "
                      "(keras.distribution runs on jax, tf.distribute on tensorflow)")
    console.print("[bold green]all checks passed[/]" if report.ok else "[bold red]parity check failed[/]")


def check_args(args) -> None:
    """ValueError for flags ``--replicas`` cannot run with, before any weights are made."""
    if args.mode != "train":
        raise ValueError(f"--replicas: data-parallel checks run a training step; add --mode train (got --mode {args.mode})")
    unsupported = [flag for flag, used in (("--device gpu", args.device != "cpu"),
                                           (f"--precision {args.precision}", args.precision != "fp32"),
                                           ("--trace", args.trace), ("--override", bool(args.override))) if used]
    if unsupported:
        raise ValueError(f"--replicas: runs fp32 on CPU replicas only; not with {', '.join(unsupported)}")
    check_replicas(args.replicas, args.batch)


def cli(args, spec: ResNetSpec, weights: dict, console) -> int:
    """``check --mode train --replicas N`` (called by ``shared.tools.cli.cmd_check``)."""
    with console.status("data-parallel step") as status:
        report = check_dp(spec, weights, replicas=args.replicas, frameworks=args.frameworks,
                          keras_backends=args.keras_backends, batch=args.batch, size=args.size, seed=args.seed,
                          progress=status.update)
    print_report(report, console)
    if args.json:
        write_json(args.json, report.to_json())
    return 0 if report.ok else 1
