"""The fast inference paths inside ``resnet-parity check``: ``--fold`` and the ``onnx`` row.

``check --fold`` builds every framework (and onnxruntime) from the *folded* spec and weights
(``shared.fold``) while the float64 reference and its float32 peer run the *unfolded* network:
the verdict proves the folded model computes the function the checkpoint defines, within the
same fp32 budget (4x the float32 reference's own error on the same weights and input).

The ``onnx`` target is the spec's ONNX model (``shared.onnx_export``) run by onnxruntime; it is
an inference runtime on the CPU, so it joins only eval-mode fp32 CPU checks.
"""

from __future__ import annotations

from shared.fold import fold_batchnorm, refuse_training

ONNX = "onnx"


def prepare(spec, weights, found: list, *, fold: bool, mode: str, device: str, precision: str):
    """(spec and weights the targets run, the targets that apply, a note or ""). The reference
    keeps ``spec`` and ``weights``: a folded run is judged against the unfolded function."""
    notes = []
    if fold:
        if mode == "train":
            refuse_training(spec.replace(folded=True), "check --fold --mode train")
        if not spec.folded:
            spec, weights = fold_batchnorm(spec, weights)
            notes.append("targets run the BatchNorm-folded spec; the reference runs the unfolded one")
    if not (mode == "eval" and device == "cpu" and precision == "fp32"):
        if any(t.framework == ONNX for t in found):
            notes.append(f"onnx not run: onnxruntime joins eval-mode fp32 CPU checks only, not {mode} {precision} {device}")
        found = [t for t in found if t.framework != ONNX]
    return spec, weights, found, "; ".join(notes)
