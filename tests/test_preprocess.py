"""The core's preprocessing (``shared.preprocess``), re-exported by every package, against the
publishers' own: Keras Applications' ``preprocess_input`` for its V1 ('caffe') and V2 ('tf')
sets, torchvision's ``ToTensor`` + ``Normalize`` (its ImageNet weights' transforms) for the
torchvision style, on an image decoded by Pillow from a PNG the test writes.

Then the whole path per published weight set (``preprocess(path, weights=NAME)``: decode,
resize, crop, normalise) against each publisher's own pipeline on JPEG and PNG photos the tests
write: torchvision's ``weights.transforms()`` on the Pillow image for every torchvision hub name,
``keras.utils.load_img(target_size=(224, 224))`` + ``img_to_array`` + ``preprocess_input`` for
every Keras one. Both are required to be equal to the bit, and are (max abs difference 0.0,
measured on every set): the publishers resize a PIL image with Pillow's own ``Image.resize``
(torchvision's ``F.resize`` on a PIL image calls it, Keras' ``load_img`` too), crop with the same
integer arithmetic, and the value transform is the same float32 elementwise operations (each
correctly rounded, so bit-identical in numpy and torch). Any difference would be a wrong recipe
(size, crop, filter, channel order), not rounding. ImageNet class names and
``decode_predictions``, per package with native logits, at the end."""

import importlib
import tomllib
from pathlib import Path

import numpy as np
import pytest

from shared import preprocess, spec as S

PACKAGES = {"torch": "resnet_torch", "keras": "resnet_keras", "flax": "resnet_flax"}


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A smooth RGB image with edges and every 0-255 value, saved as PNG and decoded by Pillow."""
    Image = pytest.importorskip("PIL.Image")
    y, x = np.mgrid[0:48, 0:64]
    rgb = np.stack([(x * 4) % 256, (y * 5) % 256, ((x + y) * 3) % 256], -1).astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(rgb).save(path)
    return np.asarray(Image.open(path).convert("RGB"))[None]


@pytest.mark.parametrize("style, module", [("keras", "resnet"), (S.preset("resnet50v2", "keras"), "resnet_v2")])
def test_keras_sets_equal_keras_applications_exactly(photo, style, module):
    keras_module = pytest.importorskip(f"keras.applications.{module}")
    for x in (photo, photo.astype(np.float32), photo.astype(np.float64)):
        kept = x.copy()
        ours, theirs = preprocess.preprocess_input(x, style=style), keras_module.preprocess_input(x.copy())
        assert np.array_equal(x, kept)  # Keras modifies float input in place; ours does not
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)


def test_torchvision_style_equals_torchvision_transforms(photo):
    """torchvision's ImageNet weights take ToTensor (/255) then Normalize(mean, std): the same
    float32 operations in the same order, so the result is equal to the bit."""
    transforms = pytest.importorskip("torchvision.transforms")
    from PIL import Image

    pipeline = transforms.Compose([transforms.ToTensor(),
                                   transforms.Normalize(preprocess.TORCHVISION_MEAN, preprocess.TORCHVISION_STD)])
    theirs = pipeline(Image.fromarray(photo[0])).numpy().transpose(1, 2, 0)[None]
    ours = preprocess.preprocess_input(photo, style="torchvision")
    assert ours.dtype == np.float32
    assert np.array_equal(ours, theirs)


def test_every_package_exports_the_one_rule(photo):
    for name, package in PACKAGES.items():
        if importlib.util.find_spec(name if name != "flax" else "flax") is None:
            continue
        fw = importlib.import_module(package)
        if name != "keras":  # the very function (resnet_keras' wraps it to take backend tensors too)
            assert fw.preprocess_input is preprocess.preprocess_input
        for style in ("torchvision", "keras", S.preset("resnet50v2", "keras")):
            assert np.array_equal(fw.preprocess_input(photo, style=style), preprocess.preprocess_input(photo, style=style))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="style: expected 'keras' or 'torchvision'"):
        preprocess.preprocess_input(np.zeros((1, 2, 2, 3)), style="caffe")
    with pytest.raises(ValueError, match=r"expected channels last with 3 \(RGB\) channels, got shape \(1, 3, 2, 2\)"):
        preprocess.preprocess_input(np.zeros((1, 3, 2, 2)), style="torchvision")


# ----------------------------------------------------------------------------- keras tensors
# (moved from tests/test_keras.py: resnet_keras.preprocess_input also takes backend tensors)

@pytest.mark.keras
def test_preprocess_input():
    keras = pytest.importorskip("keras")
    rk = importlib.import_module("resnet_keras")
    from keras.applications import imagenet_utils, resnet

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 5, 4, 3)).astype(np.uint8)
    for x in (pixels, pixels.astype(np.float32), pixels.astype(np.float64)):
        kept = x.copy()
        caffe = rk.preprocess_input(x, style="keras")
        assert np.array_equal(x, kept)  # keras.applications' modifies float input in place; ours does not
        expected = resnet.preprocess_input(x.copy())
        assert caffe.dtype == expected.dtype and np.array_equal(caffe, expected)
    tensor = rk.preprocess_input(keras.ops.convert_to_tensor(pixels), style=S.resnet50("keras"))
    assert np.array_equal(keras.ops.convert_to_numpy(tensor), resnet.preprocess_input(pixels))

    by_hand = (pixels / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    ours = rk.preprocess_input(pixels, style="torchvision")
    assert ours.dtype == np.float32 and np.abs(ours - by_hand).max() <= 1e-6
    assert np.array_equal(ours, imagenet_utils.preprocess_input(pixels.astype(np.float32), mode="torch"))
    tensor = rk.preprocess_input(keras.ops.convert_to_tensor(pixels), style="torchvision")
    assert np.abs(keras.ops.convert_to_numpy(tensor) - by_hand).max() <= 1e-6
    with pytest.raises(ValueError, match="style: expected 'keras' or 'torchvision'"):
        rk.preprocess_input(pixels, style="caffe")


@pytest.mark.keras
def test_preprocess_input_v2():
    """A pre-activation spec selects Keras' ResNet V2 preprocessing ('tf' mode: to [-1, 1])."""
    keras = pytest.importorskip("keras")
    rk = importlib.import_module("resnet_keras")
    from keras.applications import resnet_v2

    spec = S.preset("resnet50v2", "keras")
    pixels = np.random.default_rng(1).integers(0, 256, (2, 5, 4, 3)).astype(np.uint8)
    for x in (pixels, pixels.astype(np.float32), pixels.astype(np.float64)):
        ours, expected = rk.preprocess_input(x, style=spec), resnet_v2.preprocess_input(x.copy())
        assert ours.dtype == expected.dtype and np.array_equal(ours, expected)
        assert ours.min() >= -1 and ours.max() <= 1
    floats = pixels.astype(np.float32)
    tensor = keras.ops.convert_to_numpy(rk.preprocess_input(keras.ops.convert_to_tensor(floats), style=spec))
    # Keras' own tensor path on this backend (XLA divides by a reciprocal: not numpy's bits)
    assert np.array_equal(tensor, keras.ops.convert_to_numpy(resnet_v2.preprocess_input(keras.ops.convert_to_tensor(floats))))
    assert np.abs(tensor - resnet_v2.preprocess_input(floats.copy())).max() <= 1e-6
    assert not np.array_equal(rk.preprocess_input(pixels, style="keras"), rk.preprocess_input(pixels, style=spec))


# ----------------------------------------------------------------------------- per weight set, on image files
from shared import hub  # noqa: E402

TORCHVISION_NAMES = [n for n in hub.names() if n.startswith("torchvision/")]
KERAS_NAMES = [n for n in hub.names() if n.startswith("keras/")]


def _smooth_photo(h, w, seed=0):
    """A photo-like RGB image: smooth gradients and waves plus sensor-like noise (JPEG blocks,
    resize filters and crops all show on it)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    rgb = np.stack([128 + 100 * np.sin(x / 37) * np.cos(y / 23), 128 + 90 * np.cos((x + y) / 51),
                    255 * (x / w) * (y / h)], -1)
    rgb += np.random.default_rng(seed).normal(0, 6, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """JPEG and PNG files, landscape 500x375 and portrait 333x500 (both resize branches, odd
    sizes so the crop offsets round), plus grey, RGBA and palette PNGs."""
    Image = pytest.importorskip("PIL.Image")
    folder = tmp_path_factory.mktemp("photos")
    files = {}
    for shape, tag in (((375, 500), "wide"), ((500, 333), "tall")):
        rgb = _smooth_photo(*shape)
        for ext in ("jpg", "png"):
            files[f"{tag}.{ext}"] = folder / f"{tag}.{ext}"
            Image.fromarray(rgb).save(files[f"{tag}.{ext}"], **({"quality": 90} if ext == "jpg" else {}))
    rgb = _smooth_photo(300, 400, seed=1)
    alpha = np.linspace(0, 255, 400, dtype=np.uint8)[None].repeat(300, 0)
    for mode, img in (("L", Image.fromarray(rgb).convert("L")), ("RGBA", Image.fromarray(np.dstack([rgb, alpha]))),
                      ("P", Image.fromarray(rgb).convert("P"))):
        files[mode] = folder / f"{mode}.png"
        img.save(files[mode])
    return files


def test_every_hub_name_carries_its_preprocessing():
    assert set(hub.names()) <= set(preprocess.PREPROCESSING)
    for name in hub.names():
        p = preprocess.for_weights(name)
        assert p.size == (224, 224)
        if name.startswith("keras/"):
            assert (p.mode, p.resize, p.crop, p.interpolation) == ("tf" if "v2." in name else "caffe", (224, 224),
                                                                    None, "nearest")


def test_torchvision_recipes_equal_weights_transforms():
    """Field by field: every torchvision hub set's recipe is its *_Weights enum's transforms()."""
    tv = pytest.importorskip("torchvision")
    for name in TORCHVISION_NAMES:
        arch, tag = name.split("/")[1].split(".")
        t = tv.models.get_model_weights(arch)[tag].transforms()
        p = preprocess.for_weights(name)
        assert [p.resize] == list(t.resize_size) and [p.crop] == list(t.crop_size), name
        assert p.interpolation == t.interpolation.value and t.antialias, name  # Pillow's resize antialiases
        assert tuple(t.mean) == p.mean and tuple(t.std) == p.std and p.mode == "torch", name


@pytest.mark.parametrize("image", ["wide.jpg", "wide.png", "tall.jpg", "tall.png", "L", "RGBA", "P"])
def test_torchvision_sets_equal_weights_transforms_on_files(photos, image):
    """ours == ``weights.transforms()(Image.open(path).convert("RGB"))``, to the bit (module doc)."""
    tv = pytest.importorskip("torchvision")
    from PIL import Image

    pil = Image.open(photos[image]).convert("RGB")
    for name in TORCHVISION_NAMES:
        arch, tag = name.split("/")[1].split(".")
        theirs = tv.models.get_model_weights(arch)[tag].transforms()(pil).numpy().transpose(1, 2, 0)[None]
        ours = preprocess.preprocess(photos[image], weights=name)
        assert ours.dtype == np.float32 and ours.shape == (1, 224, 224, 3)
        assert np.abs(ours - theirs).max() == 0.0, name


@pytest.mark.parametrize("image", ["wide.jpg", "wide.png", "tall.jpg", "tall.png", "L", "RGBA", "P"])
def test_keras_sets_equal_load_img_and_preprocess_input_on_files(photos, image):
    """ours == ``preprocess_input(img_to_array(load_img(path, target_size=(224, 224))))``, to the bit."""
    keras = pytest.importorskip("keras")
    from keras.applications import resnet, resnet_v2

    pixels = keras.utils.img_to_array(keras.utils.load_img(photos[image], target_size=(224, 224)))[None]
    for name in KERAS_NAMES:
        theirs = (resnet_v2 if "v2." in name else resnet).preprocess_input(pixels.copy())
        ours = preprocess.preprocess(photos[image], weights=name)
        assert ours.dtype == np.float32 and ours.shape == (1, 224, 224, 3)
        assert np.abs(ours - theirs).max() == 0.0, name


def test_styles_and_batches(photos):
    from PIL import Image

    name = "torchvision/resnet50.IMAGENET1K_V1"
    one = preprocess.preprocess(photos["wide.jpg"], weights=name)
    assert np.array_equal(preprocess.preprocess(photos["wide.jpg"], style="torchvision"), one)
    assert np.array_equal(preprocess.preprocess(str(photos["wide.jpg"]), style=S.resnet50()), one)
    assert np.array_equal(preprocess.preprocess(Image.open(photos["wide.jpg"]), style="torchvision"), one)
    assert np.array_equal(preprocess.preprocess(np.asarray(Image.open(photos["wide.jpg"])), style="torchvision"), one)
    both = preprocess.preprocess([photos["wide.jpg"], photos["tall.png"]], weights=name)
    assert both.shape == (2, 224, 224, 3) and np.array_equal(both[:1], one)
    v2 = preprocess.preprocess(photos["wide.png"], style=S.preset("resnet50v2", "keras"))
    assert np.array_equal(v2, preprocess.preprocess(photos["wide.png"], weights="keras/resnet50v2.imagenet"))
    assert v2.min() >= -1 and v2.max() <= 1
    custom = preprocess.Preprocessing("torch", 160, 128, "bicubic")
    assert preprocess.preprocess(photos["tall.jpg"], style=custom).shape == (1, 128, 128, 3)


def test_bad_images_and_names_are_refused_clearly(photos, tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match=f"image {missing}: no such file"):
        preprocess.preprocess(missing, style="keras")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=f"image {text}: cannot read it as an image"):
        preprocess.preprocess(text, style="keras")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(photos["wide.jpg"].read_bytes()[:2000])
    with pytest.raises(ValueError, match=f"image {cut}: cannot read it as an image"):
        preprocess.preprocess(cut, style="keras")
    with pytest.raises(ValueError, match=r"weights='mine/resnet50': a weights name without known preprocessing; "
                                         r"pass style= instead"):
        preprocess.preprocess(photos["wide.jpg"], weights="mine/resnet50")
    with pytest.raises(ValueError, match="a file without known preprocessing; pass style="):
        preprocess.preprocess(photos["wide.jpg"], weights=str(photos["wide.png"]))
    with pytest.raises(ValueError, match="exactly one of weights= .* and style="):
        preprocess.preprocess(photos["wide.jpg"])
    with pytest.raises(ValueError, match="exactly one of"):
        preprocess.preprocess(photos["wide.jpg"], weights="keras/resnet50.imagenet", style="keras")
    with pytest.raises(ValueError, match="expected an HxW or HxWx"):
        preprocess.preprocess(np.zeros((8, 8, 3), np.float32), style="keras")


def test_a_registered_name_gets_its_preprocessing(photos):
    recipe = preprocess.Preprocessing("torch", 232, 224, "bilinear", "my fine-tune")
    preprocess.register("test-only/mine", recipe)
    try:
        assert preprocess.for_weights("test-only/mine") is recipe
        with pytest.raises(ValueError, match="already has preprocessing"):
            preprocess.register("test-only/mine", preprocess.KERAS_V1)
    finally:
        del preprocess.PREPROCESSING["test-only/mine"]


# ----------------------------------------------------------------------------- labels
def test_imagenet_classes_are_torchvisions_metadata():
    names = preprocess.imagenet_classes()
    assert len(names) == 1000 and names[0] == "tench" and names[-1] == "toilet tissue"
    header = (Path(preprocess.__file__).parent / "data" / "imagenet_classes.txt").read_text().splitlines()[:4]
    assert any("torchvision/models/_meta.py" in line and "_IMAGENET_CATEGORIES" in line for line in header)
    tv = pytest.importorskip("torchvision")
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    assert names == list(_IMAGENET_CATEGORIES)
    assert names == tv.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"]


def test_class_names_ship_in_the_distribution():
    config = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["shared"]
    root = Path(preprocess.__file__).parent
    assert any(root / "data" / "imagenet_classes.txt" in root.glob(p) for p in patterns)


def test_decode_predictions():
    logits = np.random.default_rng(0).normal(size=(2, 1000)).astype(np.float32)
    logits[0, 207], logits[1, 1] = 20.0, 9.0
    top = preprocess.decode_predictions(logits, top=3)
    assert [t[0][:2] for t in top] == [(207, "golden retriever"), (1, "goldfish")]
    probs = np.exp(logits[0].astype(np.float64) - logits[0].max())
    probs /= probs.sum()
    order = np.argsort(-probs)[:3]
    assert [i for i, _, _ in top[0]] == list(order)
    assert np.allclose([p for _, _, p in top[0]], probs[order], rtol=1e-12)
    assert all(a[2] >= b[2] for row in top for a, b in zip(row, row[1:]))
    softmaxed = probs[None]  # already probabilities (a softmax head): taken as they are
    assert preprocess.decode_predictions(softmaxed, top=1)[0][0][2] == pytest.approx(probs[207])
    assert len(preprocess.decode_predictions(logits[0])) == 1  # one image, unbatched
    with pytest.raises(ValueError, match=r"logits: expected shape \(N, 1000\), got \(2, 10\)"):
        preprocess.decode_predictions(np.zeros((2, 10)))


# ----------------------------------------------------------------------------- per package, natively
def test_torch_preprocess_and_decode_are_native(photos):
    torch = pytest.importorskip("torch")
    rt = importlib.import_module("resnet_torch")
    name = "torchvision/resnet50.IMAGENET1K_V2"
    x = rt.preprocess(photos["wide.jpg"], weights=name)
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and tuple(x.shape) == (1, 3, 224, 224)
    assert x.is_contiguous() and np.array_equal(x.numpy().transpose(0, 2, 3, 1),
                                                preprocess.preprocess(photos["wide.jpg"], weights=name))
    model = rt.build(S.ResNetSpec(depths=(1, 1, 1, 1), width=8))
    logits = model(x)  # the module takes it as it is; logits with grad
    assert logits.requires_grad
    top = rt.decode_predictions(logits, top=5)
    assert top == preprocess.decode_predictions(logits.detach().numpy().astype(np.float64), top=5)
    assert rt.decode_predictions(logits.to(torch.bfloat16))[0][0][0] in range(1000)


def test_flax_preprocess_and_decode_are_native(photos):
    jax = pytest.importorskip("jax")
    rf = importlib.import_module("resnet_flax")
    x = rf.preprocess([photos["wide.jpg"], photos["L"]], weights="keras/resnet50.imagenet")
    assert isinstance(x, jax.Array) and x.dtype == jax.numpy.float32 and x.shape == (2, 224, 224, 3)
    # the NHWC float32 jax.Array an nnx ResNet takes (a model call here costs ~10 s of eager
    # compiles on 2 cores; tests/test_flax.py covers model(x) on such arrays)
    logits = jax.random.normal(jax.random.key(0), (2, 1000)) * 3
    top = rf.decode_predictions(logits, top=2)
    assert len(top) == 2 and top == preprocess.decode_predictions(np.asarray(logits), top=2)
    assert rf.decode_predictions(logits.astype(jax.numpy.bfloat16))[0][0][0] in range(1000)


@pytest.mark.keras
def test_keras_preprocess_and_decode_are_native(photos):
    keras = pytest.importorskip("keras")
    rk = importlib.import_module("resnet_keras")
    x = rk.preprocess(photos["RGBA"], weights="keras/resnet50v2.imagenet")
    assert isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape == (1, 224, 224, 3)
    logits = rk.build(S.preset("resnet50v2", "keras", depths=(1, 1, 1, 1), width=8))(x)  # a backend tensor
    top = rk.decode_predictions(logits, top=3)
    assert top == preprocess.decode_predictions(keras.ops.convert_to_numpy(logits), top=3)


def test_every_package_exports_preprocess_and_decode(photos):
    for name, package in PACKAGES.items():
        if importlib.util.find_spec(name) is None:
            continue
        fw = importlib.import_module(package)
        assert {"preprocess", "preprocess_input", "decode_predictions"} <= set(fw.__all__)
        x = np.asarray(fw.preprocess(photos["tall.png"], weights="torchvision/resnet50.IMAGENET1K_V1"))
        if name == "torch":
            x = x.transpose(0, 2, 3, 1)
        assert np.array_equal(x, preprocess.preprocess(photos["tall.png"], weights="torchvision/resnet50.IMAGENET1K_V1"))
