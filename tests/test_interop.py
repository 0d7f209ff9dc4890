"""torchvision state_dicts <-> canonical weights: bit-exact round trips, spec read off the keys."""

import numpy as np
import pytest

from shared import interop, spec as S
from shared.weights import WeightsError
from helpers import dev_or_slow

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


def _randomised(model):
    """Every tensor random, so a swapped or transposed entry cannot survive the round trip."""
    g = torch.Generator().manual_seed(0)
    return {k: (torch.rand(v.shape, generator=g) + 0.5 if v.is_floating_point() else v)
            for k, v in model.state_dict().items()}


TORCHVISION_ARCHS = [a for a, p in S.PRESETS.items() if p.peer.startswith("torchvision.")]


@pytest.mark.parametrize("arch", dev_or_slow(TORCHVISION_ARCHS))
def test_torchvision_round_trip_bit_exact(arch):
    state = _randomised(getattr(torchvision.models, arch)())
    spec, weights = interop.from_torchvision(state)
    assert spec == S.preset(arch)
    back = interop.to_torchvision(spec, weights)
    assert set(back) == set(state)
    for key, value in state.items():
        assert back[key].dtype == value.numpy().dtype and np.array_equal(back[key], value.numpy()), key


def test_layouts_are_hwio_and_in_out():
    state = _randomised(torchvision.models.resnet50())
    _, w = interop.from_torchvision({k: v.numpy() for k, v in state.items()})  # numpy values too
    assert np.array_equal(w["conv3_block1_2_conv.kernel"][2, 0, 5, 7], state["layer2.0.conv2.weight"][7, 5, 2, 0].numpy())
    assert np.array_equal(w["predictions.kernel"][3, 9], state["fc.weight"][9, 3].numpy())
    assert np.array_equal(w["conv4_block1_0_bn.var"], state["layer3.0.downsample.1.running_var"].numpy())


def test_spec_read_off_keys_and_shapes():
    model = torchvision.models.resnet101(num_classes=7)
    model.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    spec, _ = interop.from_torchvision(model.state_dict())
    assert (spec.depths, spec.image_channels, spec.num_classes) == ((3, 4, 23, 3), 1, 7)
    wide = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 2, 1, 1], num_classes=3)
    assert interop.from_torchvision(wide.state_dict())[0].depths == (1, 2, 1, 1)
    headless = {k: v for k, v in torchvision.models.resnet50().state_dict().items() if not k.startswith("fc.")}
    assert interop.from_torchvision(headless)[0].include_top is False


def test_bad_state_dicts_are_named():
    basic = torchvision.models.resnet18().state_dict()
    with pytest.raises(WeightsError, match="missing key layer1.0.conv2.weight"):
        interop.from_torchvision({k: v for k, v in basic.items() if not k.startswith("layer1.0.conv2.")})
    grouped = torchvision.models.resnext50_32x4d().state_dict()
    with pytest.raises(WeightsError, match=r"layer1.0.conv2.weight: 128 channels in 42 group\(s\) of 3 match no "
                                           r"width_per_group"):
        interop.from_torchvision({**grouped, "layer1.0.conv2.weight": torch.zeros(128, 3, 3, 3)})
    state = torchvision.models.resnet50().state_dict()
    missing = {k: v for k, v in state.items() if k != "layer3.2.bn2.running_mean"}
    with pytest.raises(WeightsError, match=r"missing key layer3.2.bn2.running_mean \(for conv4_block3_2_bn.mean\)"):
        interop.from_torchvision(missing, spec=S.resnet50())
    with pytest.raises(WeightsError, match=r"unexpected key\(s\) \['layer1.0.extra.weight'\]"):
        interop.from_torchvision({**state, "layer1.0.extra.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match=r"predictions.kernel: expected shape \(2048, 1000\), got \(2048, 10\)"):
        interop.from_torchvision({**state, "fc.weight": torch.zeros(10, 2048)}, spec=S.resnet50())


# --------------------------------------------------------------------- the name rule, every layer kind

def test_torchvision_module_names_every_layer_kind():
    """Typed from torchvision's resnet.py (and, for V2's layers torchvision lacks, the rule
    "keep the Keras suffix"): stem, every block layer of the three kinds, shortcut, head."""
    expected = {
        "conv1_conv": "conv1", "conv1_bn": "bn1", "conv1_relu": "relu", "pool1_pool": "maxpool",
        "conv2_block1_1_conv": "layer1.0.conv1", "conv2_block1_1_bn": "layer1.0.bn1",
        "conv2_block1_1_relu": "layer1.0.relu", "conv3_block2_2_conv": "layer2.1.conv2",
        "conv5_block3_3_bn": "layer4.2.bn3", "conv4_block1_0_conv": "layer3.0.downsample.0",
        "conv4_block1_0_bn": "layer3.0.downsample.1", "conv2_block1_out": "layer1.0.relu",
        "conv2_block1_preact_bn": "layer1.0.preact_bn", "conv2_block1_preact_relu": "layer1.0.relu",
        "conv3_block4_0_pool": "layer2.3.downsample.0", "post_bn": "post_bn", "post_relu": "relu",
        "avg_pool": "avgpool", "max_pool": "globalmaxpool", "predictions": "fc",
    }
    assert {name: interop.torchvision_module(name) for name in expected} == expected
    for bad in ("conv2_block1_add", "conv2_block1_9_pool", "conv9_bn", "fc"):
        with pytest.raises(KeyError, match=bad):
            interop.torchvision_module(bad)


@pytest.mark.parametrize("arch, style", [(a, s) for a, p in S.PRESETS.items() for s in p.styles])
def test_spec_from_canonical_infers_every_preset(arch, style):
    """Block kind, depths, groups, width per group, expansion, bias, deep stem, conv stem pool,
    avg-down, project_first, SE ratio, ECA read off canonical names and shapes (zero-byte
    stand-ins); the style only where shapes cannot tell it."""
    spec = S.preset(arch, style)
    shapes = {k: np.broadcast_to(np.float32(0), shape) for k, shape in spec.param_shapes().items()}
    # No weight shows anti-aliasing or a max+blur or avg stem pool: the inference gives the max
    # pool and no anti-aliasing (the same weights), and the caller's spec says the rest.
    weightless = dict(anti_alias=None, stem_pool="conv" if spec.stem_pool == "conv" else "max")
    expected = spec.replace(**weightless)
    assert expected.param_shapes() == spec.param_shapes()
    assert interop.spec_from_canonical(shapes, style=style) == expected
    assert interop.spec_from_canonical(shapes) == expected  # V2: keras or timm; V1: biased convs mean keras
    headless = S.preset(arch, style, include_top=False, **weightless)
    no_top = {k: v for k, v in shapes.items() if not k.startswith("predictions.")}
    assert interop.spec_from_canonical(no_top) == headless


@pytest.mark.parametrize("arch", [a for a in S.ARCHS if a not in TORCHVISION_ARCHS][:1])
def test_resnet_v2_torchvision_style_state_dict_round_trips(arch):
    """V2 has no torchvision model; its torchvision-style state_dict (resnet_torch's) still
    carries the spec and round-trips bit-exactly."""
    spec = S.preset(arch)
    rng = np.random.default_rng(0)
    weights = {k: rng.standard_normal(shape).astype(np.float32) + 2 for k, shape in spec.param_shapes().items()}
    state = interop.to_torchvision(spec, weights)
    assert "layer1.0.preact_bn.running_var" in state and "post_bn.weight" in state and "layer1.0.conv3.bias" in state
    assert "layer1.2.downsample.0.weight" not in state  # a strided block's shortcut is a parameter-free pool
    again_spec, again = interop.from_torchvision(state)
    assert again_spec == spec
    assert again.keys() == weights.keys() and all(np.array_equal(again[k], v) for k, v in weights.items())


# --------------------------------------------------------------------- timm's keys

@pytest.mark.parametrize("arch", ["ecaresnet26t", "seresnet18", "resnetv2_50"])
def test_timm_state_dict_round_trips_bit_exact(arch):
    """timm's own state_dict (resnet.py's keys as they are, resnetv2's renamed, its head's 1x1
    conv kernel made dense): the spec read off it is the preset, and canonical weights give
    every tensor back to the bit (ECA's (1, 1, k) kernel, SE's conv kernels and biases)."""
    timm = pytest.importorskip("timm")
    state = _randomised(timm.create_model(arch))
    assert interop.is_torch_state_dict(state)
    spec, weights = interop.from_torchvision(state)
    assert spec == S.preset(arch)
    back = interop.to_torchvision(spec, weights)
    renamed = {interop.timm_v2_key(k): v.numpy() for k, v in state.items()} if spec.block == "preact" else \
        {k: v.numpy() for k, v in state.items()}
    if spec.block == "preact":
        renamed["fc.weight"] = renamed["fc.weight"][:, :, 0, 0]
    assert set(back) == set(renamed)
    for key, value in renamed.items():
        assert back[key].dtype == value.dtype and np.array_equal(back[key], value), key
