"""verify reads the ONNX files users hold (``shared/tools/adapters/onnx.py``'s ``port_*``).

torch's default exporter (torch 2.9+, ``dynamo=True``) writes ``.onnx`` + ``.onnx.data`` and folds
every BatchNorm into its conv (leaving out a bias that folded to 0); the old exporter folds with
``do_constant_folding=True`` and shares equal tensors through Identity nodes; other tools write the
classifier as MatMul + Add, or a Flatten before it. Each file is read as the folded spec's weights
in torch layouts (``canonical_order`` of ``spec.replace(folded=True)``), the seeded calibrated
weights folded by ``shared.fold`` are loaded into it, and its logits are judged against the
*unfolded* float64 reference with the fp32 rule (``check --fold``'s): 4x the reference's own
float32 error. Each reading is proven by a broken file or load it catches.

One torchvision ResNet-18 export per exporter and module (the default exporter takes seconds).
"""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # torch's default exporter
torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
onnx = pytest.importorskip("onnx")

from onnx import helper, numpy_helper  # noqa: E402

from shared import interop, parity, reference  # noqa: E402
from shared.fold import fold_batchnorm  # noqa: E402
from shared.spec import preset  # noqa: E402
from shared.tools import verify as V  # noqa: E402
from shared.tools.adapters import onnx as O  # noqa: E402

SIZE, BATCH, CLASSES = 32, 2, 10
EXAMPLE = (1, 3, 40, 40)  # the exports' example input, fixed in their files: judged at another batch and size
SPEC = preset("resnet18", num_classes=CLASSES)


def _torchvision_resnet18(trained_statistics: bool, moved_stride: bool = False):
    """torchvision's ResNet-18 in eval mode; ``trained_statistics``: BatchNorms with statistics
    and affine weights away from their init (as a trained model's; their folded biases are not 0);
    ``moved_stride``: each strided block's stride on its second 3x3 (the stride_on mutant)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=CLASSES).eval()
    if trained_statistics:
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for tensor, low, high in ((module.running_mean, -1, 1), (module.running_var, 0.5, 2),
                                          (module.weight.data, 0.5, 2), (module.bias.data, -1, 1)):
                    tensor.uniform_(low, high)
    if moved_stride:
        for stage in (model.layer2, model.layer3, model.layer4):
            stage[0].conv1.stride, stage[0].conv2.stride = (1, 1), (2, 2)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The exports, each as its exporter writes it with the ``EXAMPLE`` input."""
    import warnings

    root, x = tmp_path_factory.mktemp("onnx"), torch.zeros(EXAMPLE)
    out = {"default": root / "default" / "resnet18.onnx", "moved21": root / "moved21" / "resnet18.onnx",
           "old13": root / "old13.onnx", "unfolded13": root / "unfolded13.onnx"}
    for path in out.values():
        path.parent.mkdir(exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_torchvision_resnet18(True), (x,), str(out["default"]), verbose=False)
        torch.onnx.export(_torchvision_resnet18(False, moved_stride=True), (x,), str(out["moved21"]),
                          opset_version=21, verbose=False)
        fresh = _torchvision_resnet18(False)
        torch.onnx.export(fresh, (x,), str(out["old13"]), dynamo=False, opset_version=13)
        torch.onnx.export(_torchvision_resnet18(True), (x,), str(out["unfolded13"]), dynamo=False, opset_version=13,
                          do_constant_folding=False)
    return out


@pytest.fixture(scope="module")
def judged():
    """The seeded calibrated weights (as verify seeds them), images, the unfolded float64
    reference's logits and the fp32 budget (its own float32 error, x4)."""
    weights = reference.calibrated_weights(SPEC, seed=0, size=SIZE)
    images = reference.random_images(SPEC, BATCH, SIZE, 1)
    ref = reference.forward(SPEC, weights, images)
    budget = parity.fp32_budget(parity.rel_error(reference.forward(SPEC, weights, images, dtype=np.float32), ref))
    return weights, images, ref, budget


def _shapes(order):
    return [shape for *_, shape in order]


def _folded_arrays(weights, spec=SPEC):
    folded_spec, folded = fold_batchnorm(spec, weights)
    state = interop.to_torchvision(folded_spec, folded)
    return [state[tv] for _, tv, _ in V.canonical_order(folded_spec)]


def _digest(*paths):
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_the_default_exporters_file_is_read_in_memory_as_the_folded_spec(files, judged):
    """``.onnx`` + ``.onnx.data``, no BatchNormalization: read as conv kernel + bias per conv and
    the classifier, in the folded spec's order; with the folded weights it computes the unfolded
    reference within the fp32 budget, at another size and batch than the file's fixed example
    (its batch of 1 fed in chunks, its 40 px freed in memory); the unfolded kernels without their
    biases are caught."""
    weights, images, ref, budget = judged
    path = files["default"]
    data = path.with_name(path.name + ".data")
    before = _digest(path, data)
    model = O.port_open(path)
    assert data.is_file() and not any(n.op_type == "BatchNormalization" for n in model.graph.node)
    assert O.port_folded(model)
    assert _shapes(O.port_arrays(model)) == _shapes(V.canonical_order(SPEC.replace(folded=True)))
    O.port_load(model, _folded_arrays(weights))
    rel = parity.rel_error(O.port_run(model, images), ref)
    assert rel <= budget, (rel, budget)
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == list(EXAMPLE)
    state = interop.to_torchvision(SPEC, weights)  # not folded: the kernels alone, biases 0
    unfolded = [state[tv] if tv in state else np.zeros(shape, np.float32)
                for _, tv, shape in V.canonical_order(SPEC.replace(folded=True))]
    O.port_load(model, unfolded)
    assert parity.rel_error(O.port_run(model, images), ref) > 10 * budget
    assert _digest(path, data) == before


def _rewritten(model, variant: str):
    """A copy of a default-exporter file whose classifier (Reshape, then Gemm transB=1) is
    written as other tools write it."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    x, w, b = gemm.input
    stored = next(i for i in graph.initializer if i.name == w)
    kernel = numpy_helper.to_array(stored)  # (out, in)
    nodes = list(graph.node)
    if variant in ("gemm_transB0", "gemm_alpha2"):
        stored.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(kernel.T), w))
        gemm.attribute.remove(next(a for a in gemm.attribute if a.name == "transB"))
        if variant == "gemm_alpha2":  # broken: twice the classifier
            next(a for a in gemm.attribute if a.name == "alpha").f = 2.0
    elif variant.startswith("matmul_add"):
        stored.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(kernel.T), w))
        add = [b, "fc_matmul"] if variant == "matmul_add_bias_first" else ["fc_matmul", b]
        nodes[nodes.index(gemm):nodes.index(gemm) + 1] = [
            helper.make_node("MatMul", [x, w], ["fc_matmul"], name="fc/MatMul"),
            helper.make_node("Add", add, list(gemm.output), name="fc/Add")]
    elif variant == "flatten":
        reshape = next(n for n in nodes if n.op_type == "Reshape" and n.output[0] == x)
        nodes[nodes.index(reshape)] = helper.make_node("Flatten", [reshape.input[0]], [x], name="flatten", axis=1)
    elif variant == "conv_1x1":  # timm's resnetv2 head: a Conv2d on the pooled (N, C, 1, 1) features, flattened
        reshape = next(n for n in nodes if n.op_type == "Reshape" and n.output[0] == x)
        stored.CopyFrom(numpy_helper.from_array(kernel[:, :, None, None], w))
        nodes.remove(reshape)
        nodes[nodes.index(gemm):nodes.index(gemm) + 1] = [
            helper.make_node("Conv", [reshape.input[0], w, b], ["fc_conv"], name="fc/Conv", kernel_shape=[1, 1]),
            helper.make_node("Flatten", ["fc_conv"], list(gemm.output), name="fc/Flatten", axis=1)]
    del graph.node[:]
    graph.node.extend(nodes)
    return copy


@pytest.fixture(scope="module")
def default_model(files):
    return O.port_open(files["default"])


@pytest.mark.parametrize("variant", ["gemm_transB0", "matmul_add", "matmul_add_bias_first", "flatten", "conv_1x1",
                                     "gemm_alpha2"])
def test_classifiers_as_other_tools_write_them(default_model, judged, variant):
    """Gemm with an (in, out) kernel, MatMul + Add (the bias on either side), a Flatten instead
    of the Reshape, a 1x1 Conv on the pooled features: read as the classifier's (out, in) kernel
    then its bias, and loaded transposed or reshaped where stored so; each passes. A Gemm with
    alpha 2 is read the same and fails."""
    weights, images, ref, budget = judged
    model = _rewritten(default_model, variant)
    shapes = O.port_arrays(model)
    assert _shapes(shapes) == _shapes(V.canonical_order(SPEC.replace(folded=True)))
    assert shapes[-2][1] == (CLASSES, 512) and shapes[-1][1] == (CLASSES,)
    O.port_load(model, _folded_arrays(weights))
    rel = parity.rel_error(O.port_run(model, images), ref)
    if variant == "gemm_alpha2":
        assert rel > 10 * budget
    else:
        assert rel <= budget, (variant, rel, budget)


def test_the_old_exporter_folded_at_opset_13_with_shared_biases(files, judged):
    """``dynamo=False`` with its default constant folding, opset 13, of a fresh model: every
    folded bias is 0, and the exporter shares the equal ones through Identity nodes. Each conv
    gets its own bias back (the file's sharing is of values, not of layers)."""
    weights, images, ref, budget = judged
    model = O.port_open(files["old13"])
    assert model.opset_import[0].version == 13 and O.port_folded(model)
    identities = [n for n in model.graph.node if n.op_type == "Identity"]
    assert identities  # the shared biases
    assert _shapes(O.port_arrays(model)) == _shapes(V.canonical_order(SPEC.replace(folded=True)))
    O.port_load(model, _folded_arrays(weights))
    rel = parity.rel_error(O.port_run(model, images), ref)
    assert rel <= budget, (rel, budget)


def test_an_unfolded_file_at_opset_13_is_read_with_its_batchnorms(files, judged):
    weights, images, ref, budget = judged
    model = O.port_open(files["unfolded13"])
    assert model.opset_import[0].version == 13 and not O.port_folded(model)
    order = V.canonical_order(SPEC)
    assert _shapes(O.port_arrays(model)) == _shapes(order)
    state = interop.to_torchvision(SPEC, weights)
    O.port_load(model, [state[tv] for _, tv, _ in order])
    rel = parity.rel_error(O.port_run(model, images), ref)
    assert rel <= budget, (rel, budget)


def test_a_weight_reached_through_a_cast_is_loaded_where_it_is_used(default_model, judged):
    """The stem's kernel stored as float16 and cast to float32 before its Conv (as a
    half-precision file keeps it): read, and loaded in float32 at the Conv."""
    weights, images, ref, budget = judged
    model = onnx.ModelProto()
    model.CopyFrom(default_model)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    stored = next(i for i in model.graph.initializer if i.name == conv.input[1])
    stored.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(stored).astype(np.float16), "stem_fp16"))
    model.graph.node.insert(0, helper.make_node("Cast", ["stem_fp16"], [conv.input[1]], name="stem_cast",
                                                to=onnx.TensorProto.FLOAT))
    assert _shapes(O.port_arrays(model)) == _shapes(V.canonical_order(SPEC.replace(folded=True)))
    O.port_load(model, _folded_arrays(weights))
    assert parity.rel_error(O.port_run(model, images), ref) <= budget


def test_a_tensor_that_is_a_weight_and_feeds_another_node_is_refused_on_load(default_model):
    model = onnx.ModelProto()
    model.CopyFrom(default_model)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    model.graph.node.append(helper.make_node("Shape", [conv.input[1]], ["stem_shape"], name="peek"))
    shapes = O.port_arrays(model)
    with pytest.raises(ValueError, match=rf"the tensor conv1.weight is the weight {conv.name}.weight and also "
                                         r"input #0 of Shape node peek"):
        O.port_load(model, [np.zeros(s, np.float32) for _, s in shapes])


def _one_line_exit_2(capsys, path, message):
    from shared.tools.cli import main

    assert main(["verify", str(path), "--size", str(SIZE)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_a_conv_weight_computed_by_a_node_is_one_line(default_model, tmp_path, capsys):
    model = onnx.ModelProto()
    model.CopyFrom(default_model)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    two = numpy_helper.from_array(np.float32(2), "two")
    model.graph.initializer.append(two)
    model.graph.node.insert(0, helper.make_node("Mul", [conv.input[1], "two"], ["stem_scaled"], name="scale"))
    conv.input[1] = "stem_scaled"
    onnx.save(model, str(tmp_path / "computed.onnx"))
    _one_line_exit_2(capsys, tmp_path / "computed.onnx",
                     f"the weight of Conv node {conv.name} is computed by a Mul node (scale), not stored")


def test_a_missing_data_file_is_one_line(files, tmp_path, capsys):
    alone = tmp_path / "alone.onnx"
    shutil.copy(files["default"], alone)  # without resnet18.onnx.data
    _one_line_exit_2(capsys, alone,
                     "keeps its tensor conv1.weight in the file resnet18.onnx.data, which is not beside it")


# ------------------------------------------------------------------ through verify (the folded spec)

def test_verify_passes_the_default_exporters_torchvision_resnet18(files):
    """The file's arrays fit the folded spec of resnet18; the seeded weights folded into it
    compute the unfolded reference within budget; the files are not written."""
    path = files["default"]
    data = path.with_name(path.name + ".data")
    before = _digest(path, data)
    verdict = V.verify(str(path), size=SIZE)
    assert (verdict.spec.arch, verdict.spec.style, verdict.spec.folded) == ("resnet18", "torchvision", True)
    assert verdict.passed and verdict.rel <= verdict.budget, V.report(verdict)
    assert _digest(path, data) == before


def test_verify_names_the_moved_stride_of_a_default_export(files):
    """A fresh model (every folded bias 0: the exporter leaves each out, a slot given one on load)
    with each strided block's stride on its second 3x3, at opset 21: it computes the stride_on
    mutant of the reference, and verify says so. --arch: the presets sharing these arrays
    (resnetblur18, keras style) would each be diagnosed too (twice the time), with the same answer."""
    model = O.port_open(files["moved21"])
    assert model.opset_import[0].version == 21
    assert all(len(n.input) == 2 for n in model.graph.node if n.op_type == "Conv")  # every bias 0: left out
    verdict = V.verify(str(files["moved21"]), size=SIZE, arch="resnet18", style="torchvision")
    assert not verdict.passed and verdict.rel > 10 * verdict.budget
    assert [d["mutants"] for d in verdict.diagnosis] == [["stride_on"]]
    assert "epsilon cannot be seen" in V.report(verdict)  # what a folded file cannot show
