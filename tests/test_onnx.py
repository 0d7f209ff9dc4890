"""The ONNX model built from the spec (shared.onnx_export), run by onnxruntime, against the
float64 reference within the fp32 budget (4x the float32 reference's own error on the same
weights and input), folded and not, torchvision and Keras style; atomic, clear-failing writes;
``resnet-parity export`` and the ``onnx`` row of ``check``."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from shared import onnx_export, parity, reference, spec as S, weights as W  # noqa: E402
from shared.tools import check  # noqa: E402
from shared.tools.adapter import installed
from shared.parity import fp32_budget
from shared.fold import fold_batchnorm  # noqa: E402
from shared.onnx_export import to_onnx  # noqa: E402

TINY = dict(depths=(1, 1, 1, 1), width=8, num_classes=10)


def _case(spec, size=64, batch=3):
    weights = reference.calibrated_weights(spec, seed=7)
    images = reference.random_images(spec, batch, size, seed=8)
    ref = reference.forward(spec, weights, images)
    peer = parity.rel_error(reference.forward(spec, weights, images, dtype=np.float32), ref)
    return weights, images, ref, fp32_budget(peer)


def _run(path, images, layout="NCHW"):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = images if layout == "NHWC" else np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    return sess.run(["output"], {"images": x})[0]


@pytest.mark.parametrize("style", S.STYLES)
@pytest.mark.parametrize("fold", [False, True], ids=["unfolded", "folded"])
@pytest.mark.parametrize("layout", onnx_export.LAYOUTS)
def test_onnxruntime_computes_the_reference_function(tmp_path, style, fold, layout):
    spec = S.preset_spec(style, **TINY)
    weights, images, ref, budget = _case(spec)
    run_spec, run_weights = fold_batchnorm(spec, weights) if fold else (spec, weights)
    path = to_onnx(run_spec, run_weights, tmp_path / "m.onnx", layout=layout)
    out = _run(path, images, layout)
    assert out.shape == ref.shape
    assert parity.rel_error(out, ref) <= budget
    # Dynamic batch: one image through the same file gives the same row.
    one = _run(path, images[1:2], layout)
    assert parity.rel_error(one, ref[1:2]) <= budget


# Every block kind: two stages of two blocks (V2: a strided block with a max-pool shortcut, an
# identity one, the stem's pool padded with 0, post_bn/post_relu before the pool).
KINDS = {
    "basic": ("torchvision", dict(block="basic")),
    "resnext": ("torchvision", dict(groups=2, width_per_group=32)),
    "resnext-keras": ("keras", dict(groups=2, width_per_group=32)),
    "preact": ("keras", dict(block="preact")),
    "preact-features": ("keras", dict(block="preact", include_top=False, pooling=None)),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fold", [False, True], ids=["unfolded", "folded"])
def test_onnxruntime_computes_every_block_kind(tmp_path, kind, fold):
    style, fields = KINDS[kind]
    spec = S.preset_spec(style, **{**TINY, "depths": (2, 2), **fields})
    weights, images, ref, budget = _case(spec, size=32)
    run_spec, run_weights = fold_batchnorm(spec, weights) if fold else (spec, weights)
    out = _run(to_onnx(run_spec, run_weights, tmp_path / "m.onnx", layout="NHWC"), images, "NHWC")
    assert out.shape == ref.shape
    assert parity.rel_error(out, ref) <= budget


def test_v2_pool_needs_its_zero_padding(tmp_path):
    """The explicit Pad node is what makes V2's stem pool right: ONNX MaxPool's own padding
    (-inf) leaves the budget: some border windows of the stem conv's output are all negative,
    and a negative pre-activation gamma carries the difference to the logits (at 64 px, the
    size the statistics were calibrated at; whether one does is chance, and here it does)."""
    from shared import mutants

    spec = S.preset_spec("keras", **{**TINY, "depths": (2, 2)}, block="preact")
    weights, images, ref, budget = _case(spec, size=64)
    minus_inf = mutants.mutate_spec("pool_zero_pad", spec)
    assert [layer.pad_value for layer in minus_inf.stem() if layer.kind == "maxpool"] == [float("-inf")]
    out = _run(to_onnx(minus_inf, weights, tmp_path / "m.onnx"), images)
    assert parity.rel_error(out, ref) > 10 * budget


@pytest.mark.parametrize("arch", ["resnet18", "resnext50_32x4d"])
def test_torchvision_architectures_through_onnx(tmp_path, arch):
    """torchvision's own model with the same weights agrees with the reference, and so does our
    ONNX model of the preset, folded and not (64 px, CPU)."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from shared import interop

    spec = S.preset(arch)
    weights, images, ref, budget = _case(spec, size=64, batch=2)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in interop.to_torchvision(spec, weights).items()})
    with torch.no_grad():
        peer = model(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))).numpy()
    assert parity.rel_error(peer, ref) <= budget
    for name, (s, w) in {"plain": (spec, weights), "folded": fold_batchnorm(spec, weights)}.items():
        out = _run(to_onnx(s, w, tmp_path / f"{name}.onnx", image_size=64), images)
        assert parity.rel_error(out, ref) <= budget, name


@pytest.mark.parametrize("head", [dict(include_top=False, pooling=None), dict(include_top=False, pooling="max")])
def test_feature_outputs_keep_the_layout(tmp_path, head):
    spec = S.preset_spec("keras", **TINY, **head)
    weights, images, ref, budget = _case(spec)
    for layout in onnx_export.LAYOUTS:
        out = _run(to_onnx(spec, weights, tmp_path / f"{layout}.onnx", layout=layout), images, layout)
        if layout == "NCHW" and out.ndim == 4:
            out = out.transpose(0, 2, 3, 1)
        assert out.shape == ref.shape and parity.rel_error(out, ref) <= budget


def test_full_size_resnet50_folded_and_not(tmp_path):
    """ResNet-50 at 96 px, folded and not; static image size (the faster plan) still takes any batch."""
    spec = S.resnet50()
    weights, images, ref, budget = _case(spec, size=96, batch=2)
    fspec, fweights = fold_batchnorm(spec, weights)
    for name, (s, w) in {"plain": (spec, weights), "folded": (fspec, fweights)}.items():
        out = _run(to_onnx(s, w, tmp_path / f"{name}.onnx", image_size=96), images)
        assert parity.rel_error(out, ref) <= budget, name


def test_external_data_round_trips(tmp_path):
    spec = S.preset_spec("torchvision", **TINY)
    weights, images, ref, budget = _case(spec)
    path = to_onnx(spec, weights, tmp_path / "m.onnx", external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert path.stat().st_size < 100_000 < (tmp_path / "m.onnx.data").stat().st_size
    assert parity.rel_error(_run(path, images), ref) <= budget


def test_the_spec_travels_in_the_model(tmp_path):
    import onnx

    spec = S.preset_spec("keras", **TINY, folded=True)
    weights = W.init(spec)
    model = onnx.load(str(to_onnx(spec, weights, tmp_path / "m.onnx")))
    props = {p.key: p.value for p in model.metadata_props}
    assert S.ResNetSpec.from_dict(__import__("json").loads(props["resnet_parity.spec"])) == spec
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)
    assert {i.name for i in model.graph.initializer} == set(spec.param_shapes())


def test_bad_paths_leave_nothing(tmp_path, monkeypatch):
    spec = S.preset_spec("torchvision", **TINY)
    weights = W.init(spec)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        to_onnx(spec, weights, tmp_path / "missing" / "m.onnx")
    with pytest.raises(IsADirectoryError):
        to_onnx(spec, weights, tmp_path)
    # A failure while writing leaves no temporary file, and an earlier model untouched.
    (tmp_path / "m.onnx").write_bytes(b"old")
    import onnx

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", explode)
    with pytest.raises(OSError, match="disk full"):
        to_onnx(spec, weights, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert (tmp_path / "m.onnx").read_bytes() == b"old"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_folder_is_refused(tmp_path):
    spec = S.preset_spec("torchvision", **TINY)
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            to_onnx(spec, W.init(spec), folder / "m.onnx")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_bad_arguments_are_named():
    spec = S.preset_spec("torchvision", **TINY)
    weights = W.init(spec)
    with pytest.raises(ValueError, match="layout: expected one of"):
        onnx_export.build_model(spec, weights, layout="NWHC")
    with pytest.raises(ValueError, match="opset: expected an integer"):
        onnx_export.build_model(spec, weights, opset=9)
    bad = dict(weights)
    del bad["conv1_bn.gamma"]
    with pytest.raises(W.WeightsError, match="conv1_bn.gamma: missing"):
        onnx_export.build_model(spec, bad)


def test_export_needs_no_deep_learning_framework(tmp_path):
    code = f"""
import sys
from shared import spec as S, weights as W
from shared.fold import fold_batchnorm
from shared.onnx_export import to_onnx
spec = S.preset_spec("torchvision", depths=(1, 1, 1, 1), width=8)
to_onnx(*fold_batchnorm(spec, W.init(spec)), {str(tmp_path / 'm.onnx')!r})
print(sorted(m for m in ("torch", "tensorflow", "jax", "keras", "flax") if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ---------------------------------------------------------------- command line and check


def test_cli_export_from_a_checkpoint(tmp_path):
    spec = S.preset_spec("keras", **TINY)
    weights, images, ref, budget = _case(spec)
    W.save(weights, tmp_path / "w.safetensors", spec=spec)
    proc = subprocess.run([sys.executable, "-m", "shared.tools.cli", "export", "--format", "onnx", "--fold",
                           str(tmp_path / "w.safetensors"), str(tmp_path / "m.onnx")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "BatchNorm folded" in proc.stdout
    assert parity.rel_error(_run(tmp_path / "m.onnx", images), ref) <= budget
    bad = subprocess.run([sys.executable, "-m", "shared.tools.cli", "export", "resnet50", str(tmp_path / "no" / "m.onnx")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no such folder" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.skipif(not installed("torch"), reason="torch not installed")
@pytest.mark.slow  # skipped by the development run (README); CI runs it
def test_check_fold_and_onnx_rows(monkeypatch):
    spec = S.preset_spec("torchvision", **TINY)
    weights = reference.calibrated_weights(spec, seed=9)
    report = check.check(spec, weights, frameworks=("torch", "onnx"), size=64, batch=2, fold=True, trace=True)
    rows = {r.target: r for r in report.rows}
    assert set(rows) == {"torch", "onnx"} and report.ok, report.to_json()
    assert all(r.rel <= r.budget for r in rows.values())
    assert report.config["fold"] and "unfolded" in report.config["note"]
    # The verdict can fail: a fold that forgets the running mean is caught in every row.
    from shared import fold
    from shared.tools import check_fast

    def forgets_mean(spec, weights):
        fspec, fweights = fold.fold_batchnorm(spec, weights)
        fweights["conv3_block1_2_conv.bias"] += weights["conv3_block1_2_bn.mean"]
        return fspec, fweights

    monkeypatch.setattr(check_fast, "fold_batchnorm", forgets_mean)
    broken = check.check(spec, weights, frameworks=("onnx",), size=64, batch=2, fold=True, trace=True)
    assert not broken.ok and broken.rows[0].status == "FAIL"
    assert broken.rows[0].first_diverging == "conv3_block1"


def test_check_leaves_onnx_out_of_train_mode():
    spec = S.preset_spec("torchvision", **TINY)
    found, _ = check.targets(("onnx",), ())
    _, _, kept, note = __import__("shared.tools.check_fast", fromlist=["prepare"]).prepare(
        spec, W.init(spec), found, fold=False, mode="train", device="cpu", precision="fp32")
    assert kept == [] and "eval-mode fp32 CPU checks only" in note


# ---------------------------------------------------------------- bench rows


def test_bench_plan_adds_fold_and_onnx_rows(monkeypatch):
    from shared.tools import bench_plan

    monkeypatch.setattr(bench_plan, "installed", lambda m: True)
    pairs = bench_plan.plan(("torch", "onnx"), (), ("infer", "train"), ("fp32",), "cpu", fold=True)
    rows = {(p.target, p.mode): p for p in pairs}
    assert [p.target for p in pairs if p.mode == "infer"] == ["torch", "torch+fold", "onnx", "onnx+fold"]
    assert rows[("torch+fold", "infer")].ours.label == "resnet_torch+fold"
    assert rows[("onnx+fold", "infer")].reference.label == "torchvision"  # beside torchvision, in the same run
    assert all(p.skipped == "skipped: inference only" for p in pairs if p.mode == "train" and p.target != "torch")


@pytest.mark.slow  # skipped by the development run (README); CI runs it
@pytest.mark.skipif(not installed("torch") or not installed("torchvision"), reason="torch/torchvision not installed")
def test_tiny_bench_runs_onnxruntime_and_folded_rows(tmp_path):
    import json

    proc = subprocess.run([sys.executable, "-m", "shared.tools.cli", "bench", "--frameworks", "onnx", "--mode", "infer",
                           "--fold", "--interleave", "--depths", "1,1,1,1", "--batch", "2", "--size", "32",
                           "--iters", "1", "--warmup", "1", "--json", str(tmp_path / "b.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    report = json.loads((tmp_path / "b.json").read_text())
    assert "--fold" in report["command"] and report["config"]["fold"] is True
    rows = {r["target"]: r for r in report["rows"]}
    assert set(rows) == {"onnx", "onnx+fold"}
    for target, row in rows.items():
        assert row["status"] == "ok" and row["ratio"] > 0
        assert row["ours"]["settings"]["folded"] is (target == "onnx+fold")
        assert "onnxruntime" in row["ours"]["versions"]


@pytest.mark.skipif(not installed("torch"), reason="torch not installed")
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("fold", [False, True], ids=["unfolded", "folded"])
def test_torch_onnx_export_of_resnet_torch_passes_the_same_budget(tmp_path, fold):
    """The user's own route (torch.onnx.export, TorchScript exporter: the dynamo one needs
    onnxscript) judged like ours: onnxruntime against the float64 reference."""
    import torch

    import resnet_torch

    spec = S.preset_spec("torchvision", **TINY)
    weights, images, ref, budget = _case(spec)
    run_spec, run_weights = fold_batchnorm(spec, weights) if fold else (spec, weights)
    model = resnet_torch.load_weights(resnet_torch.build(run_spec), run_weights)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    torch.onnx.export(model, (x,), str(tmp_path / "t.onnx"), dynamo=False, input_names=["images"],
                      output_names=["output"], dynamic_axes={"images": {0: "batch"}})
    assert parity.rel_error(_run(tmp_path / "t.onnx", images), ref) <= budget


@pytest.mark.keras
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("block", ["bottleneck", "preact"])
@pytest.mark.parametrize("fold", [False, True], ids=["unfolded", "folded"])
def test_keras_onnx_export_of_resnet_keras_passes_the_same_budget(tmp_path, block, fold):
    """Keras' own route, ``model.export(path, format="onnx")``, judged like ours. On the torch
    backend Keras exports through torch.onnx (the TorchScript exporter: dynamic shapes); the
    TensorFlow backend needs tf2onnx and JAX jax2onnx, skipped where those are not installed."""
    keras = pytest.importorskip("keras")
    backend = keras.backend.backend()
    needs = {"tensorflow": "tf2onnx", "jax": "jax2onnx"}.get(backend)
    if needs and not installed(needs):
        pytest.skip(f"Keras' ONNX export on the {backend} backend needs {needs} (not installed)")
    import resnet_keras

    spec = S.preset_spec("keras", **{**TINY, "depths": (2, 2)}, block=block)
    weights, images, ref, budget = _case(spec, size=32)
    run_spec, run_weights = fold_batchnorm(spec, weights) if fold else (spec, weights)
    model = resnet_keras.build(run_spec)
    resnet_keras.load_weights(model, run_weights)
    model(images[:1])  # Keras exports only a model that has been called
    model.export(str(tmp_path / "k.onnx"), format="onnx")
    sess = ort.InferenceSession(str(tmp_path / "k.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: images})[0]  # NHWC, Keras' layout
    assert parity.rel_error(out, ref) <= budget
