"""A training recipe as data: every number and convention that decides a trajectory, and the
learning rate of every update as the one rule (``Recipe.lr_at``). Framework-free.

Each framework package maps a ``Recipe`` to its own optimizer (``optimizer(recipe, model)`` in
resnet_torch, resnet_keras and resnet_flax); ``shared.trajectory`` runs it in float64 numpy, the
oracle ``resnet-parity check --mode fit`` judges every framework's trajectory against.

The conventions a recipe states (docs/training.md has the frameworks' own, with sources):

- Updates are counted from 0: update ``t`` is the ``t``-th optimizer step, and its learning
  rate is ``lr_at(t)``, the schedule evaluated at count ``t // unit`` (``unit``: updates per
  schedule count; an epoch's updates for a per-epoch schedule, 1 for a per-update one). torch's
  scheduler stepped after each update (or epoch), optax's ``schedule(count)`` and Keras'
  ``schedule(iterations)`` all see count 0 at the first update.
- Schedules: ``constant``; ``steps`` (the rate times ``gamma`` at each milestone count, reached
  *at* the milestone, as ``MultiStepLR`` and ``optax.piecewise_constant_schedule`` do);
  ``warmup_cosine`` (a linear warmup over ``warmup`` counts from ``warmup_start x lr`` towards
  ``lr``, then a half cosine from ``lr`` to ``lr_min`` over ``cosine`` counts, *excluding* the
  warmup, held at ``lr_min`` after).
- SGD is torch's: with momentum the buffer is the gradient at the first update and
  ``momentum x buffer + (1 - dampening) x gradient`` after; the update is ``lr x buffer``
  (``lr x (gradient + momentum x buffer)`` with nesterov): the learning rate multiplies the
  buffer, so a changed rate applies to past gradients too (Keras' SGD bakes each step's rate
  into its velocity instead).
- AdamW is torch's and optax's: ``lr x m_hat / (sqrt(v_hat) + eps)``, epsilon outside the
  bias-corrected root (Keras folds the bias correction into the rate, which moves epsilon inside it).
- Weight decay ``coupled``: ``weight_decay x w`` added to the gradient before momentum (torch's
  SGD and Adam ``weight_decay``, an L2 term in the loss); ``decoupled``: ``w -= lr x weight_decay x w``
  before the step (torch's AdamW, Keras 3's ``weight_decay``). ``decay_mask`` says which weights
  decay: ``all``, ``no_norm`` (not BatchNorm's gamma and beta: torchvision's
  ``--norm-weight-decay 0``), ``kernels_only`` (weights of rank > 1: not BatchNorm, not biases;
  the Flax example's L2 term, timm's ``ndim <= 1`` exclusion).
- The loss is the mean softmax cross-entropy over the batch against ``(1 - label_smoothing) x
  one_hot + label_smoothing / K`` (every class, the true one included).
- ``bn_momentum``: torch's meaning (the weight of the new batch statistic); None keeps the
  spec's.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from shared.spec import BatchNorm, ResNetSpec, is_statistic

OPTIMIZERS = ("sgd", "adamw")
DECAYS = ("coupled", "decoupled")
MASKS = ("all", "no_norm", "kernels_only")
SCHEDULES = ("constant", "steps", "warmup_cosine")


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    source: str = ""
    optimizer: str = "sgd"
    lr: float = 0.1  # the peak learning rate
    momentum: float = 0.9  # SGD
    nesterov: bool = False
    dampening: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    eps: float = 1e-8  # AdamW, outside the bias-corrected root
    weight_decay: float = 0.0
    decay: str = "coupled"
    decay_mask: str = "all"
    schedule: str = "constant"
    unit: int = 1  # updates per schedule count
    length: int = 0  # counts of the whole run (the schedule's horizon; 0: unstated)
    milestones: tuple[int, ...] = ()  # "steps": counts at which the rate is multiplied by gamma
    gamma: float = 0.1
    warmup: int = 0  # "warmup_cosine": counts of linear warmup
    warmup_start: float = 0.0  # the rate's factor at count 0 of the warmup
    cosine: int = 0  # counts of the cosine after the warmup
    lr_min: float = 0.0
    label_smoothing: float = 0.0
    loss: str = "softmax_cross_entropy"  # mean over the batch
    batch_size: int = 256
    bn_momentum: float | None = None  # torch's meaning; None: the spec's
    out_of_scope: tuple[str, ...] = ()  # parts of the published recipe a trajectory check does not cover

    def __post_init__(self):
        errors = []
        for field, allowed in (("optimizer", OPTIMIZERS), ("decay", DECAYS), ("decay_mask", MASKS),
                               ("schedule", SCHEDULES), ("loss", ("softmax_cross_entropy",))):
            if getattr(self, field) not in allowed:
                errors.append(f"{field}: expected one of {', '.join(allowed)}, got {getattr(self, field)!r}")
        if not self.lr > 0:
            errors.append(f"lr: must be > 0, got {self.lr!r}")
        if not 0 <= self.momentum < 1 or not 0 <= self.dampening < 1:
            errors.append(f"momentum, dampening: must be in [0, 1), got {self.momentum!r}, {self.dampening!r}")
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            errors.append("nesterov: needs momentum > 0 and dampening 0 (as torch.optim.SGD)")
        if self.weight_decay < 0 or not 0 <= self.label_smoothing < 1:
            errors.append(f"weight_decay >= 0 and label_smoothing in [0, 1), got {self.weight_decay!r}, "
                          f"{self.label_smoothing!r}")
        if not (isinstance(self.unit, int) and self.unit >= 1):
            errors.append(f"unit: updates per schedule count, an integer >= 1, got {self.unit!r}")
        if self.schedule == "steps" and list(self.milestones) != sorted(set(self.milestones)):
            errors.append(f"milestones: increasing counts, got {self.milestones!r}")
        if self.schedule == "warmup_cosine" and (self.cosine < 1 or self.warmup < 0
                                                  or not 0 <= self.warmup_start <= 1):
            errors.append(f"warmup_cosine: cosine >= 1 counts, warmup >= 0, warmup_start in [0, 1]; got "
                          f"cosine {self.cosine!r}, warmup {self.warmup!r}, warmup_start {self.warmup_start!r}")
        if self.bn_momentum is not None and not 0 < self.bn_momentum <= 1:
            errors.append(f"bn_momentum: in (0, 1], torch's meaning, got {self.bn_momentum!r}")
        if errors:
            raise ValueError(f"recipe {self.name}: " + "; ".join(errors))

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> "Recipe":
        tuples = {k: tuple(fields[k]) for k in ("betas", "milestones", "out_of_scope") if k in fields}
        return cls(**{**fields, **tuples})

    # ------------------------------------------------------------------ the learning rate

    def lr_at(self, t: int) -> float:
        """The learning rate of update ``t`` (0-based), the one rule every framework must meet."""
        if t < 0:
            raise ValueError(f"update index: counted from 0, got {t}")
        count = t // self.unit
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "steps":
            return self.lr * self.gamma ** sum(count >= m for m in self.milestones)
        if count < self.warmup:
            return self.lr * (self.warmup_start + (1.0 - self.warmup_start) * count / self.warmup)
        progress = min(count - self.warmup, self.cosine) / self.cosine
        return self.lr_min + (self.lr - self.lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def lrs(self, steps: int) -> list[float]:
        return [self.lr_at(t) for t in range(steps)]

    def window(self, steps: int) -> "Recipe":
        """The same recipe with its schedule squeezed into ``steps`` updates, one update per
        count: every length (milestones, warmup, cosine) scaled by ``steps / length`` and
        rounded, a warmup of at least one count kept. What ``check --mode fit`` trains, so a
        short run sees the schedule's changes of rate."""
        if not self.length:
            return self.replace(unit=1)
        scale = steps / self.length
        changes: dict = dict(unit=1, length=steps, name=f"{self.name} (in {steps} updates)")
        if self.schedule == "steps":
            changes["milestones"] = tuple(sorted({max(1, round(m * scale)) for m in self.milestones}))
        elif self.schedule == "warmup_cosine":
            warmup = max(1, round(self.warmup * scale)) if self.warmup else 0
            changes.update(warmup=warmup, cosine=max(1, steps - warmup))
        return self.replace(**changes)

    # ---------------------------------------------------------------- decay, loss, BatchNorm

    def decayed(self, spec: ResNetSpec) -> dict[str, bool]:
        """Learnable canonical weight -> whether weight decay applies to it (``decay_mask``)."""
        norms = {f"{layer.name}.{p}" for layer in spec.layers() if isinstance(layer, BatchNorm)
                 for p in layer.params}
        shapes = {k: s for k, s in spec.param_shapes().items() if not is_statistic(k)}
        if self.weight_decay == 0:
            return {k: False for k in shapes}
        if self.decay_mask == "all":
            return {k: True for k in shapes}
        if self.decay_mask == "no_norm":
            return {k: k not in norms for k in shapes}
        return {k: len(s) > 1 for k, s in shapes.items()}

    def targets(self, labels: np.ndarray, classes: int, dtype=np.float64) -> np.ndarray:
        """(B, K) soft targets of the loss: label smoothing to every class."""
        labels = np.asarray(labels).astype(int)
        one_hot = np.eye(classes, dtype=dtype)[labels]
        eps = self.label_smoothing
        return (one_hot * (1.0 - eps) + eps / classes).astype(dtype)

    def train_spec(self, spec: ResNetSpec) -> ResNetSpec:
        """The spec trained: its BatchNorm momentum the recipe's, where the recipe states one."""
        return spec if self.bn_momentum is None else spec.replace(bn_momentum=self.bn_momentum)

    def describe(self) -> str:
        """One line: the recipe's numbers and conventions."""
        parts = [f"{self.optimizer} lr {self.lr:g}"]
        if self.optimizer == "sgd":
            parts.append(f"momentum {self.momentum:g}{' nesterov' if self.nesterov else ''}"
                         f"{f' dampening {self.dampening:g}' if self.dampening else ''}")
        else:
            parts.append(f"betas {self.betas[0]:g}/{self.betas[1]:g} eps {self.eps:g}")
        if self.weight_decay:
            parts.append(f"{self.decay} weight decay {self.weight_decay:g} on {self.decay_mask.replace('_', ' ')}")
        sched = {"constant": "constant rate",
                 "steps": f"x{self.gamma:g} at counts {', '.join(map(str, self.milestones))}",
                 "warmup_cosine": f"warmup {self.warmup} from {self.warmup_start:g}x, cosine over {self.cosine}"}
        parts.append(sched[self.schedule] + (f" (count = update // {self.unit})" if self.unit > 1 else ""))
        if self.label_smoothing:
            parts.append(f"label smoothing {self.label_smoothing:g}")
        if self.bn_momentum is not None:
            parts.append(f"BatchNorm momentum {self.bn_momentum:g}")
        return ", ".join(parts)


IMAGENET_TRAIN_IMAGES = 1_281_167

# torchvision's references/classification/train.py with its defaults, the command its README
# gives for ResNet-50 (8 GPUs x batch 32): SGD lr 0.1, momentum 0.9, weight decay 1e-4 on every
# parameter (coupled: torch.optim.SGD's weight_decay), StepLR(step_size=30, gamma=0.1) stepped
# once per epoch, 90 epochs.
TORCHVISION_CLASSIC = Recipe(
    "torchvision-classic", "torchvision references/classification (README: ResNet-50, train.py defaults)",
    lr=0.1, momentum=0.9, weight_decay=1e-4, decay="coupled", decay_mask="all", schedule="steps",
    unit=math.ceil(IMAGENET_TRAIN_IMAGES / 256), length=90, milestones=(30, 60), gamma=0.1, batch_size=256,
    out_of_scope=("data augmentation (random resized crop 224, horizontal flip)",))

# torchvision's newer recipe (README "ResNet50 v2", the IMAGENET1K_V2 weights; the blog post "How
# to train state-of-the-art models using TorchVision's latest primitives"): 8 GPUs x batch 128,
# lr 0.5, cosine annealing over 600 epochs after 5 epochs of LinearLR warmup from
# lr_warmup_decay 0.01 (both stepped once per epoch, SequentialLR), weight decay 2e-5 with
# --norm-weight-decay 0.0 (BatchNorm's weight and bias in a group of their own without decay;
# fc.bias decays), label smoothing 0.1.
TORCHVISION_NEW = Recipe(
    "torchvision-new", "torchvision references/classification (README: ResNet50 v2 / IMAGENET1K_V2)",
    lr=0.5, momentum=0.9, weight_decay=2e-5, decay="coupled", decay_mask="no_norm", schedule="warmup_cosine",
    unit=math.ceil(IMAGENET_TRAIN_IMAGES / 1024), length=600, warmup=5, warmup_start=0.01, cosine=595,
    label_smoothing=0.1, batch_size=1024,
    out_of_scope=("mixup 0.2 and cutmix 1.0 (soft targets: train_step takes them, see docs/training.md)",
                  "model EMA (decay 0.99998 every 32 updates)", "TrivialAugment wide, random erasing 0.1",
                  "repeated-augment sampler", "train crop 176, eval resize 232"))

# The Flax ImageNet example (examples/imagenet/train.py and configs/default.py): optax.sgd
# (momentum 0.9, nesterov=True) on a per-update schedule, optax.linear_schedule from 0 over 5
# epochs joined to optax.cosine_decay_schedule over the other 95 (to 0); base rate 0.1 x
# batch 128 / 256; weight decay as an L2 term 1e-4 x 0.5 x sum(w^2) over parameters with
# ndim > 1 (coupled, kernels only); BatchNorm momentum 0.9 (Flax's meaning: 0.1 in torch's), eps 1e-5.
_FLAX_STEPS_PER_EPOCH = IMAGENET_TRAIN_IMAGES // 128
FLAX_IMAGENET = Recipe(
    "flax-imagenet", "flax examples/imagenet (train.py, configs/default.py)",
    lr=0.1 * 128 / 256, momentum=0.9, nesterov=True, weight_decay=1e-4, decay="coupled", decay_mask="kernels_only",
    schedule="warmup_cosine", unit=1, length=100 * _FLAX_STEPS_PER_EPOCH, warmup=5 * _FLAX_STEPS_PER_EPOCH,
    warmup_start=0.0, cosine=95 * _FLAX_STEPS_PER_EPOCH, batch_size=128, bn_momentum=0.1,
    out_of_scope=("data augmentation (input_pipeline.py)", "cross-replica BatchNorm statistics (pmean)"))

# The ConvNeXt paper's modernized training recipe, which alone takes a plain ResNet-50 from
# 76.1% to 78.8% ("A ConvNet for the 2020s", Liu et al., CVPR 2022, section 2.2 "Training
# Techniques"; its settings in Appendix A.1), as facebookresearch/ConvNeXt runs it (main.py's
# defaults, TRAINING.md: 4 nodes x 8 GPUs x batch 128 = 4096): torch.optim.AdamW (betas torch's
# 0.9/0.999, eps 1e-8: --opt_eps), lr 4e-3 at batch 4096, weight decay 0.05 (decoupled: torch's
# AdamW) on parameters of ndim > 1 only (optim_factory.get_parameter_groups: no decay where
# len(shape) == 1 or the name ends in .bias: BatchNorm and every bias), utils.cosine_scheduler
# evaluated every update: a warmup from 0 over 20 epochs, then a cosine to min_lr 1e-6 over the
# other 280 of 300, an epoch being len(dataset) // 4096 = 312 updates; label smoothing 0.1
# (--smoothing, given to Mixup's targets: eps / K to every class).
_CONVNEXT_STEPS_PER_EPOCH = IMAGENET_TRAIN_IMAGES // 4096
CONVNEXT_RESNET50 = Recipe(
    "convnext-resnet50", "ConvNeXt (Liu et al. 2022) section 2.2, Appendix A.1; facebookresearch/ConvNeXt main.py",
    optimizer="adamw", lr=4e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05, decay="decoupled",
    decay_mask="kernels_only", schedule="warmup_cosine", unit=1, length=300 * _CONVNEXT_STEPS_PER_EPOCH,
    warmup=20 * _CONVNEXT_STEPS_PER_EPOCH, warmup_start=0.0, cosine=280 * _CONVNEXT_STEPS_PER_EPOCH, lr_min=1e-6,
    label_smoothing=0.1, batch_size=4096,
    out_of_scope=("mixup 0.8 and cutmix 1.0, switch probability 0.5 (soft targets: train_step takes them)",
                  "RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, color jitter 0.4, bicubic resize",
                  "stochastic depth", "model EMA (decay 0.9999)",
                  "BatchNorm statistics per GPU batch of 128 (DistributedDataParallel, no SyncBatchNorm)",
                  "the warmup as np.linspace(0, lr, 6240): it reaches lr at update 6239, the recipe at 6240 "
                  "(its rates k / 6239 of lr, the recipe's k / 6240: 1.6e-4 relative)"))

PRESETS = {r.name: r for r in (TORCHVISION_CLASSIC, TORCHVISION_NEW, FLAX_IMAGENET, CONVNEXT_RESNET50)}


def preset(name: str) -> Recipe:
    if name not in PRESETS:
        raise ValueError(f"recipe: unknown {name!r}, expected one of {', '.join(PRESETS)}")
    return PRESETS[name]
