"""Parity statistics and the error budgets they are judged against (docs/design.md, measured).

The rule: an implementation's error against the float64 reference may be at most ``MARGIN``
(4x) the error a trusted peer (torchvision or keras.applications in float32) shows on the same
weights and input. Where no peer runs, the measured fp32 table below stands in for the peer, per
depth and device, with the same margin. TF32 and bf16 have no table here: 4x their error against
float64 (0.1-0.3 on random weights) could not tell a broken port from a correct one, so
``shared.tools.check`` judges them against the reference with their rounding emulated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MARGIN = 4.0
FP32_FLOOR = 1e-6  # the least fp32 budget (fp32_budget)

# Relative L2 error of the logits against float64, measured with random weights and calibrated
# BatchNorm (docs/design.md, "Measured error budgets"). Keys: (arch, device, precision), the arch a
# name of ``shared.spec.PRESETS``. CPU fp32 uses the 96x96 row: the error of an fp32 forward
# grows with depth, not with size, and 96 px is the larger of the two measured CPU rows.
MEASURED = {
    ("resnet50", "cpu", "fp32"): 3.0e-5,
    ("resnet101", "cpu", "fp32"): 1.3e-4,
    ("resnet152", "cpu", "fp32"): 4.7e-4,
    ("resnet50", "gpu", "fp32"): 1.7e-5,
    ("resnet101", "gpu", "fp32"): 8.3e-5,
    ("resnet152", "gpu", "fp32"): 3.3e-4,
    # The other presets, CPU fp32, measured 2026-11-27 on this project's 2-core x86_64 CPU (numpy
    # 2.4.6, torch 2.14.1, torchvision 0.29.1): the fp32 peer (torchvision's model in float32;
    # for the V2 archs, which torchvision lacks, ``reference.forward(..., dtype=np.float32)``)
    # against the float64 reference at 96 px, batch 2, ``reference.calibrated_weights(spec,
    # seed=s)`` and ``reference.random_images(spec, 2, 96, seed=s + 1)``; the largest of seeds
    # 0, 1, 2, rounded up. tests/test_arch_tables.py re-measures some of them.
    ("resnet18", "cpu", "fp32"): 1.6e-6,
    ("resnet34", "cpu", "fp32"): 3.3e-6,
    ("resnext50_32x4d", "cpu", "fp32"): 2.3e-5,
    ("resnext101_32x8d", "cpu", "fp32"): 4.7e-5,
    ("resnext101_64x4d", "cpu", "fp32"): 5.1e-5,
    ("wide_resnet50_2", "cpu", "fp32"): 2.5e-5,
    ("wide_resnet101_2", "cpu", "fp32"): 4.9e-5,
    ("resnet50v2", "cpu", "fp32"): 8.9e-6,
    ("resnet101v2", "cpu", "fp32"): 1.8e-5,
    ("resnet152v2", "cpu", "fp32"): 3.7e-5,
    # timm's and keras-hub's family, CPU fp32, measured 2026-12-06 on this project's 2-core AMD EPYC
    # (numpy 2.4, the same rule and seeds as above; the fp32 peer is ``reference.forward(...,
    # dtype=np.float32)``, the reference's own arithmetic in float32). resnet10t, resnet18d, resnet26d,
    # resnetaa50 and resnetaa50d re-measured the same day once an AvgPool's divisor stayed float32
    # (it had made that peer float64 from the first avg pool on: resnetaa50 was 7.1e-6), and every
    # other row with an avg pool (avg-down) re-measured after them (they moved by up to 10%).
    ("resnet26", "cpu", "fp32"): 4.8e-6, ("resnet200", "cpu", "fp32"): 2.7e-4,
    ("resnet10t", "cpu", "fp32"): 1.3e-6, ("resnet18d", "cpu", "fp32"): 2.0e-6,
    ("resnet26d", "cpu", "fp32"): 6.6e-6, ("resnet26t", "cpu", "fp32"): 6.3e-6,
    ("resnet50c", "cpu", "fp32"): 3.1e-5, ("resnet50d", "cpu", "fp32"): 3.2e-5,
    ("resnet50s", "cpu", "fp32"): 3.6e-5, ("resnet50t", "cpu", "fp32"): 3.3e-5,
    ("resnet101d", "cpu", "fp32"): 9.8e-5, ("resnext50d_32x4d", "cpu", "fp32"): 3.1e-5,
    ("seresnet18", "cpu", "fp32"): 1.5e-6, ("seresnet50", "cpu", "fp32"): 1.2e-5,
    ("seresnext26d_32x4d", "cpu", "fp32"): 3.3e-6, ("seresnext50_32x4d", "cpu", "fp32"): 1.3e-5,
    ("ecaresnet26t", "cpu", "fp32"): 2.8e-6, ("ecaresnet50d", "cpu", "fp32"): 1.0e-5,
    ("resnetrs50", "cpu", "fp32"): 1.4e-5, ("resnetaa50", "cpu", "fp32"): 1.3e-5,
    ("resnetaa50d", "cpu", "fp32"): 1.8e-5, ("resnetblur18", "cpu", "fp32"): 1.7e-6,
    ("resnetblur50", "cpu", "fp32"): 2.0e-5, ("resnetv2_50", "cpu", "fp32"): 1.1e-5,
    ("resnetv2_101", "cpu", "fp32"): 2.5e-5, ("resnet_vd_18", "cpu", "fp32"): 2.3e-6,
    ("resnet_vd_34", "cpu", "fp32"): 4.5e-6,
}


def rel_error(out: np.ndarray, ref: np.ndarray) -> float:
    """||out - ref||_2 / ||ref||_2, computed in float64."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    if out.shape != ref.shape:
        raise ValueError(f"rel_error: shapes differ, got {out.shape} against reference {ref.shape}")
    denom = np.linalg.norm(ref)
    return float(np.linalg.norm(out - ref) / denom) if denom else float(np.linalg.norm(out - ref))


def max_abs(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(out, np.float64) - np.asarray(ref, np.float64))))


def top1_agreement(out: np.ndarray, ref: np.ndarray) -> tuple[int, int]:
    """(how many rows share the arg-max, rows)."""
    out, ref = np.asarray(out), np.asarray(ref)
    return int((out.argmax(-1) == ref.argmax(-1)).sum()), int(out.shape[0])


def fp32_budget(*peer_errors: float) -> float:
    """The one fp32 tolerance on an error against float64: ``MARGIN`` x the largest error among
    the legitimate float32 peers given (one peer, or several that round differently, e.g. a
    two-pass and a one-pass BatchNorm variance: any of them is an implementation the budget
    must admit), and never below ``FP32_FLOOR``. The floor is for peers whose arithmetic is
    identical to the judged one's (an error of exactly 0 would give a zero budget): 1e-6 is
    about 8 float32 ulps (2**-23 = 1.19e-7), the least any fp32 port can be held to."""
    if not peer_errors:
        raise ValueError("fp32_budget: needs at least one peer error")
    worst = max(float(e) for e in peer_errors)
    if not worst >= 0:  # NaN or negative: no budget can be derived from it
        raise ValueError(f"fp32_budget: peer errors must be >= 0, got {peer_errors!r}")
    return max(MARGIN * worst, FP32_FLOOR)


def budget(peer_error: float | None = None, *, arch: str | None = None, device: str = "cpu",
           precision: str = "fp32") -> float:
    """Tolerance on rel_error: ``fp32_budget`` of the peer's error measured in the same run,
    else of the measured table entry of ``arch`` (a ``PRESETS`` name; default resnet50), which
    stands in for the peer."""
    if peer_error is not None:
        return fp32_budget(peer_error)
    key = (arch or "resnet50", device, precision)
    if key not in MEASURED:
        raise KeyError(f"no measured budget for {key}; measure a peer in the same run")
    return fp32_budget(MEASURED[key])


@dataclass(frozen=True)
class Comparison:
    rel: float
    max_abs: float
    top1: tuple[int, int]

    @classmethod
    def of(cls, out: np.ndarray, ref: np.ndarray) -> "Comparison":
        return cls(rel_error(out, ref), max_abs(out, ref), top1_agreement(out, ref))
