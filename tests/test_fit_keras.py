"""``check --mode fit`` in Keras on the backend KERAS_BACKEND chose, in-process: the harmless
reorder under AdamW passes with the Adam-tie rule (shared.tools.check_fit's docstring). Runs
once per Keras backend."""

from __future__ import annotations

import pytest

from shared.tools import check_fit as C
from test_fit import SPEC, runs  # noqa: F401 (runs: the module's fixture)

pytestmark = pytest.mark.keras
pytest.importorskip("keras")


def test_adamw_batch_order_passes(runs):
    """Each batch reversed under AdamW: before the rule keras[tensorflow] failed at update 1
    (1.81x: one element of conv4_block1_2_conv.kernel 4.3x epsilon from 0 taken to the other
    sign, a step of the rate); with it every update is within budget."""
    from shared.tools.adapters import keras_fit

    weights, recipe, oracle, folder = runs("check-adamw")
    res = keras_fit.run(SPEC, weights, batches=str(folder / "batches.npz"), heldout=str(folder / "heldout.npy"),
                        recipe=recipe.to_dict(), mutant="batch_order")
    row = C.judge("keras", res, oracle, "keras")
    assert row.status == "pass", row.detail
    assert all(s["weights_ratio"] <= 1 for s in row.steps)
