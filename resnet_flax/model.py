"""The ResNet as a ``flax.nnx.Module``, built by walking a ``shared.spec.ResNetSpec``.

Every layer with parameters is an attribute named after its spec layer (``model.conv1_conv``,
``model.conv2_block1_1_bn``, ``model.conv2_block1_eca_conv``, ``model.predictions``), so a
canonical weight ``{layer}.{param}`` is ``getattr(model, layer).{native param}`` by one rule
(``NATIVE_PARAM``). Layers without parameters (ReLU, pools, the blur, gates, the residual add
and the attention's scale) are computed from the spec in ``__call__``, which walks each block
through ``Block.walk`` (pre-activation, shortcut source, attention, what follows the add): this
file holds no block structure of its own, so every preset of ``shared.spec.PRESETS`` builds.

NHWC throughout. Padding is always the spec's explicit padding, never 'SAME': for a strided
layer XLA's 'SAME' puts the odd pixel at the bottom/right and no longer computes torchvision's
function.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from shared import contract
from shared.fold import refuse_training
from shared.spec import ResNetSpec
from shared.weights import init
from resnet_flax import layers
from resnet_flax.weights import load_weights

class ResNet(nnx.Module):
    """A ResNet for NHWC images (any block kind of the spec), every number taken from ``spec``.

    ``dtype`` is the compute dtype (``jnp.bfloat16`` for mixed precision), ``param_dtype`` the
    storage dtype of the parameters; BatchNorm running statistics stay float32.

    Modes: ``model.eval()`` normalises with the running averages (the state after
    ``resnet_flax.build``); ``model.train()`` normalises with the batch statistics and updates
    the running averages, ``running = (1 - m) * running + m * batch`` with the spec's momentum
    ``m`` (Flax's ``momentum=1 - m``). Unlike PyTorch, Flax's running *variance* update uses the
    biased batch variance (divided by N, not N - 1); the normalisation itself uses the biased
    variance in both frameworks.
    """

    def __init__(self, spec: ResNetSpec, *, rngs: nnx.Rngs | int | None = None, dtype=None,
                 param_dtype=jnp.float32, classifier_activation: str | None = None):
        """``rngs``: an ``nnx.Rngs`` draws every parameter with torchvision's initialisation (He
        normal over fan_out for convs, torch.nn.Linear's uniform for the classifier, BatchNorm at
        identity, gamma 0 where the spec says zero_init) with Flax's initialisers; an integer seed
        gives the canonical initialisation ``shared.weights.init(spec, seed)`` (the same
        distributions drawn in numpy: no XLA program per parameter shape to compile, which costs
        seconds per model on a CPU); ``None``: every parameter starts at zero, a shell for
        ``resnet_flax.load_weights``. ``classifier_activation``: None (logits), "softmax" or
        "sigmoid" after the classifier (``shared.contract``)."""
        self.spec = spec
        self.dtype = dtype
        self.classifier_activation = contract.activation(spec, classifier_activation)
        self.relu = layers.relu()  # nnx.relu, or the function of ``layers.override``
        draw = isinstance(rngs, nnx.Rngs)
        for layer in spec.layers():
            if layer.params:
                setattr(self, layer.name, layers.native_layer(layer, rngs if draw else nnx.Rngs(0), draw, dtype,
                                                        param_dtype))
        if rngs is not None and not draw:
            load_weights(self, init(spec, rngs))

    def train(self, **attributes):
        refuse_training(self.spec, "train()")
        return super().train(**attributes)

    def _apply(self, layer, x):
        if layer.params:
            return getattr(self, layer.name)(x)
        if layer.kind == "relu":
            return self.relu(x)
        if layer.kind == "maxpool":
            return layers.max_pool(x, layer)
        if layer.kind == "avgpool":
            return layers.avg_pool(x, layer)
        if layer.kind == "blur":
            return layers.blur(x, layer)
        if layer.kind == "gate":
            return layers.gate(x, layer)
        if layer.kind == "globalpool":
            return layers.global_pool(x, layer)
        raise TypeError(f"resnet_flax: no rule for layer {layer!r}")

    def _chain(self, layers, x):
        for layer in layers:
            x = self._apply(layer, x)
        return x

    @staticmethod
    def _add(layer, main, shortcut):
        return main + shortcut

    @staticmethod
    def _scale(layer, main, gate):
        return main * gate  # gate (N, 1, 1, C): broadcast over height and width

    def __call__(self, images, hook=None):
        """NHWC images -> logits (or pooled features, or the last feature map, per the spec).

        ``hook(name, activation)``, outside jit, sees the output of the stem, of every block
        (``conv3_block2``) and of the head: the names ``shared.reference.forward`` uses."""
        hook = hook or (lambda name, x: None)
        x = images if self.dtype is None else images.astype(self.dtype)
        x = self._chain(self.spec.stem(), x)
        hook("stem", x)
        for block in self.spec.blocks():
            x = block.walk(x, self._chain, self._add, self._scale)
            hook(block.name, x)
        x = self._chain(self.spec.head(), x)
        if self.classifier_activation == "softmax":
            x = nnx.softmax(x, axis=-1)
        elif self.classifier_activation == "sigmoid":
            x = nnx.sigmoid(x)
        if self.spec.head():
            hook("head", x)
        return x

    def features(self, images) -> dict:
        """NHWC images -> ``{"stem": ..., "stage1": ..., ...}``: the output of the stem (after its
        max pool) and of each stage's last block, NHWC, in the model's mode. Under ``nnx.jit`` the
        unused head is dropped from the program."""
        at = {point: name for name, point in contract.feature_points(self.spec).items()}
        out = {}
        self(images, hook=lambda point, x: out.__setitem__(at[point], x) if point in at else None)
        return out


def build(spec: ResNetSpec) -> ResNet:
    """A model with the canonical random initialisation ``shared.weights.init(spec, 0)``, in eval
    mode (``ResNet(spec, rngs=seed_or_nnx_rngs, dtype=...)`` for other seeds or dtypes)."""
    return ResNet(spec, rngs=0)
