"""A plain Keras functional ResNet-50, as a user writes it after keras.applications (``keras.layers``
only, not built from the spec): explicit ZeroPadding2D before the 7x7 conv and the pool, biased
convs, the stride on each stage's first 1x1 conv, BatchNorm epsilon 1.001e-5, the projection
shortcut built first. ``resnet-parity verify tests/ports/keras_resnet.py:ResNet50`` must pass it.

``broken`` names one port bug to inject: ``eps`` (BatchNorm epsilon 1e-3), ``stride_3x3`` (the
stride on the 3x3 instead of the 1x1), ``same_padding`` (``padding='same'`` on the strided conv
and pool instead of the explicit symmetric padding), ``missing_relu`` (the first block's second
ReLU left out), ``momentum`` (BatchNorm momentum 0.5 where the port otherwise keeps Keras' default
0.99, the old value's weight: seen only in training). ``ResNet18``: the same conventions with
two-3x3 blocks (the stride on the first 3x3; ``stride_conv2``: on the second)."""

import keras
from keras import layers


def _bn(x, name, broken):
    momentum = {"momentum": 0.5} if broken == "momentum" else {}  # else Keras' default, 0.99
    return layers.BatchNormalization(axis=-1, epsilon=1e-3 if broken == "eps" else 1.001e-5, name=name,
                                     **momentum)(x)


def _conv3x3(x, filters, stride, name):
    if stride == 1:
        return layers.Conv2D(filters, 3, padding="same", name=name)(x)
    return layers.Conv2D(filters, 3, strides=stride, name=name)(layers.ZeroPadding2D(1)(x))


def _basic(x, filters, stride, name, broken, shortcut=False, first=False):
    short = _bn(layers.Conv2D(filters, 1, strides=stride, name=f"{name}_0_conv")(x), f"{name}_0_bn",
                broken) if shortcut else x
    s1, s2 = (1, stride) if broken == "stride_conv2" else (stride, 1)
    x = layers.Activation("relu")(_bn(_conv3x3(x, filters, s1, f"{name}_1_conv"), f"{name}_1_bn", broken))
    x = _bn(_conv3x3(x, filters, s2, f"{name}_2_conv"), f"{name}_2_bn", broken)
    return layers.Activation("relu")(layers.Add()([short, x]))


def _block(x, filters, stride, name, broken, shortcut=False, first=False):
    if shortcut:
        short = layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        short = _bn(short, f"{name}_0_bn", broken)
    else:
        short = x
    s1, s2 = (1, stride) if broken == "stride_3x3" else (stride, 1)
    x = layers.Conv2D(filters, 1, strides=s1, name=f"{name}_1_conv")(x)
    x = layers.Activation("relu")(_bn(x, f"{name}_1_bn", broken))
    x = _bn(_conv3x3(x, filters, s2, f"{name}_2_conv"), f"{name}_2_bn", broken)  # explicit padding if strided
    if not (broken == "missing_relu" and first):
        x = layers.Activation("relu")(x)
    x = _bn(layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x), f"{name}_3_bn", broken)
    return layers.Activation("relu")(layers.Add()([short, x]))


def _stack(x, filters, blocks, stride, name, broken, first=False, block=_block, expansion=4):
    x = block(x, filters, stride, f"{name}_block1", broken, shortcut=stride != 1 or expansion != 1, first=first)
    for i in range(2, blocks + 1):
        x = block(x, filters, 1, f"{name}_block{i}", broken)
    return x


def ResNet(depths, input_shape=(None, None, 3), classes=1000, broken=None, basic=False):
    inputs = keras.Input(shape=input_shape)
    if broken == "same_padding":
        x = layers.Conv2D(64, 7, strides=2, padding="same", name="conv1_conv")(inputs)
    else:
        x = layers.Conv2D(64, 7, strides=2, name="conv1_conv")(layers.ZeroPadding2D(3)(inputs))
    x = layers.Activation("relu")(_bn(x, "conv1_bn", broken))
    if broken == "same_padding":
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    else:
        x = layers.MaxPooling2D(3, strides=2)(layers.ZeroPadding2D(1)(x))
    for stage, (filters, blocks) in enumerate(zip((64, 128, 256, 512), depths)):
        x = _stack(x, filters, blocks, 1 if stage == 0 else 2, f"conv{stage + 2}", broken, first=stage == 0,
                   block=_basic if basic else _block, expansion=1 if basic else 4)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(classes, name="predictions")(x))


def ResNet50(input_shape=(None, None, 3), classes=1000, broken=None):
    return ResNet((3, 4, 6, 3), input_shape, classes, broken)


def ResNet18(input_shape=(None, None, 3), classes=1000, broken=None):
    return ResNet((2, 2, 2, 2), input_shape, classes, broken, basic=True)
