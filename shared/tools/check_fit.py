"""``resnet-parity check --mode fit``: every installed framework (every Keras backend) trains
the same recipe from the same weights on the same seeded batches, each with its own optimizer
(``optimizer(recipe, model)``) and train step, and every update is judged against the float64
trajectory of ``shared.trajectory``.

Judged, after each update ``t``: every learnable weight and every running statistic (the
framework's variance rule), tensor by tensor, and the loss of the update; at the end also the
eval-mode logits on held-out images. Budgets, per quantity and per update, follow the project's
rule (``parity.fp32_budget``: 4x a float32 peer's error, floor 1e-6) with the peer measured in
the same run: the oracle's own arithmetic in float32 along its own trajectory
(``trajectory.lockstep``), against the float64 trajectory that takes the peer's ReLU decisions
(a pre-activation within rounding of 0 rounded the other way moves a small network's weights
by 100x the rounding error at once: the budget is the rounding carried along the trajectory,
not the ties the peer met). The loss budget is derived from the peer's logits error at that
update (``loss_error_scale``'s bound: a scalar's own error is one random draw).

A framework whose weights leave their budget at update ``s`` may have taken a ReLU tie the
other way at an earlier update: the float64 trajectory with each of the nearest ties of the
three updates before ``s`` flipped (``backprop.relu_ties``: within 4x the peer's largest error
in its layer of 0; the 4 nearest of each update, then all of them) is recomputed from there,
and the nearest that brings update ``s`` within budget becomes the oracle from then on (at most
``MAX_FLIPS`` times). Else the framework fails, and ``--trace`` names the update and the weight.

Adam ties (AdamW recipes). Adam's step ``m_hat / (sqrt(v_hat) + eps)`` normalizes each element
by its own history, so a gradient element within rounding of 0 steps by up to the whole rate
either way: float32 arithmetic does not decide it (a reversed batch put an element 4.3x epsilon
from 0 on the other side in Keras and Flax: 1.9x the budget at once). The rule, per update and
tensor: the gradient window is ``MARGIN`` x the float32 peer's largest gradient error in the
tensor (``Oracle.grad_window``, the layer-wide window of the ReLU rule); an element is a tie
where the recipe's update over its window (the rest of the optimizer state as the float64
trajectory has it) spreads by more than the peer's own error in the tensor (a ``MARGIN``-th of
its budget, times the tensor's norm); a gradient of exactly 0 (zero padding, a dead unit) has
no rounding and is no tie. The port took a tie the other way where its own weight change,
through the recipe's update, differs from the oracle's by more than that spread. Of those, the
``trajectory.FOLLOWED`` (4) nearest to 0 (``|g| / window``) at each update are followed: the
float64 oracle takes the gradient in the window whose update is nearest the port's (Adam's step
is a known function of the gradient given ``m`` and ``v``), and carries it through ``m`` and
``v`` from then on (``trajectory.Follow``, ``Oracle.follows``). Every other element is judged as
it is: a port whose update at a tie no gradient in the window explains keeps the difference
(Adam's first step is below the rate in magnitude), and a port that moves many ties (Keras'
epsilon inside the bias correction moves some 70 at update 1, and every small gradient besides)
is judged on all but 4 of them. An update at rate 0 (a warmup from 0) moves no weight, so it
shows nothing of the port's gradient, yet ``m`` and ``v`` take it in: at the next update a
tie's window covers that gradient too, and the oracle takes the pair whose step is the port's
(of the exact ones, the nearest the float64 gradients). The float32 peer's own Adam ties are
taken by its float64 shadow, as its ReLU decisions are, so they do not set the budgets
(``trajectory.lockstep``).
SGD has no such ties: its update is linear in the gradient. ``--json`` lists, per framework and
update, the ties there, how many the port took the other way and the elements followed
(``FitRow.adam_ties``); the oracle's ``peer_adam_ties`` the peer's.

``--mutants``: every broken training port of ``shared.recipe_mutants`` that applies to each
recipe of ``--recipe`` (a comma list; default the check's own three, ``CHECK_RECIPES``), the
unbroken and the harmless ones, in every target; ``--json``, ``--markdown`` (``catch_table``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import tempfile
from pathlib import Path

import numpy as np

from shared import backprop, parity, recipe_mutants, reference, trajectory as T
from shared import weights as W
from shared.recipe import Recipe
from shared.spec import ResNetSpec
from shared.tools.adapter import VARIANCE
from shared.tools.check import TIE_PAIRS, run_jobs, targets
from shared.tools.jobs import Job

DEFAULT_STEPS = 8
# The default recipe: torchvision's newer recipe's conventions (momentum 0.9, coupled weight
# decay with no decay on BatchNorm, a warmup from 1% into a cosine, label smoothing 0.1) at the
# size of a check: a rate a batch of 8 trains stably with, and a weight decay large enough that
# its form shows within a few updates.
TIE_NEAREST, TIE_BACK, MAX_FLIPS = 4, 3, 4
ENGINES = {"torch": "shared.tools.adapters.torch_fit", "keras": "shared.tools.adapters.keras_fit",
           "flax": "shared.tools.adapters.flax_fit"}


def check_recipe(steps: int = DEFAULT_STEPS) -> Recipe:
    from shared.recipe import TORCHVISION_NEW

    return TORCHVISION_NEW.window(steps).replace(
        name=f"torchvision-new conventions, check size ({steps} updates)", lr=0.02, weight_decay=5e-3, batch_size=8)


# The check's own recipes, each a published recipe's conventions at the size of a check (rates
# a batch of 8 trains stably with, decays large enough that their form shows within a few
# updates): ``check`` (the default: torchvision-new's), ``check-flax-imagenet`` (the Flax
# example's: nesterov, decay on kernels only, warmup from 0, BatchNorm momentum 0.1), and
# ``check-adamw`` (the default with torch's AdamW in place of SGD, at ConvNeXt's decoupled decay
# 0.05: epsilon 1e-8 outside the bias correction, decay not on BatchNorm). Between them every
# broken port of shared.recipe_mutants applies somewhere.
CHECK_RECIPES = ("check", "check-flax-imagenet", "check-adamw")


def recipe_for(name: str | None, steps: int, batch: int) -> Recipe:
    """``--recipe``: None (or ``check``) the check's default; ``check-flax-imagenet`` and
    ``check-adamw`` (``CHECK_RECIPES``); else a preset squeezed into the window
    (``Recipe.window``), its rate scaled by ``batch / recipe.batch_size`` (the linear scaling
    rule, as the Flax example scales its own): a published rate for 1024 images diverges on 8."""
    from shared.recipe import FLAX_IMAGENET, PRESETS, preset

    if name in (None, "check"):
        return check_recipe(steps)
    if name == "check-adamw":
        return check_recipe(steps).replace(
            name=f"check-adamw ({steps} updates)", optimizer="adamw", lr=1e-3, weight_decay=0.05, decay="decoupled",
            source="the check's default with torch's AdamW, at convnext-resnet50's decoupled decay")
    if name == "check-flax-imagenet":
        return FLAX_IMAGENET.window(steps).replace(name=f"flax-imagenet conventions, check size ({steps} updates)",
                                                   lr=0.02, weight_decay=5e-3, batch_size=8)
    if name not in PRESETS:
        raise ValueError(f"--recipe: unknown {name!r}, expected one of {', '.join([*CHECK_RECIPES, *PRESETS])}")
    r = preset(name).window(steps)
    return r.replace(lr=r.lr * batch / r.batch_size, batch_size=batch)


@dataclasses.dataclass
class FitRow:
    target: str
    status: str  # "pass", "FAIL", "error", "not installed"
    steps: list = dataclasses.field(default_factory=list)  # per update: {"loss", "loss_rel", "loss_budget", "weights", ...}
    final: dict = dataclasses.field(default_factory=dict)
    first_out: dict | None = None  # {"step", "weight", "rel", "budget"}
    flips: list = dataclasses.field(default_factory=list)  # ReLU ties taken the framework's way
    adam_ties: list = dataclasses.field(default_factory=list)  # per update (1-based): Adam ties, those taken the other way
    detail: str = ""


@dataclasses.dataclass
class FitReport:
    config: dict
    rows: list[FitRow]
    oracle: dict  # losses, lrs, budgets per update
    versions: dict

    @property
    def ok(self) -> bool:
        return all(r.status in ("pass", "not installed") for r in self.rows) and any(r.status == "pass" for r in self.rows)

    def to_json(self) -> dict:
        return {"config": self.config, "ok": self.ok, "rows": [dataclasses.asdict(r) for r in self.rows],
                "oracle": self.oracle, "versions": self.versions}


def loss_scale(peer_logits, logits, peer_loss: float, loss: float, targets) -> float:
    """The relative loss error a port within the rule may show (shared.tools.check_dp's
    ``loss_error_scale``, with soft targets): ``||g|| ||dz|| + MARGIN ||dz||^2 / (4B)`` over
    |L|, ``dz`` the peer's logits error, ``g = (softmax - targets) / B``; at least the peer's own."""
    z = np.asarray(logits, np.float64)
    dz = np.linalg.norm(np.asarray(peer_logits, np.float64) - z)
    _, g = backprop.soft_cross_entropy(z, targets)
    first = float(np.linalg.norm(g)) * dz + parity.MARGIN * dz * dz / (4 * len(z))
    return max(first, abs(peer_loss - loss)) / abs(loss)


def _float32(state: dict) -> dict:
    """A trajectory's state as a float32 model holds it (``reference.forward`` takes float32
    weights; the forward itself runs in float64)."""
    return {k: np.asarray(v, np.float32) for k, v in state.items()}


class Oracle:
    """The float64 trajectory, its float32 peer (shadowed) and the budgets of every update."""

    def __init__(self, spec: ResNetSpec, recipe: Recipe, weights: dict, batches: list, heldout: np.ndarray):
        self.spec, self.recipe, self.weights, self.batches = recipe.train_spec(spec), recipe, weights, batches
        self.peer, shadow, _ = T.lockstep(spec, recipe, weights, batches)
        self.f64 = T.run(spec, recipe, weights, batches, keep_steps=True)
        self.steps = len(batches)
        keys = sorted(self.f64.weights[0])
        self.keys = keys
        self.budget: list[dict] = [{}]  # per update t (1-based): key -> budget; "loss"; stats per rule
        for t in range(1, self.steps + 1):
            b = {k: parity.fp32_budget(parity.rel_error(self.peer.weights[t][k], shadow.weights[t][k])) for k in keys}
            for rule in reference.VARIANCES:
                b[rule] = {k: parity.fp32_budget(parity.rel_error(self.peer.stats[rule][t][k], v))
                           for k, v in shadow.stats[rule][t].items()}
            images, labels = batches[t - 1]
            tg = recipe.targets(labels, self.spec.num_classes)
            b["loss"] = parity.fp32_budget(loss_scale(self.peer.steps[t - 1].logits, shadow.steps[t - 1].logits,
                                                      self.peer.losses[t - 1], shadow.losses[t - 1], tg))
            self.budget.append(b)
        self.peer_ties = adam_ties(shadow.followed)  # the peer's own, taken by its shadow
        # Update u's gradient window per tensor: MARGIN x the peer's largest gradient error in it.
        self.grad_window = [{k: T.gradient_window(p.grads[k], s.grads[k]) for k in keys}
                            for p, s in zip(self.peer.steps, shadow.steps)]
        self.heldout = heldout
        self.heldout_budget = {}
        for rule in reference.VARIANCES:
            ref = reference.forward(self.spec, _float32(shadow.state(self.steps, rule)), heldout)
            peer = reference.forward(self.spec, _float32(self.peer.state(self.steps, rule)), heldout, dtype=np.float32)
            self.heldout_budget[rule] = parity.fp32_budget(parity.rel_error(peer, ref))

    def follows(self, res: dict) -> dict:
        """``trajectory.run``'s ``follow`` for the port whose arrays are ``res``: at every update
        of an AdamW recipe, each tensor's gradient window (``grad_window``), its tie spread (the
        peer's own error in the tensor, a ``MARGIN``-th of its budget, in weight units) and the
        port's weights before and after. Empty for SGD (its update is linear in the gradient)."""
        if self.recipe.optimizer != "adamw":
            return {}
        out = {}
        for u in range(self.steps):
            out[u] = {k: T.Follow(self.grad_window[u][k],
                                  self.budget[u + 1][k] / parity.MARGIN * float(np.linalg.norm(self.f64.weights[u][k])),
                                  self.weights[k] if u == 0 else res[f"w{u}/{k}"], res[f"w{u + 1}/{k}"])
                      for k in self.keys}
        return out

    def logits(self, traj: T.Trajectory, rule: str) -> np.ndarray:
        return reference.forward(self.spec, _float32(traj.state(self.steps, rule)), self.heldout)

    def alternatives(self, traj: T.Trajectory, flips: dict, step: int, pairs: bool = False):
        """(update, units, ReLU flips) with more ReLU ties flipped at one update before ``step``:
        each of the ``TIE_NEAREST`` nearest alone, then all of that update's at once; with
        ``pairs``, every pair of the ``TIE_PAIRS`` nearest (the one-step rule's, for a pass no
        single flip explains: a float32 pass rounds two of the nearest across 0 as easily as one)."""
        for u in range(max(0, step - TIE_BACK), step):
            ties = backprop.relu_ties(self.peer.steps[u], traj.steps[u], parity.MARGIN)
            if pairs:
                picks = [list(p) for p in itertools.combinations(ties[:TIE_PAIRS], 2)]
            else:
                picks = [[t] for t in ties[:TIE_NEAREST]] + ([ties] if len(ties) > 1 else [])
            for units in picks:
                masks = {n: m.copy() for n, m in flips.get(u, {}).items()}
                for name, index, _ in units:
                    masks.setdefault(name, np.zeros(traj.steps[u].relu_inputs[name].shape, bool))[index] ^= True
                yield u, [f"{n}{list(i)}" for n, i, _ in units], {**flips, u: masks}


def adam_ties(followed: list) -> list[dict]:
    """``Trajectory.followed`` as the report lists it: per update (numbered from 1, as the
    table's) where the port took an Adam tie the other way, the ties there, how many the port
    took the other way, and those followed (``key[flat index]``, the float64 gradient and the
    port's, from its weights)."""
    return [{"update": f["update"] + 1, "ties": f["ties"], "other_way": f["other_way"],
             "followed": [{"element": f"{e['key']}[{e['index']}]", "g": e["g"], "g_port": e["g_port"]}
                          for e in f["followed"]]}
            for f in followed if f["other_way"]]


def _errors(res: dict, traj: T.Trajectory, t: int, rule: str, keys) -> tuple[dict, dict]:
    w = {k: parity.rel_error(res[f"w{t}/{k}"], traj.weights[t][k]) for k in keys}
    s = {k: parity.rel_error(res[f"w{t}/{k}"], v) for k, v in traj.stats[rule][t].items()}
    return w, s


def _worst(errors: dict, budgets: dict) -> tuple[str, float]:
    key = max(errors, key=lambda k: errors[k] / budgets[k])
    return key, errors[key] / budgets[key]


def _nearest(oracle: Oracle, res: dict, traj: T.Trajectory, flips: dict, t: int, rule: str, pairs: bool = False,
             follows=None):
    """(ratio, update, units, flips) of the alternative (``Oracle.alternatives``) that brings
    update ``t``'s every weight and statistic within budget nearest, or None."""
    b, best = oracle.budget[t], None
    for u, units, alt_flips in oracle.alternatives(traj, flips, t, pairs):
        alt = T.run(oracle.spec, oracle.recipe, oracle.weights, oracle.batches[:t], keep_steps=True,
                    relu_flip=alt_flips, start=traj, from_step=u, follow=follows)
        aw, a_s = _errors(res, alt, t, rule, oracle.keys)
        ratio = max(_worst(aw, b)[1], _worst(a_s, b[rule])[1])
        if ratio <= 1 and (best is None or ratio < best[0]):
            best = (ratio, u, units, alt_flips)
    return best


def judge(target: str, res: dict, oracle: Oracle, framework: str) -> FitRow:
    if "error" in res:
        return FitRow(target, "error", detail=str(res["error"]).splitlines()[-1] if str(res["error"]) else "")
    rule = VARIANCE[framework]
    row = FitRow(target, "pass")
    follows = oracle.follows(res)
    traj = oracle.f64 if not follows else T.run(oracle.spec, oracle.recipe, oracle.weights, oracle.batches,
                                                 keep_steps=True, follow=follows)
    flips, searching = {}, True
    t = 1
    while t <= oracle.steps:
        b = oracle.budget[t]
        w, s = _errors(res, traj, t, rule, oracle.keys)
        wk, wr = _worst(w, b)
        sk, sr = _worst(s, b[rule])
        loss_rel = abs(float(res["loss"][t - 1]) - traj.losses[t - 1]) / abs(traj.losses[t - 1])
        if max(wr, sr, loss_rel / b["loss"]) > 1 and searching and len(row.flips) < MAX_FLIPS:
            searching = False  # no tie explains it: the first update out of budget stands
            best = (_nearest(oracle, res, traj, flips, t, rule, follows=follows)
                    or _nearest(oracle, res, traj, flips, t, rule, pairs=True, follows=follows))
            if best is not None:
                _, u, units, flips = best
                traj = T.run(oracle.spec, oracle.recipe, oracle.weights, oracle.batches, keep_steps=True,
                             relu_flip=flips, start=traj, from_step=u, follow=follows)
                row.flips.append({"update": u, "units": units})
                searching = True
                continue  # re-judge update t against the alternative
        row.steps.append({"update": t, "lr": traj.lrs[t - 1], "loss": float(res["loss"][t - 1]),
                          "loss_f64": traj.losses[t - 1], "loss_rel": loss_rel, "loss_budget": b["loss"],
                          "weights_rel": w[wk], "weights_budget": b[wk], "weights_worst": wk, "weights_ratio": wr,
                          "stats_rel": s[sk], "stats_budget": b[rule][sk], "stats_worst": sk, "stats_ratio": sr})
        if row.first_out is None:
            for what, ratio, key, err, budget in (("weight", wr, wk, w[wk], b[wk]), ("statistic", sr, sk, s[sk], b[rule][sk]),
                                                  ("loss", loss_rel / b["loss"], "loss", loss_rel, b["loss"])):
                if ratio > 1:
                    row.first_out = {"update": t, "what": what, "key": key, "rel": err, "budget": budget}
                    break
        t += 1
    row.adam_ties = adam_ties(traj.followed)
    logits = oracle.logits(traj, rule)
    held = parity.rel_error(res["heldout"], logits)
    last = row.steps[-1]
    row.final = {"weights_rel": last["weights_rel"], "weights_budget": last["weights_budget"],
                 "weights_worst": last["weights_worst"], "stats_rel": last["stats_rel"],
                 "stats_budget": last["stats_budget"], "heldout_logits_rel": held,
                 "heldout_logits_budget": oracle.heldout_budget[rule], "variance_rule": rule}
    fails = []
    if row.first_out:
        f = row.first_out
        fails.append(f"update {f['update']}: {f['what']} {f['key']} rel {f['rel']:.2e} > {f['budget']:.2e}")
    if held > oracle.heldout_budget[rule]:
        fails.append(f"held-out logits rel {held:.2e} > {oracle.heldout_budget[rule]:.2e}")
    if fails:
        row.status, row.detail = "FAIL", "; ".join(fails)
    return row


def engine(package, make_optimizer, spec: ResNetSpec, weights: dict, *, batches: str, heldout: str, recipe: dict,
           mutant: str = "") -> dict:
    """The training loop of every fit engine (``shared.tools.adapters.*_fit``): ``package``
    (resnet_torch, resnet_keras or resnet_flax) builds the model the port trains (the broken
    port's spec), ``make_optimizer(recipe, model, mutant)`` the optimizer of the recipe the port
    hands its framework, ``package.train_step`` runs each update on the port's batch and targets
    (``shared.recipe_mutants``). Returns every weight and statistic after each update
    (``w{t}/{key}``), the losses and the held-out eval logits."""
    r = Recipe.from_dict(recipe)
    used = recipe_mutants.recipe(mutant, r)
    model = package.load_weights(package.build(recipe_mutants.train_spec(mutant, r.train_spec(spec))), weights)
    opt = make_optimizer(used, model, mutant)
    data = np.load(batches)
    out: dict[str, np.ndarray] = {}
    losses = []
    for t, (images, labels) in enumerate(zip(data["images"], data["labels"]), start=1):
        images, labels = recipe_mutants.batch(mutant, images, labels)
        soft = recipe_mutants.targets(mutant, r, labels, spec.num_classes)
        step_recipe = used if soft is None else used.replace(label_smoothing=0.0)  # smoothed in the targets
        losses.append(package.train_step(model, opt, images, labels if soft is None else soft, step_recipe))
        out.update({f"w{t}/{k}": v for k, v in package.export_weights(model).items()})
    out["loss"] = np.asarray(losses)
    out["heldout"] = package.predict(model, np.load(heldout))
    return out


def _train(spec: ResNetSpec, weights: dict, recipe: Recipe, ports: list[str], *, steps: int, frameworks,
           keras_backends, batch: int, size: int, seed: int, timeout: float, progress=None):
    """Every installed target trains ``recipe`` once per port of ``ports`` ("" the unbroken
    one), the ports of a target in one worker; each judged. Returns (the oracle, the targets
    found, those missing, {(target label, port): FitRow}, versions)."""
    batches = T.batches(spec, steps, batch, size, seed)
    heldout = reference.random_images(spec, batch, size, seed + 10_000)
    found, missing = targets([f for f in frameworks if f in ENGINES], keras_backends)
    if progress:
        progress(f"float64 trajectory and its float32 peer: {recipe.name}")
    oracle = Oracle(spec, recipe, weights, batches, heldout)
    rows, versions = {}, {}
    with tempfile.TemporaryDirectory(prefix="resnet-parity-fit-") as tmp:
        work = Path(tmp)
        np.savez(work / "batches.npz", images=np.stack([b[0] for b in batches]), labels=np.stack([b[1] for b in batches]))
        np.save(work / "heldout.npy", heldout)
        W.save(weights, work / "weights.safetensors")
        for t in found:
            if progress:
                progress(f"training {t.label}" + (f": {len(ports)} ports" if len(ports) > 1 else ""))
            label = t.label.replace("[", "-").rstrip("]")
            jobs = [Job("fit", t.framework, spec.to_dict(), str(work / f"{label}-{port or 'clean'}.npz"),
                        weights=str(work / "weights.safetensors"), engine=ENGINES[t.framework],
                        options={"batches": str(work / "batches.npz"), "heldout": str(work / "heldout.npy"),
                                 "recipe": recipe.to_dict(), "mutant": port}) for port in ports]
            for port, res in zip(ports, run_jobs(t, jobs, work, timeout * len(ports))):
                if "versions" in res:
                    versions[t.label] = json.loads(str(res["versions"]))
                rows[t.label, port] = judge(t.label, res, oracle, t.framework)
    return oracle, found, missing, rows, versions


def _validate(spec: ResNetSpec, weights: dict) -> None:
    W.validate(spec, weights)
    if not spec.include_top:
        raise ValueError("--mode fit: the loss needs the classifier; got a spec without include_top")


def check_fit(spec: ResNetSpec, weights: dict, recipe: Recipe, *, steps: int = DEFAULT_STEPS,
              frameworks=("torch", "keras", "flax"), keras_backends=("tensorflow", "jax", "torch"), batch: int = 8,
              size: int = 32, seed: int = 0, mutant: str = "", timeout: float = 900.0, progress=None) -> FitReport:
    _validate(spec, weights)
    if mutant and mutant not in recipe_mutants.CATALOGUE:
        raise ValueError(f"mutant: unknown {mutant!r}, expected one of {', '.join(recipe_mutants.CATALOGUE)}")
    oracle, found, missing, judged, versions = _train(
        spec, weights, recipe, [mutant], steps=steps, frameworks=frameworks, keras_backends=keras_backends,
        batch=batch, size=size, seed=seed, timeout=timeout, progress=progress)
    rows = [FitRow(t.label, "not installed") for t in missing] + [judged[t.label, mutant] for t in found]
    config = dict(spec=spec.to_dict(), recipe=recipe.to_dict(), recipe_line=recipe.describe(), steps=steps,
                  batch=batch, size=size, seed=seed, mutant=mutant)
    oracle_json = {"losses": oracle.f64.losses, "lrs": oracle.f64.lrs, "peer_losses": [float(x) for x in oracle.peer.losses],
                   "peer_adam_ties": oracle.peer_ties,
                   "budgets": [{k: v for k, v in b.items() if not isinstance(v, dict)} for b in oracle.budget[1:]]}
    return FitReport(config, rows, oracle_json, versions)


def outcome(applies: bool, status: str) -> str:
    """A catch-table cell: caught / missed where the port changes the recipe's trajectory
    (``FitMutant.applies``, from the recipe alone), passes / false alarm for the unbroken and the
    harmless ports; error where it did not run."""
    if status in ("error", "not installed"):
        return "error"
    if applies:
        return "caught" if status == "FAIL" else "missed"
    return "passes" if status == "pass" else "false alarm"


def catch_table(spec: ResNetSpec, weights: dict, recipes: dict, *, steps: int = 3,
                frameworks=("torch", "keras", "flax"), keras_backends=("tensorflow", "jax", "torch"), batch: int = 8,
                size: int = 32, seed: int = 0, timeout: float = 900.0, progress=None) -> dict:
    """``check --mode fit --mutants``: per recipe (name -> Recipe), the unbroken port, every
    broken port of ``shared.recipe_mutants`` that applies to it, and the harmless ones, in every
    target; each cell judged as ``check --mode fit`` judges (``outcome``)."""
    _validate(spec, weights)
    cells, versions, described, missing = [], {}, {}, set()
    for name, recipe in recipes.items():
        ports = ["", *[m for m, x in recipe_mutants.CATALOGUE.items() if x.applies(recipe)], *recipe_mutants.HARMLESS]
        oracle, found, lost, rows, v = _train(spec, weights, recipe, ports, steps=steps, frameworks=frameworks,
                                              keras_backends=keras_backends, batch=batch, size=size, seed=seed,
                                              timeout=timeout, progress=progress)
        versions.update(v)
        missing |= {t.label for t in lost}
        described[name] = {"line": recipe.describe(), "source": recipe.source, "recipe": recipe.to_dict(),
                           "peer_adam_ties": oracle.peer_ties}
        for t in found:
            for port in ports:
                row = rows[t.label, port]
                applies = bool(port) and port not in recipe_mutants.HARMLESS
                first = dict(row.first_out, ratio=row.first_out["rel"] / row.first_out["budget"]) if row.first_out else None
                mutant = recipe_mutants.CATALOGUE.get(port)
                cells.append({"recipe": name, "mutant": port or "(none)", "target": t.label, "applies": applies,
                              "what": mutant.what if mutant else "the unbroken port", "how": mutant.how if mutant else "",
                              "status": row.status, "outcome": outcome(applies, row.status), "first_out": first,
                              "ratios": [max(x["weights_ratio"], x["stats_ratio"], x["loss_rel"] / x["loss_budget"])
                                         for x in row.steps],
                              "relu_ties": row.flips, "adam_ties": row.adam_ties, "detail": row.detail})
    return {"spec": spec.to_dict(), "steps": steps, "batch": batch, "size": size, "seed": seed,
            "targets": list(dict.fromkeys(c["target"] for c in cells)), "not_installed": sorted(missing),
            "recipes": described, "cells": cells, "versions": versions,
            "ok": all(c["outcome"] in ("caught", "passes") for c in cells)}


def _ratio(r: float) -> str:
    if r >= 1000:
        mantissa, exponent = f"{r:.1e}".split("e")
        return f"{mantissa}e{int(exponent)}x"
    return f"{r:.0f}x" if r >= 100 else f"{r:.1f}x" if r >= 10 else f"{r:.2f}x"


def _cell_text(c: dict) -> str:
    if c["status"] == "pass":
        text = "pass"
    elif c["status"] == "FAIL":
        f = c["first_out"]
        text = f"{f['update']} ({_ratio(f['ratio'])})"
        worst = max(range(len(c["ratios"])), key=lambda i: c["ratios"][i]) + 1
        if worst != f["update"] and c["ratios"][worst - 1] > 4 * f["ratio"]:
            text += f"; {_ratio(c['ratios'][worst - 1])} at {worst}"
    else:
        text = c["status"]
    return text if c["outcome"] in ("caught", "passes") else f"**{text} ({c['outcome']})**"


def catch_markdown(table: dict, command: str, machine: dict, date: str) -> str:
    """The catch table as a results page: the command that wrote it, machine and versions, the
    recipes, one row per port (a cell: the first update out of budget and by how much, the worst
    tensor's error over its budget, per target), and the ties each passing run followed."""
    spec = ResNetSpec.from_dict(table["spec"])
    targets_ = table["targets"]
    versions = "; ".join(f"{t}: " + ", ".join(f"{k} {v}" for k, v in table["versions"].get(t, {}).items()
                                               if k != "keras_backend") for t in targets_)
    cpu = f"{machine.get('cpu', '?')}, {machine.get('cpus_usable', '?')} cores"
    lines = [f"# Broken training ports caught by `check --mode fit` ({', '.join(targets_)})", "",
             "Back to the [index](README.md). Written by the command (rerun it to regenerate this page and its JSON):", "",
             f"    {command}", "",
             f"{date}, {cpu}, Python {machine.get('python', '?')}; {versions}. A {spec.style}-style "
             f"{','.join(map(str, spec.depths))} network of width {spec.width}, {spec.num_classes} classes, batch "
             f"{table['batch']} x {table['size']} px, seed {table['seed']}, {table['steps']} updates of each recipe:", ""]
    for name, r in table["recipes"].items():
        lines.append(f"- **{name}**: {r['line']}" + (f" ({r['source']})" if r["source"] else ""))
    lines += ["", "Each broken port of `shared.recipe_mutants` that applies to a recipe (decided from the recipe "
              "alone) is injected into each framework's own training and judged against the float64 trajectory "
              "(docs/training.md states the rule). A cell, per target (" + " / ".join(targets_) + "): the first "
              "update out of budget and by how much (the worst tensor's error over its budget; where a later "
              "update is out by 4x more, that too), or pass. Rule and figures: [../training.md](../training.md).",
              "", "| broken port | how | " + " | ".join(table["recipes"]) + " |",
              "| --- | --- | " + " | ".join("---" for _ in table["recipes"]) + " |"]
    by = {(c["recipe"], c["mutant"], c["target"]): c for c in table["cells"]}
    for port in ["(none)", *recipe_mutants.CATALOGUE]:
        if not any(k[1] == port for k in by):
            continue
        harmless = " (harmless)" if port in recipe_mutants.HARMLESS else ""
        how = recipe_mutants.CATALOGUE[port].how if port in recipe_mutants.CATALOGUE else ""
        cells = []
        for name in table["recipes"]:
            row = [by.get((name, port, t)) for t in targets_]
            cells.append(" / ".join(_cell_text(c) if c else "-" for c in row) if any(row) else "does not apply")
        lines.append(f"| {port if port == '(none)' else f'`{port}`'}{harmless} | {how} | " + " | ".join(cells) + " |")
    applicable = [c for c in table["cells"] if c["applies"]]
    others = [c for c in table["cells"] if not c["applies"]]
    lines += ["", f"Caught {sum(c['outcome'] == 'caught' for c in applicable)} of {len(applicable)} applicable cells; "
              f"{sum(c['outcome'] == 'passes' for c in others)} of {len(others)} unbroken and harmless runs pass"
              + ("." if table["ok"] else ": see the bold cells."), "", "## Ties followed", "",
              "ReLU ties (a pre-activation within rounding of 0) and Adam ties (a gradient element within rounding "
              "of 0, whose AdamW step float32 arithmetic does not decide) the float64 oracle took a passing "
              "run's way; the float32 peer's own Adam ties, which its shadow takes, first. Updates numbered from 1.", ""]
    for name, r in table["recipes"].items():
        for u in r["peer_adam_ties"]:
            lines.append(f"- {name}, the float32 peer, update {u['update']}: "
                         + ", ".join(f"`{e['element']}`" for e in u["followed"]))
    for c in table["cells"]:
        if c["status"] != "pass" or not (c["relu_ties"] or c["adam_ties"]):
            continue
        parts = [f"ReLU at update {f['update'] + 1}: " + ", ".join(f"`{x}`" for x in f["units"]) for f in c["relu_ties"]]
        parts += [f"Adam at update {u['update']}: " + ", ".join(f"`{e['element']}`" for e in u["followed"])
                  + (f" ({u['other_way']} taken the other way, {len(u['followed'])} followed)"
                     if u["other_way"] > len(u["followed"]) else "") for u in c["adam_ties"]]
        lines.append(f"- {c['recipe']}, {c['target']}, {c['mutant']}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------- command line

def cli(args, console, read_weights) -> int:
    """``check --mode fit``: the spec (default: the --arch's style at depths 1,1,1,1, width 8,
    10 classes), the recipe, the run, a table per update, --json, --trace, --plot."""
    from rich.markup import escape
    from rich.table import Table

    from shared import spec as S
    from shared.tools.jobs import write_json

    steps = args.steps or DEFAULT_STEPS
    if steps < 1:
        raise ValueError(f"--steps: at least 1 update, got {steps}")
    if args.markdown and not args.mutants:
        raise ValueError("--markdown: with --mutants (the catch table); a fit run writes --json and --plot")
    if args.weights:
        spec, weights = read_weights(args.weights, args.style if args.style_given else None)
    else:
        spec = S.preset(args.arch, args.style, num_classes=10).replace(depths=args.depths or (1, 1, 1, 1),
                                                                      width=args.width or 8)
        weights = reference.calibrated_weights(spec, seed=args.seed, size=args.size)
    if args.mutants:
        return mutants_cli(args, spec, weights, steps, console)
    recipe = recipe_for(args.recipe, steps, args.batch)
    report = check_fit(spec, weights, recipe, steps=steps, frameworks=args.frameworks, keras_backends=args.keras_backends,
                       batch=args.batch, size=args.size, seed=args.seed,
                       progress=lambda what: console.print(f"[dim]{escape(what)}[/]"))
    table = Table(title=f"resnet-parity check --mode fit: {'x'.join(map(str, spec.depths))} ({spec.style}), width "
                        f"{spec.width}, batch {args.batch} x {args.size}px, {steps} updates; {recipe.describe()}")
    for col in ("framework", "final loss", "worst weight rel", "budget", "worst statistic rel", "budget",
                "held-out logits rel", "budget", "ties followed", "result"):
        table.add_column(col)
    for r in report.rows:
        f = r.final
        cells = [escape(r.target), f"{r.steps[-1]['loss']:.6f}" if r.steps else "-"]
        cells += [f"{f[k]:.2e}" if k in f else "-" for k in ("weights_rel", "weights_budget", "stats_rel", "stats_budget",
                                                             "heldout_logits_rel", "heldout_logits_budget")]
        verdict = {"pass": "[green]pass[/]", "FAIL": "[bold red]FAIL[/]", "error": "[red]error[/]",
                   "not installed": "[dim]not installed[/]"}[r.status]
        adam = sum(len(u["followed"]) for u in r.adam_ties)
        ties = f"{len(r.flips)} ReLU" + (f", {adam} Adam" if recipe.optimizer == "adamw" else "")
        table.add_row(*cells, ties, f"{verdict} {escape(r.detail)}".strip())
    console.print(table)
    console.print(f"float64 losses: {' '.join(f'{x:.4f}' for x in report.oracle['losses'])}; rates: "
                  f"{' '.join(f'{x:.3g}' for x in report.oracle['lrs'])}")
    if args.trace:
        for r in report.rows:
            if r.first_out:
                f = r.first_out
                console.print(f"{r.target}: first out of budget at update {f['update']}: {f['what']} {f['key']} "
                              f"(rel {f['rel']:.2e} > {f['budget']:.2e})")
    if args.json:
        write_json(args.json, report.to_json())
    if args.plot:
        plot(report, args.plot)
        console.print(f"wrote {args.plot}")
    console.print("[bold green]all trajectories agree[/]" if report.ok else "[bold red]fit check failed[/]")
    return 0 if report.ok else 1


def command_line(args, steps: int) -> str:
    """The ``check --mode fit --mutants`` command ``args`` stand for (what the page says reruns it)."""
    parts = ["resnet-parity check --mode fit --mutants"]
    if args.weights:
        parts.append(f"--weights {args.weights}")
    for flag, given, value in (("--arch", args.arch_given, args.arch), ("--style", args.style_given, args.style)):
        if given:
            parts.append(f"{flag} {value}")
    if args.depths:
        parts.append(f"--depths {','.join(map(str, args.depths))}")
    for flag, value, default in (("--width", args.width, None), ("--batch", args.batch, 8), ("--size", args.size, 32),
                                 ("--seed", args.seed, 0)):
        if value is not None and value != default:
            parts.append(f"{flag} {value}")
    if args.recipe:
        parts.append(f"--recipe {args.recipe}")
    parts.append(f"--steps {steps} --frameworks {','.join(f for f in args.frameworks if f in ENGINES)}")
    if "keras" in args.frameworks:
        parts.append(f"--keras-backends {','.join(args.keras_backends)}")
    for flag, value in (("--json", args.json), ("--markdown", args.markdown)):
        if value:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def mutants_cli(args, spec: ResNetSpec, weights: dict, steps: int, console) -> int:
    """``check --mode fit --mutants``: the catch table of every recipe of ``--recipe`` (a comma
    list; default the check's own three), printed, ``--json``, ``--markdown``. Exit 0 only when
    every applicable port is caught and every unbroken and harmless run passes."""
    import datetime

    from rich.markup import escape
    from rich.table import Table

    from shared.tools.bench_report import machine
    from shared.tools.jobs import write_json

    names = [n for n in (args.recipe or ",".join(CHECK_RECIPES)).split(",") if n]
    recipes = {n: recipe_for(n, steps, args.batch) for n in names}
    table = catch_table(spec, weights, recipes, steps=steps, frameworks=args.frameworks,
                        keras_backends=args.keras_backends, batch=args.batch, size=args.size, seed=args.seed,
                        progress=lambda what: console.print(f"[dim]{escape(what)}[/]"))
    out = Table(title=f"resnet-parity check --mode fit --mutants: {steps} updates; a cell per target: "
                      f"{' / '.join(table['targets'])}")
    for col in ("broken port", *recipes):
        out.add_column(col)
    by = {(c["recipe"], c["mutant"], c["target"]): c for c in table["cells"]}
    for port in ["(none)", *recipe_mutants.CATALOGUE]:
        cells = [[by.get((n, port, t)) for t in table["targets"]] for n in recipes]
        if any(any(row) for row in cells):
            out.add_row(port, *[" / ".join(_cell_text(c).replace("**", "") if c else "-" for c in row) if any(row)
                                else "does not apply" for row in cells])
    console.print(out)
    for c in table["cells"]:
        if c["outcome"] not in ("caught", "passes"):
            console.print(f"[red]{escape(c['recipe'])} {escape(c['mutant'])} {escape(c['target'])}: {c['outcome']} "
                          f"{escape(c['detail'])}[/]")
    applicable = [c for c in table["cells"] if c["applies"]]
    console.print(f"caught {sum(c['outcome'] == 'caught' for c in applicable)} of {len(applicable)} applicable cells; "
                  f"{sum(c['outcome'] == 'passes' for c in table['cells'] if not c['applies'])} of "
                  f"{sum(not c['applies'] for c in table['cells'])} unbroken and harmless runs pass")
    command, host = command_line(args, steps), machine()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    if args.json:
        write_json(args.json, {"command": command, "date": date, "machine": host, **table})
    if args.markdown:
        with W.atomic_path(args.markdown) as tmp:
            tmp.write_text(catch_markdown(table, command, host, date))
    return 0 if table["ok"] else 1


def plot(report: FitReport, path: str) -> None:
    """Loss per update in each framework beside the float64 trajectory, and each update's worst
    weight error against its budget (as a ratio: above 1 is out of budget), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report.rows if r.steps]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    updates = range(1, len(report.oracle["losses"]) + 1)
    top.plot(updates, report.oracle["losses"], "k-", lw=3, alpha=0.3, label="float64 trajectory")
    for r in rows:
        top.plot([s["update"] for s in r.steps], [s["loss"] for s in r.steps], marker=".", lw=1, label=r.target)
        bottom.semilogy([s["update"] for s in r.steps], [max(s["weights_ratio"], s["stats_ratio"], 1e-6) for s in r.steps],
                        marker=".", lw=1, label=r.target)
    rates = top.twinx()
    rates.step(updates, report.oracle["lrs"], "g:", where="mid", label="learning rate")
    rates.set_ylabel("learning rate", color="g")
    top.set_ylabel("loss of the update")
    top.legend(fontsize=7, loc="upper left")
    bottom.axhline(1.0, color="r", ls="--", label="budget")
    bottom.set_ylabel("worst tensor error / its budget")
    bottom.set_xlabel("update")
    bottom.legend(fontsize=7)
    top.set_title(report.config["recipe_line"], fontsize=8)
    fig.tight_layout()
    with W.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
