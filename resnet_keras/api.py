"""The contract's ``predict`` and the seed's constructors ``ResNet50/101/152(img_channel=3,
num_classes=1000)``, with the arguments a Keras user expects of an application."""

from __future__ import annotations

import keras
import numpy as np

from shared.reference import check_images
from shared.spec import preset
from resnet_keras.model import build, spec_of


def predict(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """Eval-mode outputs (logits unless built with a classifier activation) as float32 numpy,
    for an NHWC batch."""
    check_images(spec_of(model), images)
    built_for = tuple(model.input_shape[1:3])
    if any(b is not None and b != s for b, s in zip(built_for, images.shape[1:3])):
        raise ValueError(f"images: this model was built for {built_for[0]}x{built_for[1]} inputs, "
                         f"got {images.shape[1]}x{images.shape[2]} (build with input_shape=None for any size)")
    out = model(np.asarray(images, dtype=np.float32), training=False)
    return np.asarray(keras.ops.convert_to_numpy(out), dtype=np.float32)


def _seed_constructor(arch: str):
    def constructor(img_channel: int = 3, num_classes: int = 1000, *, style: str = "torchvision",
                    include_top: bool = True, pooling: str | None = None, input_shape=None,
                    classifier_activation=None) -> keras.Model:
        # keras.applications' meaning of pooling: ignored (average) with the top, else None
        # leaves the last feature map, "avg"/"max" pool it.
        pooling = pooling or ("avg" if include_top else None)
        spec = preset(arch, style, image_channels=img_channel, num_classes=num_classes,
                      include_top=include_top, pooling=pooling)
        return build(spec, input_shape=input_shape, classifier_activation=classifier_activation)

    name = arch.replace("resnet", "ResNet")
    constructor.__name__ = constructor.__qualname__ = name
    constructor.__doc__ = (
        f"The seed's {name}: a torchvision-style {arch} by default; ``style='keras'`` gives "
        f"``keras.applications.{name}`` layer for layer. Returns logits by default "
        "(``classifier_activation=None``, unlike keras.applications' 'softmax')."
    )
    return constructor


ResNet50 = _seed_constructor("resnet50")
ResNet101 = _seed_constructor("resnet101")
ResNet152 = _seed_constructor("resnet152")
