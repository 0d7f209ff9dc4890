"""``check --mode fit`` in Keras (the backend KERAS_BACKEND chose): resnet_keras' ``optimizer``
and ``train_step`` (``train_on_batch``) over a recipe's updates, every weight and running
statistic after each (shared.tools.check_fit), with the ``code`` ports of
``shared.recipe_mutants`` as Keras code."""

from __future__ import annotations

import importlib

import keras
import numpy as np
from keras import ops

from resnet_keras import build, export_weights, load_weights, predict
from resnet_keras.optim import optimizer, schedule, train_step
from shared import recipe_mutants as M
from shared.recipe import Recipe


def versions() -> dict:
    backend = keras.backend.backend()
    return {"keras": keras.__version__, "keras_backend": backend, backend: importlib.import_module(backend).__version__}


class _Early(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, inner):
        self.inner = inner

    def __call__(self, step):
        return self.inner(ops.add(step, 1)) if callable(self.inner) else self.inner


def _optimizer(recipe: Recipe, model, mutant: str):
    opt = optimizer(recipe, model)
    if mutant == "keras_momentum":  # Keras' own SGD: its velocity holds each step's rate
        opt = keras.optimizers.SGD(schedule(recipe), momentum=recipe.momentum, nesterov=recipe.nesterov)
        if recipe.weight_decay:  # coupled decay as L2 in the model's loss is not expressible here: decoupled
            opt = keras.optimizers.SGD(schedule(recipe), momentum=recipe.momentum, nesterov=recipe.nesterov,
                                       weight_decay=recipe.weight_decay)
    if mutant == "schedule_early":
        opt._learning_rate = _Early(opt._learning_rate)
    return opt


def run(spec, weights, *, batches: str, heldout: str, recipe: dict, mutant: str = "") -> dict:
    keras.utils.set_random_seed(0)
    r = Recipe.from_dict(recipe)
    used = M.recipe(mutant, r)
    model = load_weights(build(M.train_spec(mutant, r.train_spec(spec))), weights)
    opt = _optimizer(used, model, mutant)
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
