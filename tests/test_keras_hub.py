"""resnet_keras against keras-hub's ResNet (``ResNetBackbone``, ``ResNetImageClassifier``): its vd
basic and bottleneck blocks and its pre-activation V2 are our ``resnet_vd_18``/``resnet_vd_34``,
``resnet50d`` and ``resnetv2_50`` (style "timm"). keras-hub's model gets seeded random weights
(BatchNorm statistics too) and writes them with its own ``save_weights``; we read that
``.weights.h5`` into canonical weights, load them into our model of the preset and compare the
outputs at the same input: bit for bit, as the two models run the same Keras ops."""

import h5py
import numpy as np
import pytest

from shared import keras_h5, parity, reference, spec as S
from shared.weights import WeightsError
from helpers import assert_same

pytestmark = pytest.mark.keras
keras = pytest.importorskip("keras")
keras_hub = pytest.importorskip("keras_hub")
import resnet_keras as rk  # noqa: E402
from resnet_keras import checkpoints  # noqa: E402

BACKEND = keras.backend.backend()
DEEP = dict(input_conv_filters=[32, 32, 64], input_conv_kernel_sizes=[3, 3, 3])
# Our preset -> keras-hub's ResNetBackbone arguments for it (its vd presets' and V2's).
HUB = {
    "resnet_vd_18": dict(block_type="basic_block_vd", **DEEP),
    "resnet_vd_34": dict(block_type="basic_block_vd", **DEEP),
    "resnet50d": dict(block_type="bottleneck_block_vd", **DEEP),
    "resnetv2_50": dict(block_type="bottleneck_block", use_pre_activation=True, input_conv_filters=[64],
                        input_conv_kernel_sizes=[7]),
}
SIZE = 65  # odd: the vd shortcut's 'same' average pool cuts a last window in every stage
CLASSES = 10


def _backbone(arch, depths):
    return keras_hub.models.ResNetBackbone(
        stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=list(depths),
        stackwise_num_strides=[1, 2, 2, 2], **HUB[arch])


def _randomise(model, seed):
    """Every variable of keras-hub's model seeded random, through its own layer objects: kernels
    He-normal, BatchNorm gamma and variance in [0.5, 1.5], beta and mean N(0, 0.2), biases N(0, 0.2)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape, name = tuple(variable.shape), variable.path.rsplit("/", 1)[-1]
        if name == "kernel":
            value = rng.normal(0, np.sqrt(2 / np.prod(shape[:-1])), shape)
        elif name in ("gamma", "moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0, 0.2, shape)
        variable.assign(value.astype(np.float32))
    return model


def _numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float32)


@pytest.fixture(scope="module")
def hub_file(tmp_path_factory):
    """``hub_file(arch, depths, classifier)``: keras-hub's model with random weights, saved by its
    ``save_weights``; (model, path). Built once per case."""
    cache = {}

    def make(arch, depths, classifier=True):
        key = (arch, depths, classifier)
        if key not in cache:
            model = _backbone(arch, depths)
            if classifier:
                model = keras_hub.models.ResNetImageClassifier(backbone=model, num_classes=CLASSES)
            _randomise(model, seed=len(cache))
            path = tmp_path_factory.mktemp("hub") / f"{arch}.weights.h5"
            model.save_weights(path)
            cache[key] = model, path
        return cache[key]

    return make


CASES = [("resnet_vd_18", (2, 2, 2, 2)), ("resnet50d", (1, 1, 1, 1)), ("resnetv2_50", (1, 1, 1, 1))]
# keras-hub's presets at full depth where ours has a preset of its own (the README's rows)
FULL = [("resnet_vd_34", (3, 4, 6, 3))]


@pytest.mark.parametrize("arch, depths", CASES + FULL)
def test_equals_keras_hub_on_its_own_weights(hub_file, arch, depths):
    """keras-hub's classifier, read from its ``.weights.h5`` into our model of the preset: the same
    logits, rel 0.0; keras-hub itself against the float64 reference of the preset on the same
    weights within the measured ResNet-50 budget (a deeper model: the spec maps its blocks)."""
    hub, path = hub_file(arch, depths)
    spec = S.preset(arch, depths=depths, num_classes=CLASSES)
    found, weights = checkpoints.read_weights_h5(path, spec=spec)
    assert found == spec and checkpoints.read_weights_h5(path)[0] == spec  # also read off the file alone
    model = rk.load_weights(rk.build(spec), path)  # a user's way: the file, for the model's spec
    assert_same(rk.export_weights(model), weights)
    images = reference.random_images(spec, batch=2, size=SIZE, seed=7)
    theirs = _numpy(hub(images, training=False))
    mine = rk.predict(model, images)
    expected = reference.forward(spec, weights, images)
    peer = parity.rel_error(theirs, expected)
    print(f"{BACKEND} {arch} {depths}: ours vs keras-hub {parity.rel_error(mine, theirs):.1e}, "
          f"keras-hub vs float64 {peer:.2e}")
    assert np.isfinite(theirs).all() and np.abs(theirs).max() > 0
    assert np.array_equal(mine, theirs)
    assert peer <= parity.budget(arch="resnet50"), f"keras-hub itself is off: {peer:.2e}"  # a deeper model's budget


@pytest.mark.parametrize("arch, depths", CASES)
def test_names_in_keras_hub_files_and_by_position(hub_file, arch, depths, tmp_path):
    """Every array of keras-hub's file lands on the canonical key its layer name says; the same
    file with the stored names removed (what older Keras writes) reads the same by position."""
    hub, path = hub_file(arch, depths)
    spec = S.preset(arch, depths=depths, num_classes=CLASSES)
    _, weights = checkpoints.read_weights_h5(path, spec=spec)
    backbone = hub.backbone
    stem = len(HUB[arch]["input_conv_filters"])
    avg_down = spec.shortcut == "avg_down"
    for layer in backbone.layers:
        for variable in layer.weights:
            param = {"moving_mean": "mean", "moving_variance": "var"}.get(variable.name, variable.name)
            key = f"{keras_h5.keras_hub_layer_name(layer.name, stem, avg_down)}.{param}"
            assert weights[key].tobytes() == _numpy(variable).tobytes(), key
    assert weights["predictions.kernel"].tobytes() == _numpy(hub.get_layer("predictions").kernel).tobytes()

    nameless = tmp_path / "nameless.weights.h5"
    nameless.write_bytes(path.read_bytes())
    with h5py.File(nameless, "r+") as f:
        f.visititems(lambda name, obj: obj.attrs.__delitem__("name") if "name" in obj.attrs else None)
    assert_same(checkpoints.read_weights_h5(nameless, spec=spec)[1], weights)
    with pytest.raises(WeightsError, match="stored no layer names.*pass the spec"):
        checkpoints.read_weights_h5(nameless)


def test_backbone_file_and_spec_inference(hub_file):
    """keras-hub's V2 backbone alone (post BN and ReLU, no pooling): its file read without a spec
    gives resnetv2_50's structure with no top, and our features equal its output bit for bit."""
    hub, path = hub_file("resnetv2_50", (1, 1, 1, 1), classifier=False)
    spec, weights = checkpoints.read_weights_h5(path)
    assert spec == S.preset("resnetv2_50", depths=(1, 1, 1, 1), include_top=False, pooling=None)
    model = rk.load_weights(rk.build(spec), weights)
    images = reference.random_images(spec, batch=2, size=SIZE, seed=8)
    assert np.array_equal(rk.predict(model, images), _numpy(hub(images, training=False)))


def test_a_file_that_does_not_fit_names_the_layer(hub_file):
    _, path = hub_file("resnet50d", (1, 1, 1, 1))
    with pytest.raises(WeightsError, match=r"layer conv1_1_conv: unexpected"):
        checkpoints.read_weights_h5(path, spec=S.preset("resnet50", depths=(1, 1, 1, 1), num_classes=CLASSES))


@pytest.mark.parametrize("arch", ["resnet_vd_18", "resnet_vd_34"])
def test_parameter_counts_equal_keras_hub(arch):
    """keras-hub's ResNetImageClassifier (1000 classes) counts what our spec counts with BN
    statistics, and the preset's recorded count."""
    spec = S.preset(arch)
    hub = keras_hub.models.ResNetImageClassifier(backbone=_backbone(arch, spec.depths), num_classes=1000)
    assert hub.count_params() == spec.num_params(include_bn_statistics=True) == S.PRESETS[arch].params
