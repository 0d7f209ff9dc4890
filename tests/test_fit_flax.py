"""``check --mode fit`` in Flax, in-process (a file of its own: JAX in a process slows torch's
CPU kernels there, and tests/test_fit.py runs torch): the harmless reorder under AdamW passes
with the Adam-tie rule (shared.tools.check_fit's docstring). Every broken port is caught in
torch (tests/test_fit.py) and in Flax by ``check --mode fit --mutants``
(docs/results/fit-mutants-cpu.md)."""

from __future__ import annotations

import pytest

from shared.tools import check_fit as C
from test_fit import SPEC, runs  # noqa: F401 (runs: the module's fixture)

pytest.importorskip("flax")


def _flax(run, mutant=""):
    from shared.tools.adapters import flax_fit

    weights, recipe, oracle, folder = run
    res = flax_fit.run(SPEC, weights, batches=str(folder / "batches.npz"), heldout=str(folder / "heldout.npy"),
                       recipe=recipe.to_dict(), mutant=mutant)
    return C.judge("flax", res, oracle, "flax")


def test_adamw_batch_order_passes(runs):
    """Each batch reversed under AdamW: before the rule Flax failed at update 1 (1.91x, one
    element of conv4_block1_2_conv.kernel 4.3x epsilon from 0 taken to the other sign, a step of
    the rate); with it every update is within budget."""
    row = _flax(runs("check-adamw"), "batch_order")
    assert row.status == "pass", row.detail
    assert all(s["weights_ratio"] <= 1 for s in row.steps)
