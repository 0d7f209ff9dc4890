"""The spec against published facts: parameter counts, output shapes, stride placement, errors."""

import re

import pytest

from shared import spec as S
from shared.spec import BatchNorm, Conv, ResNetSpec

# Published counts: torchvision's model cards (learnable) and Keras Applications'
# count_params() (learnable + BatchNorm moving statistics).
TORCHVISION_PARAMS = {"resnet50": 25_557_032, "resnet101": 44_549_160, "resnet152": 60_192_808}
KERAS_PARAMS = {"resnet50": 25_636_712, "resnet101": 44_707_176, "resnet152": 60_419_944}


@pytest.mark.parametrize("arch", S.ARCHS)
def test_parameter_counts_match_published(arch):
    assert S.preset(arch).num_params() == TORCHVISION_PARAMS[arch]
    assert S.preset(arch, style="keras").num_params(include_bn_statistics=True) == KERAS_PARAMS[arch]


@pytest.mark.parametrize("arch", S.ARCHS)
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
    with pytest.raises(ValueError, match="style: unknown style 'caffe'"):
        S.resnet50(style="caffe")
    with pytest.raises(ValueError, match="arch: unknown"):
        S.preset("resnet18")
    with pytest.raises(ValueError, match="overrides: unknown ResNetSpec field"):
        S.resnet50(depth=3)


def test_too_small_input_refused():
    with pytest.raises(ValueError, match=r"at least 32x32 pixels, got 31x64"):
        S.resnet50().output_shape(31, 64)
    assert ResNetSpec(depths=(1,), width=8).output_shape(4) == (1000,)
    with pytest.raises(ValueError, match=r"at least 4x4"):
        ResNetSpec(depths=(1,), width=8).output_shape(3)
