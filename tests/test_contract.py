"""The contract, identical in resnet_torch, resnet_keras and resnet_flax (``shared.contract``):
the same signatures; one input policy; one fit check; stage features against the float64
reference (within the fp32 budget: 4x the float32 reference's own error at the same point) and
against each framework's peer (torchvision's feature extractor, keras.applications' layers);
constructors with Keras Applications' include_top/pooling/classifier_activation, judged against
keras.applications itself; checkpoints of another architecture, style or class count refused."""

import importlib
import importlib.util
import inspect

import numpy as np
import pytest

from shared import checkpoint, contract, keras_h5, parity, reference, spec as S, weights as W
from shared.parity import fp32_budget

PACKAGES = {"torch": "resnet_torch", "keras": "resnet_keras", "flax": "resnet_flax"}
NEEDS = {"torch": "torch", "keras": "keras", "flax": "flax"}
FRAMEWORKS = [pytest.param("torch"), pytest.param("keras", marks=pytest.mark.keras), pytest.param("flax")]
TINY = {
    "torchvision": S.ResNetSpec(depths=(1, 1, 1, 1), width=8, num_classes=10),
    "keras": S.preset_spec("keras", depths=(1, 1, 1, 1), width=8, num_classes=10),
}
DOCUMENTED = {  # the contract as the issue and the design write it
    "ResNet50": "(img_channel=3, num_classes=1000, *, style='torchvision', weights=None, include_top=True, "
                "pooling=None, classifier_activation=None)",
    "build": "(spec)",
    "load_weights": "(model, weights)",
    "export_weights": "(model)",
    "predict": "(model, images_nhwc)",
    "features": "(model, images_nhwc)",
    "read_checkpoint": "(source, spec=None, style=None)",
    "variables": "(model)",
    "preprocess_input": "(x, *, style)",
    "preprocess": "(image_or_path, *, weights=None, style=None)",
    "decode_predictions": "(logits, top=5, **kwargs)",
    "optimizer": "(recipe, model)",
    "train_step": "(model, optimizer, images, labels, recipe)",
}


def _constructor_signature(name: str) -> str:
    """ResNet50's documented signature with the preset's default style (ResNet50V2: 'keras')."""
    style = next(p.styles[0] for p in S.PRESETS.values() if p.constructor == name)
    return DOCUMENTED["ResNet50"].replace("style='torchvision'", f"style={style!r}")


def package(framework):
    pytest.importorskip(NEEDS[framework])
    return importlib.import_module(PACKAGES[framework])


def _bare(function) -> str:
    """The signature without annotations: names, kinds and defaults."""
    sig = inspect.signature(function)
    return str(sig.replace(parameters=[p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()],
                           return_annotation=inspect.Signature.empty))


@pytest.mark.keras
def test_every_public_function_has_one_signature_in_all_three():
    packages = [package(fw) for fw in PACKAGES]
    for name in contract.CONTRACT:
        assert all(name in p.__all__ for p in packages), name
    common = set.intersection(*(set(p.__all__) for p in packages))
    functions = sorted(n for n in common if inspect.isfunction(getattr(packages[0], n)))
    assert set(functions) == set(contract.CONTRACT)
    for name in functions:
        bare = {p.__name__: _bare(getattr(p, name)) for p in packages}
        assert len(set(bare.values())) == 1, f"{name}: {bare}"
        expected = DOCUMENTED[name] if name in DOCUMENTED else _constructor_signature(name)
        assert bare["resnet_torch"] == expected, name
        if name in ("predict", "features", "export_weights"):  # same return type (models are native)
            returns = {p.__name__: inspect.signature(getattr(p, name)).return_annotation for p in packages}
            assert len(set(returns.values())) == 1, f"{name}: {returns}"


# ----------------------------------------------------------------------------- one input policy

@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_one_input_policy(framework):
    """Floating images of any precision are cast to the model's float32; integer and bool images
    are refused with the same message in all three."""
    fw = package(framework)
    spec = TINY["torchvision"]
    weights = reference.calibrated_weights(spec, seed=3)
    model = fw.load_weights(fw.build(spec), weights)
    images = reference.random_images(spec, 2, 32, seed=4)
    for bad in (np.uint8, np.int64, np.bool_):
        with pytest.raises(ValueError, match=rf"images: expected floating \(preprocessed\) images, got dtype "
                                             rf"{np.dtype(bad)}; scale and normalise"):
            fw.predict(model, images.astype(bad))
        with pytest.raises(ValueError, match="expected floating"):
            fw.features(model, images.astype(bad))
    wide = images.astype(np.float64) + 1e-12  # below float32's resolution: the cast removes it
    out = fw.predict(model, wide)
    assert out.dtype == np.float32 and np.array_equal(out, fw.predict(model, images))
    expected = reference.forward(spec, weights, images)
    peer = parity.rel_error(reference.forward(spec, weights, images, dtype=np.float32), expected)
    assert parity.rel_error(out, expected) <= fp32_budget(peer)
    assert np.array_equal(fw.predict(model, images.astype(np.float16)), fw.predict(model, images.astype(np.float16).astype(np.float32)))


# ----------------------------------------------------------------------------- features

@pytest.mark.parametrize("style", ["torchvision", "keras"])
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_features_match_the_float64_reference(framework, style):
    fw = package(framework)
    spec = TINY[style]
    weights = reference.calibrated_weights(spec, seed=5, size=64)
    images = reference.random_images(spec, 2, 64, seed=6)
    at64, at32 = {}, {}
    reference.forward(spec, weights, images, hook=at64.__setitem__)
    reference.forward(spec, weights, images, hook=at32.__setitem__, dtype=np.float32)
    feats = fw.features(fw.load_weights(fw.build(spec), weights), images)
    assert list(feats) == ["stem", "stage1", "stage2", "stage3", "stage4"]
    for name, point in contract.feature_points(spec).items():
        ref = at64[point]
        assert feats[name].dtype == np.float32 and feats[name].shape == ref.shape, name
        err, limit = parity.rel_error(feats[name], ref), fp32_budget(parity.rel_error(at32[point], ref))
        print(f"{framework} {style} {name} {ref.shape}: rel {err:.2e}, budget {limit:.2e}")
        assert err <= limit, f"{name}: rel {err:.2e} > {limit:.2e}"


def test_torch_features_equal_torchvision_feature_extractor(torchvision_model):
    torch = pytest.importorskip("torch")
    from torchvision.models.feature_extraction import create_feature_extractor

    import resnet_torch as rt

    tv, spec, weights = torchvision_model("resnet50")
    images = reference.random_images(spec, 2, 64, seed=8)
    model = rt.ResNet50(weights=weights)
    nodes = {"maxpool": "stem", "layer1": "stage1", "layer2": "stage2", "layer3": "stage3", "layer4": "stage4"}
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # NCHW memory, as predict passes it
    with torch.no_grad():
        theirs = create_feature_extractor(tv, nodes)(x)
        native = model.forward_features(x)
    ours = rt.features(model, images)
    for name in nodes.values():
        assert np.array_equal(ours[name], theirs[name].permute(0, 2, 3, 1).numpy()), name
        assert torch.equal(native[name], theirs[name]), name


@pytest.mark.keras
def test_keras_feature_extractor_equals_keras_applications_layers():
    keras = pytest.importorskip("keras")
    import resnet_keras as rk

    spec = S.resnet50("keras")
    weights = reference.calibrated_weights(spec, seed=9, size=32)
    images = reference.random_images(spec, 2, 32, seed=10)
    app = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classifier_activation=None)
    model = rk.ResNet50(style="keras", weights=weights)
    app.set_weights(model.get_weights())  # layer for layer the same model
    names = {"stem": "pool1_pool", "stage1": "conv2_block3_out", "stage2": "conv3_block4_out",
             "stage3": "conv4_block6_out", "stage4": "conv5_block3_out"}  # keras-hub's pyramid points
    peer = keras.Model(app.inputs[0], {k: app.get_layer(v).output for k, v in names.items()})
    theirs = peer(images, training=False)
    extractor = rk.feature_extractor(model)
    assert list(extractor.output.keys()) == list(names) and rk.feature_extractor(model) is extractor
    ours = rk.features(model, images)
    for name in names:
        assert parity.rel_error(ours[name], keras.ops.convert_to_numpy(theirs[name])) <= 1e-6, name


def test_flax_features_are_a_jittable_method():
    pytest.importorskip("flax")
    from flax import nnx

    import resnet_flax as rf

    spec = TINY["torchvision"]
    weights = reference.calibrated_weights(spec, seed=11)
    images = reference.random_images(spec, 2, 32, seed=12)
    model = rf.load_weights(rf.build(spec), weights)
    jitted = nnx.jit(lambda m, x: m.features(x))(model, images)
    for name, value in rf.features(model, images).items():
        assert np.array_equal(np.asarray(jitted[name]), value), name


# ----------------------------------------------------------------------------- one fit check

@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_load_weights_returns_the_model_and_checks_everything_first(framework):
    fw = package(framework)
    spec = TINY["torchvision"]
    model = fw.build(spec)
    before = fw.export_weights(model)
    good = reference.calibrated_weights(spec, seed=13)
    assert fw.load_weights(model, good) is model
    assert all(np.array_equal(v, good[k]) for k, v in fw.export_weights(model).items())
    fw.load_weights(model, before)
    bad = dict(good, **{"predictions.bias": np.zeros(9, np.float32)})  # the last key in spec order
    with pytest.raises(ValueError, match=r"predictions.bias: expected shape \(10,\), got \(9,\)"):
        fw.load_weights(model, bad)
    assert all(np.array_equal(v, before[k]) for k, v in fw.export_weights(model).items())


def test_flax_load_weights_checks_the_model_against_its_spec():
    pytest.importorskip("flax")
    from flax import nnx

    import resnet_flax as rf

    spec = TINY["torchvision"]
    model = rf.build(spec)
    before = rf.export_weights(model)
    model.predictions = nnx.Linear(256, 9, rngs=nnx.Rngs(0))  # a user's swapped head
    with pytest.raises(ValueError, match=r"predictions.kernel: the model holds shape \(256, 9\), its spec \(256, 10\)"):
        rf.load_weights(model, reference.calibrated_weights(spec, seed=14))
    assert np.array_equal(rf.export_weights(model)["conv1_conv.kernel"], before["conv1_conv.kernel"])


# ----------------------------------------------------------------------------- constructors

@pytest.fixture(scope="module")
def resnet50_10_classes(tmp_path_factory):
    """A ResNet-50 (torchvision style, 10 classes) checkpoint with calibrated weights, 32 px images
    and their float64 logits and float32 peer error."""
    spec = S.resnet50(num_classes=10)
    weights = reference.calibrated_weights(spec, seed=15, size=32)
    path = tmp_path_factory.mktemp("ckpt") / "r50-10.safetensors"
    W.save(weights, path, spec=spec)
    images = reference.random_images(spec, 2, 32, seed=16)
    expected = reference.forward(spec, weights, images)
    peer = parity.rel_error(reference.forward(spec, weights, images, dtype=np.float32), expected)
    return path, images, expected, peer


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_constructor_loads_a_checkpoint_and_refuses_one_that_differs(framework, resnet50_10_classes, tmp_path):
    fw = package(framework)
    path, images, expected, peer = resnet50_10_classes
    with pytest.raises(ValueError, match=r"the checkpoint is resnet50 \(torchvision style, 10 classes, 3 image "
                                         r"channels\), the model is resnet50 \(torchvision style, 1000 classes.*"
                                         r"num_classes: checkpoint 10, model 1000"):
        fw.ResNet50(weights=path)
    with pytest.raises(ValueError, match=r"checkpoint is resnet50 \(torchvision style.*the model is resnet50 "
                                         r"\(keras style.*stride_on: checkpoint '3x3', model '1x1'"):
        fw.ResNet50(num_classes=10, style="keras", weights=path)
    tiny = tmp_path / "tiny.safetensors"
    W.save(W.init(TINY["torchvision"]), tiny, spec=TINY["torchvision"])
    with pytest.raises(ValueError, match=r"checkpoint is depths \(1, 1, 1, 1\), width 8, expansion 4 "
                                         r"\(torchvision style, 10 classes.*the model is resnet50"):
        fw.ResNet50(num_classes=10, weights=tiny)
    model = fw.ResNet50(num_classes=10, weights=path)
    assert parity.rel_error(fw.predict(model, images), expected) <= fp32_budget(peer)
    fw.load_weights(model, W.init(S.resnet50(num_classes=10)))
    assert fw.load_weights(model, str(path)) is model  # a path to load_weights too
    saved = W.load(path)
    assert all(np.array_equal(v, saved[k]) for k, v in fw.export_weights(model).items())


@pytest.fixture(scope="module")
def keras_resnet50():
    """Calibrated weights whose classifier is scaled by 1e-3 to give logits of O(1) (std 1.0 instead
    of 1044 here): on large logits the softmax turns each implementation's rounding of the top
    few logits into its whole error, which varied 20-fold between fp32 implementations
    (measured: 8e-5 to 1.5e-3)."""
    spec = S.resnet50("keras")
    weights = reference.calibrated_weights(spec, seed=17, size=32)
    for key in ("predictions.kernel", "predictions.bias"):
        weights[key] = weights[key] * np.float32(1e-3)
    return spec, weights, reference.random_images(spec, 2, 32, seed=18)


@pytest.mark.keras
@pytest.mark.parametrize("include_top, pooling, activation", [(True, "max", "softmax"),
                                                               pytest.param(False, "max", "softmax", marks=pytest.mark.slow)],
                         ids=["top-pooling-ignored", "no-top-activation-ignored"])
def test_constructor_arguments_mean_what_keras_applications_means(keras_resnet50, include_top, pooling, activation):
    """keras.applications.ResNet50 with the same arguments and weights is the peer: it must give
    the shape, and every framework's ResNet50(style="keras", ...) the function, of the float64
    reference of Keras Applications' meaning (with the top: average pool, softmax; without:
    ``pooling``, no activation), within 4x keras.applications' own error."""
    keras = pytest.importorskip("keras")
    full, weights, images = keras_resnet50
    if include_top:
        logits = reference.forward(full, weights, images)
        expected = np.exp(logits - logits.max(-1, keepdims=True))
        expected /= expected.sum(-1, keepdims=True)
    else:
        weights = {k: v for k, v in weights.items() if not k.startswith("predictions.")}
        expected = reference.forward(full.replace(include_top=False, pooling=pooling), weights, images)
    models = {fw: package(fw).ResNet50(style="keras", weights=weights, include_top=include_top, pooling=pooling,
                                       classifier_activation=activation)
              for fw in PACKAGES if importlib.util.find_spec(NEEDS[fw]) is not None}
    app = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), include_top=include_top,
                                      pooling=pooling, classifier_activation=activation)
    app.set_weights(models["keras"].get_weights())
    theirs = np.asarray(keras.ops.convert_to_numpy(app(images, training=False)))
    assert theirs.shape == expected.shape == ((2, 1000) if include_top else (2, 2048))
    limit = fp32_budget(parity.rel_error(theirs, expected))
    for framework, model in models.items():
        out = package(framework).predict(model, images)
        err = parity.rel_error(out, expected)
        print(f"{framework} include_top={include_top} pooling={pooling}: rel {err:.2e}, budget {limit:.2e}")
        assert out.shape == expected.shape and err <= limit, framework


def test_constructor_spec_refuses_unknown_arguments():
    with pytest.raises(ValueError, match=r"classifier_activation: expected one of .*got 'tanh'"):
        contract.constructor_spec("resnet50", 3, 1000, "torchvision", True, None, "tanh")
    with pytest.raises(ValueError, match=r"pooling: expected 'avg', 'max' or None, got 'mean'"):
        contract.constructor_spec("resnet50", 3, 1000, "torchvision", False, "mean", None)
    with pytest.raises(ValueError, match=r"style: resnet50 exists in style\(s\) \('torchvision', 'keras'\), got 'caffe'"):
        contract.constructor_spec("resnet50", 3, 1000, "caffe", True, None, None)


def test_a_checkpoint_with_a_top_serves_a_model_without_one(tmp_path):
    spec = TINY["keras"]
    weights = reference.calibrated_weights(spec)
    keras_h5.to_keras_applications_h5(spec, weights, tmp_path / "tiny.h5")
    notop = spec.replace(include_top=False, pooling=None)
    got = checkpoint.for_spec(notop, tmp_path / "tiny.h5")
    assert set(got) == set(notop.param_shapes()) and all(np.array_equal(got[k], weights[k]) for k in got)
    W.save(got, tmp_path / "notop.safetensors", spec=notop)
    with pytest.raises(ValueError, match=r"include_top: checkpoint False, model True"):
        checkpoint.for_spec(spec, tmp_path / "notop.safetensors")


# ----------------------------------------------------------------------------- the public layer hook

@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_layers_override_is_the_one_public_hook(framework):
    """``<package>.layers.override`` swaps the ReLU for the models built inside it, and for no
    other: with ``abs`` in place of the ReLU the logits leave the float64 reference by far more than
    the fp32 budget; a model built after the context closes is back within it. A BatchNorm class
    that is not the framework's is refused, naming the expected base."""
    fw = package(framework)
    layers = importlib.import_module(f"{PACKAGES[framework]}.layers")
    spec = TINY["torchvision"]
    weights = reference.calibrated_weights(spec, seed=5)
    images = reference.random_images(spec, 2, 32, seed=6)
    ref = reference.forward(spec, weights, images)
    limit = fp32_budget(parity.rel_error(reference.forward(spec, weights, images, dtype=np.float32), ref))
    with layers.override(relu=abs):
        broken = fw.load_weights(fw.build(spec), weights)
    after = fw.load_weights(fw.build(spec), weights)
    assert parity.rel_error(fw.predict(broken, images), ref) > 100 * limit
    assert parity.rel_error(fw.predict(after, images), ref) <= limit
    with pytest.raises(TypeError, match="batchnorm: expected a subclass of"):
        with layers.override(batchnorm=dict):
            pass
