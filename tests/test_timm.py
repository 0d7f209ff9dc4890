"""resnet_torch against timm's own models (the peer for timm's family): every preset under a
timm name has timm's parameter count and state_dict layout; timm's checkpoints (``.safetensors``
and ``.pth``, as timm saves them) load through the constructors' ``weights=`` path and give
timm's logits to the bit, in eval mode and, with batch statistics, in train mode."""

import numpy as np
import pytest

from shared import interop, reference, spec as S

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

import resnet_torch as rt  # noqa: E402

TIMM_ARCHS = [a for a, p in S.PRESETS.items() if p.peer.startswith("timm.")]
# Full-size forwards for one preset of each new kind: tiered stem + avg-down (basic), max+blur
# stem and blur anti-aliasing, deep stem + avg-down, SE on ResNeXt, ECA, avg anti-aliasing,
# timm's pre-activation, ResNet-RS (conv stem pool, SE 1/4).
FORWARD_ARCHS = ["resnet10t", "resnetblur18", "resnet50d", "seresnext26d_32x4d", "ecaresnet26t", "resnetaa50d",
                 "resnetv2_50", pytest.param("resnetrs50", marks=pytest.mark.slow)]


def _randomised(model):
    """Every float tensor of timm's model redrawn from a seeded generator (kernels at He scale,
    BN gammas and variances in [0.5, 1.5), betas, means and biases small), so a swapped,
    transposed or ignored entry cannot go unseen; eval mode."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.ndim == 1:  # gamma, running_var
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (2 / t[0].numel()) ** 0.5)
    return model.eval()


def _images(spec):
    return torch.from_numpy(reference.random_images(spec, 2, 64, seed=7)).permute(0, 3, 1, 2).contiguous()


def _torch_keys(arch, state):
    """timm's state_dict keys and shapes as resnet_torch names them (timm's resnetv2 renamed,
    its 1x1-conv head's kernel made a dense one; timm's resnet.py as it is)."""
    if S.PRESETS[arch].spec().block != "preact":
        return {k: tuple(v.shape) for k, v in state.items()}
    return {interop.timm_v2_key(k): tuple(v.shape[:2] if k == "head.fc.weight" else v.shape) for k, v in state.items()}


@pytest.mark.parametrize("arch", TIMM_ARCHS)
def test_parameter_count_and_layout_equal_timm(arch):
    """Built on the meta device (shapes only): ours counts timm's parameters, the preset's
    recorded count, and holds timm's state_dict keys with timm's shapes."""
    with torch.device("meta"):
        theirs = timm.create_model(arch)
        ours = rt.build(S.preset(arch))
    count = sum(p.numel() for p in theirs.parameters())
    assert sum(p.numel() for p in ours.parameters()) == count == S.PRESETS[arch].params
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == _torch_keys(arch, theirs.state_dict())


@pytest.mark.parametrize("arch", FORWARD_ARCHS)
def test_timm_checkpoints_load_and_equal_timm(arch, tmp_path):
    """timm's state_dict saved as timm saves it (``safetensors.torch.save_file``, ``torch.save``)
    loads through the constructor's ``weights=`` and gives timm's logits to the bit; timm's
    ``resnet.py`` state_dicts also load with ``load_state_dict`` as they are."""
    theirs = _randomised(timm.create_model(arch))
    state = theirs.state_dict()
    spec = S.preset(arch)
    x = _images(spec)
    with torch.no_grad():
        expected = theirs(x)
    assert torch.isfinite(expected).all() and expected.std() > 0
    safetensors_torch.save_file(state, str(tmp_path / "model.safetensors"))
    torch.save(state, tmp_path / "model.pth")
    constructor = getattr(rt, S.PRESETS[arch].constructor)
    models = {suffix: constructor(weights=tmp_path / f"model.{suffix}") for suffix in ("safetensors", "pth")}
    if spec.block != "preact":
        models["load_state_dict"] = rt.build(spec)
        models["load_state_dict"].load_state_dict(state)
    for how, model in models.items():
        with torch.no_grad():
            got = model(x)
        assert torch.equal(got, expected), (how, (torch.linalg.norm(got - expected) / torch.linalg.norm(expected)).item())


_FORWARD_NAMES = {a if isinstance(a, str) else a.values[0] for a in FORWARD_ARCHS}
_HEAVY = {"resnet200", "resnet101d", "resnetv2_101"}


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in _HEAVY else a
                                  for a in TIMM_ARCHS if a not in _FORWARD_NAMES])
def test_every_timm_preset_equals_timm(arch):
    """The rest of timm's family, loaded from timm's state_dict (as it is; timm's resnetv2
    renamed by ``interop.from_torchvision``): timm's logits to the bit."""
    theirs = _randomised(timm.create_model(arch))
    spec = S.preset(arch)
    x = _images(spec)
    with torch.no_grad():
        expected = theirs(x)
    ours = rt.build(spec)
    if spec.block == "preact":
        rt.load_weights(ours, interop.from_torchvision(theirs.state_dict(), spec=spec)[1])
    else:
        ours.load_state_dict(theirs.state_dict())
    with torch.no_grad():
        got = ours(x)
    assert expected.std() > 0 and torch.equal(got, expected)


@pytest.mark.parametrize("arch", ["seresnet18", "resnet10t"])  # SE; avg-down (and a tiered stem)
def test_train_mode_equals_timm(arch):
    """Batch statistics: one forward in train mode gives timm's logits and timm's updated running
    statistics to the bit, and one backward timm's gradients."""
    theirs = _randomised(timm.create_model(arch))
    ours = rt.build(S.preset(arch))
    ours.load_state_dict(theirs.state_dict())
    theirs.train(), ours.train()
    x = _images(S.preset(arch))
    got, expected = ours(x), theirs(x)
    assert torch.equal(got, expected)
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    stats = [k for k in theirs_state if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert stats and all(torch.equal(ours_state[k], theirs_state[k]) for k in stats)
    assert not torch.equal(theirs_state[stats[0]], _randomised(timm.create_model(arch)).state_dict()[stats[0]])
    got.square().mean().backward()
    expected.square().mean().backward()
    ours_grads = dict(ours.named_parameters())
    for name, p in theirs.named_parameters():
        assert torch.equal(ours_grads[name].grad, p.grad), name


def test_timm_v2_keys_are_named_in_errors():
    """A timm resnetv2 state_dict with a key missing is refused naming timm's key."""
    with torch.device("meta"):
        state = timm.create_model("resnetv2_50").state_dict()
    state = {k: np.zeros(v.shape, np.float32) for k, v in state.items() if k != "stages.1.blocks.0.norm2.weight"}
    with pytest.raises(ValueError, match=r"missing key stages\.1\.blocks\.0\.norm2\.weight \(for conv3_block1_1_bn.gamma\)"):
        interop.from_torchvision(state, spec=S.preset("resnetv2_50"))
