"""``resnet-parity bench``: the command line, the plan of pairs, timing that leaves warm-up out,
a real tiny benchmark's JSON, the plot, and missing frameworks reported as not installed.
No assertion on speed: these tests prove the figures are measured and recorded, not how big
they are."""

import contextlib
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from shared import spec as S
from shared.tools import bench, bench_plan, bench_report, worker
from shared.tools.bench_timing import Step, measure
from shared.tools.cli import build_parser, main
from shared.tools.jobs import Job

# A one-block-per-stage ResNet (hidden --depths; the references are built to match) at 32 px.
TINY = ["bench", "--depths", "1,1,1,1", "--size", "32", "--batch", "2", "--iters", "2", "--warmup", "1"]


def _hide(monkeypatch, *modules):
    """Make the parent believe ``modules`` are not installed."""
    real = bench_plan.installed
    monkeypatch.setattr(bench_plan, "installed", lambda m: m not in modules and real(m))


def test_cli_parses_every_option():
    args = build_parser().parse_args([
        "bench", "--arch", "resnet101", "--frameworks", "torch,flax", "--keras-backends", "jax",
        "--mode", "train", "--precision", "fp32,bf16", "--batch", "4", "--size", "64", "--device", "gpu",
        "--compile", "--channels-last", "--iters", "3", "--warmup", "2", "--json", "b.json", "--plot", "b.png"])
    assert args.func is bench.cmd_bench
    assert (args.arch, args.frameworks, args.keras_backends, args.mode, args.precision) == (
        "resnet101", ["torch", "flax"], ["jax"], ["train"], ["fp32", "bf16"])
    assert (args.batch, args.size, args.device, args.compile, args.channels_last, args.iters) == (4, 64, "gpu", True, True, 3)
    defaults = build_parser().parse_args(["bench"])
    assert (defaults.arch, defaults.mode, defaults.precision, defaults.device, defaults.compile) == (
        "resnet50", ["infer", "train"], ["fp32"], "cpu", False)
    assert "--channels-last" in bench.command_line(args) and "--keras-backends jax" in bench.command_line(args)


@pytest.mark.parametrize("argv", [["--frameworks", "mxnet"], ["--precision", "fp16"], ["--batch", "0"],
                                  ["--mode", "infer,eval"], ["--device", "tpu"]])
def test_cli_rejects_bad_options(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["bench", *argv])
    assert e.value.code == 2


def test_plan_pairs_like_with_like(monkeypatch):
    monkeypatch.setattr(bench_plan, "installed", lambda m: True)
    pairs = bench_plan.plan(modes=("infer",), precisions=("fp32", "tf32"), device="cpu")
    assert [(p.target, p.precision) for p in pairs] == [
        (t, prec) for t in ("torch", "keras[tensorflow]", "keras[jax]", "keras[torch]", "flax", "onnx")
        for prec in ("fp32", "tf32")]
    assert all(p.skipped == "skipped: tf32 is a GPU mode" for p in pairs if p.precision == "tf32")
    by_target = {p.target: p for p in pairs if p.precision == "fp32"}
    assert (by_target["torch"].ours.label, by_target["torch"].reference.label) == ("resnet_torch", "torchvision")
    assert by_target["torch"].ours.style == by_target["torch"].reference.style == "torchvision"
    flax = by_target["flax"]
    assert flax.ours.style == flax.reference.style == "keras"
    # resnet_flax's reference is keras.applications on jax: the very run keras[jax] needs, made once.
    assert flax.reference == by_target["keras[jax]"].reference
    runs = bench_plan.unique_runs(pairs)
    assert len(runs) == 10 and runs.count(flax.reference) == 1
    # onnxruntime sits beside torchvision: the very run torch needs, made once.
    assert by_target["onnx"].ours.label == "onnxruntime" and by_target["onnx"].reference == by_target["torch"].reference
    assert not [p for p in bench_plan.plan(precisions=("tf32",), device="gpu") if "GPU mode" in p.skipped]


def test_timing_waits_for_the_device_and_leaves_warmup_out():
    """A fake device: a step only launches work; ``sync`` is when the clock moves (100 s the first
    time, compilation; 1 s after). Reading the clock before sync would time 0 s."""
    now, calls = [0.0], []

    def step():
        calls.append("step")
        return len(calls)

    def sync(token):
        now[0] += 100.0 if token == 1 else 1.0

    timing = measure(step, sync, warmup=2, iters=3, clock=lambda: now[0])
    assert timing.times_s == [1.0, 1.0, 1.0]
    assert timing.first_call_s == 100.0
    assert len(calls) == 5
    assert timing.images_per_s(8) == {"median": 8.0, "min": 8.0, "max": 8.0, "q1": 8.0, "q3": 8.0}
    with pytest.raises(ValueError, match="warmup"):
        measure(step, sync, warmup=0, iters=1)


def test_worker_times_a_fake_model_whose_first_call_sleeps(monkeypatch, tmp_path):
    """The worker's whole path (prepare, warm-up, timing, JSON) with a model whose first call
    sleeps 0.3 s: that call is the warm-up, never a timed iteration."""
    import time

    state = {"calls": 0}

    def fake_step():
        state["calls"] += 1
        if state["calls"] == 1:
            time.sleep(0.3)

    fake = _fake_adapter(lambda job, spec, weights: Step(fake_step, lambda _: None, "fake device", {"jit": False}),
                         {"fake": "1.0"})
    monkeypatch.setattr(worker.A, "load", lambda name: fake)
    result = worker.run_bench(_bench_job(tmp_path, mode="infer", batch=4, iters=5, warmup=1))
    assert state["calls"] == 6 and len(result["times_s"]) == 5
    assert result["first_call_s"] >= 0.3
    assert max(result["times_s"]) < 0.3
    assert result["memory_kind"] == "peak RSS" and result["peak_memory_bytes"] > 0
    assert result["versions"] == {"fake": "1.0"} and result["device_name"] == "fake device"
    assert result["settings"] == {"precision": "fp32", "jit": False}  # the precision's, then the step's


def _fake_adapter(run_bench, versions=None):
    @contextlib.contextmanager
    def setup_precision(precision, device):
        yield {"precision": precision}

    return types.SimpleNamespace(NAME="fake", run_bench=run_bench, versions=lambda: versions or {},
                                 setup_precision=setup_precision)


def _bench_job(tmp_path, **fields) -> Job:
    spec = S.preset("resnet50", depths=(1, 1), width=8)  # seeded weights of a tiny spec: fast
    return Job("bench", "fake", spec.to_dict(), str(tmp_path / "out.json"), size=32, **fields)


def test_worker_interleaves_ours_and_its_partner(monkeypatch, tmp_path):
    """--interleave: both models in one process, each warmed up, then timed in turn."""
    order = []

    def prepare(job, spec, weights):
        return Step(lambda: order.append(job.impl), lambda _: None, "fake device", {"impl": job.impl})

    monkeypatch.setattr(worker.A, "load", lambda name: _fake_adapter(prepare))
    job = _bench_job(tmp_path, mode="train", batch=2, iters=3, warmup=2, partner={"impl": "reference"})
    result = worker.run_bench(job)
    assert order == ["ours", "ours", "reference", "reference"] + ["ours", "reference"] * 3
    partner = result["partner"]
    assert result["settings"] == {"precision": "fp32", "impl": "ours"}
    assert partner["settings"] == {"precision": "fp32", "impl": "reference"}
    assert len(result["times_s"]) == len(partner["times_s"]) == 3
    assert result["peak_memory_bytes"] is None and result["memory_kind"] == "not separable (interleaved)"


def test_interleaved_rows_pair_each_side_with_its_own_figures(monkeypatch):
    monkeypatch.setattr(bench_plan, "installed", lambda m: True)
    calls = []

    def fake_measure(run, args, workdir, timeout, partner=None):
        calls.append((run.label, partner.label))
        return {"label": run.label, "status": "ok", "images_per_s": {"median": 3.0},
                "partner": {"label": partner.label, "status": "ok", "images_per_s": {"median": 2.0}}}

    monkeypatch.setattr(bench, "measure", fake_measure)
    args = build_parser().parse_args([*TINY, "--frameworks", "keras,flax", "--keras-backends", "jax",
                                      "--mode", "infer", "--interleave"])
    rows = bench.run_bench(args)["rows"]
    # Each pair measures its own reference beside it (no sharing across pairs when interleaved).
    assert calls == [("resnet_keras[jax]", "keras.applications[jax]"), ("resnet_flax", "keras.applications[jax]")]
    assert [(r["ours"]["label"], r["reference"]["label"], r["ratio"]) for r in rows] == [
        ("resnet_keras[jax]", "keras.applications[jax]", 1.5), ("resnet_flax", "keras.applications[jax]", 1.5)]


def _fake_alternate(monkeypatch, rates):
    """``bench_turns.alternate`` giving each job ``rates[(impl, mode, precision)]`` images/s."""
    from shared.tools import bench_turns

    def fake(jobs, workdir, iters, timeout, progress=None):
        return [{"images_per_s": {"median": rates[(job.impl, job.mode, job.precision)]},
                 "times_s": [1.0]} for job in jobs]

    monkeypatch.setattr(bench_turns, "alternate", fake)


def test_alternate_ratios_are_to_torchvision_fp32_of_the_first_mode(monkeypatch):
    """--alternate: every run as a ratio to torchvision fp32 of the same run, within the plan's
    first mode only (a train and an infer image/s do not compare); resnet_torch fp32 is the
    anchor where torchvision ships no such model (ResNet-50 V2)."""
    monkeypatch.setattr(bench_plan, "installed", lambda m: True)
    rates = {("ours", "infer", "fp32"): 30.0, ("reference", "infer", "fp32"): 20.0,
             ("ours", "train", "fp32"): 3.0, ("reference", "train", "fp32"): 2.0}
    _fake_alternate(monkeypatch, rates)
    args = build_parser().parse_args([*TINY, "--frameworks", "torch", "--mode", "infer,train", "--alternate"])
    anchor = bench.run_bench(args)["anchor"]
    assert anchor["label"] == "torchvision fp32 infer" and anchor["images_per_s"] == 20.0
    assert anchor["ratios"] == {"resnet_torch fp32": 1.5, "torchvision fp32": 1.0}
    args = build_parser().parse_args([*TINY, "--frameworks", "torch", "--mode", "infer", "--alternate",
                                      "--arch", "resnet50v2"])
    anchor = bench.run_bench(args)["anchor"]
    assert anchor["label"] == "resnet_torch fp32" and anchor["ratios"] == {"resnet_torch fp32": 1.0}


def test_paired_ratio_cancels_load_that_hits_both_sides_of_a_round():
    """Seconds per iteration of two equally fast models, timed in turn: rounds 1 and 2 slowed
    3x for both, round 3 for ours alone. The medians' ratio reads ours as 3x slower; round by
    round, ours/ref is 1 in four rounds of five."""
    ours, ref = [3.0, 3.0, 3.0, 1.0, 1.0], [3.0, 3.0, 1.0, 1.0, 1.0]
    assert bench.paired(ours, ref) == {"median": 1.0, "min": pytest.approx(1 / 3), "max": 1.0, "rounds": 5}
    row = {"target": "torch", "mode": "train", "precision": "fp32", "paired": bench.paired(ours, ref)}
    assert bench_report.paired_lines({"rows": [row]})[-1] == "| torch | train | fp32 | 1.000 (0.333-1.000) | 5 |"


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    """One real run: resnet_torch beside torchvision at 32 px, infer and train, flax hidden."""
    pytest.importorskip("torchvision")
    out = tmp_path_factory.mktemp("bench")
    argv = [*TINY, "--frameworks", "torch,flax", "--json", str(out / "b.json"), "--markdown", str(out / "b.md")]
    plot = None
    if bench_plan.installed("matplotlib"):
        plot = out / "b.png"
        argv += ["--plot", str(plot)]
    with pytest.MonkeyPatch.context() as mp:
        _hide(mp, "flax")
        # One thread per worker: on a CI machine shared with other jobs, two OpenMP threads
        # spin-waiting on each other slow a tiny model by 10x or more.
        mp.setenv("OMP_NUM_THREADS", "1")
        code = main(argv)
    return code, json.loads((out / "b.json").read_text()), out, plot


@pytest.mark.slow  # skipped by the development run (README); CI runs it
def test_tiny_bench_json_has_every_figure(tiny_bench):
    code, report, out, _ = tiny_bench
    assert code == 0
    assert report["command"].startswith("resnet-parity bench --arch resnet50 --frameworks torch,flax")
    assert "--depths 1,1,1,1" in report["command"]
    assert report["date"] and report["machine"]["cpu"] and report["machine"]["cpus_usable"] >= 1
    assert {"torch", "torchvision"} <= set(report["versions"]["torchvision"])
    rows = [r for r in report["rows"] if r["target"] == "torch"]
    assert [(r["mode"], r["status"]) for r in rows] == [("infer", "ok"), ("train", "ok")]
    for row in rows:
        for side, label in (("ours", "resnet_torch"), ("reference", "torchvision")):
            run = row[side]
            assert run["label"] == label and run["status"] == "ok" and run["style"] == "torchvision"
            assert len(run["times_s"]) == 2 and all(t > 0 for t in run["times_s"])
            rate = run["images_per_s"]
            assert rate["min"] <= rate["median"] <= rate["max"]
            assert run["first_call_s"] > 0 and run["peak_memory_bytes"] > run["baseline_rss_bytes"] > 0
            assert run["memory_kind"] == "peak RSS" and run["device_name"] == "cpu"
            assert run["settings"]["channels_last"] is False and run["settings"]["compile"] is False
        assert row["ratio"] == pytest.approx(row["ours"]["images_per_s"]["median"] / row["reference"]["images_per_s"]["median"])
    md = (out / "b.md").read_text()
    assert report["command"] in md and "| torch | train | fp32 | resnet_torch |" in md


@pytest.mark.slow  # skipped by the development run (README); CI runs it
def test_missing_framework_is_reported_not_installed(tiny_bench):
    code, report, _, _ = tiny_bench
    flax = [r for r in report["rows"] if r["target"] == "flax"]
    assert [r["status"] for r in flax] == ["not installed: flax"] * 2
    assert all(r["ours"] is None and r["ratio"] is None for r in flax)
    assert code == 0  # not a failure


def test_missing_reference_is_reported_not_installed(monkeypatch, tmp_path):
    """Ours runs and is reported; its reference says what is missing (a fake worker: no process)."""
    _hide(monkeypatch, "torchvision")
    measured = []

    def fake_measure(run, args, workdir, timeout, partner=None):
        measured.append(run.label)
        return {"label": run.label, "style": run.style, "status": "ok", "images_per_s": {"median": 1.0}}

    monkeypatch.setattr(bench, "measure", fake_measure)
    args = build_parser().parse_args([*TINY, "--frameworks", "torch", "--mode", "infer"])
    (row,) = bench.run_bench(args)["rows"]
    assert measured == ["resnet_torch"]
    assert row["status"] == "ok" and row["ours"]["status"] == "ok" and row["ratio"] is None
    assert row["reference"] == {"label": "torchvision", "style": "torchvision", "status": "not installed: torchvision"}


@pytest.mark.slow  # skipped by the development run (README); CI runs it
def test_plot_is_written(tiny_bench):
    pytest.importorskip("matplotlib")
    _, _, _, plot = tiny_bench
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_one_clear_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main([*TINY, "--frameworks", "torch", "--plot", str(tmp_path / "b.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "resnet-parity bench: error: --plot needs matplotlib: pip install 'resnet-parity[bench]'"
    assert not (tmp_path / "b.png").exists()


def test_report_table_escapes_labels():
    """``keras[jax]`` is not rich markup: the label must reach the table whole."""
    from rich.console import Console

    row = {"target": "keras[jax]", "mode": "infer", "precision": "fp32", "status": "ok", "ratio": None,
           "ours": {"label": "resnet_keras[jax]", "status": "error", "error": "RuntimeError: boom"}, "reference": None}
    report = {"config": {"arch": "resnet50", "device": "cpu", "batch": 1, "size": 32, "iters": 1, "warmup": 1},
              "machine": {"cpu": "x", "cpus_usable": 1}, "rows": [row]}
    console = Console(width=250, record=True)
    bench_report.print_table(report, console)
    text = console.export_text()
    assert "keras[jax]" in text and "resnet_keras[jax]: error (RuntimeError: boom)" in text


def test_gpu_script_is_valid_bash():
    script = Path(__file__).parent / "gpu" / "bench.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


@pytest.mark.gpu
def test_tiny_gpu_bench_reads_device_memory(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    assert main([*TINY, "--frameworks", "torch", "--device", "gpu", "--precision", "fp32,tf32,bf16",
                 "--json", str(tmp_path / "b.json")]) == 0
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    for row in rows:
        assert row["status"] == "ok" and row["ours"]["memory_kind"] == "device max allocated"
        assert row["ours"]["device_name"] == torch.cuda.get_device_name()
    fp32 = [r for r in rows if r["precision"] == "fp32"]
    assert all(r["ours"]["settings"]["cudnn.allow_tf32"] is False for r in fp32)


@pytest.mark.slow  # skipped by the development run (README); CI runs it
@pytest.mark.keras
def test_tiny_keras_bench_on_this_backend(tmp_path):
    """resnet_keras beside keras.applications on the backend CI runs this marker under, in one
    process (--interleave)."""
    import os

    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    for module in ("keras", backend):
        pytest.importorskip(module)
    assert main([*TINY, "--frameworks", "keras", "--keras-backends", backend, "--mode", "infer", "--interleave",
                 "--json", str(tmp_path / "b.json")]) == 0
    (row,) = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert row["status"] == "ok" and row["ratio"] > 0
    assert (row["ours"]["label"], row["reference"]["label"]) == (f"resnet_keras[{backend}]", f"keras.applications[{backend}]")
    assert row["ours"]["versions"]["keras_backend"] == backend
    assert row["ours"]["settings"]["dtype_policy"] == row["reference"]["settings"]["dtype_policy"] == "float32"


@pytest.mark.slow  # skipped by the development run (README); CI runs it
def test_tiny_flax_bench_beside_keras_on_jax(tmp_path):
    """Both in one process (--interleave): one jax start-up instead of two."""
    for module in ("flax", "jax", "keras"):
        pytest.importorskip(module)
    assert main([*TINY, "--frameworks", "flax", "--mode", "infer", "--interleave",
                 "--json", str(tmp_path / "b.json")]) == 0
    (row,) = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert row["status"] == "ok" and row["ratio"] > 0
    assert (row["ours"]["label"], row["reference"]["label"]) == ("resnet_flax", "keras.applications[jax]")
    assert row["ours"]["settings"]["jit"] is True and row["reference"]["settings"]["jit_compile"] is True
    assert row["ours"]["memory_kind"] == "not separable (interleaved)"
