"""resnet_flax's optax chain (``resnet_flax.optim.transform``) against the float64 numpy update
rule on ``test_recipe.synthetic``'s tiny problem. A file of its own: JAX in a process slows
torch's CPU kernels there twentyfold (their thread pools contend), and ``test_recipe.py`` runs torch."""

from __future__ import annotations

import numpy as np
import pytest

from shared import parity
from test_recipe import RECIPES, SPEC, STEPS, optimizer_budgets, synthetic


OPTAX_CASES = ["adamw", "adam-l2", "flax-imagenet", "torchvision-new", "sgd-decoupled"]


@pytest.mark.parametrize("name", OPTAX_CASES + ["broken: adam_eps_inside", "broken: nesterov_other_form"])
def test_optax_chain_computes_the_recipe(name):
    """resnet_flax's optax chain (``transform``: optax.adamw with its mask, Adam + an L2 term,
    optax.sgd with the decay before or after the trace, optax's schedules) on the tiny problem of
    ``synthetic``, against the float64 numpy update rule, per tensor within 4x the same
    arithmetic's float32 error. Two of ``shared.recipe_mutants``' optax ports (Keras' Adam
    epsilon, the velocity form of Nesterov) fail the same judgement."""
    pytest.importorskip("optax")
    import jax
    import optax
    from flax import nnx

    from resnet_flax import build
    from resnet_flax.layers import NATIVE_PARAM
    from resnet_flax.optim import transform
    from shared.tools.adapters.flax_fit import _transform

    recipes = {**RECIPES, "sgd-decoupled": RECIPES["sgd-decoupled-dampened"].replace(dampening=0.0)}
    mutant = name.removeprefix("broken: ") if name.startswith("broken") else ""
    recipe = recipes[{"adam_eps_inside": "adamw", "nesterov_other_form": "flax-imagenet"}.get(mutant, name)]
    spec = SPEC.replace(conv_bias=True)  # biases for the masks to tell apart
    learn, grads = synthetic(spec, STEPS)
    model = build(spec)
    key_of = {(layer.name, NATIVE_PARAM[layer.kind][p]): f"{layer.name}.{p}" for layer in spec.layers() for p in layer.params}

    def tree(values):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: np.asarray(values[key_of[(path[0].key, path[1].key)]]), nnx.state(model, nnx.Param))

    tx = _transform(recipe, model, mutant) if mutant else transform(recipe, model)
    params, state = tree(learn), None
    state = tx.init(params)
    update = jax.jit(tx.update)
    for g in grads:
        updates, state = update(tree(g), state, params)
        params = optax.apply_updates(params, updates)
    got = {key_of[(path[0].key, path[1].key)]: np.asarray(v)
           for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    want, budgets = optimizer_budgets(spec, recipe, learn, grads)
    ratio = max(parity.rel_error(got[k], want[k]) / budgets[k] for k in want)
    assert (ratio > 10) if mutant else (ratio <= 1), f"{name}: worst {ratio:.2f}x its budget"
