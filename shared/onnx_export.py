"""An ONNX model built straight from the spec, with onnx's own helper API.

No deep-learning framework is involved: a user with only numpy and ``onnx`` installed can turn a
canonical checkpoint into a model onnxruntime (or any ONNX runtime) deploys. The graph is the
spec's walk, one ONNX node per spec layer (Conv with its ``group``, BatchNormalization, Relu,
MaxPool, AveragePool, Add, Mul, Sigmoid, GlobalAveragePool/GlobalMaxPool + Flatten, Gemm), named
after the spec layer, each block wired by ``Block.walk`` (pre-activation, shortcut from the
input or the pre-activation, attention and its scale, what follows the add); the weights are
initializers with the canonical names. Where ONNX has no single op for a spec layer, a few:

- a max pool that pads with a value other than -inf (V2's 0): an explicit Pad before it (ONNX
  MaxPool never picks its padding);
- ``AvgPool``: AveragePool with ``ceil_mode`` and ``count_include_pad``, whose rule onnxruntime
  shares with PyTorch's AvgPool2d (the last window starts inside the input or its left padding,
  positions past the padded input never count: tests/test_onnx_family.py);
- ``Blur``: Pad (reflect or constant, output ``<name>/padded``), then a depthwise Conv whose
  weight is the fixed filter, an initializer ``<name>.taps`` that is no canonical weight;
- ``ChannelConv`` (ECA): Reshape (N, C, 1, 1) -> (N, 1, C) (``<name>/n1c``), a 1-D Conv with
  the canonical (k,) kernel as (1, 1, k) and its zero padding, Reshape back (``<name>/nc11``);
- ``Gate`` hard-sigmoid: Add 3, Clip [0, 6], Div 6, the spec's ``relu6(x + 3) / 6`` op for op:
  in float32 the same bits as PyTorch's ``hardsigmoid`` and the float32 reference. ONNX's
  HardSigmoid(alpha=1/6, beta=0.5) computes ``x * float32(1/6) + 0.5`` instead, one ulp away
  from those on a third of the inputs in [-4, 4] (measured): a second legitimate rounding where
  the first matches the peers bit for bit.

Fold first (``shared.fold.fold_batchnorm``, or ``--fold`` on the command line) for the fastest
graph.

- Layout: ``"NCHW"`` (ONNX's own) or ``"NHWC"`` (the canonical layout: the model transposes
  once on the way in, and back for a feature-map output).
- Batch size is always dynamic; image height and width too unless ``image_size`` is given
  (static shapes let onnxruntime plan better: docs/design.md measured 1.73x against 1.45x).
- Written atomically: a temporary file in the target folder, renamed into place. Over
  protobuf's 2 GB limit the weights go to one external data file ``<name>.data`` beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from shared.spec import (AvgPool, BatchNorm, Blur, ChannelConv, Conv, Dense, Gate, GlobalPool, MaxPool, ReLU,
                         ResNetSpec)
from shared.weights import validate

DEFAULT_OPSET = 17  # BatchNormalization-15, every op here; run by onnxruntime >= 1.13
MIN_OPSET = 13
PROTOBUF_LIMIT = 2**31 - 1  # bytes; a ModelProto over this cannot be serialised in one piece
INPUT, OUTPUT = "images", "output"
LAYOUTS = ("NCHW", "NHWC")
# Tensors inside one spec layer's nodes (``shared.quant`` names the int8 points among them so).
PADDED, N1C, NC11 = "/padded", "/n1c", "/nc11"


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("to_onnx needs the onnx package: pip install 'resnet-parity[onnx]'") from None
    return onnx


def build_model(spec: ResNetSpec, weights: Mapping[str, np.ndarray], *, layout: str = "NCHW",
                opset: int | None = None, image_size: int | None = None, trace: bool = False):
    """The ``onnx.ModelProto`` for ``spec`` with ``weights`` (validated, WeightsError naming the
    key). ``trace`` adds one output per block (``trace/stem``, ``trace/conv2_block1``, ...) in
    the model's layout, for layer-by-layer comparisons."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    latest = onnx.defs.onnx_opset_version()
    opset = DEFAULT_OPSET if opset is None else opset
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= latest:
        raise ValueError(f"opset: expected an integer in [{MIN_OPSET}, {latest}] (onnx {onnx.__version__}), got {opset!r}")
    if image_size is not None:
        spec.check_input_size(image_size, image_size)
    validate(spec, weights)

    nodes, inits = [], []

    def init(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def constant(name: str, array: np.ndarray) -> str:  # not a weight: a node, not an initializer
        nodes.append(helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(array, name)))
        return name

    def apply(layer, x: str) -> str:
        out = layer.name
        if isinstance(layer, Conv):
            t, b, l, r = layer.padding
            inputs = [x, init(f"{layer.name}.kernel", weights[f"{layer.name}.kernel"].transpose(3, 2, 0, 1))]  # HWIO -> OIHW
            if layer.bias:
                inputs.append(init(f"{layer.name}.bias", weights[f"{layer.name}.bias"]))
            nodes.append(helper.make_node("Conv", inputs, [out], name=layer.name, kernel_shape=[layer.kernel_size] * 2,
                                          strides=[layer.stride] * 2, pads=[t, l, b, r], group=layer.groups))
        elif isinstance(layer, BatchNorm):
            inputs = [x] + [init(f"{layer.name}.{p}", weights[f"{layer.name}.{p}"]) for p in ("gamma", "beta", "mean", "var")]
            nodes.append(helper.make_node("BatchNormalization", inputs, [out], name=layer.name, epsilon=layer.epsilon))
        elif isinstance(layer, ReLU):
            nodes.append(helper.make_node("Relu", [x], [out], name=layer.name))
        elif isinstance(layer, MaxPool):
            t, b, l, r = layer.padding  # ONNX MaxPool never picks a pad: -inf padding
            if any(layer.padding) and layer.pad_value != float("-inf"):
                pads = constant(f"{layer.name}/pads", np.array([0, 0, t, l, 0, 0, b, r], np.int64))
                value = constant(f"{layer.name}/pad_value", np.array(layer.pad_value, np.float32))
                nodes.append(helper.make_node("Pad", [x, pads, value], [f"{out}/padded"], name=f"{layer.name}_pad",
                                              mode="constant"))
                x, (t, b, l, r) = f"{out}/padded", (0, 0, 0, 0)
            nodes.append(helper.make_node("MaxPool", [x], [out], name=layer.name, kernel_shape=[layer.size] * 2,
                                          strides=[layer.stride] * 2, pads=[t, l, b, r]))
        elif isinstance(layer, AvgPool):
            t, b, l, r = layer.padding
            nodes.append(helper.make_node("AveragePool", [x], [out], name=layer.name, kernel_shape=[layer.size] * 2,
                                          strides=[layer.stride] * 2, pads=[t, l, b, r],
                                          ceil_mode=int(layer.ceil_mode),
                                          count_include_pad=int(layer.count_include_pad)))
        elif isinstance(layer, Blur):
            if any(layer.padding):
                t, b, l, r = layer.padding
                pads = constant(f"{layer.name}/pads", np.array([0, 0, t, l, 0, 0, b, r], np.int64))
                nodes.append(helper.make_node("Pad", [x, pads], [out + PADDED], name=f"{layer.name}_pad",
                                              mode=layer.pad_mode))
                x = out + PADDED
            taps = np.broadcast_to(np.asarray(layer.taps(), np.float32), (layer.channels, 1, *[layer.kernel_size] * 2))
            nodes.append(helper.make_node("Conv", [x, init(f"{layer.name}.taps", taps)], [out], name=layer.name,
                                          kernel_shape=[layer.kernel_size] * 2, strides=[layer.stride] * 2,
                                          group=layer.channels))
        elif isinstance(layer, ChannelConv):
            n1c = constant(f"{layer.name}/n1c_shape", np.array([0, 1, -1], np.int64))
            nc11 = constant(f"{layer.name}/nc11_shape", np.array([0, -1, 1, 1], np.int64))
            nodes.append(helper.make_node("Reshape", [x, n1c], [out + N1C], name=f"{layer.name}_to_n1c"))
            kernel = init(f"{layer.name}.kernel", weights[f"{layer.name}.kernel"].reshape(1, 1, -1))
            nodes.append(helper.make_node("Conv", [out + N1C, kernel], [out], name=layer.name,
                                          kernel_shape=[layer.kernel_size], pads=list(layer.padding)))
            nodes.append(helper.make_node("Reshape", [out, nc11], [out + NC11], name=f"{layer.name}_to_nc11"))
            out += NC11
        elif isinstance(layer, Gate):
            if layer.function == "sigmoid":
                nodes.append(helper.make_node("Sigmoid", [x], [out], name=layer.name))
            else:  # relu6(x + 3) / 6, op for op (module doc)
                three, zero, six = (constant(f"{layer.name}/{v}", np.array(v, np.float32)) for v in (3, 0, 6))
                nodes.append(helper.make_node("Add", [x, three], [f"{out}/plus3"], name=f"{layer.name}_plus3"))
                nodes.append(helper.make_node("Clip", [f"{out}/plus3", zero, six], [f"{out}/relu6"],
                                              name=f"{layer.name}_relu6"))
                nodes.append(helper.make_node("Div", [f"{out}/relu6", six], [out], name=layer.name))
        elif isinstance(layer, GlobalPool):
            op = "GlobalAveragePool" if layer.mode == "avg" else "GlobalMaxPool"
            if layer.keepdims:  # ONNX's global pools keep (N, C, 1, 1)
                nodes.append(helper.make_node(op, [x], [out], name=layer.name))
            else:
                nodes.append(helper.make_node(op, [x], [out + NC11], name=layer.name))
                nodes.append(helper.make_node("Flatten", [out + NC11], [out], name=f"{layer.name}_flatten", axis=1))
        elif isinstance(layer, Dense):
            nodes.append(helper.make_node("Gemm", [x, init(f"{layer.name}.kernel", weights[f"{layer.name}.kernel"]),
                                                   init(f"{layer.name}.bias", weights[f"{layer.name}.bias"])],
                                          [out], name=layer.name))
        else:
            raise TypeError(f"to_onnx: no ONNX rule for layer {layer!r}")
        return out

    def chain(layers, x: str) -> str:
        for layer in layers:
            x = apply(layer, x)
        return x

    def add(layer, main: str, shortcut: str) -> str:
        nodes.append(helper.make_node("Add", [main, shortcut], [layer.name], name=layer.name))
        return layer.name

    def scale(layer, main: str, gate: str) -> str:  # (N, C, H, W) x (N, C, 1, 1)
        nodes.append(helper.make_node("Mul", [main, gate], [layer.name], name=layer.name))
        return layer.name

    traced = []
    x = INPUT
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [INPUT], ["images_nchw"], name="to_nchw", perm=[0, 3, 1, 2]))
        x = "images_nchw"
    x = chain(spec.stem(), x)
    traced.append(("stem", x))
    for block in spec.blocks():
        x = block.walk(x, chain, add, scale)
        traced.append((block.name, x))
    x = chain(spec.head(), x)
    if spec.head():
        traced.append(("head", x))

    def to_layout(name: str, rank: int) -> str:
        if layout == "NHWC" and rank == 4:
            nodes.append(helper.make_node("Transpose", [name], [f"{name}/nhwc"], name=f"{name}_to_nhwc", perm=[0, 2, 3, 1]))
            return f"{name}/nhwc"
        return name

    h, w = (image_size, image_size) if image_size is not None else ("height", "width")
    in_shape = ["batch", spec.image_channels, h, w] if layout == "NCHW" else ["batch", h, w, spec.image_channels]
    def output(src: str, dst: str, rank: int, channels: int | None) -> None:
        nodes.append(helper.make_node("Identity", [to_layout(src, rank)], [dst], name=dst))
        shape = ["batch", channels] if rank == 2 else (
            ["batch", channels, None, None] if layout == "NCHW" else ["batch", None, None, channels])
        outputs.append(helper.make_tensor_value_info(dst, TensorProto.FLOAT, shape))

    outputs = []
    feature_map = not spec.include_top and spec.pooling is None
    output(x, OUTPUT, 4 if feature_map else 2, spec.num_classes if spec.include_top else spec.feature_channels)
    if trace:
        for name, tensor in traced:
            output(tensor, f"trace/{name}", 2 if name == "head" else 4, None)

    graph = helper.make_graph(nodes, "resnet", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, in_shape)],
                              outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="resnet-parity",
                              doc_string=f"ResNet {'x'.join(map(str, spec.depths))} ({spec.style} style"
                                         f"{', BatchNorm folded' if spec.folded else ''}), {layout} input")
    model.ir_version = helper.find_min_ir_version_for(model.opset_import)  # loadable by older runtimes
    helper.set_model_props(model, {"resnet_parity.spec": json.dumps(spec.to_dict()), "resnet_parity.layout": layout})
    return model


def _writable_target(path: Path) -> None:
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{path}: no such folder {folder}")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, expected an .onnx file path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{path}: folder {folder} is not writable")


def to_onnx(spec: ResNetSpec, weights: Mapping[str, np.ndarray], path: str | os.PathLike, *,
            layout: str = "NCHW", opset: int | None = None, image_size: int | None = None,
            external_data: bool | None = None) -> Path:
    """Write the ONNX model for ``spec`` and ``weights`` to ``path`` atomically; return the path.

    ``external_data``: None (the default) keeps the weights inside the file unless the model
    would pass protobuf's 2 GB limit, then writes them to ``<name>.data`` beside it; True or
    False forces either. A missing or unwritable folder raises before anything is built, and a
    failure while writing leaves no file behind (and any earlier file at ``path`` untouched).
    """
    path = Path(path)
    _writable_target(path)
    model = build_model(spec, weights, layout=layout, opset=opset, image_size=image_size)
    onnx = _onnx()
    if external_data is None:
        external_data = model.ByteSize() > PROTOBUF_LIMIT - 2**20  # headroom for the graph itself
    if not external_data:
        onnx.checker.check_model(model)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        data_name = f"{path.name}.data"
        onnx.save_model(model, str(staging / path.name), save_as_external_data=external_data,
                        all_tensors_to_one_file=True, location=data_name, size_threshold=0)
        if external_data:
            onnx.checker.check_model(str(staging / path.name))
            os.replace(staging / data_name, path.parent / data_name)
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
