"""The emulated int8 oracle: the float64 reference with fake quantization (quantize, then
dequantize) at the points where a QDQ int8 model of the spec quantizes (docs/int8-bf16.md).

The points are those of onnxruntime's static quantization of the spec's ONNX model with the
recipe ``shared.tools.adapters.onnx_int8`` asks for (QDQ, ops Conv, Gemm, Relu, MaxPool; the
logits kept float): the input of every ONNX Conv and Gemm, the output of every Conv (after its
ReLU where one follows: the runtime fuses it) and of a max pool whose input is quantized (at
its input's scale: exact). The family's layers follow from how ``shared.onnx_export`` writes
them: a blur is a Pad and a depthwise Conv of the fixed taps (points: the padded tensor
``<name>/padded`` and the blur's output; the taps quantized like any conv weight, so the int8
blur is not exactly the float one), ECA's channel conv a 1-D Conv between Reshapes (points:
``<name>/n1c`` and its output, (N, 1, C), held here as (N, 1, 1, C)), SE's 1x1 convs are convs.
Everything else (the residual add, the ReLU after it, a kept BatchNorm, the average pools, the
gates, the attention's scale) stays float; a tensor quantized for a conv reaches every consumer
quantized (an identity shortcut, an avg-down pool, an attention's squeeze and scale). Where a
float average pool sits between a dequantize and a quantize, onnxruntime's optimiser runs it as
QLinearAveragePool or QLinearGlobalAveragePool: the same function, rounded otherwise, which the
tie rule admits. How each point is quantized:

- Activations: ``q = clip(round_half_even(x / scale) + zero_point)``, uint8 or int8, with the
  scale and zero point calibration gave the model; they are data, read from the model by the
  adapter and handed in as ``{tensor: (scale, zero_point, dtype)}`` (tensor = spec layer name,
  or ``"images"``).
- Weights: a function of the weights, computed here: symmetric int8 per output channel,
  ``scale = max|w| / 127``, zero point 0; biases int32 at scale ``input scale x weight scale``.

``judge`` is the verdict: each point computed from the model's own integers before it; an
integer may differ only where the exact value is a float32 rounding away from a tie (``MARGIN``).

No framework is imported: numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from shared import parity, reference
from shared.onnx_export import N1C, PADDED
from shared.spec import (AvgPool, BatchNorm, Blur, ChannelConv, Conv, Dense, Gate, GlobalPool, MaxPool, ReLU,
                         ResNetSpec)

RANGES = {"uint8": (0, 255), "int8": (-128, 127)}
WEIGHT_QMAX = 127  # symmetric int8 weights: [-127, 127]
# A differing integer is legitimate within this many times the float32 peer's largest deviation
# (in steps) of a tie (the two legitimate placements of the arithmetic between the points: exact,
# as a fused int32 kernel, or float32, as the QDQ graph written out): the fp32 rule's margin.
MARGIN = parity.MARGIN

Params = Mapping[str, tuple[float, int, str]]
CONVS = (Conv, Blur, ChannelConv)  # ONNX Conv nodes: each quantizes its input, weights and output


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: str) -> np.ndarray:
    """``x`` quantized to ``dtype`` (round half to even, saturating), as integers held in
    ``x``'s float dtype, computed in that dtype."""
    lo, hi = RANGES[dtype]
    return np.clip(np.rint(x / np.asarray(scale, x.dtype)) + zero_point, lo, hi)


def weight_scales(kernel: np.ndarray) -> np.ndarray:
    """One float32 scale per output channel (the last axis: HWIO kernels, (in, out) dense
    kernels): the symmetric range ``[-max|w|, max|w|]`` over 254 steps, in float32 as the
    quantizer computes it; a channel of zeros gets scale 1."""
    k = np.asarray(kernel, np.float32)
    absmax = np.abs(k.reshape(-1, k.shape[-1])).max(axis=0)
    return np.where(absmax > 0, (absmax + absmax) / np.float32(2 * WEIGHT_QMAX), np.float32(1))


def weight_ints(kernel: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The int8 values of ``kernel`` at per-channel ``scales`` (float32 division, half to even)."""
    q = np.rint(np.asarray(kernel, np.float32) / scales)
    return np.clip(q, -WEIGHT_QMAX, WEIGHT_QMAX).astype(np.int8)


def bias_ints(bias: np.ndarray, step: np.ndarray) -> np.ndarray:
    """The int32 values of a bias at its float32 ``step`` (input scale x weight scale), the
    division in float64 (half to even)."""
    return np.rint(np.asarray(bias, np.float64) / np.asarray(step, np.float64))


def _as_held(ints: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A model's integers in the oracle's shape: ECA's (N, 1, C) tensors are (N, 1, 1, C) here."""
    return ints.reshape(shape) if ints.ndim == 3 and len(shape) == 4 else ints


def _taps(layer: Blur) -> np.ndarray:
    """A blur's fixed filter as the depthwise conv's HWIO kernel (k, k, 1, C), float32 as the
    model stores it (quantized like any conv weight)."""
    k = layer.kernel_size
    return np.broadcast_to(np.asarray(layer.taps(), np.float32)[:, :, None, None], (k, k, 1, layer.channels))


def forward(spec: ResNetSpec, weights: Mapping[str, np.ndarray], images: np.ndarray, params: Params,
            dtype=np.float64, given: Mapping[str, np.ndarray] | None = None,
            record: dict | None = None, elided: frozenset[str] = frozenset()) -> np.ndarray:
    """The int8 model's logits, emulated: ``spec`` is the network the model was quantized from
    (BatchNorm folded), ``params`` its activation scales and zero points, ``dtype`` the
    arithmetic between the quantization points. ``record`` gets each point's value just
    before rounding, ``x / scale`` (NHWC); with ``given`` (the model's own integers, tensor -> NHWC array), each point is
    computed from the model's integers of the points before it ("teacher forcing": a rounding
    that differs is judged where it happens and never propagates). A point ``params`` lacks
    raises ValueError naming it. ``elided``: points the runtime does not round (OpenVINO fuses a
    conv's requantization into the residual add after it: docs/int8-bf16.md); they pass exactly."""
    reference.check_images(spec, images)
    w = {k: np.asarray(v, dtype) for k, v in weights.items()}

    def quantized(x, name):
        if name in elided:  # not rounded, still saturated to the integer range
            scale, zero_point, kind = params[name]
            lo, hi = RANGES[kind]
            return np.clip(x, (lo - zero_point) * np.asarray(scale, dtype), (hi - zero_point) * np.asarray(scale, dtype))
        if name not in params:
            raise ValueError(f"int8 oracle: the model has no quantization for tensor {name!r}, a point the "
                             "recipe quantizes (a conv or dense input, a conv or max pool output)")
        scale, zero_point, kind = params[name]
        if record is not None and name not in record:
            record[name] = x / np.asarray(scale, x.dtype)  # before rounding
        q = quantize(x, scale, zero_point, kind)
        if given is not None:
            q = _as_held(np.asarray(given[name], dtype), x.shape)
        return (q - zero_point) * np.asarray(scale, dtype)

    def weight(kernel):  # int8 per output channel (the last axis), dequantized
        s_w = weight_scales(kernel)
        return weight_ints(kernel, s_w) * s_w.astype(dtype), s_w

    def layer_out(layer, x, name):
        if isinstance(layer, (Conv, Dense)):
            x = quantized(x, name)
            kernel, s_w = weight(weights[f"{layer.name}.kernel"])
            b = weights.get(f"{layer.name}.bias")
            if b is not None:  # int32 at the scale input x weight (float32, as the model stores it)
                step = np.float32(params[name][0]) * s_w
                b = bias_ints(b, step).astype(dtype) * step.astype(dtype)
            if isinstance(layer, Dense):
                return x @ kernel + b
            return reference.conv(x, kernel, layer.stride, layer.padding, b, layer.groups)
        if isinstance(layer, Blur):  # Pad, then a depthwise conv of the quantized taps
            if any(layer.padding):
                t, b, l, r = layer.padding
                x, name = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), mode=layer.pad_mode), layer.name + PADDED
            kernel, _ = weight(_taps(layer))
            return reference.conv(quantized(x, name), kernel, layer.stride, (0, 0, 0, 0), None, layer.channels)
        if isinstance(layer, ChannelConv):  # Reshape to (N, 1, C), a 1-D conv, Reshape back
            x = quantized(x, layer.name + N1C)
            kernel, _ = weight(weights[f"{layer.name}.kernel"].reshape(-1, 1))
            return reference.channel_conv(x, kernel[:, 0], layer.padding)
        if isinstance(layer, BatchNorm):
            p = [w[f"{layer.name}.{k}"] for k in ("gamma", "beta", "mean", "var")]
            return reference.batchnorm(x, *p, layer.epsilon)
        if isinstance(layer, ReLU):
            return np.maximum(x, 0.0)
        if isinstance(layer, MaxPool):
            return reference.maxpool(x, layer.size, layer.stride, layer.padding, layer.pad_value)
        if isinstance(layer, AvgPool):
            return reference.avgpool(x, layer).astype(dtype)
        if isinstance(layer, GlobalPool):
            reduce = np.mean if layer.mode == "avg" else np.max
            return reduce(x, axis=(1, 2), keepdims=layer.keepdims)
        if isinstance(layer, Gate):
            return reference.gate(x, layer.function)
        raise TypeError(f"int8 oracle: no rule for layer {layer!r}")

    def read(t):  # a tensor the model quantizes reaches every consumer dequantized
        x, name = t
        return quantized(x, name) if name in params else x

    def chain(layers, t):
        x, name = t
        for i, layer in enumerate(layers):
            x = layer_out(layer, read((x, name)), name)
            conv = isinstance(layer, CONVS)
            fused = conv and i + 1 < len(layers) and isinstance(layers[i + 1], ReLU)
            after_conv = isinstance(layer, ReLU) and i and isinstance(layers[i - 1], Conv)
            # a max pool of quantized values is quantized at its input's scale: exact either way
            pooled = isinstance(layer, MaxPool) and layer.name in params
            if (conv and not fused) or after_conv or pooled:
                x = quantized(x, layer.name)
            name = layer.name
        return x, name

    def add(layer, main, shortcut):
        return read(main) + read(shortcut), layer.name

    def scale(layer, main, gate):
        return read(main) * read(gate), layer.name

    t = chain(spec.stem(), (np.asarray(images, dtype), "images"))
    for block in spec.blocks():
        t = block.walk(t, chain, add, scale)
    return chain(spec.head(), t)[0]


def oracle(spec: ResNetSpec, weights: Mapping[str, np.ndarray], images: np.ndarray,
           params: Params, elided: frozenset[str] = frozenset()) -> np.ndarray:
    """The emulated int8 logits, free-running from the images (what the model should compute,
    to the roundings; reported beside the verdict, not judged: one rounding that differs
    propagates)."""
    return forward(spec, weights, images, params, elided=elided)


def judge(spec: ResNetSpec, weights: Mapping[str, np.ndarray], images: np.ndarray, params: Params,
          ints: Mapping[str, np.ndarray], logits: np.ndarray, elided: frozenset[str] = frozenset()) -> dict:
    """The int8 verdict on a model's integers at every quantization point (``ints``, NHWC) and
    its logits, each point computed from the model's own integers before it. An integer may
    differ from the exact oracle's only by one step and only where the exact ``x / scale`` lies
    within float32 reach of a rounding tie: ``|r - (k + 1/2)| <= tolerance``, the tolerance
    ``MARGIN`` x the largest distance (in steps) at which the float32 peer (the same points in
    float32: the QDQ graph run as written) lies from the exact ``r``. The logits, a float output,
    within the fp32 rule of that peer (``parity.fp32_budget``). Returns the figures, per-point
    counts and ``fails`` (empty: pass). ``elided``: as for ``forward``, named in the result."""
    exact, peer = {}, {}
    ref = forward(spec, weights, images, params, given=ints, record=exact, elided=elided)
    peer_logits = forward(spec, weights, images, params, dtype=np.float32, given=ints, record=peer, elided=elided)
    missing = [name for name in exact if name not in ints]
    fails = [f"the model's integers at {name} are missing" for name in missing]
    deviation = max(float(np.max(np.abs(peer[n] - t), initial=0)) for n, t in exact.items())  # in steps
    tolerance = MARGIN * deviation
    points = {}
    for name, t in exact.items():
        if name in missing:
            continue
        _, zero_point, kind = params[name]
        lo, hi = RANGES[kind]
        q = np.clip(np.rint(t) + zero_point, lo, hi)
        diff = _as_held(np.asarray(ints[name], np.float64), q.shape) - q
        near_tie = np.abs(t - np.floor(t) - 0.5) <= tolerance
        differ = diff != 0
        from_tie = np.abs(t - np.floor(t) - 0.5)[differ]
        points[name] = {"differ": int(differ.sum()), "unexplained": int((differ & ~near_tie).sum()),
                        "from_tie": float(from_tie.max(initial=0)),
                        "max_step": int(np.abs(diff).max(initial=0)),
                        "peer_differ": int((np.clip(np.rint(peer[name]) + zero_point, lo, hi) != q).sum()),
                        "size": int(q.size)}
    first = next((n for n, p in points.items() if p["max_step"] > 1 or p["unexplained"]), None)
    if first:
        p = points[first]
        fails.append(f"{first}: {p['unexplained']} of {p['size']} integers differ from the oracle's away from a "
                     f"rounding tie (max {p['max_step']} steps)")
    logits_rel = parity.rel_error(logits, ref)
    logits_budget = parity.fp32_budget(parity.rel_error(peer_logits, ref))
    if logits_rel > logits_budget:
        fails.append(f"logits rel {logits_rel:.2e} > {logits_budget:.2e} (from the model's own integers)")
    total = {k: sum(p[k] for p in points.values()) for k in ("differ", "unexplained", "peer_differ", "size")}
    return {"differ": total["differ"], "unexplained": total["unexplained"], "peer_differ": total["peer_differ"],
            "integers": total["size"], "peer_deviation": deviation, "tie_tolerance": tolerance,
            "from_tie": max((p["from_tie"] for p in points.values()), default=0.0),
            "logits_rel": logits_rel, "logits_budget": logits_budget, "first_diverging": first, "points": points,
            "elided": sorted(elided), "fails": fails}
