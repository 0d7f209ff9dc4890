"""The data-parallel verdict's budgets (shared.tools.check_dp, shared.parity.fp32_budget) hold
"0 false alarms": legitimate float32 steps that round differently from the budget's peers (a
one-pass BatchNorm variance, as a synchronized BatchNorm computes it; another summation order)
are judged by the same ``judge`` and pass under the semantics they implement, while broken
steps (the other BatchNorm statistics, a loss or gradient scaled by a hair, the wrong
running-variance rule) fail. Tiny spec, numpy only: no engine runs here."""

import dataclasses

import numpy as np
import pytest

from shared import backprop, parity, reference, reference_dp as RD, spec as S
from shared.tools import check_dp as C
from shared.tools.jobs import random_labels

SPEC = S.preset_spec("torchvision", depths=(1, 1, 1, 1), width=8, num_classes=10)
REPLICAS, BATCH, SIZE = 2, 4, 64
SEEDS = (0, 1)


@dataclasses.dataclass
class Case:
    weights: dict
    images: np.ndarray
    labels: np.ndarray
    oracle: C.Oracle


@pytest.fixture(scope="module", params=SEEDS)
def case(request):
    seed = request.param
    weights = reference.calibrated_weights(SPEC, seed=seed, size=SIZE)
    images = reference.random_images(SPEC, BATCH, SIZE, seed)
    labels = random_labels(SPEC, BATCH, seed)
    return Case(weights, images, labels, C.Oracle(SPEC, weights, images, labels, REPLICAS))


def _engine(bn, variance="biased"):
    return C.Engine(f"numpy {bn}", "torch", "-", (), bn, variance, "-")


def _result(step: RD.DPStep) -> dict:
    """A DPStep as an engine's arrays (float32, every replica's running statistics)."""
    res = {"loss": np.float32(step.loss)}
    for k, g in step.grads.items():
        res[f"grad/{k}"] = np.asarray(g, np.float32)
        res[f"weights/{k}"] = np.asarray(step.updated[k], np.float32)
    for r, running in enumerate(step.running):
        res.update({f"{'' if r == 0 else f'rank{r}/'}stats/{k}": np.asarray(v, np.float32) for k, v in running.items()})
    return res


def _fp32_step(c: Case, bn, variance="biased", formula="two_pass", order=None):
    images, labels = (c.images, c.labels) if order is None else (c.images[order], c.labels[order])
    return RD.dp_step(SPEC, c.weights, images, labels, REPLICAS, bn, variance, C.LR, C.MOMENTUM,
                      dtype=np.float32, variance_formula=formula)


def _reversed_within_shards():
    per = BATCH // REPLICAS  # each image stays on its replica: the same step, summed in another order
    return np.concatenate([np.arange(r * per, (r + 1) * per)[::-1] for r in range(REPLICAS)])


# ----------------------------------------------------------------------------- the rule


def test_fp32_budget_is_the_margin_times_the_worst_peer_with_one_floor():
    assert parity.fp32_budget(1e-5) == parity.MARGIN * 1e-5 == parity.budget(1e-5)
    assert parity.fp32_budget(1e-5, 3e-5, 2e-5) == parity.MARGIN * 3e-5
    assert parity.fp32_budget(0.0) == parity.FP32_FLOOR == parity.budget(0.0)
    assert parity.budget(arch="resnet101") == parity.MARGIN * parity.MEASURED["resnet101", "cpu", "fp32"]
    from shared.tools import check

    assert check.fp32_budget is parity.fp32_budget  # one rule, not a copy
    for bad in ((), (float("nan"),), (-1e-6,)):
        with pytest.raises(ValueError, match="fp32_budget"):
            parity.fp32_budget(*bad)


def test_one_pass_variance_is_the_same_function_in_float64():
    steps = {f: backprop.step(SPEC, reference.calibrated_weights(SPEC, seed=0, size=SIZE),
                              reference.random_images(SPEC, BATCH, SIZE, 0), random_labels(SPEC, BATCH, 0),
                              variance_formula=f) for f in backprop.VARIANCE_FORMULAS}
    a, b = steps["two_pass"], steps["one_pass"]
    assert abs(a.loss - b.loss) < 1e-12 * abs(a.loss)
    assert max(parity.rel_error(b.grads[k], a.grads[k]) for k in a.grads) < 1e-9
    assert max(np.abs(b.stats[k][1] - a.stats[k][1]).max() for k in a.stats) < 1e-12
    with pytest.raises(ValueError, match="variance_formula"):
        backprop.step(SPEC, reference.calibrated_weights(SPEC, seed=0, size=SIZE),
                      reference.random_images(SPEC, BATCH, SIZE, 0), random_labels(SPEC, BATCH, 0),
                      variance_formula="welford")


def test_the_one_pass_peer_rounds_worse_than_the_two_pass_one(case):
    """Why both peers set the budget: in float32 the one-pass variance cancels."""
    case.oracle("global", "biased")
    peers = case.oracle.peers["global", "biased"]
    for q in ("gradients", "running stats"):
        assert peers["one_pass"][q] > 1.5 * peers["two_pass"][q], (q, peers)


@pytest.mark.parametrize("bn", RD.BN_MODES)
def test_the_loss_budget_bounds_the_worst_legitimate_logits_error(case, bn):
    """``loss_error_scale`` is a bound, and not a loose one: logits off by MARGIN x the peer's
    error in the worst direction (along dL/dz) move the float64 loss by at most the budget,
    and by most of it."""
    exact, budget = case.oracle(bn, "biased")
    labels = case.labels.astype(int)
    for formula in backprop.VARIANCE_FORMULAS:
        peer = _fp32_step(case, bn, formula=formula)
        scale = C.loss_error_scale(peer, exact, case.labels)
        assert scale >= abs(peer.loss - exact.loss) / abs(exact.loss)  # the peer's own draw is inside
        _, g = backprop.cross_entropy(exact.logits, labels)
        dz = parity.MARGIN * np.linalg.norm(peer.logits.astype(np.float64) - exact.logits)
        for sign in (1, -1):
            moved, _ = backprop.cross_entropy(exact.logits + sign * dz * g / np.linalg.norm(g), labels)
            change = abs(moved - exact.loss) / abs(exact.loss)
            assert change <= parity.MARGIN * scale <= budget["loss"]
            assert change > 0.5 * parity.MARGIN * scale


# ----------------------------------------------------------------------------- 0 false alarms


@pytest.mark.parametrize("bn", RD.BN_MODES)
@pytest.mark.parametrize("formula", backprop.VARIANCE_FORMULAS)
@pytest.mark.parametrize("order", ["as given", "reversed within each shard"])
def test_a_legitimate_fp32_step_passes(case, bn, formula, order):
    idx = None if order == "as given" else _reversed_within_shards()
    step = _fp32_step(case, bn, formula=formula, order=idx)
    row = C.judge(C.DPRow("numpy", ""), _engine(bn), _result(step), case.oracle)
    assert row.status == "pass" and row.measured == bn, (row.detail, row.errors[bn], row.budgets[bn])


def test_a_loss_averaged_as_tf_distribute_does_passes(case):
    """Global statistics, each replica's loss summed over its examples / the global batch in
    float32, then summed over replicas (tf.nn.compute_average_loss + a SUM reduce)."""
    step = _fp32_step(case, "global", formula="one_pass")
    z = step.logits.astype(np.float32)
    shifted = z - z.max(axis=1, keepdims=True)
    per_example = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(BATCH), case.labels]
    res = _result(step)
    res["loss"] = np.float32(sum(np.float32(p.sum() / np.float32(BATCH)) for p in np.split(per_example, REPLICAS)))
    row = C.judge(C.DPRow("numpy", ""), _engine("global"), res, case.oracle)
    assert row.status == "pass", row.detail


# ----------------------------------------------------------------------------- broken inputs fail


@pytest.mark.parametrize("bn", RD.BN_MODES)
def test_the_other_statistics_fail_by_far(case, bn):
    other = "per_replica" if bn == "global" else "global"
    step = _fp32_step(case, other, formula="one_pass")
    row = C.judge(C.DPRow("numpy", ""), _engine(bn), _result(step), case.oracle)
    assert row.status == "FAIL" and row.measured == other
    assert f"promises {bn} statistics, measured {other}" in row.detail
    for q in ("loss", "gradients", "running stats"):
        assert row.errors[bn][q] > 100 * row.budgets[bn][q], q


@pytest.mark.parametrize("formula", backprop.VARIANCE_FORMULAS)
def test_a_loss_off_by_1e_4_fails(case, formula):
    res = _result(_fp32_step(case, "global", formula=formula))
    res["loss"] = np.float32(res["loss"] * (1 + 1e-4))
    row = C.judge(C.DPRow("numpy", ""), _engine("global"), res, case.oracle)
    assert row.status == "FAIL" and "loss rel" in row.detail


def test_gradients_off_by_1e_3_fail(case):
    res = _result(_fp32_step(case, "global", formula="one_pass"))
    res.update({k: v * np.float32(1 + 1e-3) for k, v in res.items() if k.startswith("grad/")})
    row = C.judge(C.DPRow("numpy", ""), _engine("global"), res, case.oracle)
    assert row.status == "FAIL" and "gradients rel" in row.detail


def test_the_wrong_running_variance_rule_fails(case):
    res = _result(_fp32_step(case, "global", variance="unbiased", formula="one_pass"))
    row = C.judge(C.DPRow("numpy", ""), _engine("global", "biased"), res, case.oracle)
    assert row.status == "FAIL" and "running stats rel" in row.detail
