"""Peers' checkpoints <-> canonical weights, in pure numpy (no framework imported).

torchvision: ``conv1``/``bn1``, ``layer{s}.{b}.conv{k}``/``bn{k}``, ``downsample.0``/``.1``, ``fc``;
OIHW conv kernels, (out, in) dense kernels, BatchNorm weight/bias/running_mean/running_var.
The names map by rule (``torchvision_module``), never by position. Every architecture of
``shared.spec.PRESETS`` has a torchvision-style state_dict: torchvision's own for ResNet-18..152,
ResNeXt and Wide ResNet; for Keras' ResNet V2 (no torchvision peer) the same rule with the Keras
suffix kept where torchvision has no such layer (``layer1.0.preact_bn``, ``post_bn``).
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from shared.spec import BatchNorm, Conv, ResNetSpec, preset_spec
from shared.weights import DTYPE, WeightsError, validate

_BLOCK = re.compile(r"conv(\d+)_block(\d+)_(.+)$")
_TV_PARAM = {"kernel": "weight", "bias": "bias"}  # conv and dense; dense kernels transpose
_TV_BN = {"gamma": "weight", "beta": "bias", "mean": "running_mean", "var": "running_var"}
# Layers outside the blocks. V2's post_bn has no torchvision counterpart: its Keras name stays.
# torchvision has one ReLU module per block (and one in the stem) that serves every ReLU there.
_FIXED = {"conv1_conv": "conv1", "conv1_bn": "bn1", "conv1_relu": "relu", "pool1_pool": "maxpool",
          "post_bn": "post_bn", "post_relu": "relu", "avg_pool": "avgpool", "max_pool": "globalmaxpool",
          "predictions": "fc"}
_IN_BLOCK = re.compile(r"(?:(\d)_(conv|bn|relu|pool)|(preact_bn)|preact_relu|out)$")


def torchvision_module(layer_name: str) -> str:
    """Canonical layer name -> module path in a torchvision-style ResNet, for every layer that is
    a module (a residual add is part of its block's forward, not a module).

    ``conv1_conv`` -> ``conv1``; ``conv3_block2_1_bn`` -> ``layer2.1.bn1``; a block's shortcut
    ``_0_conv``/``_0_pool`` -> ``downsample.0``, ``_0_bn`` -> ``downsample.1``; every ReLU of a
    block (``_1_relu``, V1's ``_out``, V2's ``_preact_relu``) -> its one ``relu``; V2's
    pre-activation ``conv2_block1_preact_bn`` -> ``layer1.0.preact_bn`` and ``post_bn`` ->
    ``post_bn`` (torchvision has none: the Keras suffix is kept)."""
    if layer_name in _FIXED:
        return _FIXED[layer_name]
    m = _BLOCK.match(layer_name)
    part = _IN_BLOCK.match(m[3]) if m else None
    if not part:
        raise KeyError(f"{layer_name}: no torchvision module (not a layer name of shared.spec, or an add)")
    prefix = f"layer{int(m[1]) - 1}.{int(m[2]) - 1}"
    k, kind, preact = part.groups()
    if preact:
        return f"{prefix}.preact_bn"
    if kind is None or kind == "relu":
        return f"{prefix}.relu"
    if k == "0":
        return f"{prefix}.downsample.{1 if kind == 'bn' else 0}"
    if kind == "pool":
        raise KeyError(f"{layer_name}: no torchvision module (only a block's shortcut, _0_pool, is a pool)")
    return f"{prefix}.{kind}{k}"


def torchvision_param(layer, param: str) -> str:
    """The torchvision attribute of a canonical parameter (``gamma`` -> ``weight``, ``mean`` ->
    ``running_mean``, a kernel -> ``weight``)."""
    return _TV_BN[param] if isinstance(layer, BatchNorm) else _TV_PARAM[param]


def _numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def _structure(block: str, width: int, inner: int, per_group: int, out: int, where: str) -> dict:
    """Block fields read off stage 1's first block: ``inner`` and ``per_group`` are its 3x3
    conv's output channels and input channels per group, ``out`` its last conv's output
    channels. torchvision's rule ``inner = int(width * width_per_group / 64) * groups``
    inverted; a width no integer ``width_per_group`` gives is refused naming ``where``."""
    if block == "basic":
        return dict(block=block, expansion=out // width)
    groups = inner // per_group
    width_per_group = inner // groups * 64 // width
    if groups * per_group != inner or int(width * width_per_group / 64) * groups != inner:
        raise WeightsError(f"{where}: {inner} channels in {groups} group(s) of {per_group} match no "
                           f"width_per_group for a stem width of {width}")
    return dict(block=block, groups=groups, width_per_group=width_per_group, expansion=out // width)


def canonical_key(torchvision_key: str) -> str | None:
    """torchvision state_dict key -> canonical key, the inverse of ``torchvision_module`` with
    ``torchvision_param`` (``layer2.1.bn1.running_mean`` -> ``conv3_block2_1_bn.mean``); None
    for ``num_batches_tracked`` and for a key no canonical layer has."""
    module, _, attr = torchvision_key.rpartition(".")
    fixed = {v: k for k, v in _FIXED.items() if v not in ("relu", "maxpool", "avgpool", "globalmaxpool")}
    m = re.fullmatch(r"layer(\d+)\.(\d+)\.(?:(conv|bn)(\d)|downsample\.([01])|(preact_bn))", module)
    if module in fixed:
        layer = fixed[module]
    elif m:
        stage, block, kind, k, down, preact = m.groups()
        prefix = f"conv{int(stage) + 1}_block{int(block) + 1}"
        layer = (f"{prefix}_preact_bn" if preact else f"{prefix}_0_{'bn' if down == '1' else 'conv'}" if down
                 else f"{prefix}_{k}_{kind}")
    else:
        return None
    is_bn = layer.endswith("_bn") or layer == "post_bn"
    table = {v: k for k, v in (_TV_BN if is_bn else _TV_PARAM).items()}
    return f"{layer}.{table[attr]}" if attr in table else None


def spec_from_torchvision(state_dict: Mapping[str, object]) -> ResNetSpec:
    """The spec of a torchvision-style state_dict, read off its keys and shapes by the one
    inference (``spec_from_canonical``, its keys and shapes renamed and transposed): block kind,
    depths, width, groups and width per group, expansion, image channels, classes. Conventions:
    torchvision's (V1; ``conv1.bias`` means biased convs) or Keras' (V2, which torchvision lacks)."""
    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight"):
        if key not in state_dict:
            raise WeightsError(f"torchvision state_dict: missing key {key} (is this a torchvision ResNet?)")
    shapes, names = {}, {}
    for key, value in state_dict.items():
        canonical = canonical_key(key)
        if canonical is None:
            continue
        shape = np.shape(_numpy(value))
        if canonical.endswith(".kernel"):
            shape = (*shape[2:], shape[1], shape[0]) if len(shape) == 4 else shape[::-1]
        shapes[canonical], names[canonical] = np.broadcast_to(np.float32(0), shape), key
    style = "keras" if "layer1.0.preact_bn.weight" in state_dict else "torchvision"
    return spec_from_canonical(shapes, style=style, source="torchvision state_dict",
                               named=lambda k: names.get(k) or f"{torchvision_module(k.split('.')[0])}.weight")


def spec_from_canonical(weights: Mapping[str, np.ndarray], style: str | None = None, *,
                        source: str = "canonical weights", named=None) -> ResNetSpec:
    """The spec a canonical weight dict was made for, read off its names and shapes: block kind
    (pre-activation: ``conv2_block1_preact_bn.*``; basic: no ``conv2_block1_3_conv``), depths,
    width, groups and width per group (the 3x3 conv's HWIO kernel: out / in per group),
    expansion. Conventions the shapes cannot show (stride placement, epsilon, momentum) come
    from ``style``; without it, V2 means Keras, biased convs Keras Applications, unbiased
    torchvision. This is resnet-parity's one inference of a spec from weights: every other
    naming (torchvision's keys, Keras layers, Orbax trees) is renamed to canonical keys and read
    here; ``source`` and ``named`` (canonical key -> the caller's name) word its errors."""
    named = named or (lambda key: key)
    for key in ("conv1_conv.kernel", "conv2_block1_2_conv.kernel"):
        if key not in weights:
            raise WeightsError(f"{source}: missing key {named(key)}")
    blocks = [m for m in (_BLOCK.match(k.split(".")[0]) for k in weights) if m]
    depths = []
    while any(int(m[1]) == len(depths) + 2 for m in blocks):
        depths.append(max(int(m[2]) for m in blocks if int(m[1]) == len(depths) + 2))
    stem = np.shape(weights["conv1_conv.kernel"])
    conv2 = np.shape(weights["conv2_block1_2_conv.kernel"])
    preact = "conv2_block1_preact_bn.gamma" in weights or "post_bn.gamma" in weights
    block = "preact" if preact else "bottleneck" if "conv2_block1_3_conv.kernel" in weights else "basic"
    last = "conv2_block1_2_conv.kernel" if block == "basic" else "conv2_block1_3_conv.kernel"
    if last not in weights:
        raise WeightsError(f"{source}: missing key {named(last)}")
    # A BN follows every block's first conv unless shared.fold removed it (every conv biased).
    folded = "conv2_block1_1_bn.gamma" not in weights
    if folded and style is None:
        raise WeightsError("canonical weights: BatchNorm-folded (no conv2_block1_1_bn.* keys), so the conv biases "
                           "cannot tell the style; give the style (--style) or save the spec with the weights")
    style = style or ("keras" if preact or "conv2_block1_1_conv.bias" in weights else "torchvision")
    structure = _structure(block, stem[3], conv2[3], conv2[2], np.shape(weights[last])[3],
                           f"{source}: {named('conv2_block1_2_conv.kernel')}")
    conv_bias = preset_spec(style, block=block).conv_bias if folded else "conv2_block1_1_conv.bias" in weights
    top = "predictions.kernel" in weights
    return preset_spec(style, depths=tuple(depths), width=stem[3], image_channels=stem[2], conv_bias=conv_bias,
                       **structure, include_top=top,
                       num_classes=np.shape(weights["predictions.kernel"])[1] if top else 1000, folded=folded)


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
            tv = f"{module}.{torchvision_param(layer, param)}"
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
            out[f"{module}.{torchvision_param(layer, param)}"] = np.ascontiguousarray(value)
        if isinstance(layer, BatchNorm):
            out[f"{module}.num_batches_tracked"] = np.zeros((), dtype=np.int64)
    return out
