"""The family timm and keras-hub ship through the spec's ONNX export and the int8 oracle: every
new layer kind (AvgPool, Blur, ChannelConv, Gate, Scale, GlobalPool keepdims) run by onnxruntime
against the float64 reference within the fp32 budget (4x the float32 reference's own error),
folded and not, for small specs of each kind and every new preset cut to depths (1, 1) at an
even and an odd size; the int8 oracle judges onnxruntime's QDQ models of the new kinds, and
broken ones are caught at the layer that breaks."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from shared import onnx_export, parity, quant, reference, spec as S  # noqa: E402
from shared.fold import fold_batchnorm  # noqa: E402
from shared.parity import fp32_budget  # noqa: E402
from shared.tools.adapters import onnx as O  # noqa: E402
from shared.tools.adapters import onnx_int8 as A  # noqa: E402
from shared.tools.bench_plan import not_supported  # noqa: E402

needs_vnni = pytest.mark.skipif(bool(not_supported("onnx-int8", "fp32")), reason=not_supported("onnx-int8", "fp32"))

SMALL = dict(depths=(1, 1), width=8, num_classes=10)
FAMILY = tuple(a for a in S.ARCHS if S.PRESETS[a].peer.startswith(("timm.", "keras_hub.")))


def _run(spec, weights, images, layout="NCHW"):
    model = onnx_export.build_model(spec, weights, layout=layout)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = images if layout == "NHWC" else np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    return sess.run(["output"], {"images": x})[0]


def _judged(spec, size, batch=2):
    """(weights, images, float64 logits, fp32 budget: 4x the float32 reference's error)."""
    weights = reference.calibrated_weights(spec, seed=7, size=64)
    images = reference.random_images(spec, batch, size, seed=8)
    ref = reference.forward(spec, weights, images)
    peer = reference.forward(spec, weights, images, dtype=np.float32)
    return weights, images, ref, fp32_budget(parity.rel_error(peer, ref))


def _onnx_within_budget(spec, size):
    """Unfolded, then folded (against the unfolded float64 function); a feature map in NHWC."""
    weights, images, ref, budget = _judged(spec, size)
    layout = "NCHW" if spec.include_top else "NHWC"
    out = _run(spec, weights, images, layout=layout)
    assert out.shape == ref.shape and parity.rel_error(out, ref) <= budget
    folded = _run(*fold_batchnorm(spec, weights), images, layout=layout)
    assert parity.rel_error(folded, ref) <= budget


# ----------------------------------------------------------------- the pools' rules, op by op

@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("count_include_pad", [False, True])
@pytest.mark.parametrize("size, stride, padding", [(2, 2, (0, 0, 0, 0)), (3, 2, (1, 1, 1, 1)), (3, 2, (0, 1, 0, 1))])
def test_average_pool_follows_pytorchs_rule(ceil_mode, count_include_pad, size, stride, padding):
    """onnxruntime's AveragePool has PyTorch's output length (ceil_mode: the last window starts
    inside the input or its left padding) and divisor (count_include_pad counts the explicit
    padding, never the positions past it) at even and odd sizes: what reference.avgpool states."""
    layer = S.AvgPool("p", size, stride, padding, ceil_mode, count_include_pad)
    t, b, l, r = padding
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[size] * 2, strides=[stride] * 2,
                            pads=[t, l, b, r], ceil_mode=int(ceil_mode), count_include_pad=int(count_include_pad))
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", onnx_export.DEFAULT_OPSET)])
    model.ir_version = helper.find_min_ir_version_for(model.opset_import)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for n in (4, 5, 6, 7, 64, 65):
        x = rng.standard_normal((1, n, n, 3)).astype(np.float32)
        ref = reference.avgpool(x.astype(np.float64), layer)
        out = sess.run(None, {"x": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0].transpose(0, 2, 3, 1)
        assert out.shape == ref.shape, n
        assert parity.rel_error(out, ref) <= fp32_budget(parity.rel_error(reference.avgpool(x, layer), ref)), n


def test_hard_sigmoid_gate_is_the_spec_formula_op_for_op():
    """The exported hard-sigmoid (Add 3, Clip [0, 6], Div 6) gives the float32 reference's gate
    bit for bit on its own input; ONNX's HardSigmoid(1/6, 0.5) would not (module doc)."""
    spec = S.preset_spec("torchvision", **SMALL, attention="se", attention_gate="hard_sigmoid")
    weights, images, _, _ = _judged(spec, 64)
    model = onnx_export.build_model(spec, weights)
    names = ["conv2_block1_se_2_conv", "conv2_block1_se_gate"]
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    before, gate = sess.run(names, {"images": np.ascontiguousarray(images.transpose(0, 3, 1, 2))})
    assert ((before > -3) & (before < 3)).any()  # the gate's linear part is exercised
    np.testing.assert_array_equal(gate, reference.gate(before, "hard_sigmoid"))


# ----------------------------------------------------------------- small specs of each new kind

KINDS = {
    "deep-stem": ("torchvision", dict(stem_convs=S.DEEP_STEM)),
    "tiered-stem-avg-down": ("torchvision", dict(stem_convs=S.TIERED_STEM, shortcut="avg_down")),
    "avg-down-pad-counted": ("torchvision", dict(shortcut="avg_down", avg_down_count_include_pad=True)),
    "avg-down-floor": ("torchvision", dict(shortcut="avg_down", avg_down_ceil_mode=False)),
    "shortcut-3x3": ("torchvision", dict(shortcut_kernel=3)),
    "project-first-basic": ("torchvision", dict(block="basic", shortcut="avg_down", project_first=True)),
    "stem-max-blur": ("torchvision", dict(stem_pool="max_blur")),
    "stem-avg": ("torchvision", dict(stem_pool="avg")),
    "stem-conv": ("torchvision", dict(stem_pool="conv")),
    "stem-none": ("torchvision", dict(stem_pool="none")),
    "se": ("torchvision", dict(attention="se")),
    "se-hard-basic": ("torchvision", dict(block="basic", attention="se", attention_gate="hard_sigmoid")),
    "eca": ("torchvision", dict(attention="eca")),
    "eca-hard": ("torchvision", dict(attention="eca", attention_gate="hard_sigmoid")),
    "aa-avg": ("torchvision", dict(stem_pool="avg", anti_alias="avg")),  # timm's resnetaa: even after the stem
    "aa-blur-basic": ("torchvision", dict(block="basic", anti_alias="blur")),
    "aa-blur-grouped": ("torchvision", dict(anti_alias="blur", groups=2, width_per_group=32)),
    "preact-timm": ("timm", dict(block="preact")),
    "preact-timm-features": ("timm", dict(block="preact", include_top=False, pooling=None)),
}


def _kind_cases():
    for kind, (style, fields) in KINDS.items():
        # ceil_mode=False leaves the avg-down shortcut a row short of the main path at odd sizes
        for size in (64,) if fields.get("avg_down_ceil_mode") is False else (64, 65):
            yield pytest.param(kind, size, id=f"{kind}-{size}")


@pytest.mark.parametrize("kind, size", list(_kind_cases()))
def test_each_new_kind_through_onnxruntime(kind, size):
    style, fields = KINDS[kind]
    _onnx_within_budget(S.preset_spec(style, **{**SMALL, **fields}), size)


@pytest.mark.parametrize("size", [64, 65])
@pytest.mark.parametrize("arch", FAMILY)
def test_every_new_preset_cut_to_two_stages(arch, size):
    """Each new preset, depths (1, 1) (its stem, first block and a strided block), folded and not."""
    _onnx_within_budget(S.preset(arch, depths=(1, 1), num_classes=10), size)


def test_a_wrong_convention_leaves_the_budget():
    """The budget can fail on the new kinds: the model of one convention against the reference
    of another, each where they differ."""
    pairs = [
        (dict(attention="se"), dict(attention="se", attention_gate="hard_sigmoid")),
        (dict(stem_pool="max_blur"), dict(stem_pool="max")),
        (dict(stem_pool="avg", anti_alias="avg"), dict(stem_pool="avg", anti_alias="blur")),
    ]
    for right, wrong in pairs:
        spec = S.preset_spec("torchvision", **SMALL, **right)
        weights, images, ref, budget = _judged(spec, 65)
        out = _run(S.preset_spec("torchvision", **SMALL, **wrong), weights, images)
        assert parity.rel_error(out, ref) > 10 * budget, (right, wrong)


def test_the_blur_filter_is_no_weight_of_a_port():
    """The blur's taps are an initializer but no canonical weight: ``port_arrays`` (verify's
    view of an ONNX file) lists exactly the spec's arrays, ECA's kernel among them."""
    spec = S.preset("resnetblur18", depths=(1, 1), num_classes=10, attention="eca")
    weights = reference.calibrated_weights(spec, seed=7, size=64)
    model = onnx_export.build_model(spec, weights)
    taps = {i.name for i in model.graph.initializer} - set(spec.param_shapes())
    assert taps == {"pool1_blur.taps", "conv3_block1_aa.taps"}
    shapes = [shape for _, shape in O.port_arrays(model)]
    assert len(shapes) == len(spec.param_shapes()) and (1, 1, 3) in shapes


def test_a_written_file_passes_onnxs_checker_at_a_static_odd_size(tmp_path):
    """``to_onnx`` (checker, full shape inference) on every new kind at once, 65 px static."""
    import onnx

    spec = S.preset("ecaresnet26t", depths=(1, 1), num_classes=10, attention_gate="hard_sigmoid",
                    stem_pool="max_blur", anti_alias="blur")
    weights, images, ref, budget = _judged(spec, 65)
    path = onnx_export.to_onnx(*fold_batchnorm(spec, weights), tmp_path / "m.onnx", image_size=65)
    onnx.checker.check_model(str(path), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(["output"], {"images": np.ascontiguousarray(images.transpose(0, 3, 1, 2))})[0]
    assert parity.rel_error(out, ref) <= budget


def test_check_runs_the_family_on_the_onnx_target():
    from shared.tools import check

    spec = S.preset("seresnext26d_32x4d", depths=(1, 1), num_classes=10)
    weights = reference.calibrated_weights(spec, seed=9)
    report = check.check(spec, weights, frameworks=("onnx",), size=65, batch=2, trace=True)
    row, = report.rows
    assert report.ok and row.rel <= row.budget, report.to_json()


# ----------------------------------------------------------------- int8

SIZE = 32
INT8 = dict(depths=(2, 1), width=16, num_classes=10)  # two blocks: the block output is a point too


def _int8_case(arch, size=SIZE, **fields):
    spec = S.preset(arch, **{**INT8, **fields})
    return spec, reference.calibrated_weights(spec, seed=3, size=size), reference.random_images(spec, 2, size, seed=4)


def _verdict(spec, weights, images, **kwargs):
    result = A.run_int8(spec, weights, images, **kwargs)
    folded, folded_weights, _ = A.float_model(spec, weights, images.shape[1])
    return quant.judge(folded, folded_weights, images, A.read_params(result), A.read_integers(result),
                       result["logits"])


def test_int8_weights_of_the_blur_and_eca_equal_the_quantizers():
    """The blur's fixed taps and ECA's 1-D kernel: per-channel int8 and scales, to the bit."""
    spec, weights, _ = _int8_case("resnetblur18", attention="eca")
    folded, fw, model = A.build(spec, weights, SIZE)
    inits = A._initializers(model)
    checked = 0
    for layer in folded.layers():
        if isinstance(layer, S.Blur):
            kernel, ints, scale = quant._taps(layer), inits[f"{layer.name}.taps_quantized"].transpose(2, 3, 1, 0), \
                inits[f"{layer.name}.taps_scale"]
        elif isinstance(layer, S.ChannelConv):
            kernel = fw[f"{layer.name}.kernel"].reshape(-1, 1)
            ints, scale = inits[f"{layer.name}.kernel_quantized"].reshape(-1, 1), inits[f"{layer.name}.kernel_scale"]
        else:
            continue
        scales = quant.weight_scales(kernel)
        np.testing.assert_array_equal(quant.weight_ints(kernel, scales), ints)
        np.testing.assert_array_equal(scales, scale)
        checked += 1
    assert checked == 5  # two blurs, three ECA convs


INT8_KINDS = {
    "avg-down-deep-stem": ("resnet50d", {}),
    "tiered-stem-eca": ("ecaresnet26t", {}),
    "se-basic": ("seresnet18", {}),
    "se-hard": ("seresnet18", dict(attention_gate="hard_sigmoid")),
    "se-grouped-avg-down": ("seresnext26d_32x4d", {}),
    "conv-stem-pool-se": ("resnetrs50", {}),
    "avg-stem-avg-aa": ("resnetaa50d", {}),
    "blur": ("resnetblur18", {}),
    "vd-project-first": ("resnet_vd_18", {}),
    "timm-preact": ("resnetv2_50", {}),
}


@needs_vnni
@pytest.mark.parametrize("kind", INT8_KINDS)
def test_onnxruntime_int8_passes_on_every_new_kind(kind):
    arch, fields = INT8_KINDS[kind]
    spec, weights, images = _int8_case(arch, **fields)
    verdict = _verdict(spec, weights, images)
    print(kind, {k: verdict[k] for k in ("differ", "unexplained", "integers", "tie_tolerance", "logits_rel")})
    assert verdict["fails"] == [] and verdict["unexplained"] == 0
    assert verdict["tie_tolerance"] < 1e-2
    new_points = {"blur": "pool1_blur/padded", "tiered-stem-eca": "conv2_block1_eca_conv/n1c",
                  "avg-stem-avg-aa": "conv3_block1_aa", "se-basic": "conv2_block1_se_pool"}
    if kind in new_points:  # the new kinds' points are judged, not skipped
        assert verdict["points"][new_points[kind]]["size"] > 0


@needs_vnni
def test_int8_at_an_odd_size_and_unfused():
    """33 px (the avg-down pool's ceil_mode window, the blur's reflect padding at an odd edge),
    fused and run as written."""
    spec, weights, images = _int8_case("ecaresnet26t", size=33, stem_pool="max_blur", anti_alias="blur")
    for fused in (True, False):
        verdict = _verdict(spec, weights, images, fused=fused)
        assert verdict["fails"] == [] and verdict["unexplained"] == 0, fused


def _gate_as_hard_sigmoid(model):  # ONNX's HardSigmoid default (Keras 2's): alpha 0.2
    for node in model.graph.node:
        if node.op_type == "Sigmoid":
            node.op_type = "HardSigmoid"
            node.attribute.extend([helper.make_attribute("alpha", 0.2), helper.make_attribute("beta", 0.5)])


def _blur_zero_padded(model):
    for node in model.graph.node:
        if node.op_type == "Pad":
            next(a for a in node.attribute if a.name == "mode").s = b"constant"


def _eca_padded_on_one_side(model):
    for node in model.graph.node:
        if node.op_type == "Conv" and node.name.endswith("_eca_conv"):
            pads = next(a for a in node.attribute if a.name == "pads")
            pads.ints[:] = [sum(pads.ints), 0]


def _aa_max_pool(model):
    for node in model.graph.node:
        if node.op_type == "AveragePool" and node.name.endswith("_aa"):
            node.op_type = "MaxPool"
            node.attribute.remove(next(a for a in node.attribute if a.name == "count_include_pad"))


BROKEN = {  # name: (arch, the model edit, the point where the verdict must see it first)
    "gate-hard-sigmoid-0.2": ("seresnet18", _gate_as_hard_sigmoid, "conv2_block1_out"),
    "eca-gate-hard-sigmoid-0.2": ("ecaresnet26t", _gate_as_hard_sigmoid, "conv2_block1_out"),
    "blur-zero-padded": ("resnetblur18", _blur_zero_padded, "pool1_blur/padded"),
    "eca-one-sided-padding": ("ecaresnet26t", _eca_padded_on_one_side, "conv2_block1_eca_conv"),
    "aa-max-pool": ("resnetaa50d", _aa_max_pool, "conv3_block1_aa"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_broken_int8_models_of_the_new_kinds_are_caught(name, monkeypatch):
    arch, edit, point = BROKEN[name]
    monkeypatch.setitem(A.MUTANTS, name, (name, edit))
    verdict = _verdict(*_int8_case(arch), mutant=name)
    print(name, verdict["fails"])
    assert verdict["fails"] and verdict["first_diverging"] == point
    assert verdict["unexplained"] > 0.9 * verdict["differ"]


@pytest.mark.parametrize("mutant", list(A.MUTANTS))
def test_the_int8_mutants_are_caught_on_the_family(mutant):
    verdict = _verdict(*_int8_case("seresnext26d_32x4d", stem_pool="max_blur", anti_alias="blur"), mutant=mutant)
    assert verdict["fails"] and verdict["unexplained"] > 0.9 * verdict["differ"]
