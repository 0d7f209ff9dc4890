"""The cross-framework parity harness: one set of cases, parametrized over framework x precision
x style x depth x mode, each judged against the float64 reference and pairwise.

Frameworks run in this process through their adapter (``shared.tools.adapters``, the same code ``resnet-parity check``
runs in its workers); Keras runs on whatever KERAS_BACKEND this pytest process has (CI runs the
keras-marked cases once per backend). Budgets follow docs/design.md: 4x the error of a trusted fp32
peer on the same weights and input, measured here. The peer is the reference's own arithmetic
in float32 (torchvision's own error is within 1% of it on ResNet-50/101/152, see
test_reference_float32_is_a_fair_peer); for bf16 on the CPU the measured table (4x).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from shared import parity, reference, spec as S
from shared.tools import adapter
from shared.tools.adapter import installed
from shared.parity import fp32_budget
from shared.tools.check import low_precision_oracle
from shared.spec import ResNetSpec
from strategies import HEADS, block_specs

FRAMEWORKS = [
    pytest.param("torch", marks=pytest.mark.skipif(not installed("torch"), reason="torch not installed")),
    pytest.param("flax", marks=pytest.mark.skipif(not installed("flax"), reason="flax not installed")),
    pytest.param("keras", marks=[pytest.mark.keras,
                                 pytest.mark.skipif(not installed("keras"), reason="keras not installed")]),
]


def run(framework: str, spec, weights, images, **kwargs) -> dict:
    return adapter.load(framework).run_check(spec, weights, images, **kwargs)


@functools.cache
def case(arch: str, style: str, size: int, batch: int = 2):
    """Weights (BatchNorm randomised and calibrated), images, float64 logits and the fp32 peer's error."""
    spec = S.preset(arch, style)
    weights = reference.calibrated_weights(spec, seed=1, size=size)
    images = reference.random_images(spec, batch, size, seed=2)
    ref = reference.forward(spec, weights, images)
    peer = parity.rel_error(reference.forward(spec, weights, images, dtype=np.float32), ref)
    return spec, weights, images, ref, peer


# ResNet-50 at 96 px in both styles; ResNet-101/152 at full depth in torchvision style at 64 px
# (the error grows with depth, the cost with size).
CASES = [("resnet50", "torchvision", 96), ("resnet50", "keras", 96),
         pytest.param("resnet101", "torchvision", 64, marks=pytest.mark.slow),
         pytest.param("resnet152", "torchvision", 64, marks=pytest.mark.slow)]


@functools.cache
def logits_of(framework: str, arch: str, style: str, size: int, precision: str = "fp32") -> np.ndarray:
    spec, weights, images, _, _ = case(arch, style, size)
    return run(framework, spec, weights, images, precision=precision)["logits"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("arch, style, size", CASES)
def test_fp32_against_float64_reference(framework, arch, style, size):
    _, _, _, ref, peer = case(arch, style, size)
    err = parity.rel_error(logits_of(framework, arch, style, size), ref)
    print(f"{framework} {arch} {style} {size}px: rel {err:.2e}, peer {peer:.2e}, budget {parity.budget(peer):.2e}")
    assert err <= parity.budget(peer)
    assert parity.top1_agreement(logits_of(framework, arch, style, size), ref) == (2, 2)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_bf16_on_cpu_against_emulated_bf16_reference(framework):
    """Each framework's CPU bf16 path within the emulated-bf16 budget. A shallow network: on a
    ResNet-50 at 64 px the two legitimate roundings lie 0.29 apart, a budget (0.58) too wide to
    judge (check calls that "not judged"); here they lie ~1e-2 apart."""
    spec = S.preset_spec("torchvision", depths=(1, 1, 1, 1), width=16, num_classes=100)
    weights = reference.calibrated_weights(spec, seed=1, size=64)
    images = reference.random_images(spec, 4, 64, seed=2)
    ref = reference.forward(spec, weights, images)
    out = run(framework, spec, weights, images, precision="bf16")["logits"]
    emulated, budget = low_precision_oracle(spec, weights, images, "bf16")
    err = parity.rel_error(out, emulated)
    print(f"{framework} bf16: rel vs float64 {parity.rel_error(out, ref):.2e}, vs emulated bf16 {err:.2e}, "
          f"budget {budget:.2e}")
    assert parity.rel_error(out, ref) > 1e-3  # it really ran in bf16: well above fp32's error
    assert err <= budget < 0.5


@pytest.mark.slow  # a full-size ResNet-152
def test_reference_float32_is_a_fair_peer(torchvision_model):
    """The float32 reference's error is the scale of a real fp32 framework's: torchvision's."""
    torch = pytest.importorskip("torch")
    for arch, size in (("resnet50", 96), ("resnet152", 64)):
        model, spec, weights = torchvision_model(arch, seed=1)
        images = reference.random_images(spec, 2, size, seed=2)
        ref = reference.forward(spec, weights, images)
        with torch.no_grad():
            tv = model.float()(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
        tv_err = parity.rel_error(tv, ref)
        peer = parity.rel_error(reference.forward(spec, weights, images, dtype=np.float32), ref)
        print(f"{arch}: torchvision {tv_err:.2e}, float32 reference {peer:.2e}")
        assert 0.25 <= tv_err / peer <= 4


@pytest.mark.parametrize("arch, style, size", CASES[:2])
def test_frameworks_agree_pairwise(arch, style, size):
    """Every pair of installed frameworks within the sum of their budgets (the triangle rule)."""
    _, _, _, ref, peer = case(arch, style, size)
    names = [p.values[0] for p in FRAMEWORKS if installed(p.values[0])]
    outs = {fw: logits_of(fw, arch, style, size) for fw in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            err = parity.rel_error(outs[a], outs[b])
            print(f"{a} vs {b}: {err:.2e}")
            assert err <= 2 * parity.budget(peer)
            assert parity.top1_agreement(outs[a], outs[b]) == (2, 2)


# ---------------------------------------------------------------- train mode

TRAIN_SPEC = ResNetSpec(depths=(1, 1, 1, 1), width=16, num_classes=10)


@functools.cache
def train_case(style: str):
    spec = TRAIN_SPEC if style == "torchvision" else S.preset_spec("keras", **{
        k: getattr(TRAIN_SPEC, k) for k in ("depths", "width", "num_classes")})
    weights = reference.calibrated_weights(spec, seed=3, size=64)
    images = reference.random_images(spec, 4, 64, seed=4)
    labels = np.arange(4) % spec.num_classes
    return spec, weights, images, labels


@functools.cache
def torch_float64_gradients(style: str):
    spec, weights, images, labels = train_case(style)
    oracle = run("torch", spec, weights, images, labels=labels, mode="train", precision="fp64")
    fp32 = run("torch", spec, weights, images, labels=labels, mode="train", precision="fp32")
    keys = sorted(k for k in oracle if k.startswith("grad/"))
    flat = lambda res: np.concatenate([res[k].ravel() for k in keys])  # noqa: E731
    return keys, flat, flat(oracle), parity.rel_error(flat(fp32), flat(oracle))


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("style", ["torchvision", "keras"])
def test_train_mode(framework, style):
    """Batch-statistics logits, running statistics after one update (each framework's own
    variance rule), and every weight's gradient against torch in float64."""
    spec, weights, images, labels = train_case(style)
    res = run(framework, spec, weights, images, labels=labels, mode="train", precision="fp32")
    variance = "unbiased" if framework == "torch" else "biased"
    ref_logits, ref_stats = reference.forward_train(spec, weights, images, variance=variance)
    peer_logits, _ = reference.forward_train(spec, weights, images, dtype=np.float32)
    budget = parity.budget(parity.rel_error(peer_logits, ref_logits))
    assert parity.rel_error(res["logits"], ref_logits) <= budget
    stat_keys = sorted(ref_stats)
    ours = np.concatenate([res[f"stats/{k}"].ravel() for k in stat_keys])
    theirs = np.concatenate([ref_stats[k].ravel() for k in stat_keys])
    assert parity.rel_error(ours, theirs) <= budget
    if not installed("torch"):
        pytest.skip("gradients are judged against torch in float64")
    keys, flat, oracle, torch_err = torch_float64_gradients(style)
    err = parity.rel_error(flat(res), oracle)
    print(f"{framework} {style} train: grad rel {err:.2e}, torch fp32 {torch_err:.2e}")
    assert err <= parity.budget(torch_err)
    ce = -np.log(np.exp(ref_logits - ref_logits.max(-1, keepdims=True)) /
                 np.exp(ref_logits - ref_logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    assert abs(float(res["loss"]) - ce[np.arange(4), labels].mean()) <= budget * abs(ce.mean())


# ---------------------------------------------------------------- generated specs

@pytest.mark.parametrize("framework", FRAMEWORKS)
@settings(max_examples=6, deadline=None)
@given(spec=block_specs(mixed=True, classes=(8, 20), heads=HEADS[:2]), size=st.integers(16, 64),
       seed=st.integers(0, 1000))
def test_generated_specs_agree_with_reference(framework, spec, size, seed):
    """Every block kind (basic, bottleneck, pre-activation), groups, width per group, expansion,
    stride block, both styles and odd sizes, in each framework: within 4x the float32
    reference's error (floor 1e-6)."""
    size = max(size, spec.min_input_size)
    weights = reference.calibrated_weights(spec, seed=seed, size=size)
    # Batch 4 and >= 8 classes: >= 32 logits. With 4-6 (batch 2, 2-3 classes) the ratio of two
    # float32 errors of a width-4 network is a coin toss of a few ulps (measured: keras 2.99e-6
    # against a peer of 5.8e-7 on 6 logits; 1.2x-2.5x the peer on 64 logits of the same spec).
    images = reference.random_images(spec, 4, size, seed)
    ref = reference.forward(spec, weights, images)
    peer = parity.rel_error(reference.forward(spec, weights, images, dtype=np.float32), ref)
    out = run(framework, spec, weights, images)["logits"]
    assert out.shape == ref.shape
    err = parity.rel_error(out, ref)
    assert err <= fp32_budget(peer), f"{framework} {spec}: rel {err:.2e}, peer {peer:.2e}"
