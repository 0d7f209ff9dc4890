"""The core's preprocessing (``shared.preprocess``), re-exported by every package, against the
publishers' own: Keras Applications' ``preprocess_input`` for its V1 ('caffe') and V2 ('tf')
sets, torchvision's ``ToTensor`` + ``Normalize`` (its ImageNet weights' transforms) for the
torchvision style, on an image decoded by Pillow from a PNG the test writes."""

import importlib

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
        for style in ("torchvision", "keras", S.preset("resnet50v2", "keras")):
            assert np.array_equal(fw.preprocess_input(photo, style=style), preprocess.preprocess_input(photo, style=style))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="style: expected 'keras' or 'torchvision'"):
        preprocess.preprocess_input(np.zeros((1, 2, 2, 3)), style="caffe")
    with pytest.raises(ValueError, match=r"expected channels last with 3 \(RGB\) channels, got shape \(1, 3, 2, 2\)"):
        preprocess.preprocess_input(np.zeros((1, 3, 2, 2)), style="torchvision")
