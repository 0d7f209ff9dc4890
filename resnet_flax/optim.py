"""A ``shared.recipe.Recipe`` as an optax chain, and one training update under ``nnx.jit``.

``optimizer(recipe, model)`` returns the ``nnx.Optimizer`` of ``model``'s ``nnx.Param``s that
``train_step`` takes; its ``tx`` is ``transform(recipe, model)``, the optax chain:

- SGD: ``optax.sgd`` (``optax.trace`` starts from zeros, so its first buffer is the gradient, as
  torch's). Coupled decay: ``add_decayed_weights`` *before* it (the gradient of an L2 term,
  what the Flax example adds to its loss); decoupled: ``trace``, then ``add_decayed_weights``,
  then ``scale_by_learning_rate`` (``w -= lr x (buffer + wd x w)``). ``optax.trace`` has no
  dampening: a recipe with one is refused.
- AdamW: ``optax.adamw`` (decoupled), or ``add_decayed_weights`` before ``optax.adam`` (coupled).
- The mask: a function of the parameter tree naming the decayed weights (``recipe.decay_mask``).
- Schedules: ``optax.piecewise_constant_schedule`` (the rate changes *at* the boundary count, as
  torch's ``MultiStepLR``), ``optax.warmup_cosine_decay_schedule`` (its ``decay_steps``
  *includes* the warmup: ``warmup + cosine``), ``optax.cosine_decay_schedule`` without warmup;
  a per-epoch recipe's schedule is evaluated at ``count // recipe.unit``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from resnet_flax.weights import NATIVE_PARAM
from shared.recipe import Recipe


def schedule(recipe: Recipe):
    """The recipe's learning rate as an optax schedule of the update count."""
    if recipe.schedule == "constant":
        inner = optax.constant_schedule(recipe.lr)
    elif recipe.schedule == "steps":
        inner = optax.piecewise_constant_schedule(recipe.lr, {m: recipe.gamma for m in recipe.milestones})
    elif recipe.warmup:
        inner = optax.warmup_cosine_decay_schedule(
            init_value=recipe.lr * recipe.warmup_start, peak_value=recipe.lr, warmup_steps=recipe.warmup,
            decay_steps=recipe.warmup + recipe.cosine, end_value=recipe.lr_min)
    else:
        inner = optax.cosine_decay_schedule(recipe.lr, decay_steps=recipe.cosine, alpha=recipe.lr_min / recipe.lr)
    return inner if recipe.unit == 1 else (lambda count: inner(count // recipe.unit))


def decay_mask(recipe: Recipe, model):
    """A function of the parameter tree: True where ``recipe`` decays the weight."""
    decayed = recipe.decayed(model.spec)
    table = {(layer.name, NATIVE_PARAM[layer.kind][p]): decayed[f"{layer.name}.{p}"]
             for layer in model.spec.layers() for p in layer.params if f"{layer.name}.{p}" in decayed}

    def mask(params):
        return jax.tree_util.tree_map_with_path(lambda path, _: table[(path[0].key, path[1].key)], params)

    return mask


def transform(recipe: Recipe, model, rate=None) -> optax.GradientTransformation:
    """The optax chain computing ``recipe`` on ``model``'s ``nnx.Param``s (module docstring);
    ``rate``: another schedule of the count in place of the recipe's."""
    lr, wd = rate or schedule(recipe), recipe.weight_decay
    decay = [optax.add_decayed_weights(wd, mask=decay_mask(recipe, model))] if wd else []
    coupled = recipe.decay == "coupled"
    if recipe.optimizer == "adamw":
        b1, b2 = recipe.betas
        if coupled:
            return optax.chain(*decay, optax.adam(lr, b1=b1, b2=b2, eps=recipe.eps))
        return optax.adamw(lr, b1=b1, b2=b2, eps=recipe.eps, weight_decay=wd, mask=decay_mask(recipe, model))
    if recipe.dampening:
        raise ValueError(f"recipe {recipe.name}: dampening {recipe.dampening:g}: optax.trace has no dampening")
    trace = [optax.trace(decay=recipe.momentum, nesterov=recipe.nesterov)] if recipe.momentum else []
    if coupled:
        return optax.chain(*decay, *trace, optax.scale_by_learning_rate(lr))
    return optax.chain(*trace, *decay, optax.scale_by_learning_rate(lr))


def optimizer(recipe: Recipe, model) -> nnx.Optimizer:
    """``nnx.Optimizer(model, transform(recipe, model), wrt=nnx.Param)``: what ``train_step`` takes."""
    return nnx.Optimizer(model, transform(recipe, model), wrt=nnx.Param)


@nnx.jit
def _update(model, opt, x, targets):
    def loss_fn(m):
        logits = m(x)
        logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))  # bf16: the loss in float32
        return optax.softmax_cross_entropy(logits, targets.astype(logits.dtype)).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss


def targets(labels, classes: int, label_smoothing: float) -> jnp.ndarray:
    """Class indices (B,) or soft targets (B, K) (mixup, cutmix), then label smoothing:
    ``optax.smooth_labels`` (``(1 - eps) y + eps / K``)."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        if labels.shape[1] != classes:
            raise ValueError(f"labels: soft targets need {classes} columns, got shape {labels.shape}")
        soft = jnp.asarray(labels, jnp.float32)
    else:
        soft = jax.nn.one_hot(labels, classes, dtype=jnp.float32)
    return optax.smooth_labels(soft, label_smoothing) if label_smoothing else soft


def train_step(model, optimizer: nnx.Optimizer, images, labels, recipe: Recipe) -> float:
    """One update under ``nnx.jit``: train-mode forward of NHWC ``images``, mean softmax
    cross-entropy against ``labels`` (class indices or soft targets (B, K)) with the recipe's
    label smoothing, ``optimizer.update``. ``optimizer``: ``optimizer(recipe, model)``. Returns the loss."""
    model.train()
    y = targets(labels, model.spec.num_classes, recipe.label_smoothing)
    x = jnp.asarray(np.asarray(images, np.result_type(np.asarray(images).dtype, np.float32)))
    return float(_update(model, optimizer, x, y))
