"""Small helpers several test files share (pytest puts this folder on the path)."""

import numpy as np
import pytest

from shared import backprop, reference, spec as S
from shared.weights import init, randomize_batchnorm


# The development run (README: ``pytest -m "not slow"``) checks one architecture per block kind;
# CI, which runs every test, checks all thirteen.
DEV_ARCHS = ("resnet18", "resnet50", "resnext50_32x4d", "resnet50v2")


def dev_or_slow(cases):
    """``cases`` (arch names, or tuples that start with one) as parametrize values, each marked
    slow unless its architecture is in ``DEV_ARCHS``."""
    params = []
    for case in cases:
        values = case if isinstance(case, tuple) else (case,)
        params.append(case if values[0] in DEV_ARCHS else pytest.param(*values, marks=pytest.mark.slow))
    return params


def random_weights(spec, seed=0):
    """Canonical init with every BatchNorm (and conv bias) randomised: nothing can be ignored."""
    return randomize_batchnorm(spec, init(spec, seed), seed)


def assert_same(a, b):
    """Bit-exact: equal keys, dtypes, shapes and bytes."""
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes(), key


def train_loss(spec, weights, images, labels):
    """Mean cross-entropy of the float64 train-mode forward: the function backprop differentiates."""
    logits, _ = reference.forward_train(spec, weights, images)
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(labels)), labels].mean()


def assert_backprop_matches_central_differences(spec):
    """``shared.backprop``'s gradient of every learnable weight against a directional central
    difference of ``train_loss`` (one random direction per weight); the caller turns off the
    reference's float32 validation, since the perturbed weights are float64."""
    weights = reference.calibrated_weights(spec, seed=0, size=32)
    images, labels = reference.random_images(spec, 3, 32, seed=1), np.array([0, 3, 4])
    loss, _, grads = backprop.loss_and_grads(spec, weights, images, labels)
    w64 = {k: v.astype(np.float64) for k, v in weights.items()}
    assert loss == pytest.approx(train_loss(spec, w64, images, labels), rel=1e-12)
    assert set(grads) == {k for k in spec.param_shapes() if not S.is_statistic(k)}
    rng, h = np.random.default_rng(0), 1e-7
    for key, g in grads.items():
        v = rng.standard_normal(g.shape)
        plus = train_loss(spec, {**w64, key: w64[key] + h * v}, images, labels)
        minus = train_loss(spec, {**w64, key: w64[key] - h * v}, images, labels)
        fd = (plus - minus) / (2 * h)
        assert abs(fd - (g * v).sum()) <= 1e-5 * abs(fd) + 1e-7, key  # 1e-7: roundoff of 2 h = 2e-7
