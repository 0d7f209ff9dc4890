"""Peers' checkpoints <-> canonical weights, in pure numpy (no framework imported).

torchvision: ``conv1``/``bn1``, ``layer{s}.{b}.conv{k}``/``bn{k}``, ``downsample.0``/``.1``, ``fc``;
OIHW conv kernels, (out, in) dense kernels, BatchNorm weight/bias/running_mean/running_var.
The names map by rule (``torchvision_module``), never by position. Every architecture of
``shared.spec.PRESETS`` has a torchvision-style state_dict: torchvision's own for ResNet-18..152,
ResNeXt and Wide ResNet; timm's own (``resnet.py``: its deep stems, avg-down shortcuts, SE and
ECA, anti-aliasing keep torchvision's names and add timm's: ``conv1.0``, ``downsample.2``,
``se.fc1``); for the pre-activation ResNets (no torchvision peer) the same rule with the Keras
suffix kept where torchvision has no such layer (``layer1.0.preact_bn``, ``post_bn``). timm's
``resnetv2`` names its modules otherwise (``stem.conv``, ``stages.0.blocks.0.norm1``,
``head.fc``): its state_dicts are renamed to that rule on the way in (``timm_v2_key``).
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

import numpy as np

from shared.spec import BatchNorm, ChannelConv, Conv, ResNetSpec, preset_spec
from shared.weights import DTYPE, WeightsError, validate

_BLOCK = re.compile(r"conv(\d+)_block(\d+)_(.+)$")
_TV_PARAM = {"kernel": "weight", "bias": "bias"}  # conv and dense; dense kernels transpose
_TV_BN = {"gamma": "weight", "beta": "bias", "mean": "running_mean", "var": "running_var"}
# Layers outside the blocks. V2's post_bn has no torchvision counterpart: its Keras name stays.
# torchvision has one ReLU module per block (and one in the stem) that serves every ReLU there.
# timm's stem pools are Sequentials under torchvision's ``maxpool``: max + blur, conv + BN + ReLU.
_FIXED = {"conv1_conv": "conv1", "conv1_bn": "bn1", "conv1_relu": "relu", "pool1_pool": "maxpool",
          "pool1_max": "maxpool.0", "pool1_blur": "maxpool.1", "pool1_conv": "maxpool.0", "pool1_bn": "maxpool.1",
          "pool1_relu": "maxpool.2", "post_bn": "post_bn", "post_relu": "relu", "avg_pool": "avgpool",
          "max_pool": "globalmaxpool", "predictions": "fc"}
_DEEP_STEM = re.compile(r"conv1_(\d+)_(conv|bn|relu)$")  # timm's conv1.0, conv1.1, conv1.2, conv1.3..
# Block layers named by suffix: avg-down's shortcut (timm's downsample.0/1/2, the pool an
# Identity at stride 1), anti-aliasing, SE and ECA (both timm's ``se``; the squeeze is no module
# in timm, a stateless one here).
_IN_BLOCK_FIXED = {"down_pool": "downsample.0", "down_conv": "downsample.1", "down_bn": "downsample.2",
                   "aa": "aa", "se_pool": "se.pool", "se_1_conv": "se.fc1", "se_relu": "se.act",
                   "se_2_conv": "se.fc2", "se_gate": "se.gate", "eca_pool": "se.pool", "eca_conv": "se.conv",
                   "eca_gate": "se.gate", "preact_bn": "preact_bn", "preact_relu": "relu", "out": "relu"}
_IN_BLOCK = re.compile(r"(\d)_(conv|bn|relu|pool)$")


def torchvision_module(layer_name: str) -> str:
    """Canonical layer name -> module path in a torchvision-style ResNet, for every layer that is
    a module (a residual add and an attention's scale are part of their block's forward).

    ``conv1_conv`` -> ``conv1``; ``conv3_block2_1_bn`` -> ``layer2.1.bn1``; a block's shortcut
    ``_0_conv``/``_0_pool`` -> ``downsample.0``, ``_0_bn`` -> ``downsample.1``; every ReLU of a
    block (``_1_relu``, V1's ``_out``, V2's ``_preact_relu``) -> its one ``relu``; V2's
    pre-activation ``conv2_block1_preact_bn`` -> ``layer1.0.preact_bn`` and ``post_bn`` ->
    ``post_bn`` (torchvision has none: the Keras suffix is kept). timm's family: a deep stem's
    ``conv1_{i}_conv``/``_bn``/``_relu`` -> ``conv1.{3(i-1)}``/``+1``/``+2`` (its last BN and ReLU
    are ``conv1_bn``/``conv1_relu``: ``bn1``, ``relu``); the stem pool's ``pool1_max``,
    ``pool1_blur`` -> ``maxpool.0``, ``.1`` and ``pool1_conv``/``_bn``/``_relu`` ->
    ``maxpool.0``/``.1``/``.2``; avg-down's ``_down_pool``/``_down_conv``/``_down_bn`` ->
    ``downsample.0``/``.1``/``.2``; ``_aa`` -> ``aa``; SE's ``_se_1_conv``, ``_se_relu``,
    ``_se_2_conv``, ``_se_gate`` -> ``se.fc1``, ``se.act``, ``se.fc2``, ``se.gate``; ECA's
    ``_eca_conv``, ``_eca_gate`` -> ``se.conv``, ``se.gate``; either squeeze -> ``se.pool``."""
    if layer_name in _FIXED:
        return _FIXED[layer_name]
    stem = _DEEP_STEM.match(layer_name)
    if stem:
        return f"conv1.{3 * (int(stem[1]) - 1) + ('conv', 'bn', 'relu').index(stem[2])}"
    m = _BLOCK.match(layer_name)
    if not m or not (m[3] in _IN_BLOCK_FIXED or _IN_BLOCK.match(m[3])):
        raise KeyError(f"{layer_name}: no torchvision module (not a layer name of shared.spec, or an add or scale)")
    prefix = f"layer{int(m[1]) - 1}.{int(m[2]) - 1}"
    if m[3] in _IN_BLOCK_FIXED:
        return f"{prefix}.{_IN_BLOCK_FIXED[m[3]]}"
    k, kind = _IN_BLOCK.match(m[3]).groups()
    if kind == "relu":
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


def canonical_kernel(value: np.ndarray) -> np.ndarray:
    """A torch kernel in canonical layout: a conv's OIHW as HWIO, ECA's Conv1d (1, 1, k) as
    (k,), a dense (out, in) as (in, out); a 1-D array as it is."""
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 3 and value.shape[:2] == (1, 1):
        return value[0, 0]
    return value.T


def torch_kernel(layer, value: np.ndarray) -> np.ndarray:
    """The inverse of ``canonical_kernel`` for ``layer``'s kind."""
    if isinstance(layer, Conv):
        return value.transpose(3, 2, 0, 1)
    if isinstance(layer, ChannelConv):
        return value.reshape(1, 1, -1)
    return value.T


def is_torch_state_dict(keys) -> bool:
    """Whether a checkpoint's keys are a torch ResNet's state_dict this module reads:
    torchvision's or timm's ``resnet.py`` (a 7x7 or a deep stem) or timm's ``resnetv2``."""
    keys = set(keys)
    return bool(keys & {"conv1.weight", "conv1.0.weight", "stem.conv.weight"})


# timm's resnetv2 -> the rule above: its stem conv, blocks' norm1 (the pre-activation),
# norm2/norm3 (after conv1/conv2), projection, final norm, and its head (a 1x1 Conv2d).
_TIMM_V2_FIXED = {"stem.conv": "conv1", "norm": "post_bn", "head.fc": "fc"}
_TIMM_V2_BLOCK = {"norm1": "preact_bn", "norm2": "bn1", "norm3": "bn2", "conv1": "conv1", "conv2": "conv2",
                  "conv3": "conv3", "downsample.conv": "downsample.0"}


def _rename(key: str, fixed: Mapping[str, str], block: Mapping[str, str], pattern: str, shift: int) -> str:
    module, _, attr = key.rpartition(".")
    if module in fixed:
        return f"{fixed[module]}.{attr}"
    m = re.fullmatch(pattern, module)
    if m and m[3] in block:
        return block[m[3]].format(int(m[1]) + shift, m[2]) + f".{attr}"
    return key


def timm_v2_key(timm_key: str) -> str:
    """timm ``resnetv2`` state_dict key -> its torchvision-style key (``stages.0.blocks.1.norm2.weight``
    -> ``layer1.1.bn1.weight``); a key timm's V2 has no such module for is returned unchanged."""
    return _rename(timm_key, _TIMM_V2_FIXED, {k: "layer{}.{}." + v for k, v in _TIMM_V2_BLOCK.items()},
                   r"stages\.(\d+)\.blocks\.(\d+)\.(.+)", 1)


def _timm_v2_name(torch_key: str) -> str:
    """The inverse of ``timm_v2_key`` (to name timm's key in an error)."""
    return _rename(torch_key, {v: k for k, v in _TIMM_V2_FIXED.items()},
                   {v: "stages.{}.blocks.{}." + k for k, v in _TIMM_V2_BLOCK.items()},
                   r"layer(\d+)\.(\d+)\.(.+)", -1)


def _torch_state(state: Mapping[str, object]) -> tuple[Mapping[str, object], Callable[[str], str]]:
    """A torch state_dict under the rule's keys, and how to name one of them in an error (as the
    caller's file has it): timm's resnetv2 is renamed (its head's (out, in, 1, 1) kernel made a
    dense one); any other is taken as it is."""
    if "stem.conv.weight" not in state:
        return state, lambda key: key
    renamed = {}
    for key, value in state.items():
        if key == "head.fc.weight" and np.shape(_numpy(value))[2:] == (1, 1):
            value = _numpy(value)[:, :, 0, 0]
        renamed[timm_v2_key(key)] = value
    return renamed, _timm_v2_name


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


_CANONICAL_IN_BLOCK = {"se.fc1": "se_1_conv", "se.fc2": "se_2_conv", "se.conv": "eca_conv", "preact_bn": "preact_bn"}


def canonical_key(torchvision_key: str, avg_down: bool = False) -> str | None:
    """torchvision state_dict key -> canonical key, the inverse of ``torchvision_module`` with
    ``torchvision_param`` (``layer2.1.bn1.running_mean`` -> ``conv3_block2_1_bn.mean``); None
    for ``num_batches_tracked`` and for a key no canonical layer has. ``avg_down``: the
    state_dict's shortcuts are avg-down's (pool, conv, BN), so ``downsample.1`` is a conv."""
    module, _, attr = torchvision_key.rpartition(".")
    fixed = {v: k for k, v in _FIXED.items() if v not in ("relu", "maxpool", "avgpool", "globalmaxpool")}
    fixed.update({"maxpool.0": "pool1_conv", "maxpool.1": "pool1_bn"})  # the stem pools with weights
    stem = re.fullmatch(r"conv1\.(\d+)", module)
    m = re.fullmatch(r"layer(\d+)\.(\d+)\.(?:(conv|bn)(\d)|downsample\.([012])|(se\.fc1|se\.fc2|se\.conv|preact_bn))",
                     module)
    if module in fixed:
        layer = fixed[module]
    elif stem and int(stem[1]) % 3 < 2:
        layer = f"conv1_{int(stem[1]) // 3 + 1}_{('conv', 'bn')[int(stem[1]) % 3]}"
    elif m:
        stage, block, kind, k, down, named = m.groups()
        prefix = f"conv{int(stage) + 1}_block{int(block) + 1}"
        if named:
            layer = f"{prefix}_{_CANONICAL_IN_BLOCK[named]}"
        elif down:
            parts = ("pool", "conv", "bn") if avg_down else ("conv", "bn")
            if int(down) >= len(parts):
                return None
            layer = f"{prefix}_{'down' if avg_down else '0'}_{parts[int(down)]}"
        else:
            layer = f"{prefix}_{k}_{kind}"
    else:
        return None
    is_bn = layer.endswith("_bn") or layer == "post_bn"
    table = {v: k for k, v in (_TV_BN if is_bn else _TV_PARAM).items()}
    return f"{layer}.{table[attr]}" if attr in table else None


def spec_from_torchvision(state_dict: Mapping[str, object]) -> ResNetSpec:
    """The spec of a torchvision-style state_dict (torchvision's, timm's ``resnet.py`` or
    ``resnetv2``), read off its keys and shapes by the one inference (``spec_from_canonical``,
    its keys and shapes renamed and transposed): block kind, depths, width, groups and width per
    group, expansion, image channels, classes, and timm's family where it has weights (deep
    stem, conv stem pool, avg-down, SE width, ECA). Anti-aliasing and the max+blur or avg stem
    pools have no weights: the spec read here has none (the max pool), and the caller's spec
    says whether the model has them. Conventions: torchvision's (V1; ``conv1.bias`` means
    biased convs), Keras' (V2 with biased last convs) or timm's (V2 without)."""
    state_dict, named_as = _torch_state(state_dict)
    stem = "conv1.0.weight" if "conv1.0.weight" in state_dict else "conv1.weight"
    for key in (stem, "layer1.0.conv1.weight", "layer1.0.conv2.weight"):
        if key not in state_dict:
            raise WeightsError(f"torchvision state_dict: missing key {named_as(key)} (is this a torchvision ResNet?)")
    avg_down = any(re.fullmatch(r"layer\d+\.\d+\.downsample\.2\.weight", k) for k in state_dict)
    shapes, names = {}, {}
    for key, value in state_dict.items():
        canonical = canonical_key(key, avg_down)
        if canonical is None:
            continue
        shape = np.shape(_numpy(value))
        if canonical.endswith(".kernel"):
            shape = canonical_kernel(np.broadcast_to(np.float32(0), shape)).shape
        shapes[canonical], names[canonical] = np.broadcast_to(np.float32(0), shape), named_as(key)
    style = "torchvision"
    if "layer1.0.preact_bn.weight" in state_dict:
        style = "keras" if "layer1.0.conv3.bias" in state_dict else "timm"
    return spec_from_canonical(shapes, style=style, source="torchvision state_dict",
                               named=lambda k: names.get(k) or named_as(f"{torchvision_module(k.split('.')[0])}.weight"))


def _stem_fields(weights: Mapping[str, np.ndarray]) -> dict:
    """A deep stem (``conv1_1_conv``..) as ``stem_convs``: kernel and width read off each conv,
    the strides timm's and keras-hub's (2, then 1: no weight shows a stride); a conv stem pool."""
    fields = {}
    if "conv1_1_conv.kernel" in weights:
        convs, i = [], 1
        while f"conv1_{i}_conv.kernel" in weights:
            k, _, _, c = np.shape(weights[f"conv1_{i}_conv.kernel"])
            convs.append((k, c, 2 if i == 1 else 1))
            i += 1
        fields["stem_convs"] = tuple(convs)
    if "pool1_conv.kernel" in weights:
        fields["stem_pool"] = "conv"
    return fields


def _shortcut_fields(weights: Mapping[str, np.ndarray], stem_channels: int, stage1_out: int) -> dict:
    """V1's shortcut: avg-down (``_down_conv``) or a conv of the kernel its first projection has;
    ``project_first`` where stage 1's first block projects at equal channels."""
    fields = {}
    names = [k.split(".")[0] for k in weights if k.endswith(".kernel")]
    if any(n.endswith("_down_conv") for n in names):
        fields["shortcut"] = "avg_down"
    else:
        first = next((n for n in names if _BLOCK.match(n) and n.endswith("_0_conv")), None)
        if first is not None and np.shape(weights[f"{first}.kernel"])[0] != 1:
            fields["shortcut_kernel"] = np.shape(weights[f"{first}.kernel"])[0]
    projects = "conv2_block1_0_conv.kernel" in weights or "conv2_block1_down_conv.kernel" in weights
    if projects and stem_channels == stage1_out:
        fields["project_first"] = True
    return fields


def _attention_fields(weights: Mapping[str, np.ndarray], spec_of: Callable[..., ResNetSpec]) -> dict:
    """SE (``_se_1_conv``; its ratio the default's where that gives every block's hidden width,
    else hidden / channels of the widest block, e.g. ResNet-RS's 1/4) or ECA (``_eca_conv``; its
    kernel is the spec's rule of the channels). A width neither ratio gives is named when the
    weights are validated against the spec."""
    if "conv2_block1_eca_conv.kernel" in weights:
        return dict(attention="eca")
    se = {k: np.shape(v) for k, v in weights.items() if k.endswith("_se_1_conv.kernel")}
    if not se:
        return {}
    widest = max(se.values(), key=lambda shape: shape[2])
    for ratio in (ResNetSpec.se_ratio, widest[3] / widest[2]):
        shapes = spec_of(attention="se", se_ratio=ratio).param_shapes()
        if all(shapes.get(k) == shape for k, shape in se.items()):
            break
    return dict(attention="se", se_ratio=ratio)


def spec_from_canonical(weights: Mapping[str, np.ndarray], style: str | None = None, *,
                        source: str = "canonical weights", named=None) -> ResNetSpec:
    """The spec a canonical weight dict was made for, read off its names and shapes: block kind
    (pre-activation: ``conv2_block1_preact_bn.*``; basic: no ``conv2_block1_3_conv``), depths,
    width, groups and width per group (the 3x3 conv's HWIO kernel: out / in per group),
    expansion; the family where it has weights: a deep stem (``conv1_1_conv``..; stage 1's
    planes then read off its block, with the block kind's expansion), a conv stem pool,
    avg-down or a wider shortcut conv, ``project_first``, SE and its ratio, ECA. What has no
    weights (anti-aliasing, a max+blur or avg stem pool, the gate function) is the default.
    Conventions the shapes cannot show (stride placement, epsilon, momentum) come from
    ``style``; without it, V2 means Keras with biased last convs and timm's without, biased
    convs Keras Applications, unbiased torchvision. This is resnet-parity's one inference of a
    spec from weights: every other naming (torchvision's and timm's keys, Keras layers, Orbax
    trees) is renamed to canonical keys and read here; ``source`` and ``named`` (canonical key
    -> the caller's name) word its errors."""
    named = named or (lambda key: key)
    first = "conv1_1_conv.kernel" if "conv1_1_conv.kernel" in weights else "conv1_conv.kernel"
    for key in (first, "conv2_block1_2_conv.kernel"):
        if key not in weights:
            raise WeightsError(f"{source}: missing key {named(key)}")
    blocks = [m for m in (_BLOCK.match(k.split(".")[0]) for k in weights) if m]
    depths = []
    while any(int(m[1]) == len(depths) + 2 for m in blocks):
        depths.append(max(int(m[2]) for m in blocks if int(m[1]) == len(depths) + 2))
    stem_fields = _stem_fields(weights)
    stem = np.shape(weights[first])
    stem_channels = stem_fields["stem_convs"][-1][1] if "stem_convs" in stem_fields else stem[3]
    conv2 = np.shape(weights["conv2_block1_2_conv.kernel"])
    preact = "conv2_block1_preact_bn.gamma" in weights or "post_bn.gamma" in weights
    block = "preact" if preact else "bottleneck" if "conv2_block1_3_conv.kernel" in weights else "basic"
    last = "conv2_block1_2_conv.kernel" if block == "basic" else "conv2_block1_3_conv.kernel"
    if last not in weights:
        raise WeightsError(f"{source}: missing key {named(last)}")
    out = np.shape(weights[last])[3]
    # A BN follows every block's first conv unless shared.fold removed it (every conv biased).
    folded = "conv2_block1_1_bn.gamma" not in weights
    if folded and style is None:
        raise WeightsError("canonical weights: BatchNorm-folded (no conv2_block1_1_bn.* keys), so the conv biases "
                           "cannot tell the style; give the style (--style) or save the spec with the weights")
    if style is None:
        style = (("keras" if "conv2_block1_3_conv.bias" in weights else "timm") if preact
                 else "keras" if "conv2_block1_1_conv.bias" in weights else "torchvision")
    # Stage 1's planes: the stem's width (torchvision, Keras); a deep stem's may differ (timm's
    # resnet50s: 128), so there they are the basic block's first conv, or out / 4.
    width = stem_channels
    if "stem_convs" in stem_fields:
        width = np.shape(weights["conv2_block1_1_conv.kernel"])[3] if block == "basic" else out // 4
    structure = _structure(block, width, conv2[3], conv2[2], out, f"{source}: {named('conv2_block1_2_conv.kernel')}")
    conv_bias = preset_spec(style, block=block).conv_bias if folded else "conv2_block1_1_conv.bias" in weights
    top = "predictions.kernel" in weights
    fields = dict(depths=tuple(depths), width=width, image_channels=stem[2], conv_bias=conv_bias, **structure,
                  include_top=top, num_classes=np.shape(weights["predictions.kernel"])[1] if top else 1000,
                  folded=folded, **stem_fields)
    if block != "preact":
        fields.update(_shortcut_fields(weights, stem_channels, out))
        fields.update(_attention_fields(weights, lambda **more: preset_spec(style, **fields, **more)))
    return preset_spec(style, **fields)


def from_torchvision(state_dict: Mapping[str, object], spec: ResNetSpec | None = None,
                     ) -> tuple[ResNetSpec, dict[str, np.ndarray]]:
    """A torchvision-style ResNet state_dict (tensors or numpy arrays; torchvision's, timm's
    ``resnet.py`` or ``resnetv2``) -> (spec, canonical weights)."""
    spec = spec or spec_from_torchvision(state_dict)
    state_dict, named_as = _torch_state(state_dict)
    weights, unused = {}, {k for k in state_dict if not k.endswith("num_batches_tracked")}
    for layer in spec.layers():
        if not layer.params:
            continue
        module = torchvision_module(layer.name)
        for param in layer.params:
            tv = f"{module}.{torchvision_param(layer, param)}"
            if tv not in state_dict:
                raise WeightsError(f"torchvision state_dict: missing key {named_as(tv)} (for {layer.name}.{param})")
            value = _numpy(state_dict[tv])
            unused.discard(tv)
            if param == "kernel":
                value = canonical_kernel(value)
            weights[f"{layer.name}.{param}"] = np.array(value, dtype=DTYPE, order="C", copy=True)  # never a view of the caller's tensor
    if unused:
        raise WeightsError(f"torchvision state_dict: unexpected key(s) {sorted(named_as(k) for k in unused)}")
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
                value = torch_kernel(layer, value)
            out[f"{module}.{torchvision_param(layer, param)}"] = np.ascontiguousarray(value)
        if isinstance(layer, BatchNorm):
            out[f"{module}.num_batches_tracked"] = np.zeros((), dtype=np.int64)
    return out
