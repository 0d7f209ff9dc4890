"""Peers' checkpoints <-> canonical weights, in pure numpy (no framework imported).

torchvision: ``conv1``/``bn1``, ``layer{s}.{b}.conv{k}``/``bn{k}``, ``downsample.0``/``.1``, ``fc``;
OIHW conv kernels, (out, in) dense kernels, BatchNorm weight/bias/running_mean/running_var.
The names map by rule (``torchvision_module``), never by position.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from shared.spec import BatchNorm, Conv, ResNetSpec, preset_spec
from shared.weights import DTYPE, WeightsError, validate

_BLOCK = re.compile(r"conv(\d+)_block(\d+)_(\d)_(conv|bn)$")
_TV_PARAM = {"kernel": "weight", "bias": "bias"}  # conv and dense; dense kernels transpose
_TV_BN = {"gamma": "weight", "beta": "bias", "mean": "running_mean", "var": "running_var"}


def torchvision_module(layer_name: str) -> str:
    """Canonical layer name -> torchvision module path (``conv3_block2_1_bn`` -> ``layer2.1.bn1``)."""
    fixed = {"conv1_conv": "conv1", "conv1_bn": "bn1", "predictions": "fc"}
    if layer_name in fixed:
        return fixed[layer_name]
    m = _BLOCK.match(layer_name)
    if not m:
        raise KeyError(f"{layer_name}: no torchvision counterpart")
    stage, block, k, kind = int(m[1]) - 1, int(m[2]) - 1, int(m[3]), m[4]
    prefix = f"layer{stage}.{block}"
    if k == 0:
        return f"{prefix}.downsample.{0 if kind == 'conv' else 1}"
    return f"{prefix}.{kind}{k}"


def _numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def spec_from_torchvision(state_dict: Mapping[str, object]) -> ResNetSpec:
    """Depths, width, channels, classes and expansion read off a torchvision state_dict."""
    keys = set(state_dict)
    if "conv1.weight" not in keys:
        raise WeightsError("torchvision state_dict: missing key conv1.weight (is this a torchvision ResNet?)")
    if any(re.match(r"layer\d+\.\d+\.conv2\.weight$", k) for k in keys) and not any(
        re.match(r"layer\d+\.\d+\.conv3\.weight$", k) for k in keys
    ):
        raise WeightsError("torchvision state_dict: basic-block ResNet (resnet18/34, no conv3); only bottleneck ResNets are supported")
    depths = []
    while any(k.startswith(f"layer{len(depths) + 1}.") for k in keys):
        stage = len(depths) + 1
        depths.append(len({int(k.split(".")[1]) for k in keys if k.startswith(f"layer{stage}.")}))
    if not depths:
        raise WeightsError("torchvision state_dict: no layer1.* keys found")
    stem = _numpy(state_dict["conv1.weight"])
    width = stem.shape[0]
    conv3 = _numpy(state_dict["layer1.0.conv3.weight"])
    include_top = "fc.weight" in keys
    return ResNetSpec(
        depths=tuple(depths),
        width=width,
        expansion=conv3.shape[0] // width,
        stride_on="3x3",
        conv_bias="conv1.bias" in keys,
        bn_epsilon=1e-5,
        bn_momentum=0.1,
        image_channels=stem.shape[1],
        num_classes=_numpy(state_dict["fc.weight"]).shape[0] if include_top else 1000,
        include_top=include_top,
        pooling="avg",
    )


def spec_from_canonical(weights: Mapping[str, np.ndarray], style: str | None = None) -> ResNetSpec:
    """The spec a canonical weight dict was made for, read off its names and shapes. Conventions
    the shapes cannot show (stride placement, epsilon, momentum) come from ``style``; without it,
    biased convs mean Keras Applications, unbiased torchvision."""
    if "conv1_conv.kernel" not in weights:
        raise WeightsError("canonical weights: missing key conv1_conv.kernel")
    blocks = [m for m in (_BLOCK.match(k.split(".")[0]) for k in weights) if m]
    depths = []
    while any(int(m[1]) == len(depths) + 2 for m in blocks):
        depths.append(max(int(m[2]) for m in blocks if int(m[1]) == len(depths) + 2))
    stem = np.shape(weights["conv1_conv.kernel"])
    conv_bias = "conv1_conv.bias" in weights
    folded = "conv1_bn.gamma" not in weights  # shared.fold: no BatchNorm left, every conv biased
    if folded and style is None:
        raise WeightsError("canonical weights: BatchNorm-folded (no conv1_bn.* keys), so the conv biases cannot "
                           "tell the style; give the style (--style) or save the spec with the weights")
    if folded:
        conv_bias = preset_spec(style).conv_bias
    style = style or ("keras" if conv_bias else "torchvision")
    top = "predictions.kernel" in weights
    return preset_spec(style, depths=tuple(depths), width=stem[3], image_channels=stem[2], conv_bias=conv_bias,
                       expansion=np.shape(weights["conv2_block1_3_conv.kernel"])[3] // stem[3],
                       include_top=top, num_classes=np.shape(weights["predictions.kernel"])[1] if top else 1000,
                       folded=folded)


def from_torchvision(state_dict: Mapping[str, object], spec: ResNetSpec | None = None,
                     ) -> tuple[ResNetSpec, dict[str, np.ndarray]]:
    """A torchvision ResNet state_dict (tensors or numpy arrays) -> (spec, canonical weights)."""
    spec = spec or spec_from_torchvision(state_dict)
    weights, unused = {}, {k for k in state_dict if not k.endswith("num_batches_tracked")}
    for layer in spec.layers():
        if not layer.params:
            continue
        module = torchvision_module(layer.name)
        for param in layer.params:
            tv = f"{module}.{_TV_BN[param] if isinstance(layer, BatchNorm) else _TV_PARAM[param]}"
            if tv not in state_dict:
                raise WeightsError(f"torchvision state_dict: missing key {tv} (for {layer.name}.{param})")
            value = _numpy(state_dict[tv])
            unused.discard(tv)
            if param == "kernel":
                value = value.transpose(2, 3, 1, 0) if isinstance(layer, Conv) else value.T
            weights[f"{layer.name}.{param}"] = np.array(value, dtype=DTYPE, order="C", copy=True)  # never a view of the caller's tensor
    if unused:
        raise WeightsError(f"torchvision state_dict: unexpected key(s) {sorted(unused)}")
    validate(spec, weights)
    return spec, weights



def to_torchvision(spec: ResNetSpec, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical weights -> torchvision state_dict of numpy arrays (``num_batches_tracked`` = 0,
    which torch only reads when BatchNorm momentum is None)."""
    validate(spec, weights)
    out: dict[str, np.ndarray] = {}
    for layer in spec.layers():
        if not layer.params:
            continue
        module = torchvision_module(layer.name)
        for param in layer.params:
            value = weights[f"{layer.name}.{param}"]
            if param == "kernel":
                value = value.transpose(3, 2, 0, 1) if isinstance(layer, Conv) else value.T
            name = _TV_BN[param] if isinstance(layer, BatchNorm) else _TV_PARAM[param]
            out[f"{module}.{name}"] = np.ascontiguousarray(value)
        if isinstance(layer, BatchNorm):
            out[f"{module}.num_batches_tracked"] = np.zeros((), dtype=np.int64)
    return out


from shared.keras_h5 import from_keras_applications, to_keras_applications_h5  # noqa: E402
# Every checkpoint type by file (Keras 3 .weights.h5/.keras, Orbax directories, torchvision-keyed
# safetensors, ...): shared.formats, which imports a framework only for a format that needs one.
from shared.formats import detect as detect_checkpoint, read as read_checkpoint, write as write_checkpoint  # noqa: E402
