"""``check --mode fit`` in PyTorch: resnet_torch's ``optimizer`` and ``train_step`` over a
recipe's updates, every weight and running statistic after each (shared.tools.check_fit), with
the ``code`` ports of ``shared.recipe_mutants`` as torch code."""

from __future__ import annotations

import numpy as np
import torch

from resnet_torch import build, export_weights, load_weights, predict
from resnet_torch.optim import optimizer, train_step
from shared import recipe_mutants as M
from shared.recipe import Recipe


def versions() -> dict:
    return {"torch": torch.__version__}


class _VelocitySGD(torch.optim.Optimizer):
    """Keras' SGD (``keras_momentum``): v = m v - lr g; w += v, coupled decay in g."""

    def __init__(self, groups, lr, momentum):
        super().__init__(groups, {"lr": lr, "momentum": momentum, "weight_decay": 0.0})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                g = p.grad + group["weight_decay"] * p
                v = self.state[p].setdefault("v", torch.zeros_like(p))
                v.mul_(group["momentum"]).add_(g, alpha=-group["lr"])
                p.add_(v)


def _optimizer(recipe: Recipe, model, mutant: str):
    opt, sched = optimizer(recipe, model)
    if mutant == "keras_momentum":
        groups = [{k: v for k, v in g.items() if k in ("params", "weight_decay")} for g in opt.param_groups]
        opt = _VelocitySGD(groups, recipe.lr, recipe.momentum)
        from resnet_torch.optim import scheduler
        sched = scheduler(recipe, opt)
    if mutant == "schedule_early":
        sched.step()  # stepped before the first update: torch warns of exactly this
    return opt, sched


def run(spec, weights, *, batches: str, heldout: str, recipe: dict, mutant: str = "") -> dict:
    torch.manual_seed(0)
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
