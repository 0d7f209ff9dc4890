"""``check --mode fit`` in Flax NNX: resnet_flax's ``optimizer`` (an optax chain in
``nnx.Optimizer``) and its jitted ``train_step`` in the loop of ``shared.tools.check_fit.engine``,
with the ``code`` ports of ``shared.recipe_mutants`` as optax code."""

from __future__ import annotations

import jax
import optax
from flax import nnx

import resnet_flax
from resnet_flax.optim import decay_mask, schedule, transform
from shared import recipe_mutants as M
from shared.recipe import Recipe
from shared.tools.check_fit import engine


def versions() -> dict:
    import flax

    return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}


def _transform(recipe: Recipe, model, mutant: str) -> optax.GradientTransformation:
    """resnet_flax's chain, or the ``code`` ports: the rate read one count early; the velocity
    form (the rate inside the trace: ``scale_by_learning_rate`` before ``optax.trace``, the
    decoupled decay scaled by the rate after it); Adam's epsilon inside the bias correction (an
    epsilon schedule through ``optax.inject_hyperparams``)."""
    rate, wd = schedule(recipe), recipe.weight_decay
    mask = decay_mask(recipe, model)
    coupled = [optax.add_decayed_weights(wd, mask=mask)] if wd and recipe.decay == "coupled" else []
    if mutant in ("keras_momentum", "nesterov_other_form"):
        decoupled = ([optax.add_decayed_weights(lambda count: -rate(count) * wd, mask=mask)]
                     if wd and recipe.decay == "decoupled" else [])
        return optax.chain(*coupled, optax.scale_by_learning_rate(rate),
                           optax.trace(decay=recipe.momentum, nesterov=recipe.nesterov), *decoupled)
    if mutant == "adam_eps_inside":
        b1, b2 = recipe.betas
        adam = optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
            rate, b1=b1, b2=b2, eps=lambda count: M.adam_eps_inside(recipe, count),
            weight_decay=0.0 if recipe.decay == "coupled" else wd, mask=mask)
        return optax.chain(*coupled, adam)
    return transform(recipe, model, (lambda count: rate(count + 1)) if mutant == "schedule_early" else None)


def run(spec, weights, **options) -> dict:
    return engine(resnet_flax, lambda r, model, mutant: nnx.Optimizer(model, _transform(r, model, mutant), wrt=nnx.Param),
                  spec, weights, **options)
