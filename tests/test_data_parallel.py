"""One data-parallel SGD step on each framework's own engine (torch DDP over gloo, Flax NNX with
a NamedSharding, keras.distribution.DataParallel on jax, MirroredStrategy on tensorflow) against
the float64 oracle of shared.reference_dp, which no framework wrote.

Every engine runs once (tiny spec, 2 replicas, a global batch of 4 at 64 px), each in its own
process with its own Keras backend, so these tests are not keras-marked: the per-backend
reruns would run the same subprocesses again. What each engine promises about BatchNorm is
written here from its documentation; the check must measure exactly that.
"""

import dataclasses
import os
import sys
import textwrap
import time

import numpy as np
import pytest

from shared import reference, spec as S
from shared.tools import check_dp as C
from shared.tools.jobs import Job

SPEC = S.preset_spec("torchvision", depths=(1, 1, 1, 1), width=8, num_classes=10)
REPLICAS, BATCH, SIZE = 2, 4, 64
# From each engine's documentation (and docs/design.md's one-layer measurement).
DOCUMENTED = {
    "torch DDP (gloo)": "per_replica",
    "flax nnx.jit + NamedSharding": "global",
    "keras[jax] DataParallel": "global",
    "keras[tensorflow] MirroredStrategy": "per_replica",
    "keras[tensorflow] MirroredStrategy, synchronized BN": "global",
}
ENGINE = {e.name: e for e in C.ENGINES}


@pytest.fixture(scope="module")
def report():
    weights = reference.calibrated_weights(SPEC, seed=0, size=SIZE)
    return C.check_dp(SPEC, weights, replicas=REPLICAS, batch=BATCH, size=SIZE, seed=0)


def _row(report, name):
    row = next(r for r in report.rows if r.engine == name)
    if row.status == "not installed":
        pytest.skip(f"{name}: {row.detail}")
    return row


@pytest.mark.slow  # skipped by the development run (README); CI runs it
@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_engine_step_matches_the_oracle_under_its_documented_semantics(report, name):
    row = _row(report, name)
    assert row.status == "pass", row.detail
    assert row.measured == DOCUMENTED[name]
    semantics = DOCUMENTED[name]
    other = "global" if semantics == "per_replica" else "per_replica"
    for q in C.QUANTITIES:
        assert row.errors[semantics][q] <= row.budgets[semantics][q], q
    # The batch tells the two semantics apart: the gradients under the other one are off by far
    # more than any budget.
    assert row.errors[other]["gradients"] > 1000 * row.budgets[other]["gradients"]


@pytest.mark.slow  # skipped by the development run (README); CI runs it
@pytest.mark.parametrize("name, differ", [("torch DDP (gloo)", True),
                                          ("keras[tensorflow] MirroredStrategy", True),
                                          ("keras[tensorflow] MirroredStrategy, synchronized BN", False)])
def test_running_statistics_per_replica(report, name, differ):
    """Engines with a copy per replica: after the step the copies differ exactly when each
    replica normalised with its own statistics (and each copy matched that replica's oracle)."""
    assert _row(report, name).replicas_differ is differ


@pytest.mark.slow  # skipped by the development run (README); CI runs it
def test_ddp_carries_on_with_rank_0s_running_statistics(report):
    """After one more forward every rank holds exactly rank 0's statistics (DDP's buffer
    broadcast), where right after the step rank 1 held its own."""
    row = _row(report, "torch DDP (gloo)")
    assert row.replicas_differ is True
    assert row.next_forward == "rank 0's on every rank"


@pytest.mark.slow  # skipped by the development run (README); CI runs it
def test_sharded_engines_really_shard_the_batch(report):
    for name in ("flax nnx.jit + NamedSharding", "keras[jax] DataParallel"):
        assert _row(report, name).shards == REPLICAS


@pytest.mark.slow  # skipped by the development run (README); CI runs it
def test_syncbatchnorm_on_cpu_is_reported_as_needing_a_gpu(report):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    row = _row(report, "torch DDP + SyncBatchNorm")
    assert row.status == "needs a GPU"
    assert "SyncBatchNorm layers only work with GPU modules" in row.detail
    assert report.ok  # not a pass, not a failure: the other engines passed


@pytest.mark.slow  # skipped by the development run (README); CI runs it
@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_a_port_whose_statistics_differ_from_its_promise_fails(report, name):
    """The verdict can fail: the same arrays judged against the other promise, or against the
    other running-variance rule, fail."""
    res = report.results.get(name)
    if res is None:
        pytest.skip(f"{name} did not run")
    engine = ENGINE[name]
    flipped = dataclasses.replace(engine, bn="global" if engine.bn == "per_replica" else "per_replica")
    row = C.judge(C.DPRow(name, ""), flipped, res, report.oracle)
    assert row.status == "FAIL" and row.measured == engine.bn
    wrong_rule = dataclasses.replace(engine, variance="biased" if engine.variance == "unbiased" else "unbiased")
    row = C.judge(C.DPRow(name, ""), wrong_rule, res, report.oracle)
    assert row.status == "FAIL" and "running stats" in row.detail


@pytest.mark.slow  # skipped by the development run (README); CI runs it
def test_a_gradient_summed_instead_of_averaged_fails(report):
    name = "torch DDP (gloo)"
    res = dict(report.results[name])
    keys = [k for k in res if k.startswith("grad/")]
    res.update({k: REPLICAS * res[k] for k in keys})
    row = C.judge(C.DPRow(name, ""), ENGINE[name], res, report.oracle)
    assert row.status == "FAIL" and "gradients rel" in row.detail


def test_an_engine_not_installed_is_not_a_pass():
    engine = C.Engine("nowhere", "torch", "no_such_module", ("no_such_module_xyz",), "global", "biased", "-")
    weights = reference.calibrated_weights(SPEC, seed=0, size=SIZE)
    rep = C.check_dp(SPEC, weights, replicas=REPLICAS, batch=BATCH, size=SIZE, engines=(engine,))
    assert [r.status for r in rep.rows] == ["not installed"]
    assert not rep.ok  # nothing passed


@pytest.mark.slow  # skipped by the development run (README); CI runs it
def test_a_timed_out_engine_leaves_no_process_behind(tmp_path, monkeypatch):
    """run_engine kills the worker's whole process group: the worker and its children."""
    (tmp_path / "sleepy_engine.py").write_text(textwrap.dedent(f"""
        import subprocess, sys, time
        def run(*args, **kwargs):
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            open({str(tmp_path / 'pid')!r}, "w").write(str(child.pid))
            time.sleep(600)
    """))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *sys.path]))
    engine = C.Engine("sleepy", "torch", "sleepy_engine", (), "global", "biased", "-")
    weights = reference.calibrated_weights(SPEC, seed=0, size=SIZE)
    from shared import weights as W

    W.save(weights, tmp_path / "w.safetensors")
    np.save(tmp_path / "x.npy", reference.random_images(SPEC, BATCH, SIZE))
    np.save(tmp_path / "y.npy", np.zeros(BATCH, np.int64))
    job = Job("data_parallel", "", SPEC.to_dict(), "", mode="train", weights=str(tmp_path / "w.safetensors"),
              images=str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy"), replicas=REPLICAS, lr=0.1, momentum=0.9)
    res = C.run_engine(engine, job, tmp_path, timeout=8)
    assert "timed out after 8 s" in str(res["error"])
    pid = int((tmp_path / "pid").read_text())
    for _ in range(50):  # reparented to init, which reaps it
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1][0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the worker's child {pid} is still running")


@pytest.mark.parametrize("argv, message", [
    (["--mode", "train", "--replicas", "0"], "--replicas: expected an integer >= 1, got 0"),
    (["--mode", "train", "--replicas", "8", "--batch", "4"], "8 replicas need at least 8 images, --batch is 4"),
    (["--mode", "train", "--replicas", "3", "--batch", "4"], "does not split into 3 equal shards"),
    (["--replicas", "2"], "add --mode train"),
])
def test_cli_refuses_bad_replicas(capsys, argv, message):
    from shared.tools import cli

    assert cli.main(["check", *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_core_modules_import_no_framework():
    import subprocess

    code = ("import sys, shared.tools.check_dp, shared.reference_dp, shared.tools.worker; "
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'jax', 'flax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow  # skipped by the development run (README); CI runs it
def test_the_printed_table_names_each_engines_semantics(report):
    from rich.console import Console

    console = Console(record=True, width=400)
    C.print_report(report, console)
    text = console.export_text()
    for row in report.rows:
        line = next(line for line in text.splitlines() if line.startswith(("│ " + row.engine, "┃ " + row.engine)))
        assert row.status in line and (row.measured or "-") in line
    assert "keras[torch]: not run" in text
    assert ("all checks passed" in text) is report.ok
