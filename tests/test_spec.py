"""The spec against published facts: parameter counts, output shapes, stride placement, errors."""

import re

import pytest

from shared import spec as S
from shared.spec import BatchNorm, Conv, ResNetSpec
from helpers import dev_or_slow

# Published counts: torchvision's model cards (learnable) and Keras Applications'
# count_params() (learnable + BatchNorm moving statistics).
# Typed from the publications (docs/design.md), not from shared.spec.PRESETS.
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272, "wide_resnet50_2": 68_883_240, "wide_resnet101_2": 126_886_696,
}
KERAS_PARAMS = {
    "resnet50": 25_636_712, "resnet101": 44_707_176, "resnet152": 60_419_944,
    "resnet50v2": 25_613_800, "resnet101v2": 44_675_560, "resnet152v2": 60_380_648,
}

# timm 1.0.31: sum(p.numel() for p in timm.create_model(name).parameters()), read off timm's own
# models on 2026-12-06 (tests/test_timm.py checks them against the installed timm too).
TIMM_PARAMS = {
    "resnet26": 15_995_176, "resnet200": 64_673_832, "resnet10t": 5_435_488, "resnet18d": 11_708_744,
    "resnet26d": 16_014_408, "resnet26t": 16_011_872, "resnet50c": 25_576_264, "resnet50d": 25_576_264,
    "resnet50s": 25_680_808, "resnet50t": 25_573_728, "resnet101d": 44_568_392,
    "resnext50d_32x4d": 25_048_136, "seresnet18": 11_779_624, "seresnet50": 28_088_024,
    "seresnext26d_32x4d": 16_809_512, "seresnext50_32x4d": 27_559_896, "ecaresnet26t": 16_011_916,
    "ecaresnet50d": 25_576_350, "resnetrs50": 35_691_912, "resnetaa50": 25_557_032,
    "resnetaa50d": 25_576_264, "resnetblur18": 11_689_512, "resnetblur50": 25_557_032,
    "resnetv2_50": 25_549_352, "resnetv2_101": 44_541_480,
}
# keras-hub 0.32: ResNetBackbone(block_type="basic_block_vd", input_conv_filters=[32, 32, 64], ...)
# count_params() (with BN statistics) plus the 1000-class Dense of ResNetImageClassifier.
KERAS_HUB_PARAMS = {"resnet_vd_18": 11_209_824 + 513_000, "resnet_vd_34": 21_325_408 + 513_000}


def test_every_preset_has_a_published_count():
    assert set(S.ARCHS) == set(TORCHVISION_PARAMS) | set(KERAS_PARAMS) | set(TIMM_PARAMS) | set(KERAS_HUB_PARAMS)


@pytest.mark.parametrize("arch", sorted(TIMM_PARAMS))
def test_parameter_counts_match_timm(arch):
    assert S.preset(arch).num_params() == TIMM_PARAMS[arch] == S.PRESETS[arch].params


@pytest.mark.parametrize("arch", sorted(KERAS_HUB_PARAMS))
def test_parameter_counts_match_keras_hub(arch):
    assert S.preset(arch).num_params(include_bn_statistics=True) == KERAS_HUB_PARAMS[arch]


def test_se_width_is_timms_make_divisible():
    """timm's SE hidden width: C/16 rounded to the nearest multiple of 8, at least 8 (so 8, not
    4, for a 64-channel basic block); ResNet-RS's 1/4."""
    widths = [b.attention[1].out_channels for b in S.preset("seresnet18").blocks()]
    assert widths == [8, 8, 8, 8, 16, 16, 32, 32]
    rs = {b.out_channels: b.attention[1].out_channels for b in S.preset("resnetrs50").blocks()}
    assert rs == {256: 64, 512: 128, 1024: 256, 2048: 512}


def test_eca_kernel_is_ecas_rule():
    kernels = {b.out_channels: b.attention[1].kernel_size for b in S.preset("ecaresnet50d").blocks()}
    assert kernels == {256: 5, 512: 5, 1024: 5, 2048: 7}


@pytest.mark.parametrize("arch", sorted(TORCHVISION_PARAMS))
def test_parameter_counts_match_torchvision(arch):
    assert S.preset(arch, style="torchvision").num_params() == TORCHVISION_PARAMS[arch]
    assert S.PRESETS[arch].params == TORCHVISION_PARAMS[arch]


@pytest.mark.parametrize("arch", sorted(KERAS_PARAMS))
def test_parameter_counts_match_keras_applications(arch):
    assert S.preset(arch, style="keras").num_params(include_bn_statistics=True) == KERAS_PARAMS[arch]


@pytest.mark.parametrize("arch", dev_or_slow(sorted(TORCHVISION_PARAMS)))
def test_param_shapes_match_torchvision(arch):
    """Every canonical weight has a torchvision counterpart of the same size, and none is left."""
    torchvision = pytest.importorskip("torchvision")
    from shared.interop import to_torchvision
    from shared.weights import init

    spec = S.preset(arch)
    ours = to_torchvision(spec, init(spec))
    theirs = getattr(torchvision.models, arch)().state_dict()
    assert set(ours) == set(theirs)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


@pytest.mark.parametrize("size", [(224, 224), (225, 161), (33, 47), (64, 32)])
def test_feature_map_shape_matches_torchvision(size):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    trunk = torch.nn.Sequential(*list(torchvision.models.resnet50().children())[:-2]).eval()
    with torch.no_grad():
        out = trunk(torch.zeros(1, 3, *size))
    spec = S.resnet50(include_top=False, pooling=None)
    h, w, c = spec.output_shape(*size)
    assert (c, h, w) == tuple(out.shape[1:])
    # The Keras-style stride placement (stride on the 1x1 conv) gives the same sizes.
    assert S.resnet50("keras", include_top=False, pooling=None).output_shape(*size) == (h, w, c)


def test_output_shape_with_head():
    assert S.resnet50(num_classes=10).output_shape(96) == (10,)
    assert S.resnet101(include_top=False, pooling="max").output_shape(96) == (2048,)
    assert ResNetSpec(depths=(1, 1), width=8, include_top=False, pooling="avg").output_shape(40) == (64,)


@pytest.mark.parametrize("style, strided", [("torchvision", "_2_conv"), ("keras", "_1_conv")])
def test_stride_placement(style, strided):
    spec = S.resnet50(style)
    for block in spec.blocks():
        convs = {layer.name.removeprefix(block.name): layer for layer in block.main if isinstance(layer, Conv)}
        expected = 2 if block.stage > 0 and block.index == 0 else 1
        assert convs[strided].stride == expected
        assert all(c.stride == 1 for n, c in convs.items() if n != strided)
        if block.shortcut:
            assert block.shortcut[0].stride == expected
        assert convs["_2_conv"].padding == (1, 1, 1, 1)


def test_stem_padding_and_conventions():
    conv, bn, _, pool = S.resnet50().stem()
    assert (conv.kernel_size, conv.stride, conv.padding, conv.bias) == (7, 2, (3, 3, 3, 3), False)
    assert (pool.size, pool.stride, pool.padding) == (3, 2, (1, 1, 1, 1))
    assert (bn.epsilon, bn.momentum) == (1e-5, 0.1)
    kconv, kbn, _, _ = S.resnet50("keras").stem()
    assert kconv.bias and (kbn.epsilon, kbn.momentum) == (1.001e-5, 0.01)  # Keras' 0.99 = torch 0.01


def test_zero_init_residual_marks_last_bn_of_each_block():
    spec = S.resnet50(zero_init_residual=True)
    for block in spec.blocks():
        bns = [layer for layer in block.main if isinstance(layer, BatchNorm)]
        assert [bn.zero_init for bn in bns] == [False, False, True]
        assert not any(layer.zero_init for layer in block.shortcut if isinstance(layer, BatchNorm))


def test_layer_names_unique_and_style_detected():
    spec = S.resnet152("keras")
    names = [layer.name for layer in spec.layers()]
    assert len(names) == len(set(names))
    assert spec.style == "keras" and S.resnet152().style == "torchvision"
    assert S.resnet50(bn_epsilon=1e-3).style == "custom"


@pytest.mark.parametrize(
    "fields, named",
    [
        (dict(depths=()), "depths"),
        (dict(depths=(3, 0, 2)), "depths[1]"),
        (dict(width=0), "width"),
        (dict(image_channels=0), "image_channels"),
        (dict(num_classes=0), "num_classes"),
        (dict(expansion=-1), "expansion"),
        (dict(stride_on="7x7"), "stride_on"),
        (dict(bn_epsilon=0.0), "bn_epsilon"),
        (dict(bn_momentum=1.5), "bn_momentum"),
        (dict(pooling="median"), "pooling"),
        (dict(pooling=None), "pooling"),  # include_top needs a pooling
        (dict(conv_bias="yes"), "conv_bias"),
    ],
)
def test_bad_spec_names_field(fields, named):
    with pytest.raises(ValueError, match=re.escape(f"{named}:")):
        ResNetSpec(**fields)


def test_bad_preset_arguments():
    with pytest.raises(ValueError, match=r"style: resnet50 exists in style\(s\) \('torchvision', 'keras'\), got 'caffe'"):
        S.resnet50(style="caffe")
    with pytest.raises(ValueError, match=r"style: resnet50v2 exists in style\(s\) \('keras',\), got 'torchvision'"):
        S.preset("resnet50v2", "torchvision")
    with pytest.raises(ValueError, match="style: 'torchvision' has no 'preact' ResNet; use one of \\('keras', 'timm'\\)"):
        S.preset_spec("torchvision", block="preact")
    with pytest.raises(ValueError, match="arch: unknown"):
        S.preset("resnet19")
    with pytest.raises(ValueError, match="overrides: unknown ResNetSpec field"):
        S.resnet50(depth=3)


def test_too_small_input_refused():
    with pytest.raises(ValueError, match=r"at least 32x32 pixels, got 31x64"):
        S.resnet50().output_shape(31, 64)
    assert ResNetSpec(depths=(1,), width=8).output_shape(4) == (1000,)
    with pytest.raises(ValueError, match=r"at least 4x4"):
        ResNetSpec(depths=(1,), width=8).output_shape(3)


def test_block_kinds_follow_their_peers():
    """Structure read off torchvision's BasicBlock/Bottleneck and Keras' residual_block_v2."""
    basic = S.preset("resnet18").blocks()
    assert [b.stride for b in basic] == [1, 1, 2, 1, 2, 1, 2, 1]
    assert [l.kernel_size for l in basic[2].main if isinstance(l, Conv)] == [3, 3]
    assert [l.stride for l in basic[2].main if isinstance(l, Conv)] == [2, 1]
    assert basic[0].shortcut == () and len(basic[2].shortcut) == 2 and basic[0].out_channels == 64

    grouped = S.preset("resnext50_32x4d").blocks()[0]
    assert [(l.out_channels, l.groups) for l in grouped.main if isinstance(l, Conv)] == [(128, 1), (128, 32), (256, 1)]
    assert S.preset("wide_resnet50_2").blocks()[0].width == 128

    v2 = S.preset("resnet50v2").blocks()
    # Keras' stack2: the stride sits on the 3x3 conv of the *last* block of stages 1-3.
    assert [b.stride for b in v2] == [1, 1, 2, 1, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1]
    first, strided, plain = v2[0], v2[2], v2[1]
    assert [l.name for l in first.pre] == ["conv2_block1_preact_bn", "conv2_block1_preact_relu"]
    assert first.shortcut_from == "pre" and first.shortcut[0].bias and first.shortcut[0].name == "conv2_block1_0_conv"
    assert strided.shortcut_from == "input" and strided.shortcut[0].kind == "maxpool" and strided.shortcut[0].stride == 2
    assert plain.shortcut == () and plain.out == () and plain.add.name == "conv2_block2_out"
    assert [l.bias for l in first.main if isinstance(l, Conv)] == [False, False, True]
    assert [l.name for l in S.preset("resnet50v2").head()] == ["post_bn", "post_relu", "avg_pool", "predictions"]
    assert [l.kind for l in S.preset("resnet50v2").stem()] == ["conv", "maxpool"]
    assert S.preset("resnet50v2").stem()[1].pad_value == 0.0 and S.preset("resnet50v2").stem()[0].bias


def test_block_walk_is_the_dataflow():
    """Block.walk on symbols: what each path sees and what is added."""
    chain = lambda layers, x: "".join(f"{l.kind}(" for l in reversed(layers)) + x + ")" * len(layers)
    add = lambda layer, main, shortcut: f"add({main}, {shortcut})"
    v2 = S.preset("resnet50v2").blocks()
    assert v2[0].walk("x", chain, add).startswith("add(conv(relu(bn(conv(relu(bn(conv(relu(bn(x))))))))), conv(relu(bn(x))))")
    assert v2[2].walk("x", chain, add).endswith(", maxpool(x))")
    assert S.preset("resnet18").blocks()[0].walk("x", chain, add) == "relu(add(bn(conv(relu(bn(conv(x))))), x))"


def test_bad_block_fields_refused():
    with pytest.raises(ValueError, match=r"a basic block has groups=1 and width_per_group=64 .* got 32 and 4"):
        S.preset_spec("torchvision", block="basic", groups=32, width_per_group=4)
    with pytest.raises(ValueError, match=r"stage 1 has 8 planes, so width_per_group=4 gives an inner width of 0"):
        S.preset_spec("torchvision", width=8, width_per_group=4)
    with pytest.raises(ValueError, match="block: must be one of"):
        S.preset_spec("torchvision", block="dense")
    with pytest.raises(ValueError, match="zero_init_residual: a pre-activation block"):
        S.preset("resnet50v2", zero_init_residual=True)
