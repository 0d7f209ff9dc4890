"""The float64 reference against torchvision run in float64 on the same weights, and against a
direct (loop) convolution; its input checks."""

import numpy as np
import pytest

from shared import parity, reference, spec as S, weights as W
from shared.spec import ResNetSpec
from helpers import dev_or_slow


@pytest.mark.parametrize("arch, size", [pytest.param(*case, marks=pytest.mark.slow)
                                        for case in (("resnet50", 224), ("resnet101", 96), ("resnet152", 64))])
def test_reference_equals_torchvision_float64(arch, size, torchvision_model):
    torch = pytest.importorskip("torch")
    model, spec, weights = torchvision_model(arch)
    images = reference.random_images(spec, 2, size, seed=7)
    with torch.no_grad():
        theirs = model.double()(torch.from_numpy(images).double().permute(0, 3, 1, 2)).numpy()
    ours = reference.forward(spec, weights, images)
    assert parity.rel_error(ours, theirs) <= 1e-10
    assert np.abs(theirs).std() > 0.1  # calibrated BatchNorm: logits are O(1), not vanishing


def test_reference_features_equal_torchvision_trunk(torchvision_model):
    torch = pytest.importorskip("torch")
    model, spec, weights = torchvision_model("resnet50")
    trunk = torch.nn.Sequential(*list(model.children())[:-2]).double()
    images = reference.random_images(spec, 1, 67, seed=1)
    with torch.no_grad():
        theirs = trunk(torch.from_numpy(images).double().permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    head_less = spec.replace(include_top=False, pooling=None)
    weights = {k: v for k, v in weights.items() if not k.startswith("predictions.")}
    ours = reference.forward(head_less, weights, images)
    assert ours.shape == theirs.shape == (1, 3, 3, 2048)
    assert parity.rel_error(ours, theirs) <= 1e-10
    pooled = reference.forward(head_less.replace(pooling="max"), weights, images)
    assert parity.rel_error(pooled, theirs.max(axis=(1, 2))) <= 1e-12


def _torchvision_peer(arch, spec, weights):
    """torchvision's ``arch`` holding ``weights`` (through ``interop.to_torchvision`` of the given
    spec: no spec inference), in float64 and eval mode."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from shared import interop

    model = getattr(torchvision.models, arch)(weights=None, num_classes=spec.num_classes).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in interop.to_torchvision(spec, weights).items()})
    return model.double()


@pytest.mark.parametrize("arch, size", dev_or_slow([("resnet18", 64), ("resnet34", 64), ("resnext50_32x4d", 64),
                                                    ("wide_resnet50_2", 64)]))
def test_every_block_kind_equals_torchvision_float64(arch, size):
    """Basic blocks, grouped 3x3 convs and wide bottlenecks: float64 against float64 (measured
    2026-11-27, 2-core CPU: rel 5.1e-15 resnet18, 1.3e-14 resnet34, 3.8e-14 resnext50_32x4d,
    6.0e-14 wide_resnet50_2)."""
    torch = pytest.importorskip("torch")
    spec = S.preset(arch, num_classes=50)
    weights = reference.calibrated_weights(spec, seed=3)
    model = _torchvision_peer(arch, spec, weights)
    images = reference.random_images(spec, 2, size, seed=7)
    with torch.no_grad():
        theirs = model(torch.from_numpy(images).double().permute(0, 3, 1, 2)).numpy()
    ours = reference.forward(spec, weights, images)
    err = parity.rel_error(ours, theirs)
    print(f"{arch} {size} px: float64 reference vs torchvision float64 rel {err:.2e}")
    assert err <= 1e-12
    assert np.abs(theirs).std() > 0.1  # calibrated BatchNorm: logits are O(1), not vanishing


def _torch_functional(spec, weights, images):
    """The spec's network in float64 torch.nn.functional ops, walked by ``Block.walk``: an
    independent statement of every layer's arithmetic (grouped conv, the pool's pad value, a
    1x1/2 max pool, eval BatchNorm) for the block kinds torchvision has no model of."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    w = {k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in weights.items()}

    def apply(layer, x):
        if layer.kind == "conv":
            t, b, l, r = layer.padding
            bias = w[f"{layer.name}.bias"] if layer.bias else None
            return F.conv2d(F.pad(x, (l, r, t, b)), w[f"{layer.name}.kernel"].permute(3, 2, 0, 1), bias,
                            layer.stride, groups=layer.groups)
        if layer.kind == "bn":
            p = [w[f"{layer.name}.{k}"] for k in ("mean", "var", "gamma", "beta")]
            return F.batch_norm(x, *p, training=False, eps=layer.epsilon)
        if layer.kind == "relu":
            return F.relu(x)
        if layer.kind == "maxpool":
            t, b, l, r = layer.padding
            return F.max_pool2d(F.pad(x, (l, r, t, b), value=layer.pad_value), layer.size, layer.stride)
        if layer.kind == "globalpool":
            return x.mean((2, 3)) if layer.mode == "avg" else x.amax((2, 3))
        return x @ w[f"{layer.name}.kernel"] + w[f"{layer.name}.bias"]

    def chain(layers, x):
        for layer in layers:
            x = apply(layer, x)
        return x

    with torch.no_grad():
        x = chain(spec.stem(), torch.from_numpy(np.asarray(images, np.float64)).permute(0, 3, 1, 2))
        for block in spec.blocks():
            x = block.walk(x, chain, lambda _, main, shortcut: main + shortcut)
        x = chain(spec.head(), x)
    return (x.permute(0, 2, 3, 1) if x.ndim == 4 else x).numpy()


@pytest.mark.parametrize("arch, size, fields", [
    ("resnet50v2", 64, {}),
    ("resnet50v2", 67, dict(include_top=False, pooling=None)),  # odd size: the 1x1/2 pools' border
    (None, 48, dict(block="preact", depths=(2, 3), width=8, groups=4, width_per_group=16, num_classes=7)),
])
def test_preact_equals_torch_functional_float64(arch, size, fields):
    """Keras' V2 (no torch peer; keras.applications is the structure's judge elsewhere): the
    reference's arithmetic against torch's ops in float64, and the zero-padded stem pool matters."""
    spec = S.preset(arch, **fields) if arch else S.preset_spec("keras", **fields)
    weights = reference.calibrated_weights(spec, seed=5)
    images = reference.random_images(spec, 2, size, seed=8)
    ours = reference.forward(spec, weights, images)
    assert parity.rel_error(ours, _torch_functional(spec, weights, images)) <= 1e-12
    assert np.abs(ours).std() > 0.1
    minus_inf = reference.forward(spec.replace(pool_pad_value=float("-inf")), weights, images)
    assert parity.rel_error(minus_inf, ours) > 1e-3  # V2 pools the raw conv output: the pad value counts


def test_hook_names_stem_every_block_and_head():
    spec = S.preset_spec("keras", block="preact", depths=(2, 1), width=8, num_classes=3)
    seen = []
    out = reference.forward(spec, reference.calibrated_weights(spec), reference.random_images(spec, 1, 32),
                            hook=lambda name, x: seen.append((name, x.shape)))
    assert seen == [("stem", (1, 8, 8, 8)), ("conv2_block1", (1, 8, 8, 32)), ("conv2_block2", (1, 4, 4, 32)),
                    ("conv3_block1", (1, 4, 4, 64)), ("head", (1, 3))]
    assert out.shape == (1, 3)


def _direct_conv(x, k, stride, padding):
    t, b, l, r = padding
    x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    kh, kw, _, cout = k.shape
    ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, cout))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j] = np.tensordot(patch, k, axes=([1, 2, 3], [0, 1, 2]))
    return out


@pytest.mark.parametrize("ksize, stride, padding", [(3, 1, (1, 1, 1, 1)), (3, 2, (0, 1, 0, 1)), (7, 2, (3, 3, 3, 3)),
                                                     (1, 2, (0, 0, 0, 0))])
def test_conv_equals_direct_loop(ksize, stride, padding):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 11, 9, 3))
    k = rng.standard_normal((ksize, ksize, 3, 5))
    assert np.allclose(reference.conv(x, k, stride, padding), _direct_conv(x, k, stride, padding), rtol=0, atol=1e-12)


def test_maxpool_pads_with_minus_infinity():
    x = -np.ones((1, 4, 4, 1))  # all negative: zero padding would leak zeros into the border
    out = reference.maxpool(x, 3, 2, (1, 1, 1, 1))
    assert (out == -1).all()


def test_float32_mode_is_an_fp32_peer():
    spec = ResNetSpec(depths=(2, 2), width=16, num_classes=10)
    w = reference.calibrated_weights(spec)
    x = reference.random_images(spec, 2, 48)
    err = parity.rel_error(reference.forward(spec, w, x, dtype=np.float32), reference.forward(spec, w, x))
    assert 1e-9 < err < 1e-5  # rounding at float32's eps (1.2e-7) scale, not zero, not a bug


@pytest.mark.parametrize(
    "shape, message",
    [
        ((64, 64, 3), r"images: expected a 4-D NHWC batch \(N, H, W, 3\), got shape \(64, 64, 3\)"),
        ((1, 3, 64, 64), r"images: expected 3 channels on the last axis \(NHWC\), got shape \(1, 3, 64, 64\)"),
        ((1, 16, 64, 3), r"needs images of at least 32x32 pixels, got 16x64"),
    ],
)
def test_bad_images_are_refused(shape, message):
    spec = ResNetSpec(depths=(1, 1, 1, 1), width=8)  # total stride 32, like ResNet-50
    weights = reference.calibrated_weights(spec)
    with pytest.raises(ValueError, match=message):
        reference.forward(spec, weights, np.ones(shape, np.float32))


def test_train_mode_equals_torchvision_float64(torchvision_model):
    """Batch-statistics forward and torch's running-stat update (unbiased variance, momentum 0.1)."""
    torch = pytest.importorskip("torch")
    from shared import interop

    model, spec, weights = torchvision_model("resnet50")
    model = model.double().train()
    images = reference.random_images(spec, 3, 64, seed=5)
    with torch.no_grad():
        theirs = model(torch.from_numpy(images).double().permute(0, 3, 1, 2)).numpy()
    logits, stats = reference.forward_train(spec, weights, images, variance="unbiased")
    assert parity.rel_error(logits, theirs) <= 1e-10
    _, updated = interop.from_torchvision({k: v.float() for k, v in model.state_dict().items()}, spec=spec)
    # torch's updated statistics went through float32 on the way out: compare at that precision.
    for key, value in stats.items():
        assert np.allclose(updated[key], value, rtol=1e-6, atol=1e-7), key
    _, biased = reference.forward_train(spec, weights, images, variance="biased")
    # The biased update differs by exactly m * var_biased / (n - 1); at 64 px the last stage is
    # 2 x 2, so n = 3 images x 4 pixels = 12 values per channel.
    key, m, n = "conv5_block1_2_bn.var", spec.bn_momentum, 12
    batch_var_biased = (biased[key] - (1 - m) * weights[key]) / m
    assert np.allclose(stats[key] - biased[key], m * batch_var_biased / (n - 1), rtol=1e-9)


@pytest.mark.parametrize("block", ["basic", "preact"])
def test_calibrate_sets_every_batchnorm_to_what_it_sees(block):
    """After ``calibrate`` on some images, the eval forward on them is the train-mode forward
    (each BatchNorm's statistics are its batch's), V2's pre-activations and post_bn included."""
    spec = S.preset_spec("keras" if block == "preact" else "torchvision", block=block, depths=(2, 1), width=8,
                         num_classes=6)
    images = reference.random_images(spec, 3, 32, seed=4)
    weights = W.randomize_batchnorm(spec, W.init(spec, 1), 1)
    calibrated = reference.calibrate(spec, weights, images)
    train, _ = reference.forward_train(spec, weights, images)
    assert parity.rel_error(reference.forward(spec, calibrated, images), train) <= 1e-6  # float32 statistics
    assert parity.rel_error(reference.forward(spec, weights, images), train) > 1e-2
    assert {k for k in spec.param_shapes() if S.is_statistic(k)} == {
        k for k in calibrated if not np.array_equal(calibrated[k], weights[k])}
