"""The ResNet as a torch.nn.Module, built by walking a ``shared.spec.ResNetSpec``.

Modules sit where torchvision puts them (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0``, ``fc``), and timm's family where timm puts them (``conv1.0``,
``maxpool.1``, ``layer1.0.downsample.2``, ``layer1.0.se.fc1``, ``layer2.0.aa``), named by
``shared.interop.torchvision_module``, so a torchvision state_dict (ResNet-18..152, ResNeXt,
Wide ResNet) or a timm ``resnet.py`` one loads as is; the pre-activation ResNets follow the
same rule (``layer1.0.preact_bn``, ``post_bn``; ``shared.interop`` renames timm's ``resnetv2``
keys to it). Each block runs the spec's ``Block.walk``: this file says how to apply a chain of
layers, an add and an attention's scale, never which. Forward takes NCHW tensors, like any
torch model.
"""

from __future__ import annotations

import torch
from torch import nn

from shared import contract
from shared.fold import refuse_training
from shared.interop import torchvision_module
from shared.spec import Add, Block, Layer, ReLU, ResNetSpec, Scale

from resnet_torch import layers


def _place(parent: nn.Module, layer: Layer, prefix: str = "", **options) -> tuple[str, ...]:
    """Register ``layer``'s module at its torchvision path below ``prefix`` (containers such as
    ``downsample``, a deep stem's ``conv1`` or timm's ``se`` are nn.Sequential, as in torchvision
    and timm); return that path. Every ReLU of a block, or of the stem and head, is the one
    ``relu`` module there, as in torchvision. ``options`` go to ``layers.module``."""
    path = tuple(torchvision_module(layer.name).removeprefix(prefix).split("."))
    for name in path[:-1]:
        if name not in parent._modules:
            parent.add_module(name, nn.Sequential())
        parent = parent._modules[name]
    if path[-1] not in parent._modules:
        parent.add_module(path[-1], layers.module(layer, **options))
    elif not isinstance(layer, ReLU):
        raise ValueError(f"{layer.name}: its torchvision path {'.'.join(path)} already holds another layer")
    return path


def _add(layer: Add, main: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    return main + shortcut


def _scale(layer: Scale, main: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return main * gate


class ResidualBlock(nn.Module):
    """One spec ``Block`` (basic, bottleneck or pre-activation, with or without an attention):
    its modules under torchvision's and timm's names, its forward the spec's ``Block.walk``."""

    def __init__(self, block: Block):
        super().__init__()
        self.block = block
        self.block_name = block.name
        prefix = torchvision_module(block.main[0].name).rsplit(".", 1)[0] + "."  # "layer1.0."
        self._paths = {layer.name: _place(self, layer, prefix) for layer in block.layers
                       if not isinstance(layer, (Add, Scale))}

    def _chain(self, chain: tuple[Layer, ...], x: torch.Tensor) -> torch.Tensor:
        for layer in chain:
            module = self
            for name in self._paths[layer.name]:
                module = module._modules[name]
            x = module(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.walk(x, self._chain, _add, _scale)

    def extra_repr(self) -> str:
        return self.block_name


class ResNet(nn.Module):
    """Stem, stages ``layer1..layerN`` of residual blocks, head; all read off ``spec``.

    Output: logits (include_top; probabilities with ``classifier_activation="softmax"``), pooled
    features (N, C), or the NCHW feature map (pooling None). ``forward_features`` gives the stem's
    and every stage's output.
    """

    def __init__(self, spec: ResNetSpec, classifier_activation: str | None = None):
        super().__init__()
        if not isinstance(spec, ResNetSpec):
            raise TypeError(f"spec: expected a shared.spec.ResNetSpec, got {type(spec).__name__}")
        self.spec = spec
        self.classifier_activation = contract.activation(spec, classifier_activation)
        # A deep stem's convs, BNs and ReLUs share one Sequential ``conv1`` (timm's): run it once.
        self.stem_path = tuple(dict.fromkeys(_place(self, layer)[0] for layer in spec.stem()))
        stages: dict[str, nn.Sequential] = {}
        for block in spec.blocks():
            stage, index = torchvision_module(block.main[0].name).split(".")[:2]  # "layer1", "0"
            stages.setdefault(stage, nn.Sequential()).add_module(index, ResidualBlock(block))
        for name, stage in stages.items():
            self.add_module(name, stage)
        self.stage_names = tuple(stages)
        # timm's resnetv2 classifies with a 1x1 conv (the same function, rounded as timm rounds it).
        self.head_path = tuple(_place(self, layer, conv_classifier=spec.style == "timm")[0] for layer in spec.head())

    def train(self, mode: bool = True) -> "ResNet":
        if mode:
            refuse_training(self.spec, "train()")
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.stem_path + self.stage_names + self.head_path:
            x = getattr(self, name)(x)
        if self.classifier_activation == "softmax":
            x = torch.softmax(x, dim=-1)
        elif self.classifier_activation == "sigmoid":
            x = torch.sigmoid(x)
        return x

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """NCHW images -> ``{"stem": ..., "stage1": ..., ...}``: the NCHW output of the stem (after
        its max pool) and of each stage (``layer1``...), the backbone outputs a detection or
        segmentation head takes (torchvision's ``create_feature_extractor`` at ``maxpool``,
        ``layer1``... gives the same tensors)."""
        for name in self.stem_path:
            x = getattr(self, name)(x)
        out = {"stem": x}
        for i, name in enumerate(self.stage_names, 1):
            x = getattr(self, name)(x)
            out[f"stage{i}"] = x
        return out


def build(spec: ResNetSpec) -> ResNet:
    """A ResNet for ``spec`` with torchvision's random init, in eval mode."""
    return ResNet(spec).eval()
