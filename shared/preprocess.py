"""What each published weight set was trained on, as data, and the functions that apply it.

``preprocess_input(x, style=...)``: the value transform alone, numpy in, a new float array out
(the input untouched). Keras Applications' names for the three modes:

- 'torch' (torchvision style): /255, then minus mean (0.485, 0.456, 0.406) and over std
  (0.229, 0.224, 0.225) per RGB channel;
- 'caffe' (Keras Applications V1: ResNet50/101/152): RGB -> BGR, then minus the BGR ImageNet
  mean (103.939, 116.779, 123.68), no scaling;
- 'tf' (Keras Applications V2, any pre-activation spec): /127.5 - 1, to [-1, 1].

Images are NHWC (channels last), RGB, 0-255.

``preprocess(image_or_path, weights=NAME | style=...)``: decode (Pillow), convert to RGB, resize
and crop as the weight set's publisher does, then ``preprocess_input``; an NHWC float32 batch.
``PREPROCESSING[name]`` is each built-in hub name's recipe (``for_weights(name)``), checked
field by field against torchvision's ``weights.transforms()`` and Keras' ``load_img`` +
``preprocess_input`` in tests/test_preprocess.py:

- torchvision ``IMAGENET1K_V1``: resize the shorter side to 256 (bilinear, Pillow's resize,
  antialiased), center crop 224; ``IMAGENET1K_V2`` (and resnext101_64x4d's V1): resize 232, crop
  224 (torchvision/models/resnet.py, 0.29.1: ``ImageClassification(crop_size=224,
  resize_size=232)``);
- Keras Applications: ``keras.utils.load_img(path, target_size=(224, 224))`` (nearest, the
  aspect ratio not kept), then 'caffe' (V1) or 'tf' (V2).

``decode_predictions(logits, top=5)``: [(class_index, name, probability)] per image, with the
ImageNet class names of ``imagenet_classes()`` (shared/data/imagenet_classes.txt, from
torchvision's ``_IMAGENET_CATEGORIES``).

The core imports numpy and Pillow only; each framework package re-exports these, ``preprocess``
returning that framework's layout.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from importlib import resources
import numpy as np

from shared.spec import ResNetSpec

CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
MODES = ("torch", "caffe", "tf")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


# ----------------------------------------------------------------------------- the value transform
def mode(style) -> str:
    """Keras' name ('torch', 'caffe', 'tf') for what a style's (or a spec's, or a
    ``Preprocessing``'s) weights were trained on."""
    if isinstance(style, Preprocessing):
        return style.mode
    if isinstance(style, ResNetSpec):
        if style.block == "preact":
            return "tf"
        style = style.style
    if style not in ("keras", "torchvision"):
        raise ValueError(f"style: expected 'keras' or 'torchvision' (or a spec of one), got {style!r}")
    return "caffe" if style == "keras" else "torch"


def apply(x, mode_name: str, ops=np, dtype=None):
    """The arithmetic of one mode on a floating NHWC array of ``ops`` (numpy, or a backend's
    ops: resnet_keras runs it on backend tensors): the one place each rule is written."""
    dtype = dtype or x.dtype
    if mode_name == "tf":
        return x / 127.5 - 1.0
    if mode_name == "caffe":
        return ops.flip(x, axis=-1) - ops.array(CAFFE_BGR_MEAN, dtype=dtype)
    if mode_name == "torch":
        return (x / 255.0 - ops.array(TORCHVISION_MEAN, dtype=dtype)) / ops.array(TORCHVISION_STD, dtype=dtype)
    raise ValueError(f"mode: expected one of {MODES}, got {mode_name!r}")


def preprocess_input(x, *, style) -> np.ndarray:
    """NHWC RGB 0-255 images (any array-like; integers become float32, floating input keeps its
    dtype) -> a new float array, preprocessed for ``style``'s weights; the input is untouched.
    ``style``: "keras", "torchvision", a spec (its ``.style``; a pre-activation spec: V2's
    [-1, 1], e.g. ``preprocess_input(x, style=model.spec)``) or a ``Preprocessing``."""
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[-1] != 3:
        raise ValueError(f"images: expected channels last with 3 (RGB) channels, got shape {x.shape}")
    x = x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)
    return apply(x, mode(style))


# ----------------------------------------------------------------------------- per weight set
@dataclass(frozen=True)
class Preprocessing:
    """One weight set's preprocessing. ``resize``: an int resizes the shorter side to it, the
    longer one to ``int(resize * long / short)`` (torchvision's ``Resize(int)``); ``(h, w)``
    resizes to exactly that (Keras' ``load_img(target_size=(h, w))``). ``crop``: a center crop
    (int or ``(h, w)``, torchvision's ``CenterCrop``), or None. ``interpolation``: a Pillow
    resampling filter by name. ``mode``: 'torch', 'caffe' or 'tf' (see ``preprocess_input``)."""

    mode: str
    resize: int | tuple[int, int]
    crop: int | tuple[int, int] | None
    interpolation: str
    source: str = ""

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation: expected one of {INTERPOLATIONS}, got {self.interpolation!r}")

    @property
    def mean(self) -> tuple[float, ...] | None:
        """The per-channel mean subtracted (in the mode's own scale and channel order)."""
        return {"torch": TORCHVISION_MEAN, "caffe": CAFFE_BGR_MEAN}.get(self.mode)

    @property
    def std(self) -> tuple[float, ...] | None:
        return TORCHVISION_STD if self.mode == "torch" else None

    @property
    def size(self) -> tuple[int, int]:
        """(h, w) of the images it gives."""
        if self.crop is not None:
            return _pair(self.crop)
        if isinstance(self.resize, int):
            raise ValueError("a shorter-side resize without a crop has no fixed size")
        return _pair(self.resize)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


_TV_SOURCE = "torchvision/models/resnet.py (0.29.1): {arch}_Weights.{tag}.transforms()"
TORCHVISION_V1 = Preprocessing("torch", 256, 224, "bilinear", "torchvision ImageClassification(crop_size=224)")
TORCHVISION_V2 = Preprocessing("torch", 232, 224, "bilinear",
                               "torchvision ImageClassification(crop_size=224, resize_size=232)")
KERAS_V1 = Preprocessing("caffe", (224, 224), None, "nearest",
                         "keras.utils.load_img(target_size=(224, 224)) + keras.applications.resnet.preprocess_input")
KERAS_V2 = Preprocessing("tf", (224, 224), None, "nearest",
                         "keras.utils.load_img(target_size=(224, 224)) + keras.applications.resnet_v2.preprocess_input")

# Every built-in hub name (shared.hub): torchvision's sets from each *_Weights enum's
# ``transforms`` (resnext101_64x4d's only set, V1, already uses the V2 recipe's 232), Keras
# Applications' from keras/src/applications/resnet.py and resnet_v2.py (keras 3.15.1).
_TV_232 = {("resnext101_64x4d", "IMAGENET1K_V1")}
PREPROCESSING: dict[str, Preprocessing] = {}
for _arch, _tags in {
    "resnet18": ("IMAGENET1K_V1",), "resnet34": ("IMAGENET1K_V1",),
    "resnet50": ("IMAGENET1K_V1", "IMAGENET1K_V2"), "resnet101": ("IMAGENET1K_V1", "IMAGENET1K_V2"),
    "resnet152": ("IMAGENET1K_V1", "IMAGENET1K_V2"), "resnext50_32x4d": ("IMAGENET1K_V1", "IMAGENET1K_V2"),
    "resnext101_32x8d": ("IMAGENET1K_V1", "IMAGENET1K_V2"), "resnext101_64x4d": ("IMAGENET1K_V1",),
    "wide_resnet50_2": ("IMAGENET1K_V1", "IMAGENET1K_V2"), "wide_resnet101_2": ("IMAGENET1K_V1", "IMAGENET1K_V2"),
}.items():
    for _tag in _tags:
        _v2 = _tag == "IMAGENET1K_V2" or (_arch, _tag) in _TV_232
        PREPROCESSING[f"torchvision/{_arch}.{_tag}"] = TORCHVISION_V2 if _v2 else TORCHVISION_V1
for _arch in ("resnet50", "resnet101", "resnet152", "resnet50v2", "resnet101v2", "resnet152v2"):
    for _end in (".imagenet", ".imagenet-notop"):
        PREPROCESSING[f"keras/{_arch}{_end}"] = KERAS_V2 if _arch.endswith("v2") else KERAS_V1
del _arch, _tags, _tag, _v2, _end


def register(name: str, preprocessing: Preprocessing, *, replace: bool = False) -> None:
    """Give a (``shared.hub.register``-ed) name its preprocessing, so ``weights=name`` works."""
    if not isinstance(preprocessing, Preprocessing):
        raise TypeError(f"preprocessing: expected a Preprocessing, got {type(preprocessing).__name__}")
    old = PREPROCESSING.get(name)
    if old is not None and old != preprocessing and not replace:
        raise ValueError(f"{name}: already has preprocessing {old}; pass replace=True to change it")
    PREPROCESSING[name] = preprocessing


def for_weights(weights) -> Preprocessing:
    """The preprocessing of a weights name; ValueError (naming ``style=``) for a file or a name
    whose preprocessing is not known."""
    if isinstance(weights, str) and weights in PREPROCESSING:
        return PREPROCESSING[weights]
    what = "a file" if isinstance(weights, os.PathLike) or (isinstance(weights, str) and os.path.exists(weights)) \
        else "a weights name"
    raise ValueError(f"weights={weights!r}: {what} without known preprocessing; pass style= instead "
                     "('torchvision', 'keras', a spec, or a shared.preprocess.Preprocessing), or "
                     "shared.preprocess.register(name, Preprocessing(...)) it")


def for_style(style) -> Preprocessing:
    """``style``: a ``Preprocessing``; "torchvision" (torchvision's V1 recipe: 256, crop 224);
    "keras" (Keras Applications V1: 224x224 nearest, caffe); a spec (a pre-activation one: V2's
    'tf' mode)."""
    if isinstance(style, Preprocessing):
        return style
    return {"torch": TORCHVISION_V1, "caffe": KERAS_V1, "tf": KERAS_V2}[mode(style)]


def resolve(weights=None, style=None) -> Preprocessing:
    """Exactly one of ``weights`` (a name) and ``style``."""
    if (weights is None) == (style is None):
        raise ValueError("pass exactly one of weights= (a hub name with known preprocessing) and style=")
    return for_weights(weights) if weights is not None else for_style(style)


# ----------------------------------------------------------------------------- images
def load_image(image):
    """A path (str or PathLike), a ``PIL.Image.Image`` or an HxW / HxWxC uint8 array -> an RGB
    PIL image. Grey, palette, RGBA, CMYK are converted with Pillow's ``convert("RGB")`` (alpha
    dropped, as Keras' ``load_img`` and the usual ``Image.open(p).convert("RGB")`` do)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image {path}: no such file")
        try:
            with Image.open(path) as img:
                img.load()
                return img.convert("RGB") if img.mode != "RGB" else img.copy()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise ValueError(f"image {path}: cannot read it as an image ({type(err).__name__}: {err})") from None
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 3, 4)):
            raise ValueError(f"image: expected an HxW or HxWx(1|3|4) uint8 array, got {image.dtype} {image.shape}")
        img = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
        return img.convert("RGB") if img.mode != "RGB" else img
    raise TypeError(f"image: expected a path, a PIL image or a uint8 array, got {type(image).__name__}")


def _resample(name: str):
    from PIL import Image

    return getattr(Image.Resampling, name.upper())


def resize_and_crop(img, p: Preprocessing) -> np.ndarray:
    """Pillow resize then center crop as ``p`` says -> HxWx3 uint8."""
    w, h = img.size
    if isinstance(p.resize, (int, np.integer)):  # torchvision's _compute_resized_output_size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = int(p.resize), int(int(p.resize) * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        new_h, new_w = _pair(p.resize)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), _resample(p.interpolation))
    x = np.asarray(img, dtype=np.uint8)
    if p.crop is None:
        return x
    ch, cw = _pair(p.crop)
    h, w = x.shape[:2]
    if ch > h or cw > w:  # torchvision pads with 0 (left/top get the smaller half)
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        x = np.pad(x, ((ph // 2, (ph + 1) // 2), (pw // 2, (pw + 1) // 2), (0, 0)))
        h, w = x.shape[:2]
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return x[top:top + ch, left:left + cw]


def preprocess(image_or_path, *, weights=None, style=None) -> np.ndarray:
    """One image (a path, a PIL image, a uint8 array) or a list of them -> an NHWC float32 batch
    (of 1, or of N), prepared as the weight set ``weights`` (a hub name) or ``style`` (see
    ``for_style``) wants: ``predict(model, preprocess("photo.jpg", weights=NAME))``."""
    p = resolve(weights, style)
    items = list(image_or_path) if isinstance(image_or_path, (list, tuple)) else [image_or_path]
    if not items:
        raise ValueError("image_or_path: an empty list")
    arrays = [resize_and_crop(load_image(item), p) for item in items]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images: the preprocessed sizes differ ({sorted(shapes)}); give the recipe a crop")
    out = preprocess_input(np.stack(arrays), style=p)
    return out.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- labels
@functools.lru_cache(maxsize=1)
def _classes() -> tuple[str, ...]:
    text = resources.files("shared").joinpath("data", "imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line and not line.startswith("#"))
    if len(names) != 1000:
        raise RuntimeError(f"shared/data/imagenet_classes.txt: expected 1000 class names, found {len(names)}")
    return names


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order (shared/data/imagenet_classes.txt:
    torchvision 0.29.1, torchvision/models/_meta.py ``_IMAGENET_CATEGORIES``, the order both
    torchvision's and Keras Applications' ImageNet heads use)."""
    return list(_classes())


def decode_predictions(logits, top: int = 5, *, probabilities: bool | None = None) -> list[list[tuple[int, str, float]]]:
    """``logits``: (N, 1000) (or (1000,) for one image) -> per image the ``top`` classes as
    ``(class_index, name, probability)``, most probable first. Softmax is applied unless the rows
    are already probabilities (``probabilities=None``: rows that are non-negative and sum to 1
    within 1e-3, as from a softmax head, are taken as they are)."""
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    names = _classes()
    if x.ndim != 2 or x.shape[1] != len(names):
        raise ValueError(f"logits: expected shape (N, {len(names)}), got {tuple(np.shape(logits))}")
    if not np.all(np.isfinite(x)):
        raise ValueError("logits: not all finite")
    if int(top) < 1:
        raise ValueError(f"top: expected >= 1, got {top}")
    if probabilities is None:
        probabilities = bool(np.all(x >= 0) and np.allclose(x.sum(axis=1), 1.0, atol=1e-3))
    if not probabilities:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        x = e / e.sum(axis=1, keepdims=True)
    top = min(int(top), x.shape[1])
    order = np.argsort(-x, axis=1, kind="stable")[:, :top]
    return [[(int(i), names[i], float(row[i])) for i in idx] for row, idx in zip(x, order)]
