"""The framework-free half of the contract every framework package keeps (identical in
resnet_torch, resnet_keras and resnet_flax)::

    model = ResNet50(img_channel=3, num_classes=1000, *, style="torchvision", weights=None,
                     include_top=True, pooling=None, classifier_activation=None)
    # one constructor per preset (shared.spec.PRESETS): ResNet18 .. ResNet152, ResNeXt50_32x4d,
    # WideResNet50_2, ResNet50V2 (style="keras") ...; written out in each package's api.py
    # (shared.tools.constructors generates them; tests/test_contract.py checks them)
    model = build(spec)                   # native model, random init, eval mode
    model = load_weights(model, weights)  # a canonical dict, a checkpoint path or a hub name
    weights = export_weights(model)
    logits = predict(model, images_nhwc)  # numpy NHWC in, float32 numpy out, eval mode
    feats = features(model, images_nhwc)  # {"stem", "stage1", ...}: NHWC float32 numpy
    spec, weights = read_checkpoint(path_or_name)  # the core's formats and the package's own
    for key, native in variables(model): ...     # canonical key -> the model's own variable
    opt = optimizer(recipe, model)        # a shared.recipe.Recipe as the framework's own optimizer
    loss = train_step(model, opt, images_nhwc, labels, recipe)  # one update (docs/training.md)

Here: the constructors' spec (Keras Applications' meaning of include_top, pooling and
classifier_activation), the one input policy of ``predict`` and ``features``, and where each
feature is taken.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable

import numpy as np


from shared.reference import check_images
from shared.spec import PRESETS, ResNetSpec, preset

CONSTRUCTORS = tuple(p.constructor for p in PRESETS.values())
CONTRACT = (*CONSTRUCTORS, "build", "load_weights", "export_weights", "predict", "features", "read_checkpoint",
            "variables", "preprocess_input", "preprocess", "decode_predictions",
            # a shared.recipe.Recipe as the framework's own optimizer, and one training update with it
            "optimizer", "train_step")
# Applied to the logits after the classifier; "linear" and None both leave the logits.
CLASSIFIER_ACTIVATIONS = (None, "linear", "softmax", "sigmoid")


def constructor_spec(arch: str, img_channel: int, num_classes: int, style: str, include_top: bool,
                     pooling: str | None, classifier_activation: str | None) -> ResNetSpec:
    """The spec ``ResNet50/101/152(...)`` builds. As in Keras Applications: with the top the
    features are average-pooled and ``pooling`` is ignored; without it ``pooling`` None leaves
    the last feature map, "avg"/"max" pool it, and ``classifier_activation`` is ignored."""
    if classifier_activation not in CLASSIFIER_ACTIVATIONS:
        raise ValueError(f"classifier_activation: expected one of {CLASSIFIER_ACTIVATIONS}, got {classifier_activation!r}")
    if pooling not in ("avg", "max", None):
        raise ValueError(f"pooling: expected 'avg', 'max' or None, got {pooling!r}")
    if not isinstance(include_top, bool):
        raise ValueError(f"include_top: expected a bool, got {include_top!r}")
    return preset(arch, style, image_channels=img_channel, num_classes=num_classes, include_top=include_top,
                  pooling="avg" if include_top else pooling)


def constructor_doc(arch: str) -> str:
    """The docstring of ``arch``'s constructor, identical in the three packages (the constructors
    are written out in each package's ``api.py`` by ``shared.tools.constructors``; a test checks
    them against ``PRESETS``)."""
    p = PRESETS[arch]
    return (
        f"{p.constructor} ({p.peer}; style(s) {', '.join(p.styles)}, default {p.styles[0]!r}), in eval "
        "mode. ``weights``: None (random init), a canonical dict, a checkpoint file (the core's "
        "``.safetensors`` and Keras Applications ``.h5``, and this package's native formats) or a "
        "``shared.hub`` name; a checkpoint of another architecture, style or class count is a "
        "ValueError. ``include_top``, ``pooling``, ``classifier_activation``: Keras Applications' "
        "meaning (``shared.contract.constructor_spec``); None gives logits."
    )


def activation(spec: ResNetSpec, classifier_activation: str | None) -> str | None:
    """The activation a model applies after its classifier: None without a top or for 'linear'."""
    if classifier_activation not in CLASSIFIER_ACTIVATIONS:
        raise ValueError(f"classifier_activation: expected one of {CLASSIFIER_ACTIVATIONS}, got {classifier_activation!r}")
    return classifier_activation if spec.include_top and classifier_activation != "linear" else None


def as_images(spec: ResNetSpec, images) -> np.ndarray:
    """The one input policy of ``predict`` and ``features``: an NHWC batch of *preprocessed*
    floating images. Any floating dtype is accepted and cast to the dtype the model takes
    (float32 unless built otherwise); integer or bool images are refused, because raw 0-255
    pixels are almost never what a model was trained on and a silent cast would hide that."""
    images = np.asarray(images)
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(
            f"images: expected floating (preprocessed) images, got dtype {images.dtype}; scale and "
            f"normalise them first (e.g. the package's preprocess_input(x, style={spec.style!r}) "
            "or (x / 255 - mean) / std), then pass float32"
        )
    check_images(spec, images)
    return images


def feature_points(spec: ResNetSpec) -> dict[str, str]:
    """Feature name -> the point of ``shared.reference.forward``'s hook it is taken at: "stem"
    after the stem's max pool, "stage{i}" after the last block of stage i (1-based)."""
    points = {"stem": "stem"}
    for block in spec.blocks():
        points[f"stage{block.stage + 1}"] = block.name  # the last block of each stage wins
    return points


def feature_layers(spec: ResNetSpec) -> dict[str, str]:
    """Feature name -> the spec layer whose output it is (the stem's pool, each stage's last block output)."""
    layers = {"stem": spec.stem()[-1].name}
    for block in spec.blocks():
        layers[f"stage{block.stage + 1}"] = block.output.name
    return layers


class LayerOverrides:
    """What each package's ``layers.override(relu=..., batchnorm=...)`` keeps: the ReLU function
    and BatchNorm class models built inside the context use, per thread and task
    (``contextvars``), so a model built outside it, and the framework itself, are untouched."""

    def __init__(self, batchnorm_base: type):
        self.base = batchnorm_base
        self._var: contextvars.ContextVar[dict] = contextvars.ContextVar(f"overrides of {batchnorm_base.__name__}",
                                                                           default={})

    @contextlib.contextmanager
    def override(self, relu: Callable | None = None, batchnorm: type | None = None):
        if batchnorm is not None and not (isinstance(batchnorm, type) and issubclass(batchnorm, self.base)):
            raise TypeError(f"batchnorm: expected a subclass of {self.base.__module__}.{self.base.__qualname__}, "
                            f"got {batchnorm!r}")
        given = {k: v for k, v in (("relu", relu), ("batchnorm", batchnorm)) if v is not None}
        token = self._var.set({**self._var.get(), **given})
        try:
            yield
        finally:
            self._var.reset(token)

    def get(self, kind: str, default):
        """The override of ``kind`` ("relu" or "batchnorm") in effect, else ``default``."""
        return self._var.get().get(kind, default)
