"""resnet_keras' mapping of a recipe (``resnet_keras.optimizer``) against the float64 numpy
update rule (``shared.trajectory.Optimizer``) on a tiny problem: a 1,1,1,1 ResNet's own
variables given seeded gradients, so the optimizer alone is judged (the fit check judges it
with the model: docs/training.md). Per tensor, within 4x the same arithmetic's float32 error.
Stock Keras where it computes the recipe, ``RecipeOptimizer`` elsewhere; and stock Keras where
it does not (its velocity under a changing rate, its Adam's epsilon) fails the same judgement:
why ``RecipeOptimizer`` exists. Runs once per Keras backend."""

from __future__ import annotations

import numpy as np
import pytest

from shared import parity, recipe as R, spec as S
from shared.tools import check_fit as C
from test_recipe import RECIPES, optimizer_budgets, synthetic

pytestmark = pytest.mark.keras
keras = pytest.importorskip("keras")

SPEC = S.preset("resnet18", "keras").replace(depths=(1, 1, 1, 1), width=8, num_classes=10)  # conv biases too
STEPS = 4
ADAMW = R.Recipe("adamw", optimizer="adamw", lr=1e-3, weight_decay=0.05, decay="decoupled", decay_mask="no_norm",
                 schedule="warmup_cosine", warmup=1, warmup_start=0.01, cosine=STEPS - 1)
CASES = {  # recipe -> the optimizer resnet_keras maps it to
    "check default (momentum, coupled, no_norm, warmup-cosine)": (C.check_recipe(STEPS), "RecipeOptimizer"),
    "flax-imagenet (nesterov, kernels_only, warmup from 0)": (RECIPES["flax-imagenet"], "RecipeOptimizer"),
    "sgd-decoupled-dampened": (RECIPES["sgd-decoupled-dampened"], "RecipeOptimizer"),
    "adamw (decoupled)": (ADAMW, "RecipeOptimizer"),
    "adam-l2 (coupled)": (RECIPES["adam-l2"], "RecipeOptimizer"),
    "stock: constant rate, momentum, decoupled, no_norm": (
        R.Recipe("stock", lr=0.02, momentum=0.9, weight_decay=5e-3, decay="decoupled", decay_mask="no_norm"), "SGD"),
    "stock: nesterov, constant rate, decoupled, kernels_only": (
        R.Recipe("stock-nesterov", lr=0.02, momentum=0.9, nesterov=True, weight_decay=5e-3, decay="decoupled",
                 decay_mask="kernels_only"), "SGD"),
}


def _apply(opt, model, grads) -> dict:
    """``grads`` applied by ``opt`` to ``model``'s learnable variables, one update each; the
    weights after."""
    from resnet_keras.weights import variables

    learnable = [(k, v) for k, v in variables(model) if not S.is_statistic(k)]
    for g in grads:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g[k]), v) for k, v in learnable])
    return {k: keras.ops.convert_to_numpy(v.value) for k, v in learnable}


def _worst(got: dict, want: dict, budgets: dict) -> tuple[str, float]:
    ratios = {k: parity.rel_error(got[k], want[k]) / budgets[k] for k in want}
    key = max(ratios, key=ratios.get)
    return key, ratios[key]


@pytest.fixture(scope="module")
def problem():
    """(weights, gradients, a function returning the model with those weights): one model for
    the module (building one costs seconds on the jax backend), its weights reloaded each time."""
    import resnet_keras

    learn, grads = synthetic(SPEC, STEPS)
    model = resnet_keras.build(SPEC)
    start = {**resnet_keras.export_weights(model), **learn}
    return learn, grads, lambda: resnet_keras.load_weights(model, start)


@pytest.mark.parametrize("case", list(CASES))
def test_keras_optimizer_computes_the_recipe(problem, case):
    import resnet_keras

    recipe, kind = CASES[case]
    learn, grads, fresh = problem
    model = fresh()
    opt = resnet_keras.optimizer(recipe, model)
    assert type(opt).__name__ == kind
    want, budgets = optimizer_budgets(SPEC, recipe, learn, grads)
    key, ratio = _worst(_apply(opt, model, grads), want, budgets)
    assert ratio <= 1, f"{case}: {key} at {ratio:.2f}x its budget"


@pytest.mark.parametrize("case", ["keras SGD under a changing rate", "keras AdamW"])
def test_stock_keras_where_it_differs_fails(problem, case):
    """The judgement can fail: Keras' own SGD on the check's recipe (its velocity keeps each
    step's rate) and Keras' own AdamW (epsilon inside the bias correction) leave the budget by
    far, on the tensors the convention moves (the Keras ports of ``shared.recipe_mutants``)."""
    from shared.tools.adapters.keras_fit import _stock

    learn, grads, fresh = problem
    model = fresh()
    if case == "keras AdamW":
        recipe = ADAMW
        opt = _stock(keras.optimizers.AdamW, recipe, model, beta_1=0.9, beta_2=0.999, epsilon=recipe.eps)
    else:
        recipe = C.check_recipe(STEPS)
        opt = _stock(keras.optimizers.SGD, recipe, model, momentum=recipe.momentum)
    want, budgets = optimizer_budgets(SPEC, recipe, learn, grads)
    key, ratio = _worst(_apply(opt, model, grads), want, budgets)
    assert ratio > 10, f"{case}: worst {key} at {ratio:.2f}x"
