"""``bench --recipe`` in Flax: the ours row's steps are ``resnet_flax.optimizer`` +
``train_step``'s (bit-equal parameters and statistics after a few steps; test_recipe.py proves
that optax chain against the float64 update rule), and the reference, our model in Flax's stock
loop, takes the recipe's first update. A file of its own: JAX in a process slows torch's CPU
kernels in the same process (test_recipe_optax.py says how much)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from shared import spec as S
from shared.tools.jobs import Job
from test_bench_recipe import RECIPE, STEPS, bench_steps, same_update


@pytest.fixture(scope="module")
def flax_bench():
    """(run, by_hand): ``run(impl, steps)`` builds the Flax adapter's bench step of ``RECIPE``
    for a one-stage ResNet-50 of width 8 at 32 px (each new optimizer is a new ``nnx.jit``
    compilation: a few seconds each), runs it and hands back the model's arrays after it and
    the losses; ``by_hand``: ``resnet_flax.optimizer`` + ``train_step`` from the same weights,
    the arrays before, after the first and after the last update, and the losses."""
    pytest.importorskip("flax")
    pytest.importorskip("optax")
    import resnet_flax
    from shared.tools.adapters import flax as adapter

    spec = S.preset("resnet50", "keras", depths=(1,), width=8, num_classes=10)
    base = Job("bench", "flax", spec.to_dict(), "unused.json", mode="train", batch=4, size=32, seed=3,
               options={"recipe": RECIPE.to_dict()})
    spec, weights = base.model_inputs()
    images, labels = base.inputs(spec)

    def run(impl: str, steps: int):
        model, losses, settings = bench_steps(adapter, dataclasses.replace(base, impl=impl), spec, weights, steps)
        return _arrays(model), losses, settings

    model = resnet_flax.load_weights(resnet_flax.build(RECIPE.train_spec(spec)), weights)
    optimizer = resnet_flax.optimizer(RECIPE, model)
    states, losses = [_arrays(model)], []
    for _ in range(STEPS):
        losses.append(resnet_flax.train_step(model, optimizer, images, labels, RECIPE))
        states.append(_arrays(model))
    return run, (states, losses)


def _arrays(model) -> dict:
    from flax import nnx

    return {path: np.asarray(v) for path, v in nnx.to_flat_state(nnx.state(model))}


def test_flax_ours_trains_the_recipe_by_resnet_flax(flax_bench):
    run, (states, losses) = flax_bench
    ours, ours_losses, settings = run("ours", STEPS)
    assert settings["train_step"] == "resnet_flax.train_step"
    assert ours_losses == losses
    assert ours.keys() == states[-1].keys() and len(ours) > 10
    assert [k for k in ours if not np.array_equal(ours[k], states[-1][k])] == []
    # every array moved: a bench that trained nothing would not be caught by the equality alone
    assert [k for k in ours if np.array_equal(ours[k], states[0][k])] == []


def test_flax_reference_takes_the_recipes_first_update(flax_bench):
    """Our model under a plain ``optax.sgd`` (decay on every parameter, added before it), stock
    optax schedule, smoothed one-hot targets, the Flax docs' ``nnx.jit`` step: its first update
    of every kernel (decayed on both sides) is ours (``same_update``, test_bench_recipe.py)."""
    run, (states, losses) = flax_bench
    ref, ref_losses, settings = run("reference", 1)
    assert settings["optimizer"] == "nnx.Optimizer(optax.sgd)" and settings["train_step"] == "nnx.jit (Flax docs)"
    assert ref_losses == pytest.approx(losses[:1], rel=1e-6)
    start, ours = states[0], states[1]
    kernels = [k for k in start if "kernel" in k and start[k].ndim > 1]
    assert len(kernels) > 5
    assert [k for k in kernels if not same_update(start[k], ours[k], ref[k])] == []
