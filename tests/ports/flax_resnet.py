"""A Flax NNX ResNet-50, as a user writes it after torchvision's (not built from the spec): the
stride on the 3x3 conv, no conv biases, BatchNorm epsilon 1e-5, a 3x3/2 max pool padded by one
pixel (Flax pads a max pool with -inf). ``resnet-parity verify tests/ports/flax_resnet.py:ResNet50``
must pass it. Built as a shell for weights, as a port that loads a checkpoint is: zero kernels
(each random initialiser compiles once per shape, about 20 s for ResNet-50 on a 2-core CPU;
verify overwrites every weight).

``broken`` names one port bug to inject: ``eps`` (BatchNorm epsilon 1e-3), ``stride_1x1`` (the
stride on the first 1x1 conv), ``same_padding`` (``padding='SAME'`` on the strided convs and the
pool: flax#963), ``missing_relu`` (the first block's second ReLU left out), ``momentum`` (Flax's
momentum 0.5 instead of 0.9: the running statistics move too fast, seen only in training);
``ResNet18``'s ``stride_conv2``: a strided block's stride on its second 3x3. ``dtype`` is the
compute dtype of the convs and the classifier (``dtype="bfloat16"``: mixed precision, float32
parameters); the BatchNorms keep theirs unset and so normalise in float32, as mixed precision
does (in bf16, x - mean loses the digits that matter)."""

import functools

import jax.numpy as jnp
from flax import nnx

Conv = functools.partial(nnx.Conv, use_bias=False, kernel_init=nnx.initializers.zeros_init())


class Bottleneck(nnx.Module):
    expansion = 4

    def __init__(self, cin, width, stride, rngs, broken=None, first=False, dtype=None):
        same = broken == "same_padding" and stride == 2
        s1, s2 = (stride, 1) if broken == "stride_1x1" else (1, stride)
        self.conv1 = Conv(cin, width, (1, 1), strides=s1, dtype=dtype, rngs=rngs)
        self.bn1 = _bn(width, broken, rngs)
        self.conv2 = Conv(width, width, (3, 3), strides=s2, padding="SAME" if same else ((1, 1), (1, 1)),
                          dtype=dtype, rngs=rngs)
        self.bn2 = _bn(width, broken, rngs)
        self.conv3 = Conv(width, 4 * width, (1, 1), dtype=dtype, rngs=rngs)
        self.bn3 = _bn(4 * width, broken, rngs)
        self.skip_relu = broken == "missing_relu" and first
        self.downsample = nnx.data(None)
        if stride != 1 or cin != 4 * width:
            self.downsample = nnx.Sequential(Conv(cin, 4 * width, (1, 1), strides=stride, dtype=dtype, rngs=rngs),
                                             _bn(4 * width, broken, rngs))

    def __call__(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        y = y if self.skip_relu else nnx.relu(y)
        return nnx.relu(self.bn3(self.conv3(y)) + identity)


class Basic(nnx.Module):
    """ResNet-18/34's block: two 3x3 convs (``broken`` as above, where it applies)."""

    expansion = 1

    def __init__(self, cin, width, stride, rngs, broken=None, first=False, dtype=None):
        s1, s2 = (1, stride) if broken == "stride_conv2" else (stride, 1)
        self.conv1 = Conv(cin, width, (3, 3), strides=s1, padding=((1, 1), (1, 1)), dtype=dtype, rngs=rngs)
        self.bn1 = _bn(width, broken, rngs)
        self.conv2 = Conv(width, width, (3, 3), strides=s2, padding=((1, 1), (1, 1)), dtype=dtype, rngs=rngs)
        self.bn2 = _bn(width, broken, rngs)
        self.downsample = nnx.data(None)
        if stride != 1 or cin != width:
            self.downsample = nnx.Sequential(Conv(cin, width, (1, 1), strides=stride, dtype=dtype, rngs=rngs),
                                             _bn(width, broken, rngs))

    def __call__(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return nnx.relu(self.bn2(self.conv2(nnx.relu(self.bn1(self.conv1(x))))) + identity)


def _bn(channels, broken, rngs):
    return nnx.BatchNorm(channels, epsilon=1e-3 if broken == "eps" else 1e-5,
                         momentum=0.5 if broken == "momentum" else 0.9, rngs=rngs)


class ResNet(nnx.Module):
    def __init__(self, depths, channels=3, classes=1000, broken=None, seed=0, block=None, dtype=None):
        block = block or Bottleneck
        dtype = jnp.dtype(dtype) if dtype else None
        rngs = nnx.Rngs(seed)
        self.same = broken == "same_padding"
        self.conv1 = Conv(channels, 64, (7, 7), strides=2, padding="SAME" if self.same else ((3, 3), (3, 3)),
                          dtype=dtype, rngs=rngs)
        self.bn1 = _bn(64, broken, rngs)
        blocks, cin = [], 64
        for stage, depth in enumerate(depths):
            width = 64 * 2**stage
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(block(cin, width, stride, rngs, broken, first=stage == 0 and i == 0, dtype=dtype))
                cin = block.expansion * width
        self.blocks = nnx.List(blocks)
        self.fc = nnx.Linear(cin, classes, kernel_init=nnx.initializers.zeros_init(), dtype=dtype, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding="SAME" if self.same else ((1, 1), (1, 1)))
        for block in self.blocks:
            x = block(x)
        return self.fc(jnp.mean(x, axis=(1, 2)))


def ResNet50(channels=3, classes=1000, broken=None, dtype=None):
    return ResNet((3, 4, 6, 3), channels, classes, broken, dtype=dtype)


def ResNet18(channels=3, classes=1000, broken=None, dtype=None):
    return ResNet((2, 2, 2, 2), channels, classes, broken, block=Basic, dtype=dtype)
