"""Broken training ports for ``check --mode fit``: each a convention of ``shared.recipe`` read
the way another framework (or a common port) reads it, and harmless changes that must pass.

How each reaches every framework the same way: a changed recipe handed to the framework's own
``optimizer`` (``recipe``), a changed spec the model is built from (``spec``), the soft targets
the train step is given (``targets``), the order of a batch (``data``), or framework code in
the fit engine (``code``: ``shared.tools.adapters.*_fit``). ``applies(recipe)`` says, from the
recipe alone, whether the port changes the trajectory (never from the verdict).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from shared.recipe import Recipe


@dataclasses.dataclass(frozen=True)
class FitMutant:
    name: str
    what: str
    how: str  # "recipe", "spec", "targets", "data", "code"
    applies: Callable[[Recipe], bool]
    change: Callable[[Recipe], Recipe] | None = None


def _lr_changes(r: Recipe) -> bool:
    return r.schedule != "constant"


def _velocity(r: Recipe) -> bool:
    """Whether the velocity form (the rate inside the buffer) differs from the recipe's: SGD with
    momentum under a changing rate (Keras' SGD has no dampening: a dampened recipe has no such port)."""
    return r.optimizer == "sgd" and r.momentum > 0 and not r.dampening and _lr_changes(r)


def adam_eps_inside(r: Recipe, t: int) -> float:
    """The epsilon beside ``sqrt(v_hat)`` that computes Keras' Adam at update ``t`` (from 0)."""
    return r.eps / (1.0 - r.betas[1] ** (t + 1)) ** 0.5


CATALOGUE = {m.name: m for m in (
    FitMutant("decoupled_decay", "weight decay decoupled (w -= lr wd w, Keras 3's) where the recipe couples it",
              "recipe", lambda r: r.weight_decay > 0 and r.decay == "coupled" and (r.momentum > 0 or r.optimizer != "sgd"),
              lambda r: r.replace(decay="decoupled")),
    FitMutant("coupled_decay", "weight decay coupled (an L2 term's gradient, Adam's weight_decay: AdamW acting as "
              "Adam + L2) where the recipe decouples it", "recipe",
              lambda r: r.weight_decay > 0 and r.decay == "decoupled" and (r.momentum > 0 or r.optimizer != "sgd"),
              lambda r: r.replace(decay="coupled")),
    FitMutant("decay_on_norm", "weight decay on BatchNorm's gamma and beta where the recipe excludes them",
              "recipe", lambda r: r.weight_decay > 0 and r.decay_mask != "all", lambda r: r.replace(decay_mask="all")),
    FitMutant("decay_on_bias", "weight decay on biases where the recipe decays kernels only",
              "recipe", lambda r: r.weight_decay > 0 and r.decay_mask == "kernels_only",
              lambda r: r.replace(decay_mask="no_norm")),
    FitMutant("keras_momentum", "Keras' SGD velocity (v = m v - lr g; w += v): past gradients keep their old rate",
              "code", lambda r: _velocity(r) and not r.nesterov),
    FitMutant("nesterov_other_form", "Nesterov in the velocity form (v = m v - lr g; w += m v - lr g: Sutskever's, as "
              "Keras and Caffe store it) where the recipe states torch's and optax's (w -= lr (g + m buf))",
              "code", lambda r: _velocity(r) and r.nesterov),
    FitMutant("adam_eps_inside", "Adam's epsilon inside the bias correction (Keras' Adam and AdamW: lr sqrt(1 - b2^t) / "
              "(1 - b1^t) x m / (sqrt(v) + eps), i.e. eps / sqrt(1 - b2^t) beside sqrt(v_hat))", "code",
              lambda r: r.optimizer == "adamw"),
    FitMutant("schedule_early", "the schedule one count early (evaluated at count + 1)", "code", _lr_changes),
    FitMutant("warmup_inside_cosine", "the cosine's length counted with the warmup inside it (optax's decay_steps "
              "read as Keras')", "recipe", lambda r: r.schedule == "warmup_cosine" and r.warmup > 0 and r.cosine > 1,
              lambda r: r.replace(cosine=max(1, r.cosine - r.warmup))),
    FitMutant("bn_momentum_other_way", "BatchNorm momentum read the other way (torch's 0.1 as Keras' 0.1)", "spec",
              lambda r: True),
    FitMutant("smoothing_wrong_classes", "label smoothing to the wrong classes only (eps / (K - 1) each)", "targets",
              lambda r: r.label_smoothing > 0),
    FitMutant("batch_order", "harmless: each batch's images in another order (another summation order)", "data",
              lambda r: False),
)}
HARMLESS = ("batch_order",)


def train_spec(name: str, spec):
    """The spec the broken port builds its model from."""
    if name == "bn_momentum_other_way":
        return spec.replace(bn_momentum=1.0 - spec.bn_momentum)
    return spec


def recipe(name: str, r: Recipe) -> Recipe:
    """The recipe the broken port hands its framework's optimizer."""
    m = CATALOGUE[name] if name else None
    return m.change(r) if m is not None and m.change else r


def targets(name: str, r: Recipe, labels: np.ndarray, classes: int) -> np.ndarray | None:
    """Soft targets (B, K) the broken port trains on, with the recipe's smoothing already in
    them (its train step then smooths nothing), or None: the labels as they are."""
    if name != "smoothing_wrong_classes":
        return None
    one_hot = np.eye(classes)[np.asarray(labels).astype(int)]
    eps = r.label_smoothing
    return (one_hot * (1.0 - eps) + (1.0 - one_hot) * eps / (classes - 1)).astype(np.float32)


def batch(name: str, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if name != "batch_order":
        return images, labels
    order = np.arange(len(labels))[::-1]
    return images[order], labels[order]
