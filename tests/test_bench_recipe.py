"""``resnet-parity bench --recipe``: the plan's train rows, the refusal of an unknown preset, and
that each side trains what its row says. Ours: after a few bench steps, torch's weights and
running statistics are bit-equal to ``resnet_torch.optimizer`` + ``train_step`` run by hand
(whose trajectory test_recipe.py proves against the float64 oracle) and differ from the plain
SGD bench's. The reference: torchvision's model in torch's own loop moves its weights by the
same first update as ours (the same rate, label smoothing and coupled decay). No assertion on
speed. Keras and Flax: test_bench_recipe_keras.py, test_bench_recipe_flax.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from shared import interop, recipe as R, spec as S
from shared.tools import bench, bench_plan
from shared.tools.cli import build_parser, main
from shared.tools.jobs import Job

# torchvision-new's conventions in a window of 3 updates (rates 0.01, 0.02, 0.01: warmup from
# half, cosine), a decay whose form shows at once, and a BatchNorm momentum of the recipe's own
# (torch's default: 0.1).
RECIPE = R.TORCHVISION_NEW.window(3).replace(lr=0.02, warmup_start=0.5, weight_decay=5e-3, bn_momentum=0.3)
STEPS = 3


def same_update(start, ours, theirs) -> bool:
    """Whether the reference's first update of one weight is ours: within 1e-3 of the update
    plus 4 float32 roundings of the weight (norms), what two implementations' float32
    gradients and the two roundings of a decayed update leave."""
    step, their_step = ours - start, theirs - start
    eps = np.finfo(np.float32).eps
    return float(np.linalg.norm(step - their_step)) <= 1e-3 * float(np.linalg.norm(step)) + 4 * eps * float(
        np.linalg.norm(start))


def bench_steps(adapter, job: Job, spec, weights, steps: int):
    """The adapter's bench step of ``job`` run ``steps`` times: (the model it built, the losses,
    the run's settings)."""
    built, real = [], adapter._bench_model
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(adapter, "_bench_model", lambda *a: built.append(real(*a)) or built[-1])
        prepared = adapter.run_bench(job, spec, weights)
    losses = [float(np.asarray(getattr(loss, "detach", lambda: loss)())) for loss in (prepared.step() for _ in range(steps))]
    return built[0], losses, prepared.settings


def test_plan_trains_the_recipe_on_train_rows_only(monkeypatch):
    monkeypatch.setattr(bench_plan, "installed", lambda m: True)
    pairs = bench_plan.plan(("torch", "keras", "flax"), ("jax",), ("infer", "train"), recipe="torchvision-new")
    rows = {(p.target, p.mode): p for p in pairs}
    for target in ("torch", "keras[jax]", "flax"):
        infer, train = rows[(target, "infer")], rows[(target, "train")]
        assert infer.ours.recipe == "" and (infer.reference is None or infer.reference.recipe == "")
        assert train.ours.recipe == train.reference.recipe == "torchvision-new" and not train.skipped
    labels = {t: (rows[(t, "train")].ours.label, rows[(t, "train")].reference.label) for t in ("torch", "keras[jax]", "flax")}
    assert labels == {"torch": ("resnet_torch", "torchvision"), "keras[jax]": ("resnet_keras[jax]", "keras.applications[jax]"),
                      "flax": ("resnet_flax", "resnet_flax+optax")}
    # Flax's reference is its own model in Flax's loop, not keras.applications: a run of its own.
    assert rows[("flax", "infer")].reference.label == "keras.applications[jax]"
    assert len(bench_plan.unique_runs(pairs)) == 6 + 5  # infer: keras.applications[jax] once
    # Keras' --compile would change the reference alone: resnet_keras.train_step compiles itself.
    compiled = {p.target: p.skipped for p in bench_plan.plan(("torch", "keras"), ("jax",), ("train",),
                                                             recipe="torchvision-new", compile=True)}
    assert compiled["torch"] == "" and compiled["keras[jax]"].startswith("skipped: resnet_keras.train_step")


def test_cli_recipe_reaches_the_command_jobs_and_json(monkeypatch):
    monkeypatch.setattr(bench_plan, "installed", lambda m: True)
    args = build_parser().parse_args(["bench", "--frameworks", "torch", "--mode", "train", "--recipe", "flax-imagenet"])
    assert args.recipe == "flax-imagenet" and bench.command_line(args).endswith("--recipe flax-imagenet")
    (pair,) = bench._plan(args)
    job = bench._job(pair.ours, args, "out.json")
    assert R.Recipe.from_dict(job.options["recipe"]) == R.FLAX_IMAGENET
    plain = build_parser().parse_args(["bench", "--frameworks", "torch", "--mode", "train"])
    assert plain.recipe is None and bench._job(bench._plan(plain)[0].ours, plain, "o.json").options == {}


def test_unknown_recipe_is_one_line_naming_the_presets(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--mode", "train", "--recipe", "torchvision-newest"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("resnet-parity bench: error: argument --recipe: unknown 'torchvision-newest'")
    assert all(name in err for name in R.PRESETS)
    assert main(["bench", "--mode", "infer", "--recipe", "torchvision-new"]) == 2
    assert capsys.readouterr().err.strip() == ("resnet-parity bench: error: --recipe: times training; --mode infer has "
                                               "no train rows (add train)")


# ------------------------------------------------------------------ torch: what each side trains

@pytest.fixture(scope="module")
def torch_bench():
    """(spec, weights, images, labels, run): ``run(impl, recipe)`` builds the torch adapter's
    bench step for a 1,1,1,1 ResNet-50 at 32 px and hands back the model it trains. One thread:
    a tiny model's two OpenMP threads spin against other processes on a loaded machine."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from shared.tools.adapters import torch as adapter

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    spec = S.preset("resnet50", "torchvision", depths=(1, 1, 1, 1), num_classes=10)
    base = Job("bench", "torch", spec.to_dict(), "unused.json", mode="train", batch=4, size=32, seed=3)
    spec, weights = base.model_inputs()
    images, labels = base.inputs(spec)

    def run(impl: str, recipe: R.Recipe | None, steps: int):
        job = dataclasses.replace(base, impl=impl, options={"recipe": recipe.to_dict()} if recipe else {})
        return bench_steps(adapter, job, spec, weights, steps)

    yield spec, weights, images, labels, run
    torch.set_num_threads(threads)


def test_torch_ours_trains_the_recipe_by_resnet_torch(torch_bench):
    import torch

    import resnet_torch

    spec, weights, images, labels, run = torch_bench
    model, losses, settings = run("ours", RECIPE, STEPS)
    assert settings["train_step"] == "resnet_torch.train_step"
    by_hand = resnet_torch.load_weights(resnet_torch.build(RECIPE.train_spec(spec)), weights)
    optimizer = resnet_torch.optimizer(RECIPE, by_hand)
    expected = [resnet_torch.train_step(by_hand, optimizer, images, labels, RECIPE) for _ in range(STEPS)]
    assert losses == expected
    ours, hand = model.state_dict(), by_hand.state_dict()
    assert ours.keys() == hand.keys()
    assert [k for k in ours if not torch.equal(ours[k], hand[k])] == []
    # The plain bench (SGD 0.01, momentum 0.9, no smoothing, no decay, BatchNorm momentum 0.1)
    # ends elsewhere in every learnable tensor and running statistic.
    plain = run("ours", None, STEPS)[0].state_dict()
    same = [k for k in ours if ours[k].is_floating_point() and torch.equal(ours[k], plain[k])]
    assert same == []


def test_torch_reference_takes_the_recipes_first_update(torch_bench):
    """torchvision's model, stock torch.optim.SGD with the recipe's weight_decay, cross_entropy
    with its label smoothing: its first update of every conv and fc weight (decayed on both
    sides) is ours (``same_update``; here bit-equal). Measured with the reference given a
    changed recipe: no label smoothing takes every kernel 84-108x this budget away, no weight
    decay some (up to 23x), twice the rate all (780-1000x)."""
    spec, weights, images, labels, run = torch_bench
    ours, ours_loss, _ = run("ours", RECIPE, 1)
    ref, ref_loss, settings = run("reference", RECIPE, 1)
    assert settings == {**settings, "optimizer": "SGD", "train_step": "torch loop (torchvision train.py)"}
    assert ref_loss == pytest.approx(ours_loss, rel=1e-6)
    start = interop.to_torchvision(spec, weights)
    theirs = ref.state_dict()
    kernels = [k for k, v in start.items() if k.endswith("weight") and v.ndim > 1]
    assert len(kernels) > 5
    assert [k for k in kernels if not same_update(start[k], ours.state_dict()[k].numpy(), theirs[k].numpy())] == []


def test_the_training_page_figures_come_from_the_recorded_runs():
    """docs/training.md's throughput table against the two recorded runs' JSON: images/s, the
    medians' ratio, the per-round pairs (the first run's computed from its times)."""
    import json
    import re
    from pathlib import Path

    from shared.tools import bench

    docs = Path(__file__).parent.parent / "docs"
    rerun, first = (json.loads((docs / "results" / f"bench-fit-cpu-2026-12-07-resnet50-b8{s}.json").read_text())
                    for s in ("-rerun", ""))
    section = (docs / "training.md").read_text().split("## Training throughput")[1]
    table = {m[0]: m[1:] for m in re.findall(r"^\| (\S+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \(([\d.]+)-"
                                             r"([\d.]+)\) \| ([\d.]+) / ([\d.]+) \|$", section, re.M)}
    assert set(table) == {r["target"] for r in rerun["rows"]} == {"torch", "keras[tensorflow]", "keras[jax]", "flax"}
    for row, old in zip(rerun["rows"], first["rows"]):
        assert rerun["recipe"]["name"] == first["recipe"]["name"] == "torchvision-new"
        old_paired = bench.paired(old["ours"]["times_s"], old["reference"]["times_s"])["median"]
        p = row["paired"]
        figures = (row["ours"]["images_per_s"]["median"], row["reference"]["images_per_s"]["median"], row["ratio"],
                   p["median"], p["min"], p["max"], old["ratio"], old_paired)
        assert table[row["target"]] == (f"{figures[0]:.1f}", f"{figures[1]:.1f}", *(f"{f:.3f}" for f in figures[2:]))
    third = json.loads((docs / "results" / "bench-fit-cpu-2026-12-07-resnet50-b8-third.json").read_text())
    line = ", ".join(f"{r['target']} {r['ratio']:.3f} / {r['paired']['median']:.3f}" for r in third["rows"])
    assert f"ours/ref (medians / round by round): {line}." in " ".join(section.split())
