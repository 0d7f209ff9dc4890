"""A ``shared.recipe.Recipe`` as a Keras optimizer, and one training update by Keras' own
``train_on_batch`` (the step ``model.fit`` runs).

``optimizer(recipe, model)`` returns ``keras.optimizers.SGD`` where it computes the recipe
exactly, else ``RecipeOptimizer``, the smallest Keras optimizer that does:

- Keras' SGD bakes each step's learning rate into its velocity (``v = m v - lr g; w += v``),
  torch and optax multiply the buffer by the current rate (``w -= lr (m b + g)``): the same
  only while the rate is constant. Its ``weight_decay`` is decoupled (``w -= lr wd w`` before
  the step), and it has no coupled decay and no dampening. So stock SGD serves a recipe with a
  constant rate (or no momentum), no dampening, and decoupled decay or none.
- Keras' Adam and AdamW fold the bias correction into the rate (``lr sqrt(1 - b2^t) / (1 -
  b1^t) m / (sqrt(v) + eps)``), which puts epsilon inside the bias correction: at step 1 it acts
  31.6x larger than torch's and optax's ``sqrt(v_hat) + eps`` (b2 0.999). No stock Keras
  optimizer computes the recipe's AdamW.
- The mask: ``exclude_from_weight_decay(var_list=...)`` with the variables themselves (its
  ``var_names`` matches substrings of a variable's short name, "kernel", "gamma": a layer name
  such as "bn1" excludes nothing).
- Schedules: ``PiecewiseConstantDecay`` (its boundaries are inclusive, the rate changes the
  count *after* a boundary: milestone ``m`` is boundary ``m - 1``), ``CosineDecay`` with
  ``warmup_target`` (its ``decay_steps`` *excludes* the warmup, ``alpha = lr_min / lr``), a
  per-epoch recipe's schedule evaluated at ``iterations // recipe.unit``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from resnet_keras.model import spec_of
from resnet_keras.weights import variables
from shared.recipe import Recipe
from shared.spec import is_statistic


@keras.saving.register_keras_serializable(package="resnet_keras")
class PerUnit(keras.optimizers.schedules.LearningRateSchedule):
    """A schedule evaluated at ``step // unit`` (a per-epoch schedule of ``unit`` updates an epoch)."""

    def __init__(self, inner, unit: int):
        self.inner, self.unit = inner, unit

    def __call__(self, step):
        return self.inner(ops.floor_divide(step, self.unit))

    def get_config(self):
        return {"inner": keras.optimizers.schedules.serialize(self.inner), "unit": self.unit}


def schedule(recipe: Recipe):
    """The recipe's learning rate as a Keras schedule of ``iterations`` (or a float)."""
    if recipe.schedule == "constant":
        return recipe.lr
    if recipe.schedule == "steps":
        values = [recipe.lr * recipe.gamma**i for i in range(len(recipe.milestones) + 1)]
        inner = keras.optimizers.schedules.PiecewiseConstantDecay([m - 1 for m in recipe.milestones], values)
    elif recipe.warmup:
        inner = keras.optimizers.schedules.CosineDecay(
            recipe.lr * recipe.warmup_start, decay_steps=recipe.cosine, alpha=recipe.lr_min / recipe.lr,
            warmup_target=recipe.lr, warmup_steps=recipe.warmup)
    else:
        inner = keras.optimizers.schedules.CosineDecay(recipe.lr, decay_steps=recipe.cosine,
                                                       alpha=recipe.lr_min / recipe.lr)
    return inner if recipe.unit == 1 else PerUnit(inner, recipe.unit)


class RecipeOptimizer(keras.optimizers.Optimizer):
    """torch's SGD (momentum buffer times the current rate, dampening, nesterov) or torch's
    AdamW (epsilon outside the bias-corrected root), with coupled or decoupled weight decay on
    the variables ``decayed`` lists: what ``shared.recipe`` states, for any rate schedule."""

    def __init__(self, recipe: Recipe, decayed, learning_rate=None, name="recipe", **kwargs):
        super().__init__(learning_rate=schedule(recipe) if learning_rate is None else learning_rate, name=name,
                         **kwargs)
        self.recipe = recipe
        self._decayed_ids = {id(v) for v in decayed}

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._decay = [id(v) in self._decayed_ids for v in var_list]
        r = self.recipe
        names = ("m", "v") if r.optimizer == "adamw" else ("buffer",) if r.momentum else ()
        self._slots = {n: [self.add_variable_from_reference(v, n) for v in var_list] for n in names}

    def update_step(self, gradient, variable, learning_rate):
        r, i = self.recipe, self._get_variable_index(variable)
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        wd = r.weight_decay if self._decay[i] else 0.0
        if wd and r.decay == "coupled":
            g = g + wd * variable
        if r.optimizer == "sgd":
            step = g
            if r.momentum:
                buf = self._slots["buffer"][i]
                first = ops.equal(self.iterations, 0)  # torch: the first buffer is the gradient, undamped
                new = ops.where(first, g, r.momentum * buf + (1.0 - r.dampening) * g)
                self.assign(buf, new)
                step = g + r.momentum * new if r.nesterov else new
        else:
            (b1, b2), t = r.betas, ops.cast(self.iterations + 1, variable.dtype)
            m, v = self._slots["m"][i], self._slots["v"][i]
            self.assign(m, b1 * m + (1.0 - b1) * g)
            self.assign(v, b2 * v + (1.0 - b2) * g * g)
            step = (m / (1.0 - ops.power(b1, t))) / (ops.sqrt(v / (1.0 - ops.power(b2, t))) + r.eps)
        if wd and r.decay == "decoupled":
            self.assign_sub(variable, lr * wd * variable)
        self.assign_sub(variable, lr * step)


def stock_computes(recipe: Recipe) -> bool:
    """Whether ``keras.optimizers.SGD`` computes ``recipe`` exactly (module docstring)."""
    return (recipe.optimizer == "sgd" and not recipe.dampening
            and (recipe.schedule == "constant" or not recipe.momentum)
            and (recipe.decay == "decoupled" or not recipe.weight_decay))


def optimizer(recipe: Recipe, model: keras.Model) -> keras.optimizers.Optimizer:
    """A Keras optimizer computing ``recipe`` on ``model``'s trainable variables (module docstring)."""
    decayed = recipe.decayed(spec_of(model))
    learnable = [(k, v) for k, v in variables(model) if not is_statistic(k)]
    if stock_computes(recipe):
        opt = keras.optimizers.SGD(schedule(recipe), momentum=recipe.momentum, nesterov=recipe.nesterov,
                                   weight_decay=recipe.weight_decay or None)
        if recipe.weight_decay:
            opt.exclude_from_weight_decay(var_list=[v for k, v in learnable if not decayed[k]])
        return opt
    return RecipeOptimizer(recipe, [v for k, v in learnable if decayed[k]])


def targets(labels, classes: int) -> np.ndarray:
    """Class indices (B,) or soft targets (B, K) (mixup, cutmix) as the (B, K) targets Keras'
    categorical cross-entropy takes (its label smoothing is categorical only)."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        if labels.shape[1] != classes:
            raise ValueError(f"labels: soft targets need {classes} columns, got shape {labels.shape}")
        return labels.astype(np.float32)
    return np.eye(classes, dtype=np.float32)[labels.astype(int)]


def train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer, images, labels, recipe: Recipe) -> float:
    """One update by ``model.train_on_batch``: the model compiled (once) with ``optimizer`` and
    ``CategoricalCrossentropy(from_logits=True, label_smoothing=recipe.label_smoothing)``;
    ``labels``: class indices or soft targets (B, K). Returns the loss."""
    if getattr(model, "optimizer", None) is not optimizer or not model.compiled:
        model.compile(optimizer=optimizer, loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=recipe.label_smoothing))
    y = targets(labels, spec_of(model).num_classes)
    return float(np.asarray(model.train_on_batch(np.asarray(images, np.float32), y)))
