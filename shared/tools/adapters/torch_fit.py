"""``check --mode fit`` in PyTorch: resnet_torch's ``optimizer`` and ``train_step`` in the loop
of ``shared.tools.check_fit.engine``, with the ``code`` ports of ``shared.recipe_mutants`` as
torch code."""

from __future__ import annotations

import torch

import resnet_torch
from resnet_torch.optim import decoupled_decay, scheduler
from shared import recipe_mutants as M
from shared.recipe import Recipe
from shared.tools.check_fit import engine


def versions() -> dict:
    return {"torch": torch.__version__}


class _VelocitySGD(torch.optim.Optimizer):
    """Keras' SGD (``keras_momentum``, ``nesterov_other_form``): ``v = m v - lr g``, then
    ``w += v`` (``w += m v - lr g`` with nesterov); the recipe's coupled decay in ``g`` and its
    decoupled decay by resnet_torch's pre-hook, as its own SGD has them."""

    def __init__(self, groups, lr, momentum, nesterov):
        super().__init__(groups, {"lr": lr, "momentum": momentum, "nesterov": nesterov})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                g = p.grad + group["weight_decay"] * p
                v = self.state[p].setdefault("v", torch.zeros_like(p))
                v.mul_(group["momentum"]).add_(g, alpha=-group["lr"])
                p.add_(group["momentum"] * v - group["lr"] * g if group["nesterov"] else v)


def _optimizer(recipe: Recipe, model, mutant: str):
    opt, sched = resnet_torch.optimizer(recipe, model)
    if mutant in ("keras_momentum", "nesterov_other_form"):
        groups = [{k: v for k, v in g.items() if k in ("params", "weight_decay", "decayed", "decoupled_weight_decay")}
                  for g in opt.param_groups]
        opt = _VelocitySGD(groups, recipe.lr, recipe.momentum, recipe.nesterov)
        if recipe.decay == "decoupled":
            opt.register_step_pre_hook(decoupled_decay)
        sched = scheduler(recipe, opt)
    if mutant == "adam_eps_inside":  # Keras' form: eps / sqrt(1 - b2^t) beside torch's sqrt(v_hat)
        steps = iter(range(1 << 62))

        def eps_inside(optimizer, args, kwargs):
            t = next(steps)
            for group in optimizer.param_groups:
                group["eps"] = M.adam_eps_inside(recipe, t)

        opt.register_step_pre_hook(eps_inside)
    if mutant == "schedule_early":
        sched.step()  # stepped before the first update: torch warns of exactly this
    return opt, sched


def run(spec, weights, **options) -> dict:
    torch.manual_seed(0)
    return engine(resnet_torch, _optimizer, spec, weights, **options)
