"""``check --mode fit`` in Flax NNX: resnet_flax's optax ``optimizer`` in ``nnx.Optimizer`` and
its jitted ``train_step`` over a recipe's updates, every weight and running statistic after each
(shared.tools.check_fit), with the ``code`` ports of ``shared.recipe_mutants`` as optax code."""

from __future__ import annotations

import jax
import numpy as np
import optax
from flax import nnx

from resnet_flax import build, export_weights, load_weights, predict
from resnet_flax.optim import decay_mask, optimizer, schedule, train_step
from shared import recipe_mutants as M
from shared.recipe import Recipe


def versions() -> dict:
    import flax

    return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}


def _optimizer(recipe: Recipe, model, mutant: str):
    """resnet_flax's chain, or (``code`` ports, SGD recipes) the same chain with its rate
    read one count early, or Keras' velocity (the rate inside the trace)."""
    if mutant not in ("keras_momentum", "schedule_early"):
        return optimizer(recipe, model)
    rate = schedule(recipe)
    decay = [optax.add_decayed_weights(recipe.weight_decay, mask=decay_mask(recipe, model))] if recipe.weight_decay else []
    trace = optax.trace(decay=recipe.momentum, nesterov=recipe.nesterov)
    if mutant == "keras_momentum":
        return optax.chain(*decay, optax.scale_by_learning_rate(rate), trace)
    early = optax.scale_by_learning_rate(lambda count: rate(count + 1))
    if recipe.decay == "coupled":
        return optax.chain(*decay, trace, early)
    return optax.chain(trace, *decay, early)


def run(spec, weights, *, batches: str, heldout: str, recipe: dict, mutant: str = "") -> dict:
    r = Recipe.from_dict(recipe)
    used = M.recipe(mutant, r)
    model = load_weights(build(M.train_spec(mutant, r.train_spec(spec))), weights)
    opt = nnx.Optimizer(model, _optimizer(used, model, mutant), wrt=nnx.Param)
    data = np.load(batches)
    out: dict[str, np.ndarray] = {}
    losses = []
    for t, (images, labels) in enumerate(zip(data["images"], data["labels"]), start=1):
        images, labels = M.batch(mutant, images, labels)
        soft = M.targets(mutant, r, labels, spec.num_classes)
        step_recipe = used if soft is None else used.replace(label_smoothing=0.0)
        losses.append(train_step(model, opt, images, labels if soft is None else soft, step_recipe))
        out.update({f"w{t}/{k}": v for k, v in export_weights(model).items()})
    out["loss"] = np.asarray(losses)
    out["heldout"] = predict(model, np.load(heldout))
    return out
