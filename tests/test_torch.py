"""resnet_torch: same function as torchvision and as the float64 reference, torchvision's
state_dict layout, bit-exact canonical weights, clear errors, native torch use (NCHW,
channels_last, train mode, torch.compile), and GPU precisions (marked ``gpu``)."""

import subprocess
import sys

import numpy as np
import pytest

from shared.parity import fp32_budget
from shared.tools.check import low_precision_oracle
from hypothesis import given, settings, strategies as st

from shared import interop, reference, spec as S
from shared import weights as W
from strategies import small_specs
from helpers import dev_or_slow, random_weights
from shared.interop import torchvision_module
from shared.parity import budget, rel_error

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import resnet_torch as rt  # noqa: E402
from resnet_torch import layers  # noqa: E402


def nchw(images: np.ndarray) -> "torch.Tensor":
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def f32_peer_budget(spec, weights, images, ref) -> float:
    """4x the error of the reference's own arithmetic in float32 (the peer for specs no
    framework's model covers)."""
    peer = rel_error(reference.forward(spec, weights, images, dtype=np.float32), ref)
    # check's rule: 4x the peer, never below fp32's noise floor of 1e-6 (a one-class head on two
    # images leaves two numbers, and a lucky peer can err 4.7x less than an exact port: seen)
    return fp32_budget(peer)


def assert_bit_exact(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and np.array_equal(got[key], value), key


_TORCH_PARAM = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
                "mean": "running_mean", "var": "running_var"}


def _expected_state_shapes(spec) -> dict:
    """The spec enumeration under the name rule, shapes in torch layout (OIHW, (out, in))."""
    out = {}
    for name, shape in spec.param_shapes().items():
        layer, param = name.rsplit(".", 1)
        if param == "kernel":  # conv OIHW, ECA's Conv1d (1, 1, k), dense (out, in)
            shape = ((shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else (1, 1, *shape) if len(shape) == 1
                     else shape[::-1])
        out[f"{torchvision_module(layer)}.{_TORCH_PARAM[param]}"] = shape
        if param == "var":
            out[f"{torchvision_module(layer)}.num_batches_tracked"] = ()
    return out


# --------------------------------------------------------------------- torchvision: same function

TORCHVISION_ARCHS = [a for a, p in S.PRESETS.items() if p.peer.startswith("torchvision.")]
KERAS_ONLY_ARCHS = [a for a, p in S.PRESETS.items() if p.peer.startswith("keras.applications.")]  # ResNet V2
# Typed from torchvision's weights metadata and Keras Applications' summaries (the design's
# table), not read from PRESETS: Keras counts BatchNorm statistics.
PUBLISHED_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272, "wide_resnet50_2": 68_883_240, "wide_resnet101_2": 126_886_696,
}
KERAS_PUBLISHED_PARAMS = {"resnet50v2": 25_613_800, "resnet101v2": 44_675_560, "resnet152v2": 60_380_648}


def _randomised_torchvision(arch):
    """torchvision's own model (its random init) with every BatchNorm's affine and running
    statistics randomised too, so a swapped or ignored statistic cannot go unseen; eval mode."""
    model = getattr(torchvision.models, arch)().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
    return model


@pytest.mark.parametrize("arch", dev_or_slow(TORCHVISION_ARCHS))
def test_every_torchvision_arch_equals_torchvision(arch):
    """torchvision's own state_dict loads as is (same keys, order, shapes) and gives bit-identical
    logits: the same modules in the same order. The spec read off that state_dict is the preset,
    and the parameter count is torchvision's published one."""
    tv = _randomised_torchvision(arch)
    spec = S.preset(arch)
    model = rt.build(spec)
    theirs_sd = tv.state_dict()
    assert list(model.state_dict()) == list(theirs_sd)
    model.load_state_dict(theirs_sd)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS[arch]
    assert interop.spec_from_torchvision(theirs_sd) == spec

    x = torch.from_numpy(reference.random_images(spec, 2, 64, seed=7)).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        ours, theirs = model(x).numpy(), tv(x).numpy()
    assert np.isfinite(theirs).all() and theirs.std() > 0
    assert rel_error(ours, theirs) == 0.0, arch


@pytest.mark.parametrize("arch", dev_or_slow(TORCHVISION_ARCHS))
def test_same_function_and_layout_as_torchvision(arch, torchvision_model):
    """Calibrated weights: the same function as torchvision, and both judged against float64."""
    tv, spec, w = torchvision_model(arch)
    model = rt.build(spec)
    theirs_sd, ours_sd = tv.state_dict(), model.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    assert all(ours_sd[k].shape == v.shape and ours_sd[k].dtype == v.dtype for k, v in theirs_sd.items())
    assert sum(p.numel() for p in model.parameters()) == spec.num_params()

    model.load_state_dict(theirs_sd)  # torchvision's state_dict, as is
    assert_bit_exact(rt.export_weights(model), w)
    images = reference.random_images(spec, 2, 64, seed=7)
    ours = rt.predict(model, images)
    with torch.no_grad():
        theirs = tv(nchw(images)).numpy()
    assert rel_error(ours, theirs) == 0.0  # the same modules in the same order: bit-identical (README)

    ref = reference.forward(spec, w, images)
    peer, err = rel_error(theirs, ref), rel_error(ours, ref)
    assert err <= budget(peer), f"{arch}: rel {err:.2e} vs float64, torchvision fp32 {peer:.2e}"


# --------------------------------------------------------------------- Keras' ResNet V2 (no torch peer)

def _keras_v2_forward(w: dict, images: np.ndarray, depths, dtype) -> np.ndarray:
    """Keras Applications' ResNet50V2 (``resnet.residual_block_v2``, ``stack_residual_blocks_v2``,
    ``ResNet(preact=True)``), written from that code with torch.nn.functional at ``dtype``;
    independent of the spec and of Block.walk. ``w``: canonical weights."""
    F = torch.nn.functional
    t = {k: torch.from_numpy(np.asarray(v, np.float64)).to(dtype) for k, v in w.items()}

    def conv(x, name, stride=1, pad=0, bias=True):
        kernel = t[f"{name}.kernel"].permute(3, 2, 0, 1)
        return F.conv2d(F.pad(x, (pad,) * 4), kernel, t[f"{name}.bias"] if bias else None, stride)

    def bn(x, name):
        return F.batch_norm(x, t[f"{name}.mean"], t[f"{name}.var"], t[f"{name}.gamma"], t[f"{name}.beta"],
                            False, 0.0, 1.001e-5)

    def block(x, name, filters, stride, conv_shortcut):
        preact = F.relu(bn(x, f"{name}_preact_bn"))
        if conv_shortcut:
            shortcut = conv(preact, f"{name}_0_conv", stride)
        else:
            shortcut = F.max_pool2d(x, 1, stride) if stride > 1 else x
        h = F.relu(bn(conv(preact, f"{name}_1_conv", bias=False), f"{name}_1_bn"))
        h = F.relu(bn(conv(h, f"{name}_2_conv", stride, pad=1, bias=False), f"{name}_2_bn"))
        return shortcut + conv(h, f"{name}_3_conv")

    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(dtype)
    x = conv(x, "conv1_conv", 2, pad=3)
    x = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, 2)  # ZeroPadding2D(1), then a valid pool
    for i, (filters, blocks) in enumerate(zip((64, 128, 256, 512), depths)):
        stride1 = 1 if i == len(depths) - 1 else 2
        name = f"conv{i + 2}"
        x = block(x, f"{name}_block1", filters, 1, True)
        for b in range(2, blocks):
            x = block(x, f"{name}_block{b}", filters, 1, False)
        x = block(x, f"{name}_block{blocks}", filters, stride1, False)
    x = F.relu(bn(x, "post_bn")).mean(dim=(2, 3))
    return (x @ t["predictions.kernel"] + t["predictions.bias"]).numpy()


@pytest.mark.parametrize("arch", dev_or_slow(KERAS_ONLY_ARCHS))
def test_resnet_v2_against_keras_definition_in_float64(arch):
    """Pre-activation blocks, the stem's zero-padded pool, post_bn/post_relu: within the fp32
    budget of a float64 computation written from Keras' code (its float32 run is the peer).
    A stem pool padded with -inf (torch's rule) is a broken port here and must be caught."""
    spec = S.preset(arch)
    model = rt.build(spec)
    assert sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var"))
    ) == KERAS_PUBLISHED_PARAMS[arch]
    w = random_weights(spec, seed=3)
    rt.load_weights(model, w)
    images = reference.random_images(spec, 2, 64, seed=4)
    ref = _keras_v2_forward(w, images, spec.depths, torch.float64)
    tol = fp32_budget(rel_error(_keras_v2_forward(w, images, spec.depths, torch.float32), ref))
    err = rel_error(rt.predict(model, images), ref)
    print(f"{arch} 64 px: rel {err:.2e} vs float64, budget {tol:.2e}")
    assert err <= tol

    broken = rt.load_weights(rt.build(spec.replace(pool_pad_value=float("-inf"))), w)
    assert rel_error(rt.predict(broken, images), ref) > 10 * tol

    state = model.state_dict()  # the torchvision-style state_dict round-trips
    assert interop.spec_from_torchvision(state) == spec
    assert_bit_exact(rt.export_weights(model), w)
    again = interop.to_torchvision(*interop.from_torchvision(state))
    assert set(again) == set(state)
    assert all(np.array_equal(again[k], v.numpy()) and again[k].dtype == v.numpy().dtype for k, v in state.items())


def test_train_mode_matches_torchvision():
    """Batch statistics, running-stat updates and gradients: the same as torchvision's."""
    tv = torchvision.models.resnet50().train()
    spec, _ = interop.from_torchvision(tv.state_dict())
    w = W.randomize_batchnorm(spec, W.init(spec, 3), 3)
    tv.load_state_dict({k: torch.from_numpy(v) for k, v in interop.to_torchvision(spec, w).items()})
    model = rt.load_weights(rt.build(spec), w).train()
    x = nchw(reference.random_images(spec, 2, 64, seed=8))
    ours, theirs = model(x), tv(x)
    assert rel_error(ours.detach().numpy(), theirs.detach().numpy()) <= 1e-6
    ours.square().mean().backward()
    theirs.square().mean().backward()
    grads = dict(tv.named_parameters())
    for name, p in model.named_parameters():
        assert rel_error(p.grad.numpy(), grads[name].grad.numpy()) <= 1e-6, name
    theirs_sd = tv.state_dict()
    for name, buf in model.named_buffers():
        assert rel_error(buf.numpy(), theirs_sd[name].numpy()) <= 1e-6, name


# --------------------------------------------------------------------- float64 reference

def test_keras_style_resnet50_against_reference():
    spec = S.resnet50(style="keras")
    w = reference.calibrated_weights(spec, seed=2)
    model = rt.load_weights(rt.build(spec), w)
    assert all(m.eps == 1.001e-5 and m.momentum == 0.01 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].conv2.stride == (1, 1)
    assert model.conv1.bias is not None
    images = reference.random_images(spec, 2, 64, seed=9)
    ref = reference.forward(spec, w, images)
    err, tol = rel_error(rt.predict(model, images), ref), f32_peer_budget(spec, w, images, ref)
    assert err <= tol, f"keras-style resnet50: rel {err:.2e} vs float64, budget {tol:.2e}"
    assert_bit_exact(rt.export_weights(model), w)


@settings(max_examples=10, deadline=None)
@given(spec=small_specs(), zero_init=st.booleans(), size=st.integers(32, 96), seed=st.integers(0, 2**16))
def test_small_specs_against_reference(tmp_path_factory, spec, zero_init, size, seed):
    spec = spec.replace(zero_init_residual=zero_init)
    w = reference.calibrated_weights(spec, seed=seed)
    model = rt.load_weights(rt.build(spec), w)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == _expected_state_shapes(spec)
    assert_bit_exact(rt.export_weights(model), w)
    images = reference.random_images(spec, 2, size, seed=seed + 1)
    ref = reference.forward(spec, w, images)
    ours = rt.predict(model, images)
    assert ours.shape == (2, *spec.output_shape(size))
    err, tol = rel_error(ours, ref), f32_peer_budget(spec, w, images, ref)
    assert err <= tol, f"{spec}: rel {err:.2e} vs float64, budget {tol:.2e}"

    path = tmp_path_factory.mktemp("w") / "w.safetensors"
    W.save(w, path)
    again = rt.load_weights(rt.build(spec), rt.read_checkpoint(path, spec)[1])
    assert np.array_equal(rt.predict(again, images), ours)


# One small spec per layer kind of timm's and keras-hub's family, at 36 px: the stem leaves 9x9,
# so every avg-down pool and blur sees an odd side (ceil_mode's extra window, the padding not
# counted, reflect padding at both edges). Avg anti-aliasing runs at 64 px: its 2x2 pool floors
# an odd side while the avg-down shortcut ceils it, so timm's resnetaa*d (and the spec) cannot
# add the two there.
FAMILY_CASES = {  # case: (spec, image side)
    "avg-down, deep stem": (S.preset("resnet50d", depths=(1, 1, 1), width=8, num_classes=10), 36),
    "tiered stem, basic": (S.preset("resnet10t", depths=(1, 1, 1), width=8, num_classes=10), 36),
    "SE, hard-sigmoid gate": (S.preset("seresnet50", depths=(2, 1, 1), width=8, attention_gate="hard_sigmoid"), 36),
    "ECA": (S.preset("ecaresnet26t", depths=(1, 1, 1), width=64, num_classes=10), 36),
    "ResNet-RS conv stem pool": (S.preset("resnetrs50", depths=(1, 1, 1), width=8, num_classes=10), 36),
    "avg anti-aliasing": (S.preset("resnetaa50d", depths=(1, 1, 1), width=8, num_classes=10), 64),
    "blur anti-aliasing": (S.preset("resnetblur18", depths=(1, 1, 1), width=8, num_classes=10), 36),
    "vd project_first": (S.preset("resnet_vd_18", depths=(2, 1, 1), width=16, num_classes=10,
                                  stem_convs=((3, 8, 2), (3, 8, 1), (3, 16, 1))), 36),
    "timm pre-activation": (S.preset("resnetv2_50", depths=(1, 1, 1), width=8, num_classes=10), 36),
}


@pytest.mark.parametrize("case", FAMILY_CASES)
def test_family_layers_against_reference(case):
    """Each new layer kind against the float64 reference at an odd feature side, within the
    fp32 budget; the state_dict holds the names and shapes of the rule, the spec read off it is
    the spec (anti-aliasing, the max+blur or avg stem pools and the gate have no weights: the
    caller's)."""
    spec, size = FAMILY_CASES[case]
    w = reference.calibrated_weights(spec, seed=5)
    model = rt.load_weights(rt.build(spec), w)
    state = model.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == _expected_state_shapes(spec)
    assert_bit_exact(rt.export_weights(model), w)
    weightless = dict(anti_alias=None, stem_pool="conv" if spec.stem_pool == "conv" else "max",
                      attention_gate="sigmoid")
    assert interop.spec_from_torchvision(state) == spec.replace(**weightless)
    images = reference.random_images(spec, 2, size, seed=6)
    ref = reference.forward(spec, w, images)
    err, tol = rel_error(rt.predict(model, images), ref), f32_peer_budget(spec, w, images, ref)
    print(f"{case}, {size} px: rel {err:.2e} vs float64, budget {tol:.2e}")
    assert err <= tol, f"{case}: rel {err:.2e} vs float64, budget {tol:.2e}"


def test_train_mode_against_reference():
    """Batch statistics, unbiased running variance and the momentum convention of both styles
    (timm's V1 conventions are torchvision's)."""
    for style in S.PRESETS["resnet50"].styles:
        spec = S.resnet50(style=style).replace(depths=(1, 2), width=8, num_classes=10)
        w = reference.calibrated_weights(spec, seed=1)
        model = rt.load_weights(rt.build(spec), w).train()
        images = reference.random_images(spec, 4, 32, seed=2)
        with torch.no_grad():
            ours = model(nchw(images)).numpy()
        ref, running = reference.forward_train(spec, w, images, variance="unbiased")
        # On this batch, train mode is eval mode with the batch's statistics: that function
        # in float32 is the peer for logits and for the statistics that feed them.
        batch_w = reference.calibrate(spec, w, images)
        tol = f32_peer_budget(spec, batch_w, images, reference.forward(spec, batch_w, images))
        assert rel_error(ours, ref) <= tol, style
        exported = rt.export_weights(model)
        for key, value in running.items():
            assert rel_error(exported[key], value) <= tol, f"{style} {key}"


def test_asymmetric_padding_pads_like_the_reference():
    x = np.random.default_rng(0).standard_normal((2, 9, 8, 3))
    conv = S.Conv("c", 3, 5, 3, 2, (1, 0, 2, 1), bias=True)
    module = layers.module(conv).double()
    assert isinstance(module, layers.PaddedConv2d)
    with torch.no_grad():
        got = module(nchw(x)).permute(0, 2, 3, 1).numpy()
    kernel = module.weight.detach().numpy().transpose(2, 3, 1, 0)
    expected = reference.conv(x, kernel, 2, conv.padding, module.bias.detach().numpy())
    assert rel_error(got, expected) <= 1e-12

    pool = layers.module(S.MaxPool("p", 3, 2, (0, 1, 1, 0)))
    assert isinstance(pool, layers.PaddedMaxPool2d)
    got = pool(nchw(-np.abs(x))).permute(0, 2, 3, 1).numpy()  # all negative: -inf padding shows
    assert np.array_equal(got, reference.maxpool(-np.abs(x), 3, 2, (0, 1, 1, 0)))


# --------------------------------------------------------------------- layout and names

@pytest.mark.parametrize("arch, style", dev_or_slow([(a, s) for a, p in S.PRESETS.items() for s in p.styles]))
def test_names_and_shapes_follow_the_spec(arch, style):
    spec = S.preset(arch, style)
    model = rt.build(spec)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == _expected_state_shapes(spec)
    params = {k for k, v in _expected_state_shapes(spec).items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert {k for k, _ in model.named_parameters()} == params
    assert sum(p.numel() for p in model.parameters()) == spec.num_params()
    assert model.spec is spec and not model.training


def test_seed_constructors():
    for make, arch in ((rt.ResNet50, "resnet50"), (rt.ResNet101, "resnet101"), (rt.ResNet152, "resnet152")):
        model = make(img_channel=1, num_classes=10)
        assert model.spec == S.preset(arch, image_channels=1, num_classes=10)
        assert model.conv1.weight.shape == (64, 1, 7, 7) and model.fc.out_features == 10
    assert rt.ResNet50().spec == S.resnet50()


EXPECTED_CONSTRUCTORS = {  # typed: the names users write
    "ResNet18": "resnet18", "ResNet34": "resnet34", "ResNet50": "resnet50", "ResNet101": "resnet101",
    "ResNet152": "resnet152", "ResNeXt50_32x4d": "resnext50_32x4d", "ResNeXt101_32x8d": "resnext101_32x8d",
    "ResNeXt101_64x4d": "resnext101_64x4d", "WideResNet50_2": "wide_resnet50_2",
    "WideResNet101_2": "wide_resnet101_2", "ResNet50V2": "resnet50v2", "ResNet101V2": "resnet101v2",
    "ResNet152V2": "resnet152v2",
}


@pytest.mark.parametrize("arch, name", dev_or_slow([(arch, name) for name, arch in EXPECTED_CONSTRUCTORS.items()]))
def test_every_preset_has_a_constructor(arch, name):
    make = getattr(rt, name)
    assert name in rt.__all__ and make.__name__ == name
    model = make(img_channel=1, num_classes=10, include_top=False, pooling="max")
    assert model.spec == S.preset(arch, image_channels=1, num_classes=10, include_top=False, pooling="max")
    assert isinstance(model, rt.ResNet) and not model.training


# --------------------------------------------------------------------- init

def test_torchvision_init_and_zero_init_residual():
    spec = S.resnet50(zero_init_residual=True)
    model, tv = rt.build(spec), torchvision.models.resnet50(zero_init_residual=True)
    zero = lambda m: {k for k, v in m.state_dict().items() if k.endswith("weight") and v.ndim == 1 and not v.any()}
    assert zero(model) == zero(tv) and len(zero(model)) == sum(spec.depths)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):  # kaiming_normal_, fan_out, relu
            w, fan_out = m.weight.detach(), m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            tol = 6 / np.sqrt(2 * w.numel())
            assert abs(w.std().item() / np.sqrt(2 / fan_out) - 1) < tol and abs(w.mean().item()) < 6 * w.std().item() / np.sqrt(w.numel())
        if isinstance(m, torch.nn.BatchNorm2d):
            assert not m.bias.any() and not m.running_mean.any() and (m.running_var == 1).all()
    assert model.fc.weight.abs().max() <= 1 / np.sqrt(2048)
    # Every residual branch starts at zero: an identity block passes its (post-ReLU) input through.
    x = torch.rand(2, 256, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.layer1[1](x), x)
    assert all(not m.bias.any() for m in rt.build(S.resnet50(style="keras")).modules() if isinstance(m, torch.nn.Conv2d))


# --------------------------------------------------------------------- native torch use

def test_channels_last_feature_map():
    spec = S.ResNetSpec(depths=(1, 1, 1), width=16, include_top=False, pooling=None)
    w = reference.calibrated_weights(spec, seed=4)
    model = rt.load_weights(rt.build(spec).to(memory_format=torch.channels_last), w)
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)  # load kept the format
    images = reference.random_images(spec, 2, 48, seed=5)
    with torch.no_grad():
        out = model(nchw(images).to(memory_format=torch.channels_last))
    assert out.shape == (2, spec.feature_channels, 3, 3) and out.is_contiguous(memory_format=torch.channels_last)
    ref = reference.forward(spec, w, images)
    err, tol = rel_error(out.permute(0, 2, 3, 1).numpy(), ref), f32_peer_budget(spec, w, images, ref)
    assert err <= tol


@pytest.mark.slow  # skipped by the development run (README); CI runs it
def test_torch_compile_fullgraph():
    """fullgraph=True raises on any graph break. The aot_eager backend traces what inductor
    would (dynamo + AOTAutograd) without inductor's ~60 s of CPU code generation."""
    torch._dynamo.reset()
    model = rt.build(S.ResNetSpec(depths=(1, 1), width=8, num_classes=10))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_error(compiled(x).numpy(), model(x).numpy()) <= 1e-6
    model.train()  # recompiles for train mode: batch statistics, running-stat updates, backward
    compiled(x).square().mean().backward()
    compiled_grad = model.conv1.weight.grad.clone()
    model.zero_grad()
    model(x).square().mean().backward()
    assert rel_error(compiled_grad.numpy(), model.conv1.weight.grad.numpy()) <= 1e-6


TORCH_ONLY = """
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):  # as if only torch were installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"tensorflow", "keras", "jax", "jaxlib", "flax", "optax", "orbax"}:
            raise ModuleNotFoundError(f"No module named {name!r} (a torch-only environment)")
sys.meta_path.insert(0, Refuse())
import numpy as np
from PIL import Image
import resnet_torch as rt
from shared import reference, spec as S, weights as W
spec = S.ResNetSpec(depths=(1, 1), width=8, num_classes=5)
weights = reference.calibrated_weights(spec, seed=1, size=32)
W.save(weights, "w.safetensors", spec=spec)
Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save("photo.png")
model = rt.load_weights(rt.build(spec), "w.safetensors")
x = rt.preprocess_input(np.asarray(Image.open("photo.png"), np.float32)[None], style="torchvision")
logits = rt.predict(model, x)
ref = reference.forward(spec, weights, x)
peer = reference.forward(spec, weights, x, dtype=np.float32)
print(logits.shape, np.linalg.norm(logits - ref) / np.linalg.norm(ref), np.linalg.norm(peer - ref) / np.linalg.norm(ref))
"""


def test_a_torch_only_environment_loads_weights_and_preprocesses(tmp_path):
    """With every other framework missing, resnet_torch alone loads a canonical safetensors file
    and preprocesses a decoded image, and its logits agree with the float64 reference."""
    out = subprocess.run([sys.executable, "-c", TORCH_ONLY], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    shape, figures = out.stdout.split(")")
    rel, peer = map(float, figures.split())
    assert shape == "(1, 5" and rel <= fp32_budget(peer)


def test_import_pulls_in_no_other_framework():
    code = ("import sys, resnet_torch; print(sorted({m.split('.')[0] for m in sys.modules} "
            "& {'tensorflow', 'keras', 'jax', 'flax'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------- files and errors

TINY = S.ResNetSpec(depths=(1, 1), width=8, num_classes=5)


def test_checkpoint_files(tmp_path):
    w = reference.calibrated_weights(TINY, seed=6)
    model = rt.load_weights(rt.build(TINY), w)
    torch.save(model.state_dict(), tmp_path / "m.pth")
    assert_bit_exact(rt.read_checkpoint(tmp_path / "m.pth", TINY)[1], w)
    assert_bit_exact(rt.read_checkpoint(tmp_path / "m.pth")[1], w)  # spec read off the keys
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "trained.pth")  # a training script's file
    assert_bit_exact(rt.read_checkpoint(tmp_path / "trained.pth")[1], w)
    W.save(w, tmp_path / "m.safetensors")
    assert_bit_exact(rt.read_checkpoint(tmp_path / "m.safetensors", TINY)[1], w)

    torch.save({"conv1.weight": torch.zeros(1), "why": _NotATensor()}, tmp_path / "pickle.pth")
    with pytest.raises(W.WeightsError, match="not a weights-only torch checkpoint"):
        rt.read_checkpoint(tmp_path / "pickle.pth")
    with pytest.raises(W.WeightsError, match=r"predictions.kernel: expected shape \(64, 7\), got \(64, 5\)"):
        rt.read_checkpoint(tmp_path / "m.pth", TINY.replace(num_classes=7))
    (tmp_path / "m.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown checkpoint type '.npz'"):
        rt.read_checkpoint(tmp_path / "m.npz")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        rt.read_checkpoint(tmp_path / "nope.pt")


class _NotATensor:
    pass


def test_load_weights_errors_name_the_key_and_touch_nothing():
    w = W.init(TINY, 0)
    model = rt.load_weights(rt.build(TINY), w)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad_shape = {**W.init(TINY, 1), "conv2_block1_3_conv.kernel": np.zeros((1, 1, 8, 16), np.float32)}
    cases = [
        ({k: v for k, v in W.init(TINY, 1).items() if k != "conv3_block1_0_bn.var"}, r"conv3_block1_0_bn.var: missing"),
        ({**W.init(TINY, 1), "extra.kernel": np.zeros(1, np.float32)}, r"extra.kernel: unexpected key"),
        (bad_shape, r"conv2_block1_3_conv.kernel: expected shape \(1, 1, 8, 32\), got \(1, 1, 8, 16\)"),
        ({**W.init(TINY, 1), "predictions.bias": np.zeros(5)}, r"predictions.bias: expected dtype float32, got float64"),
    ]
    for weights, message in cases:
        with pytest.raises(ValueError, match=message):
            rt.load_weights(model, weights)
    model.fc = torch.nn.Linear(64, 3)  # a module swapped by hand no longer fits the spec
    with pytest.raises(ValueError, match=r"fc.weight: the model holds shape \(3, 64\), the weights give \(5, 64\)"):
        rt.load_weights(model, W.init(TINY, 1))
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if not k.startswith("fc."))


def test_predict_checks_images_and_restores_mode():
    model = rt.build(TINY).train()
    images = reference.random_images(TINY, 2, 32)
    with pytest.raises(ValueError, match="4-D NHWC"):
        rt.predict(model, images[0])
    with pytest.raises(ValueError, match="3 channels on the last axis"):
        rt.predict(model, images.transpose(0, 3, 1, 2))
    with pytest.raises(ValueError, match="at least 8x8 pixels, got 4x4"):
        rt.predict(model, images[:, :4, :4])
    with pytest.raises(ValueError, match="expected floating .* got dtype uint8"):
        rt.predict(model, images.astype(np.uint8))
    running = model.bn1.running_mean.clone()
    out = rt.predict(model, images)
    assert out.dtype == np.float32 and out.shape == (2, 5)
    assert model.training and torch.equal(model.bn1.running_mean, running)  # ran in eval mode
    with torch.no_grad():
        assert np.array_equal(out, model.eval()(nchw(images)).numpy())


# --------------------------------------------------------------------- GPU precisions

@pytest.fixture(scope="module")
def gpu_case():
    """ResNet-50, 224x224, batch 16, calibrated weights; float64 reference logits."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    spec = S.resnet50()
    w = reference.calibrated_weights(spec, seed=0, size=224)
    images = reference.random_images(spec, 16, 224, seed=11)
    return rt.load_weights(rt.build(spec).cuda(), w), images, reference.forward(spec, w, images), spec, w, images


@pytest.fixture
def tf32_flags():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_gpu_precision_against_reference(precision, gpu_case, tf32_flags):
    model, images, ref = gpu_case[:3]
    tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = rt.predict(model, images)
    err = rel_error(out, ref)
    if precision == "fp32":
        tol = budget(arch="resnet50", device="gpu", precision=precision)
    else:  # judged against the reference with this precision's rounding emulated (shared.tools.check)
        ref, tol = low_precision_oracle(gpu_case[2], gpu_case[3], gpu_case[4], precision)
        assert err > budget(arch="resnet50", device="gpu", precision="fp32")  # it really ran at low precision
        err = rel_error(out, ref)
    print(f"resnet50 224x224 batch 16 {precision} on {torch.cuda.get_device_name()}: rel {err:.2e}, budget {tol:.2e}")
    assert err <= tol < 0.5
