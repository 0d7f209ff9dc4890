"""torchvision state_dicts <-> canonical weights: bit-exact round trips, spec read off the keys."""

import numpy as np
import pytest

from shared import interop, spec as S
from shared.weights import WeightsError

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


def _randomised(model):
    """Every tensor random, so a swapped or transposed entry cannot survive the round trip."""
    g = torch.Generator().manual_seed(0)
    return {k: (torch.rand(v.shape, generator=g) + 0.5 if v.is_floating_point() else v)
            for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch", S.ARCHS)
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
    with pytest.raises(WeightsError, match="basic-block ResNet"):
        interop.from_torchvision(torchvision.models.resnet18().state_dict())
    state = torchvision.models.resnet50().state_dict()
    missing = {k: v for k, v in state.items() if k != "layer3.2.bn2.running_mean"}
    with pytest.raises(WeightsError, match=r"missing key layer3.2.bn2.running_mean \(for conv4_block3_2_bn.mean\)"):
        interop.from_torchvision(missing, spec=S.resnet50())
    with pytest.raises(WeightsError, match=r"unexpected key\(s\) \['layer1.0.extra.weight'\]"):
        interop.from_torchvision({**state, "layer1.0.extra.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match=r"predictions.kernel: expected shape \(2048, 1000\), got \(2048, 10\)"):
        interop.from_torchvision({**state, "fc.weight": torch.zeros(10, 2048)}, spec=S.resnet50())
