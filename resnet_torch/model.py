"""The ResNet as a torch.nn.Module, built by walking a ``shared.spec.ResNetSpec``.

Modules sit where torchvision puts them (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0``, ``fc``), named by ``shared.interop.torchvision_module``, so a
torchvision state_dict loads as is. Forward takes NCHW tensors, like any torch model.
"""

from __future__ import annotations

import torch
from torch import nn

from shared import contract, spec as S
from shared.fold import refuse_training
from shared.interop import torchvision_module
from shared.spec import Block, GlobalPool, Layer, MaxPool, ReLU, ResNetSpec

from resnet_torch import layers


def _child_name(layer: Layer) -> str:
    """Last component of the layer's torchvision path; parameter-free layers by kind."""
    if isinstance(layer, ReLU):
        return "relu"
    if isinstance(layer, MaxPool):
        return "maxpool"
    if isinstance(layer, GlobalPool):
        return "avgpool" if layer.mode == "avg" else "globalmaxpool"
    return torchvision_module(layer.name).rsplit(".", 1)[-1]


def _register(parent: nn.Module, layer: Layer) -> str:
    name = _child_name(layer)
    if not hasattr(parent, name):  # one ReLU module serves every ReLU of a block, as in torchvision
        parent.add_module(name, layers.module(layer))
    return name


class Bottleneck(nn.Module):
    """One spec ``Block``: ``relu(main(x) + downsample(x))``, downsample an nn.Sequential or None."""

    def __init__(self, block: Block):
        super().__init__()
        self.block_name = block.name
        self.main_path = tuple(_register(self, layer) for layer in block.main)
        self.downsample = nn.Sequential(*map(layers.module, block.shortcut)) if block.shortcut else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for name in self.main_path:
            out = getattr(self, name)(out)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)

    def extra_repr(self) -> str:
        return self.block_name


class ResNet(nn.Module):
    """Stem, stages ``layer1..layerN`` of Bottlenecks, head; all read off ``spec``.

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
        self.stem_path = tuple(_register(self, layer) for layer in spec.stem())
        stages: dict[str, nn.Sequential] = {}
        for block in spec.blocks():
            stage, index = torchvision_module(block.main[0].name).split(".")[:2]  # "layer1", "0"
            stages.setdefault(stage, nn.Sequential()).add_module(index, Bottleneck(block))
        for name, stage in stages.items():
            self.add_module(name, stage)
        self.stage_names = tuple(stages)
        self.head_path = tuple(_register(self, layer) for layer in spec.head())

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
