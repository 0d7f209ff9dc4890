"""A ``shared.recipe.Recipe`` as torch's own optimizer and scheduler, and one training update.

``optimizer(recipe, model)`` returns ``(torch.optim optimizer, lr scheduler)``:

- SGD: ``torch.optim.SGD`` (momentum, dampening, nesterov are torch's, as the recipe states
  them); coupled weight decay is its ``weight_decay``, in a param group of the decayed weights
  (the other group decays nothing). Decoupled decay (``w -= lr x wd x w`` before the step, which
  ``torch.optim.SGD`` has no option for) is a step pre-hook on the decayed group.
- AdamW: ``torch.optim.AdamW`` (decoupled) or ``torch.optim.Adam`` with ``weight_decay``
  (coupled), the same two groups.
- Schedules: ``MultiStepLR``; ``SequentialLR`` of ``LinearLR`` (torch refuses a start factor of
  0: a warmup from 0, the Flax example's, is ``LambdaLR(count / warmup)``) and
  ``CosineAnnealingLR(T_max=cosine)``; a constant rate is ``LambdaLR(1)``. torch's
  ``CosineAnnealingLR`` rises again after ``T_max`` counts where the recipe holds ``lr_min``:
  the recipe's length is where a run ends.

``train_step`` steps the scheduler once every ``recipe.unit`` updates (per epoch for a
per-epoch recipe, as torchvision's train.py does), so the rate of update ``t`` is
``recipe.lr_at(t)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from shared import interop
from shared.recipe import Recipe
from shared.spec import is_statistic


def parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """(canonical key, parameter) of every learnable weight, in the spec's order."""
    named = dict(model.named_parameters())
    return [(f"{layer.name}.{p}", named[f"{interop.torchvision_module(layer.name)}.{interop.torchvision_param(layer, p)}"])
            for layer in model.spec.layers() for p in layer.params if not is_statistic(f"{layer.name}.{p}")]


def param_groups(recipe: Recipe, model: torch.nn.Module) -> list[dict]:
    """[decayed parameters, the others] as torch param groups (``recipe.decay_mask``)."""
    decayed = recipe.decayed(model.spec)
    params = parameters(model)
    wd = recipe.weight_decay
    return [{"params": [p for k, p in params if decayed[k]], "weight_decay": wd, "decayed": True},
            {"params": [p for k, p in params if not decayed[k]], "weight_decay": 0.0, "decayed": False}]


def decoupled_decay(optimizer, args, kwargs):
    """The step pre-hook of decoupled weight decay: ``w -= lr x wd x w`` on the decayed group
    (``decoupled_weight_decay``) before the step."""
    with torch.no_grad():
        for group in optimizer.param_groups:
            if group["decayed"] and group["decoupled_weight_decay"]:
                for p in group["params"]:
                    p.mul_(1.0 - group["lr"] * group["decoupled_weight_decay"])


def scheduler(recipe: Recipe, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The recipe's schedule from torch's own schedulers, stepped once per count."""
    sched = torch.optim.lr_scheduler
    if recipe.schedule == "constant":
        return sched.LambdaLR(opt, lambda count: 1.0)
    if recipe.schedule == "steps":
        return sched.MultiStepLR(opt, milestones=list(recipe.milestones), gamma=recipe.gamma)
    cosine = sched.CosineAnnealingLR(opt, T_max=recipe.cosine, eta_min=recipe.lr_min)
    if not recipe.warmup:
        return cosine
    if recipe.warmup_start > 0:
        warm = sched.LinearLR(opt, start_factor=recipe.warmup_start, end_factor=1.0, total_iters=recipe.warmup)
    else:
        warm = sched.LambdaLR(opt, lambda count: count / recipe.warmup)
    return sched.SequentialLR(opt, [warm, cosine], milestones=[recipe.warmup])


def optimizer(recipe: Recipe, model: torch.nn.Module):
    """(optimizer, scheduler) computing ``recipe`` on ``model``'s parameters (module docstring)."""
    groups = param_groups(recipe, model)
    coupled = recipe.decay == "coupled"
    for g in groups:
        g["decoupled_weight_decay"] = 0.0 if coupled else g["weight_decay"]
        if not coupled and recipe.optimizer == "sgd":
            g["weight_decay"] = 0.0  # the pre-hook decays instead
    if recipe.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, dampening=recipe.dampening,
                              nesterov=recipe.nesterov)
        if not coupled:
            opt.register_step_pre_hook(decoupled_decay)
    else:
        adam = torch.optim.Adam if coupled else torch.optim.AdamW
        opt = adam(groups, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps)
    return opt, scheduler(recipe, opt)


def _targets(labels, classes: int) -> torch.Tensor:
    """Class indices (B,) or soft targets (B, K) (mixup, cutmix) as torch.cross_entropy takes them."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        if labels.shape[1] != classes:
            raise ValueError(f"labels: soft targets need {classes} columns, got shape {labels.shape}")
        return torch.from_numpy(labels.astype(np.float32))
    return torch.from_numpy(labels.astype(np.int64))


def train_step(model: torch.nn.Module, optimizer, images, labels, recipe: Recipe) -> float:
    """One update: train-mode forward of NHWC numpy ``images`` (or an NCHW tensor), mean
    cross-entropy with the recipe's label smoothing against ``labels`` (class indices, or soft
    targets (B, K)), backward, ``optimizer.step()``; the scheduler stepped every ``recipe.unit``
    updates. ``optimizer``: the pair ``optimizer(recipe, model)`` returned. Returns the loss."""
    opt, sched = optimizer
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(
        np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1, 2)))
    model.train()
    opt.zero_grad(set_to_none=True)
    logits = model(x.to(next(model.parameters()).device))  # numpy batches arrive on the CPU
    logits = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()  # autocast: the loss in float32
    y = _targets(labels, logits.shape[-1]).to(logits.device)
    loss = F.cross_entropy(logits, y.to(logits.dtype) if y.is_floating_point() else y,
                           label_smoothing=recipe.label_smoothing)
    loss.backward()
    opt.step()
    sched.recipe_updates = getattr(sched, "recipe_updates", 0) + 1
    if sched.recipe_updates % recipe.unit == 0:
        sched.step()
    return float(loss.detach())
