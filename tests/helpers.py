"""Small helpers several test files share (pytest puts this folder on the path)."""

from shared.weights import init, randomize_batchnorm


def random_weights(spec, seed=0):
    """Canonical init with every BatchNorm (and conv bias) randomised: nothing can be ignored."""
    return randomize_batchnorm(spec, init(spec, seed), seed)


def assert_same(a, b):
    """Bit-exact: equal keys, dtypes, shapes and bytes."""
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes(), key
