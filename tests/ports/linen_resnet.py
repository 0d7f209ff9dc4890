"""A Flax linen ResNet written the way the Flax ImageNet example writes its ResNet V1 (not built
from the spec): ``@nn.compact`` modules, blocks that get the conv and norm as partials, layer names
left to linen (``Conv_0``, ``BatchNorm_1``; the shortcut's ``conv_proj`` and ``norm_proj``), the
stride on the 3x3 conv, no conv biases, ``nn.BatchNorm(use_running_average=not train,
momentum=0.9, epsilon=1e-5)``, a 7x7/2 stem conv padded by 3 and a 3x3/2 max pool.
``resnet-parity verify tests/ports/linen_resnet.py:ResNet50`` must pass it.

``padding`` picks the strided 3x3 convs' and the stem pool's padding: ``"torch"`` pads one pixel
each side as torchvision does (Flax pads a max pool with -inf, as torch); ``"SAME"`` is the Flax
example's: XLA's 'SAME', which on an even input pads (0, 1), the odd pixel at the bottom/right
(flax#963: torchvision weights loaded into it give other logits). ``momentum`` is the BatchNorms'
(Flax's meaning: the old running value's weight; 0.5 is a bug that only training shows).
``dtype`` is the compute dtype of every layer, BatchNorm included, as in the example
(``dtype="bfloat16"``: mixed precision, float32 parameters; linen's BatchNorm reduces its
statistics in float32 and normalises in float32 before casting)."""

from functools import partial
from typing import Any, Callable, Sequence

import jax.numpy as jnp
from flax import linen as nn

ModuleDef = Any
TORCH = ((1, 1), (1, 1))


class ResNetBlock(nn.Module):
    """ResNet-18/34's block: two 3x3 convs, a projection shortcut where the shape changes."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple[int, int] = (1, 1)
    padding: Any = TORCH  # of the (maybe strided) first 3x3

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.act(self.norm()(self.conv(self.filters, (3, 3), self.strides, padding=self.padding)(x)))
        y = self.norm()(self.conv(self.filters, (3, 3), padding=TORCH)(y))
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(x)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class BottleneckResNetBlock(nn.Module):
    """ResNet-50's block: 1x1, 3x3 (the stride), 1x1 to four times the width."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple[int, int] = (1, 1)
    padding: Any = TORCH  # of the 3x3

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.act(self.norm()(self.conv(self.filters, (1, 1))(x)))
        y = self.act(self.norm()(self.conv(self.filters, (3, 3), self.strides, padding=self.padding)(y)))
        y = self.norm()(self.conv(4 * self.filters, (1, 1))(y))
        if residual.shape != y.shape:
            residual = self.conv(4 * self.filters, (1, 1), self.strides, name="conv_proj")(x)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int = 1000
    num_filters: int = 64
    dtype: Any = jnp.float32
    padding: str = "torch"  # or "SAME" (module docstring)
    momentum: float = 0.9
    act: Callable = nn.relu

    @nn.compact
    def __call__(self, x, train: bool = True):
        same = self.padding == "SAME"
        if not same and self.padding != "torch":
            raise ValueError(f"padding: 'torch' or 'SAME', not {self.padding!r}")
        conv = partial(nn.Conv, use_bias=False, dtype=self.dtype)
        norm = partial(nn.BatchNorm, use_running_average=not train, momentum=self.momentum, epsilon=1e-5,
                       dtype=self.dtype)
        x = conv(self.num_filters, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="conv_init")(x)
        x = nn.relu(norm(name="bn_init")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME" if same else TORCH)
        for i, size in enumerate(self.stage_sizes):
            for j in range(size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(self.num_filters * 2**i, conv=conv, norm=norm, act=self.act, strides=strides,
                                   padding="SAME" if same and strides != (1, 1) else TORCH)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype)(jnp.mean(x, axis=(1, 2)))
        return jnp.asarray(x, self.dtype)


ResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=ResNetBlock)
ResNet34 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=ResNetBlock)
ResNet50 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckResNetBlock)


def Restored(channels=1, num_classes=10, stage_sizes=(1, 1, 1, 1), num_filters=16):
    """``(module, variables)``, as a user holds a linen model restored from a checkpoint: here a
    small ResNet with ``channels`` input channels (the variables say so; the module alone cannot)
    and variables of the right shapes, zeros (a checkpoint's values; verify overwrites them)."""
    import jax
    from flax.core import freeze

    module = ResNet(stage_sizes=stage_sizes, block_cls=ResNetBlock, num_classes=num_classes, num_filters=num_filters)
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, channels)), train=False))
    return module, freeze(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))
