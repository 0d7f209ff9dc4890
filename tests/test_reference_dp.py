"""The data-parallel oracle (shared.reference_dp) against what no framework wrote: its forward
against shared.reference's, its analytic gradients against central finite differences in
float64, its running statistics against numpy's own mean and variance of the shard."""

import numpy as np
import pytest

from shared import backprop, reference, reference_dp as R, spec as S

TINY = dict(depths=(1, 1, 1, 1), width=8, num_classes=10)
SIZE = 64


def _case(style="torchvision", seed=0, batch=4, **fields):
    spec = S.preset_spec(style, **{**TINY, **fields})
    weights = reference.calibrated_weights(spec, seed=seed, size=SIZE)
    images = reference.random_images(spec, batch, SIZE, seed + 7)
    labels = np.random.Generator(np.random.PCG64(seed)).integers(0, spec.num_classes, batch)
    return spec, weights, images, labels


def _unit(d):
    norm = np.sqrt(sum(float((v * v).sum()) for v in d.values()))
    return {k: v / norm for k, v in d.items()}


def test_forward_and_running_statistics_match_the_reference():
    spec, weights, images, labels = _case()
    step = R.train_step(spec, weights, images, labels)
    for variance in ("unbiased", "biased"):
        logits, running = reference.forward_train(spec, weights, images, variance=variance)
        assert np.abs(step.logits - logits).max() < 1e-12
        ours = R.running_update(spec, weights, step.stats, variance)
        assert set(ours) == set(running)
        assert max(np.abs(ours[k] - running[k]).max() for k in running) < 1e-12


@pytest.mark.parametrize("style, pooling, fields", [
    ("torchvision", "avg", {}), ("keras", "max", {}),
    ("torchvision", "avg", dict(block="basic")),
    ("torchvision", "max", dict(groups=2, width_per_group=32)),
    ("keras", "avg", dict(block="preact", depths=(2, 1, 1, 1))),  # shortcut from pre, 1x1/2 pool
])
def test_gradients_match_central_finite_differences(style, pooling, fields):
    # Keras style: conv biases and the stride on the 1x1 conv; max pooling: the other head;
    # then each block kind of the spec.
    spec, weights, images, labels = _case(style, seed=1, pooling=pooling, **fields)
    pairs = R.directional_check(spec, weights, images, labels, directions=3, h=1e-6, seed=2)
    for analytic, numeric in pairs:
        assert abs(analytic) > 1e-4  # a direction the loss does change along
        assert abs(analytic - numeric) <= 1e-5 * abs(numeric), (analytic, numeric)


def test_a_wrong_gradient_is_caught_by_the_finite_differences():
    """The check can fail: one layer's gradient scaled by 1.01 moves the directional derivative
    off the finite difference by far more than the tolerance above."""
    spec, weights, images, labels = _case(seed=1)
    step = R.train_step(spec, weights, images, labels)
    rng = np.random.Generator(np.random.PCG64(2))
    d = _unit({k: rng.standard_normal(g.shape) for k, g in step.grads.items()})
    w64 = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    h = 1e-6

    def loss(sign):
        return R._train_step(spec, {**w64, **{k: w64[k] + sign * h * d[k] for k in d}}, images, labels).loss

    numeric = (loss(1) - loss(-1)) / (2 * h)
    wrong = dict(step.grads, **{"conv3_block1_2_conv.kernel": 1.01 * step.grads["conv3_block1_2_conv.kernel"]})
    right = sum(float((step.grads[k] * d[k]).sum()) for k in d)
    broken = sum(float((wrong[k] * d[k]).sum()) for k in d)
    assert abs(right - numeric) <= 1e-5 * abs(numeric)
    assert abs(broken - numeric) > 1e-4 * abs(numeric)


def test_per_replica_gradient_is_the_finite_difference_of_the_mean_replica_loss():
    spec, weights, images, labels = _case(seed=3)
    dp = R.dp_step(spec, weights, images, labels, replicas=2, bn="per_replica", variance="unbiased")
    rng = np.random.Generator(np.random.PCG64(4))
    d = _unit({k: rng.standard_normal(g.shape) for k, g in dp.grads.items()})
    w64 = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    h = 1e-6

    def mean_loss(sign):
        w = {**w64, **{k: w64[k] + sign * h * d[k] for k in d}}
        return np.mean([R._train_step(spec, w, images[p], labels[p]).loss for p in R.shards(4, 2)])

    numeric = (mean_loss(1) - mean_loss(-1)) / (2 * h)
    analytic = sum(float((dp.grads[k] * d[k]).sum()) for k in d)
    assert abs(analytic - numeric) <= 1e-5 * abs(numeric)
    assert dp.loss == pytest.approx(mean_loss(0), rel=1e-12)


def test_semantics_differ_and_agree_where_they_must():
    spec, weights, images, labels = _case(seed=5)
    one = R.dp_step(spec, weights, images, labels, 1, "global", "biased")
    same = R.dp_step(spec, weights, images, labels, 1, "per_replica", "biased")
    assert max(np.abs(one.grads[k] - same.grads[k]).max() for k in one.grads) == 0.0
    glob = R.dp_step(spec, weights, images, labels, 2, "global", "biased")
    per = R.dp_step(spec, weights, images, labels, 2, "per_replica", "biased")
    key = "conv1_conv.kernel"
    assert np.abs(glob.grads[key] - one.grads[key]).max() == 0.0  # global = one device, by definition
    assert np.linalg.norm(per.grads[key] - glob.grads[key]) > 0.05 * np.linalg.norm(glob.grads[key])
    # Global statistics: every replica keeps the same running statistics; per replica: its own.
    assert all(np.array_equal(glob.running[0][k], glob.running[1][k]) for k in glob.running[0])
    assert not np.allclose(per.running[0]["conv1_bn.mean"], per.running[1]["conv1_bn.mean"])
    # One SGD step from a zero velocity: w - lr * g.
    assert np.allclose(per.updated[key], weights[key] - 0.1 * per.grads[key], rtol=0, atol=1e-12)


def test_running_variance_rule_uses_each_replicas_own_count():
    """conv1_bn's running statistics after a per-replica step, from numpy's mean and
    var(ddof=1) of the conv output on each shard: torch's unbiased rule with the shard's count."""
    spec, weights, images, labels = _case(seed=6)
    per = R.dp_step(spec, weights, images, labels, 2, "per_replica", "unbiased")
    conv1 = spec.stem()[0]
    m = spec.bn_momentum
    for r, part in enumerate(R.shards(4, 2)):
        y = reference.conv(images[part].astype(np.float64), weights["conv1_conv.kernel"].astype(np.float64),
                           conv1.stride, conv1.padding).reshape(-1, spec.width)
        expect_mean = (1 - m) * weights["conv1_bn.mean"].astype(np.float64) + m * y.mean(axis=0)
        expect_var = (1 - m) * weights["conv1_bn.var"].astype(np.float64) + m * y.var(axis=0, ddof=1)
        assert np.allclose(per.running[r]["conv1_bn.mean"], expect_mean, rtol=1e-10, atol=0)
        assert np.allclose(per.running[r]["conv1_bn.var"], expect_var, rtol=1e-10, atol=0)


def test_one_replica_is_the_single_device_backprop_exactly():
    """The data-parallel oracle adds no arithmetic of its own to shared.backprop: with one
    replica, under either semantics, its loss, logits and gradients are backprop's, bit for bit."""
    spec, weights, images, labels = _case(seed=7)
    loss, logits, grads = backprop.loss_and_grads(spec, weights, images, labels)
    for bn in R.BN_MODES:
        dp = R.dp_step(spec, weights, images, labels, 1, bn, "biased")
        assert dp.loss == loss and np.array_equal(dp.logits, logits)
        assert list(dp.grads) == list(grads)
        assert all(np.array_equal(dp.grads[k], grads[k]) for k in grads), bn


@pytest.mark.parametrize("replicas, message", [(0, "integer >= 1"), (5, "need at least 5 images"),
                                               (3, "does not split into 3 equal shards")])
def test_bad_replica_counts_are_refused(replicas, message):
    spec, weights, images, labels = _case()
    with pytest.raises(ValueError, match=message):
        R.dp_step(spec, weights, images, labels, replicas, "global", "biased")


def test_bad_semantics_and_labels_are_refused():
    spec, weights, images, labels = _case()
    with pytest.raises(ValueError, match="bn: expected one of"):
        R.dp_step(spec, weights, images, labels, 2, "local", "biased")
    with pytest.raises(ValueError, match="variance: expected one of"):
        R.dp_step(spec, weights, images, labels, 2, "global", "sample")
    with pytest.raises(ValueError, match=r"labels: expected 4 class indices in \[0, 10\)"):
        R.train_step(spec, weights, images, labels + 10)
