"""The recipe's learning-rate rule and the float64 trajectory oracle (``shared.recipe``,
``shared.trajectory``) against peers no code of ours wrote: torch's own optimizers and
schedulers run in float64 on a small ResNet, and optax's in float64 (JAX x64, a process of its
own). Each recipe is a convention the other frameworks compute differently (docs/training.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from shared import interop, parity, recipe as R, reference, spec as S, trajectory as T

SPEC = S.preset("resnet50").replace(depths=(1, 1, 1, 1), width=8, num_classes=10)
STEPS = 6

RECIPES = {  # each with a change of rate inside the window
    "torchvision-new": R.TORCHVISION_NEW.window(STEPS).replace(lr=0.02, weight_decay=5e-3),
    "torchvision-classic": R.TORCHVISION_CLASSIC.window(STEPS).replace(lr=0.02, weight_decay=5e-3),
    "flax-imagenet": R.FLAX_IMAGENET.window(STEPS).replace(lr=0.02, weight_decay=5e-3),
    "adamw": R.Recipe("adamw", optimizer="adamw", lr=1e-3, weight_decay=0.05, decay="decoupled", decay_mask="no_norm",
                      schedule="steps", milestones=(2, 4), gamma=0.5),
    "adam-l2": R.Recipe("adam-l2", optimizer="adamw", lr=1e-3, weight_decay=0.05, decay="coupled",
                        decay_mask="kernels_only", schedule="warmup_cosine", warmup=2, warmup_start=0.1, cosine=4),
    "sgd-decoupled-dampened": R.Recipe("sgd-decoupled-dampened", lr=0.02, weight_decay=5e-3, decay="decoupled",
                                       dampening=0.1, schedule="steps", milestones=(3,)),
}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """torch on one thread while this module runs (restored after): on a 1,1,1,1 ResNet of width
    8 its two threads' parallel regions spin against other processes on a loaded 2-core machine
    (a 3-update fit run: 8 s instead of 0.3 s)."""
    if "torch" not in sys.modules:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic(spec, steps: int, seed: int = 0):
    """A tiny problem for an optimizer alone: ``spec``'s learnable weights and ``steps`` updates
    of seeded float32 gradients, each tensor at a scale of its own from 1e-9 to 1e-1 (Adam's
    epsilon decides the smallest tensors' steps, the rate the largest ones')."""
    weights = reference.calibrated_weights(spec, seed=seed, size=32)
    learn = {k: v for k, v in weights.items() if not S.is_statistic(k)}
    rng = np.random.default_rng(seed)
    scale = {k: 10.0 ** rng.uniform(-9, -1) for k in learn}
    grads = [{k: (rng.standard_normal(v.shape) * scale[k]).astype(np.float32) for k, v in learn.items()}
             for _ in range(steps)]
    return learn, grads


def optimizer_budgets(spec, recipe, learn, grads) -> tuple[dict, dict]:
    """(the float64 weights after ``recipe``'s numpy update rule (``trajectory.Optimizer``) on
    ``grads``, the fp32 budget of each tensor: 4x the same arithmetic's error in float32)."""
    def apply(dtype):
        opt, w = T.Optimizer(recipe, recipe.decayed(spec)), {k: np.asarray(v, dtype) for k, v in learn.items()}
        for g in grads:
            w = opt.step(w, {k: np.asarray(x, dtype) for k, x in g.items()})
        return w

    want, peer = apply(np.float64), apply(np.float32)
    return want, {k: parity.fp32_budget(parity.rel_error(peer[k], want[k])) for k in want}


@pytest.fixture(scope="module")
def run():
    weights = reference.calibrated_weights(SPEC, seed=0, size=32)
    return weights, T.batches(SPEC, STEPS, 4, 32, seed=0)


def test_lr_rule_matches_torch_schedulers():
    """``lr_at`` against torch's schedulers, built here by hand from each preset's source
    (torchvision's StepLR per epoch; LinearLR + CosineAnnealingLR in SequentialLR, per epoch; the
    Flax example's warmup from 0), over the whole run (600 counts of CosineAnnealingLR's
    recursive form) and per update for an epoch of 3 updates."""
    torch = pytest.importorskip("torch")
    sched = torch.optim.lr_scheduler

    def lrs(recipe, make, updates):
        opt = torch.optim.SGD([torch.zeros(1, dtype=torch.float64, requires_grad=True)], lr=recipe.lr)
        s, out = make(opt), []
        for t in range(updates):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            if (t + 1) % recipe.unit == 0:
                s.step()
        return out

    classic = R.TORCHVISION_CLASSIC.replace(unit=3)
    new = R.TORCHVISION_NEW.replace(unit=1)
    flax = R.FLAX_IMAGENET.replace(warmup=5, cosine=95, length=100)
    cases = [
        (classic, lambda o: sched.StepLR(o, step_size=30, gamma=0.1), 3 * 90),
        (new, lambda o: sched.SequentialLR(o, [sched.LinearLR(o, start_factor=0.01, total_iters=5),
                                                sched.CosineAnnealingLR(o, T_max=595)], milestones=[5]), 600),
        (flax, lambda o: sched.SequentialLR(o, [sched.LambdaLR(o, lambda c: c / 5), sched.CosineAnnealingLR(o, T_max=95)],
                                            milestones=[5]), 100),
    ]
    for recipe, make, updates in cases:
        np.testing.assert_allclose(recipe.lrs(updates), lrs(recipe, make, updates), rtol=1e-9, atol=1e-15,
                                   err_msg=recipe.name)
    assert R.TORCHVISION_NEW.lr_at(0) == pytest.approx(0.005) and R.FLAX_IMAGENET.lr_at(0) == 0.0


def test_convnext_preset_matches_its_source_schedule():
    """``convnext-resnet50``'s rate of every update against facebookresearch/ConvNeXt's
    utils.cosine_scheduler, written here from its source (np.linspace(0, lr, warmup) joined to
    min_lr + (lr - min_lr) / 2 (1 + cos(pi i / n)) over the other n updates): the cosine equal
    update for update, the warmup off by the one difference the preset states (linspace reaches
    lr one update early: its k / (W - 1) against the recipe's k / W)."""
    r = R.CONVNEXT_RESNET50
    per_epoch, warmup = 1_281_167 // 4096, 20 * (1_281_167 // 4096)
    n = 300 * per_epoch - warmup
    source = np.concatenate([np.linspace(0.0, 4e-3, warmup),
                             1e-6 + 0.5 * (4e-3 - 1e-6) * (1 + np.cos(np.pi * np.arange(n) / n))])
    ours = np.array(r.lrs(300 * per_epoch))
    np.testing.assert_allclose(ours[warmup:], source[warmup:], rtol=1e-12)
    np.testing.assert_allclose(ours[:warmup] * warmup / (warmup - 1), source[:warmup], rtol=1e-12)
    assert (r.optimizer, r.decay, r.decay_mask, r.weight_decay, r.label_smoothing, r.batch_size) == (
        "adamw", "decoupled", "kernels_only", 0.05, 0.1, 4096)


def test_window_keeps_a_change_of_rate():
    """A preset squeezed into a short window still changes its rate inside it."""
    for recipe in R.PRESETS.values():
        lrs = recipe.window(STEPS).lrs(STEPS)
        assert len(set(lrs)) > 1, recipe.name
    assert R.TORCHVISION_CLASSIC.window(6).milestones == (2, 4)
    assert R.TORCHVISION_NEW.window(6).warmup == 1 and R.TORCHVISION_NEW.window(6).cosine == 5


def test_decay_masks_name_the_weights():
    """``all`` decays every learnable weight; ``no_norm`` all but BatchNorm's gamma and beta (the
    fc bias still decays, as torchvision's --norm-weight-decay); ``kernels_only`` the rank > 1 ones."""
    spec = S.preset("resnet50", "keras").replace(depths=(1, 1, 1, 1), width=8, num_classes=10)  # conv biases
    learnable = [k for k in spec.param_shapes() if not S.is_statistic(k)]
    masks = {m: R.Recipe("r", weight_decay=1e-4, decay_mask=m).decayed(spec) for m in R.MASKS}
    assert all(masks["all"].values()) and set(masks["all"]) == set(learnable)
    assert {k for k, v in masks["no_norm"].items() if not v} == {k for k in learnable if k.split(".")[0].endswith("_bn")}
    assert masks["no_norm"]["predictions.bias"] and masks["no_norm"]["conv1_conv.bias"]
    assert {k for k, v in masks["kernels_only"].items() if v} == {k for k in learnable if k.endswith(".kernel")}
    assert not any(R.Recipe("r", weight_decay=0.0).decayed(spec).values())


def test_bad_recipe_is_one_line():
    with pytest.raises(ValueError, match="decay_mask: expected one of all, no_norm, kernels_only, got 'bn'"):
        R.Recipe("r", decay_mask="bn")
    with pytest.raises(ValueError, match="nesterov: needs momentum > 0 and dampening 0"):
        R.Recipe("r", nesterov=True, dampening=0.1)
    with pytest.raises(ValueError, match="recipe: unknown 'imagenet'"):
        R.preset("imagenet")


def torch_state(model) -> dict:
    """Every canonical weight of a resnet_torch model, in the model's dtype."""
    from resnet_torch.optim import parameters

    out = {k: interop.canonical_kernel(p.detach().numpy()) if k.endswith(".kernel") else p.detach().numpy()
           for k, p in parameters(model)}
    buffers = dict(model.named_buffers())
    for layer in model.spec.layers():
        for what in ("mean", "var"):
            if f"{layer.name}.{what}" in model.spec.param_shapes():
                out[f"{layer.name}.{what}"] = buffers[f"{interop.torchvision_module(layer.name)}.running_{what}"].numpy()
    return out


@pytest.mark.parametrize("name", ["torchvision-new", "flax-imagenet", "adamw", "sgd-decoupled-dampened"])
def test_oracle_matches_torch_in_float64(run, name):
    """resnet_torch's ``optimizer`` and ``train_step`` in float64 (torch.optim.SGD / Adam /
    AdamW with param groups, torch's schedulers) against the numpy oracle, every update: the
    losses, the rate of every update, and at the end every weight and running statistic (torch's
    unbiased rule) within 1e-9 (float64 rounding; a convention read the other way moves them by
    1e-4 or more, ``test_fit``)."""
    torch = pytest.importorskip("torch")
    from resnet_torch import build, load_weights
    from resnet_torch.optim import optimizer, train_step

    weights, batches = run
    recipe = RECIPES[name]
    oracle = T.run(SPEC, recipe, weights, batches)
    model = load_weights(build(recipe.train_spec(SPEC)), weights).double()
    opt = optimizer(recipe, model)
    for t, (images, labels) in enumerate(batches):
        assert opt[0].param_groups[0]["lr"] == pytest.approx(recipe.lr_at(t), rel=1e-12), t
        x = torch.from_numpy(images).permute(0, 3, 1, 2).double()
        assert train_step(model, opt, x, labels, recipe) == pytest.approx(oracle.losses[t], rel=1e-10), t
    got, want = torch_state(model), oracle.state(STEPS, "unbiased")
    for key in want:
        assert parity.rel_error(got[key], want[key]) < 1e-9, key


OPTAX_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, numpy as np
    from shared import recipe as R, spec as S, trajectory as T, reference
    from resnet_flax import build, load_weights
    from resnet_flax.weights import variables
    from resnet_flax.optim import optimizer, train_step
    from tests.test_recipe import RECIPES, SPEC, STEPS

    weights = reference.calibrated_weights(SPEC, seed=0, size=32)
    batches = T.batches(SPEC, STEPS, 4, 32, seed=0)
    out = {}
    for name in sys.argv[1:]:
        recipe = RECIPES[name]
        model = load_weights(build(recipe.train_spec(SPEC)), weights)
        for key, v in variables(model):  # the model in float64, its values the float32 weights
            v.value = jnp.asarray(np.asarray(weights[key], np.float64))
        opt = optimizer(recipe, model)
        losses = [train_step(model, opt, images.astype(np.float64), labels, recipe) for images, labels in batches]
        state = {k: np.asarray(v[...]).tolist() for k, v in variables(model)}
        out[name] = {"losses": losses, "state": state, "dtype": str(np.asarray(variables(model).__next__()[1][...]).dtype)}
    print(json.dumps(out))
""")


def test_oracle_matches_optax_in_float64(run):
    """resnet_flax's optax chain for the Flax example's recipe (``optimizer``: add_decayed_weights
    with the kernels-only mask before ``optax.sgd`` with nesterov, optax's warmup-cosine from 0) and
    ``train_step`` under JAX x64, in a process of its own, against the numpy oracle: losses and
    every weight and running statistic (Flax's biased rule). optax evaluates its schedules in
    float32 even under x64, so the budget is 4x how far a rate one float32 ulp larger
    (1 + 2**-23) moves the float64 trajectory."""
    pytest.importorskip("optax")
    names = ["flax-imagenet"]  # one: each chain compiles the ResNet's step anew (about 20 s here)
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_X64="1")
    done = subprocess.run([sys.executable, "-c", OPTAX_SCRIPT, *names], capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    weights, batches = run
    for name in names:
        recipe = RECIPES[name]
        oracle = T.run(SPEC, recipe, weights, batches)
        ulp = T.run(SPEC, recipe, weights, batches, lr=lambda t: recipe.lr_at(t) * (1 + 2**-23))
        assert result[name]["dtype"] == "float64"
        loss_budget = 4 * max(abs(a - b) / b for a, b in zip(ulp.losses, oracle.losses))
        assert loss_budget > 0
        np.testing.assert_allclose(result[name]["losses"], oracle.losses, rtol=loss_budget, err_msg=name)
        want, moved = oracle.state(STEPS, "biased"), ulp.state(STEPS, "biased")
        for key, value in result[name]["state"].items():
            budget = max(4 * parity.rel_error(moved[key], want[key]), 1e-12)
            assert parity.rel_error(np.asarray(value), want[key]) <= budget, (name, key)

