"""``check --mode fit`` in Keras (the backend KERAS_BACKEND chose): resnet_keras' ``optimizer``
and ``train_step`` (``train_on_batch``) in the loop of ``shared.tools.check_fit.engine``, with
the ``code`` ports of ``shared.recipe_mutants`` as Keras code."""

from __future__ import annotations

import importlib

import keras
from keras import ops

import resnet_keras
from resnet_keras.model import spec_of
from resnet_keras.optim import schedule
from resnet_keras.weights import variables
from shared import recipe_mutants as M
from shared.recipe import Recipe
from shared.spec import is_statistic
from shared.tools.check_fit import engine


def versions() -> dict:
    backend = keras.backend.backend()
    return {"keras": keras.__version__, "keras_backend": backend, backend: importlib.import_module(backend).__version__}


class _Early(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, inner):
        self.inner = inner

    def __call__(self, step):
        return self.inner(ops.add(step, 1)) if callable(self.inner) else self.inner


def _stock(cls, recipe: Recipe, model, **kwargs) -> keras.optimizers.Optimizer:
    """Keras' own optimizer ``cls`` with the recipe's weight decay where the recipe puts it:
    decoupled by its ``weight_decay`` with the recipe's exclusions, coupled added to the
    gradient of the decayed variables (an L2 term's gradient): a port that differs from the
    recipe in ``cls``'s own update rule only."""
    decayed = recipe.decayed(spec_of(model))
    learnable = [(k, v) for k, v in variables(model) if not is_statistic(k)]
    wd, coupled = recipe.weight_decay, recipe.decay == "coupled"
    ids = {id(v) for k, v in learnable if decayed[k]}

    class Coupled(cls):
        def build(self, var_list):
            super().build(var_list)
            self._coupled = [id(v) in ids for v in var_list]  # update_step may see another wrapper

        def update_step(self, gradient, variable, learning_rate):
            if self._coupled[self._get_variable_index(variable)]:
                gradient = gradient + ops.cast(wd, variable.dtype) * variable
            super().update_step(gradient, variable, learning_rate)

    if wd and coupled:
        return Coupled(schedule(recipe), **kwargs)
    opt = cls(schedule(recipe), weight_decay=wd or None, **kwargs)
    if wd:
        opt.exclude_from_weight_decay(var_list=[v for k, v in learnable if not decayed[k]])
    return opt


def _optimizer(recipe: Recipe, model, mutant: str):
    if mutant in ("keras_momentum", "nesterov_other_form"):  # Keras' SGD: its velocity holds each step's rate
        opt = _stock(keras.optimizers.SGD, recipe, model, momentum=recipe.momentum, nesterov=recipe.nesterov)
    elif mutant == "adam_eps_inside":  # Keras' Adam: the bias correction folded into the rate
        b1, b2 = recipe.betas
        opt = _stock(keras.optimizers.Adam, recipe, model, beta_1=b1, beta_2=b2, epsilon=recipe.eps)
    else:
        opt = resnet_keras.optimizer(recipe, model)
    if mutant == "schedule_early":
        opt._learning_rate = _Early(opt._learning_rate)
    return opt


def run(spec, weights, **options) -> dict:
    keras.utils.set_random_seed(0)
    return engine(resnet_keras, _optimizer, spec, weights, **options)
