"""``bench --recipe`` in Keras, on the backend CI runs this marker under: the ours row's steps are
``resnet_keras.optimizer`` + ``train_step``'s (equal weights and statistics after a few steps;
test_recipe_keras.py proves that optimizer against the float64 update rule), and the
reference, keras.applications' model with a stock Keras optimizer and ``train_on_batch``, takes
the recipe's first update of every kernel."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from shared import spec as S
from shared.tools.jobs import Job
from test_bench_recipe import RECIPE, STEPS, bench_steps, same_update

pytestmark = pytest.mark.keras
keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def keras_bench():
    """(run, by_hand) as in test_bench_recipe_flax.py, for a one-stage ResNet-50 at 32 px (width
    64: keras.applications' own)."""
    import resnet_keras
    from resnet_keras.weights import export_weights
    from shared.tools.adapters import keras as adapter

    spec = S.preset("resnet50", "keras", depths=(1,), num_classes=10)
    base = Job("bench", "keras", spec.to_dict(), "unused.json", mode="train", batch=4, size=32, seed=3,
               options={"recipe": RECIPE.to_dict()})
    spec, weights = base.model_inputs()
    images, labels = base.inputs(spec)

    def run(impl: str, steps: int):
        model, losses, settings = bench_steps(adapter, dataclasses.replace(base, impl=impl), spec, weights, steps)
        return model, losses, settings

    model = resnet_keras.load_weights(resnet_keras.keras_model(RECIPE.train_spec(spec), input_shape=(32, 32, 3)),
                                      weights)
    optimizer = resnet_keras.optimizer(RECIPE, model)
    states, losses = [export_weights(model)], []
    for _ in range(STEPS):
        losses.append(resnet_keras.train_step(model, optimizer, images, labels, RECIPE))
        states.append(export_weights(model))
    return spec, run, (states, losses)


def test_keras_ours_trains_the_recipe_by_resnet_keras(keras_bench):
    from resnet_keras.weights import export_weights

    spec, run, (states, losses) = keras_bench
    model, ours_losses, settings = run("ours", STEPS)
    assert settings["train_step"] == "resnet_keras.train_step" and settings["optimizer"] == "RecipeOptimizer"
    assert ours_losses == losses
    ours = export_weights(model)
    assert ours.keys() == states[-1].keys() and len(ours) > 10
    assert [k for k in ours if not np.array_equal(ours[k], states[-1][k])] == []
    assert [k for k in ours if np.array_equal(ours[k], states[0][k])] == []  # every array moved


def test_keras_reference_takes_the_recipes_first_update(keras_bench):
    """keras.applications' model, stock ``keras.optimizers.SGD`` (its decoupled decay: the same
    first update as the recipe's coupled one, the buffer being the gradient), a stock
    ``CosineDecay`` with warmup, ``CategoricalCrossentropy(label_smoothing=)``,
    ``train_on_batch``: its first update of every kernel is ours (``same_update``,
    test_bench_recipe.py)."""
    spec, run, (states, losses) = keras_bench
    ref, ref_losses, settings = run("reference", 1)
    assert settings["optimizer"] == "SGD" and settings["train_step"] == "train_on_batch"
    assert ref_losses == pytest.approx(losses[:1], rel=1e-6)
    # canonical weights are in Keras' layout: keras.applications' kernels compare as they are
    kernels = [f"{layer.name}.kernel" for layer in spec.layers() if "kernel" in layer.params]
    assert len(kernels) > 5
    theirs = {k: keras.ops.convert_to_numpy(ref.get_layer(k.removesuffix(".kernel")).kernel.value) for k in kernels}
    assert [k for k in kernels if not same_update(states[0][k], states[1][k], theirs[k])] == []
