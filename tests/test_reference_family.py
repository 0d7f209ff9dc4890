"""The float64 reference (``shared.reference``) and its hand-derived backward (``shared.backprop``)
on the family's layer kinds, against peers that share no code with them, all in float64:

- each primitive against torch's own op: ``AvgPool`` against ``avg_pool2d`` in all four
  (ceil_mode, count_include_pad) combinations, with and without padding, at odd sizes; ``Blur``
  against timm's ``BlurPool2d``; ECA's channel conv against ``conv1d``; the hard-sigmoid gate
  against ``hardsigmoid``; and each backward against torch's autograd of the same op;
- whole networks against timm's own models (``timm.create_model(name).double()``, cut to two
  stages of one block and narrow, loaded with our canonical weights under timm's key names):
  the eval forward to 1e-12, and a train step (batch statistics, the running statistics after
  one update, the gradient of every weight) against timm's autograd.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest

from shared import backprop, parity, reference, spec as S, weights as W

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
F = torch.nn.functional


def _t(x: np.ndarray):
    """NHWC numpy -> NCHW float64 torch."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float64).transpose(0, 3, 1, 2)))


def _n(x) -> np.ndarray:
    return x.detach().numpy().transpose(0, 2, 3, 1)


RNG = np.random.default_rng(29)


# ------------------------------------------------------------------ primitives against torch

@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("count_include_pad", [False, True])
@pytest.mark.parametrize("size, stride, padding", [(2, 2, 0), (3, 2, 0), (3, 2, 1), (3, 1, 1), (2, 2, 1)])
def test_avgpool_is_torchs_avg_pool2d(ceil_mode, count_include_pad, size, stride, padding):
    """Forward and backward, on 7 x 9 (odd: ceil_mode adds a partial last window), equal to
    torch's in float64 to rounding. The four combinations differ on these sizes."""
    layer = S.AvgPool("p", size, stride, (padding,) * 4, ceil_mode, count_include_pad)
    x = RNG.standard_normal((2, 7, 9, 3))
    xt = _t(x).requires_grad_()
    theirs = F.avg_pool2d(xt, size, stride, padding, ceil_mode=ceil_mode, count_include_pad=count_include_pad)
    ours = reference.avgpool(x, layer)
    assert ours.shape == _n(theirs).shape
    assert parity.max_abs(ours, _n(theirs)) <= 1e-15
    dy = RNG.standard_normal(ours.shape)
    theirs.backward(_t(dy))
    assert parity.max_abs(backprop._avgpool_backward(layer, x, dy), _n(xt.grad)) <= 1e-15


def test_avgpool_combinations_differ_where_they_should():
    """The test above can tell the combinations apart: a 3x3/2 pool with padding 1 at 6 px has
    a partial last window only with ceil_mode, and its divisors depend on count_include_pad (in
    that last window too: the padding counts, what lies past it never does)."""
    x = RNG.standard_normal((1, 6, 6, 1))
    outs = {(c, p): reference.avgpool(x, S.AvgPool("p", 3, 2, (1,) * 4, c, p)) for c in (False, True)
            for p in (False, True)}
    assert outs[(False, True)].shape == (1, 3, 3, 1) and outs[(True, True)].shape == (1, 4, 4, 1)
    assert not np.allclose(outs[(False, True)], outs[(False, False)])
    assert not np.allclose(outs[(True, True)][:, 3], outs[(True, False)][:, 3])
    assert np.array_equal(outs[(True, True)][:, 3, 1:3], outs[(True, False)][:, 3, 1:3] / 2)


@pytest.mark.parametrize("stride, size", [(2, 7), (2, 8), (1, 5)])
def test_blur_is_timms_blurpool(stride, size):
    """timm's BlurPool2d ([1, 2, 1], reflect) forward, and its autograd against our backward."""
    from timm.layers import BlurPool2d

    layer = S.Blur("b", 4, stride)
    x = RNG.standard_normal((2, size, size, 4))
    xt = _t(x).requires_grad_()
    theirs = BlurPool2d(4, 3, stride).double()(xt)
    ours = reference.blur(x, layer)
    assert parity.max_abs(ours, _n(theirs)) <= 1e-15
    dy = RNG.standard_normal(ours.shape)
    theirs.backward(_t(dy))
    assert parity.max_abs(backprop._blur_backward(layer, x, dy), _n(xt.grad)) <= 1e-14


@pytest.mark.parametrize("k", [3, 5, 7])
def test_channel_conv_is_torchs_conv1d(k):
    """ECA's conv over the channels: torch's conv1d of the (N, 1, C) squeeze, zero padding
    (k - 1) / 2, no bias (timm's EcaModule); kernel and input gradients by autograd."""
    layer = S.ChannelConv("c", k, ((k - 1) // 2,) * 2)
    x, kernel = RNG.standard_normal((3, 1, 1, 24)), RNG.standard_normal(k)
    xt = torch.from_numpy(x.reshape(3, 1, 24)).requires_grad_()
    kt = torch.from_numpy(kernel.reshape(1, 1, k)).requires_grad_()
    theirs = F.conv1d(xt, kt, padding=(k - 1) // 2)
    ours = reference.channel_conv(x, kernel, layer.padding)
    assert parity.max_abs(ours.reshape(3, 1, 24), theirs.detach().numpy()) <= 1e-15
    dy = RNG.standard_normal(ours.shape)
    theirs.backward(torch.from_numpy(dy.reshape(3, 1, 24)))
    grads = {}
    dx = backprop._channel_conv_backward(layer, x, kernel, dy, grads)
    assert parity.max_abs(dx.reshape(3, 1, 24), xt.grad.numpy()) <= 1e-14
    assert parity.max_abs(grads["c.kernel"], kt.grad.numpy().reshape(k)) <= 1e-13


@pytest.mark.parametrize("function, theirs", [("hard_sigmoid", F.hardsigmoid), ("sigmoid", torch.sigmoid)])
def test_gates_are_torchs(function, theirs):
    """Over [-5, 5] with the kinks -3 and 3 themselves: values and torch's derivative (0 at
    the kinks, as its hardsigmoid_backward). Torch's CPU kernel scales by 1/6 rounded to
    float32 even in float64 (0.16666667163...): 3e-8 relative from the exact slope, ours."""
    x = np.concatenate([RNG.uniform(-5, 5, 200), [-3.0, 3.0]]).reshape(1, 1, 1, -1)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    out = theirs(xt)
    assert parity.max_abs(reference.gate(x, function), out.detach().numpy()) <= 2e-16
    dy = RNG.standard_normal(x.shape)
    out.backward(torch.from_numpy(dy))
    ours = backprop._gate_backward(S.Gate("g", function), x, dy)
    theirs_slope = float(np.float32(1 / 6)) if function == "hard_sigmoid" else None
    expected = xt.grad.numpy() / theirs_slope / 6 if theirs_slope else xt.grad.numpy()
    assert parity.max_abs(ours, expected) <= 1e-16


# ------------------------------------------------------------------ timm's own models

_BN = {"gamma": "weight", "beta": "bias", "mean": "running_mean", "var": "running_var"}
_PARAM = {"kernel": "weight", "bias": "bias"}
_V1_BLOCK = {"1_conv": "conv1", "1_bn": "bn1", "2_conv": "conv2", "2_bn": "bn2", "3_conv": "conv3", "3_bn": "bn3",
             "0_conv": "downsample.0", "0_bn": "downsample.1", "down_conv": "downsample.1", "down_bn": "downsample.2",
             "se_1_conv": "se.fc1", "se_2_conv": "se.fc2", "eca_conv": "se.conv"}
_V2_BLOCK = {"preact_bn": "norm1", "1_conv": "conv1", "1_bn": "norm2", "2_conv": "conv2", "2_bn": "norm3",
             "3_conv": "conv3", "0_conv": "downsample.conv"}


def timm_module(spec: S.ResNetSpec, layer: str) -> str:
    """Canonical layer name -> timm's module path (``resnet.py``, or ``resnetv2.py`` for a
    pre-activation spec), by the key rules of issue 29."""
    v2 = spec.block == "preact"
    fixed = ({"conv1_conv": "stem.conv", "post_bn": "norm", "predictions": "head.fc"} if v2 else
             {"conv1_conv": "conv1", "conv1_bn": "bn1", "pool1_conv": "maxpool.0", "pool1_bn": "maxpool.1",
              "predictions": "fc"})
    if layer in fixed:
        return fixed[layer]
    if m := re.fullmatch(r"conv1_(\d)_(conv|bn)", layer):
        return f"conv1.{3 * (int(m[1]) - 1) + (m[2] == 'bn')}"
    m = re.fullmatch(r"conv(\d+)_block(\d+)_(.+)", layer)
    stage, block = int(m[1]) - 2, int(m[2]) - 1
    prefix = f"stages.{stage}.blocks.{block}" if v2 else f"layer{stage + 1}.{block}"
    return f"{prefix}.{(_V2_BLOCK if v2 else _V1_BLOCK)[m[3]]}"


def timm_key(spec: S.ResNetSpec, key: str) -> str:
    """Canonical weight key -> timm's state_dict key."""
    name, param = key.rsplit(".", 1)
    return f"{timm_module(spec, name)}.{_BN[param] if name.endswith('_bn') else _PARAM[param]}"



def to_timm(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A canonical array in the layout of timm's tensor of ``shape``: OIHW conv kernels, (out,
    in) dense (a 1x1 conv in resnetv2's head), ECA's (1, 1, k)."""
    if value.ndim == 4:
        value = value.transpose(3, 2, 0, 1)
    elif value.ndim == 2:
        value = value.T
    return value.reshape(shape)


def from_timm(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``to_timm``'s inverse, back to a canonical ``shape``."""
    if len(shape) == 4:
        return value.transpose(2, 3, 1, 0)
    if len(shape) == 2:
        return value.reshape(shape[::-1]).T
    return value.reshape(shape)


TIMM_ARCHS = [a for a, p in S.PRESETS.items() if p.peer.startswith("timm.")]
CUT = dict(depths=(1, 1, 1, 1), width=16, num_classes=7)  # timm's forward runs four stages


def cut(arch: str, **fields) -> S.ResNetSpec:
    """``arch`` with one block per stage, 16 planes in the first: timm's models take the
    same cut (``layers``, ``channels``), except that timm's 7x7 stem stays 64 wide."""
    spec = S.preset(arch, **CUT, **fields)
    if spec.stem_convs is None and spec.block != "preact":
        spec = spec.replace(stem_convs=((7, 64, 2),))
    return spec


def timm_model(arch: str, spec: S.ResNetSpec, weights, **kwargs):
    """timm's ``arch`` cut as ``spec`` (depths, stage widths; resnetv2's stem width), float64,
    holding ``weights`` (every key of timm's but ``num_batches_tracked``)."""
    planes = tuple(spec.width * 2**i for i in range(len(spec.depths)))
    if spec.block == "preact":
        widths = dict(channels=tuple(p * spec.expansion for p in planes), stem_chs=spec.width)
    else:
        widths = dict(channels=planes)
    model = timm.create_model(arch, layers=spec.depths, num_classes=spec.num_classes, **widths, **kwargs).double()
    state = model.state_dict()
    ours = {}
    for key, value in weights.items():
        theirs = timm_key(spec, key)
        ours[theirs] = torch.from_numpy(to_timm(np.asarray(value, np.float64), tuple(state[theirs].shape)))
    assert set(state) - set(ours) == {k for k in state if k.endswith("num_batches_tracked")}, arch
    model.load_state_dict(ours, strict=False)
    return model


@functools.cache
def _case(arch: str, size: int):
    spec = cut(arch)
    weights = reference.calibrated_weights(spec, seed=1, size=size)
    return spec, weights, reference.random_images(spec, 2, size, seed=2)


def test_every_timm_preset_cuts_to_what_timm_builds():
    """The cut models have the same parameter count as ours: the comparisons below are of the
    same architecture (and every new timm preset is among them)."""
    assert len(TIMM_ARCHS) == 25
    for arch in TIMM_ARCHS:
        spec = cut(arch)
        model = timm_model(arch, spec, W.init(spec))
        assert sum(p.numel() for p in model.parameters()) == spec.num_params(), arch


# 36 px: the stages see 9, 5 and 3 px, so every avg-down pool's ceil_mode makes a partial last
# window (the anti-aliased avg pool of resnetaa needs even sizes, as timm's own does).
SIZES = {a: 32 if S.preset(a).anti_alias == "avg" or S.preset(a).stem_pool == "avg" else 36 for a in TIMM_ARCHS}


# The development run: one preset per stem, shortcut, attention and anti-aliasing kind.
DEV_ARCHS = ("resnet10t", "resnet50d", "resnet50s", "seresnext26d_32x4d", "ecaresnet26t", "resnetrs50",
             "resnetaa50d", "resnetblur18", "resnetv2_50")


@pytest.mark.parametrize("arch", [a if a in DEV_ARCHS else pytest.param(a, marks=pytest.mark.slow)
                                  for a in TIMM_ARCHS])
def test_reference_forward_is_timms_in_float64(arch):
    """Eval mode: the float64 reference's logits equal timm's float64 model's to 1e-12."""
    spec, weights, images = _case(arch, SIZES[arch])
    model = timm_model(arch, spec, weights).eval()
    with torch.no_grad():
        theirs = model(_t(images)).numpy()
    ours = reference.forward(spec, weights, images)
    assert np.abs(ours).max() > 0.1  # O(1) logits: calibrated through every attention
    rel = parity.rel_error(ours, theirs)
    print(f"{arch}: logits rel {rel:.1e}")
    assert rel <= 1e-12


def test_hard_sigmoid_gate_is_timms():
    """ECA gated by hard-sigmoid (a mutant of issue 29; timm's EcaModule takes the gate) with a
    kernel large enough that some gates saturate at 0 and at 1."""
    from timm.layers import EcaModule

    spec = cut("ecaresnet26t", attention_gate="hard_sigmoid")
    weights = dict(reference.calibrated_weights(spec, seed=1, size=36))
    for name in [k for k in weights if k.endswith("_eca_conv.kernel")]:
        weights[name] = weights[name] * np.float32(60)
    images = reference.random_images(spec, 2, 36, seed=2)
    gates = []
    reference_gate = reference.gate
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reference, "gate", lambda x, f: gates.append(x) or reference_gate(x, f))
        ours = reference.forward(spec, weights, images)
    inputs = np.concatenate([g.ravel() for g in gates])
    assert (inputs < -3).any() and (inputs > 3).any() and (np.abs(inputs) < 3).any()
    model = timm_model("ecaresnet26t", spec, weights,
                       block_args=dict(attn_layer=functools.partial(EcaModule, gate_layer="hard_sigmoid")))
    with torch.no_grad():
        theirs = model.eval()(_t(images)).numpy()
    assert parity.rel_error(ours, theirs) <= 1e-12


@pytest.mark.parametrize("arch, change", [
    ("seresnet50", lambda k, v: np.zeros_like(v) if k.endswith("_se_2_conv.bias") else v),
    ("ecaresnet50d", lambda k, v: v[::-1].copy() if k.endswith("_eca_conv.kernel") else v),
])
def test_calibrated_attention_is_not_trivial(arch, change):
    """``reference.calibrated_weights`` keeps activations O(1) through SE and ECA blocks and
    leaves their gates spread out (not all ~0.5): SE's biases (``randomize_batchnorm``) and
    ECA's kernels (``init``) each move the logits a thousand times the float32 peer's error."""
    spec = cut(arch)
    weights = reference.calibrated_weights(spec, seed=0, size=64)
    images = reference.random_images(spec, 2, 64, seed=5)
    rms, gates, gate = [], [], reference.gate
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reference, "gate", lambda x, f: gates.append(gate(x, f)) or gates[-1])
        ref = reference.forward(spec, weights, images, hook=lambda name, x: rms.append(np.sqrt((x * x).mean())))
    assert 0.1 < min(rms) and max(rms) < 10 and 0.1 < ref.std() < 10  # O(1): within a decade of 1
    g = np.concatenate([x.ravel() for x in gates])
    assert g.std() > 0.05 and g.min() < 0.2 and g.max() > 0.8
    peer = parity.rel_error(reference.forward(spec, weights, images, dtype=np.float32), ref)
    changed = reference.forward(spec, {k: change(k, v) for k, v in weights.items()}, images)
    assert parity.rel_error(changed, ref) > 1000 * peer


TRAIN_ARCHS = ["resnet50d", "seresnext26d_32x4d", "ecaresnet26t", "resnetrs50", "resnetaa50d", "resnetblur18",
               "resnet10t", "resnetv2_50"]


@pytest.mark.parametrize("arch", TRAIN_ARCHS)
def test_train_step_is_timms_autograd_in_float64(arch):
    """Train mode against timm's model and torch's autograd in float64: the logits (BatchNorm on
    batch statistics through every new layer kind), the running statistics after one update
    (torch's unbiased variance) and the gradient of every weight to 1e-9."""
    spec, weights, images = _case(arch, SIZES[arch])
    labels = np.array([1, 5])
    model = timm_model(arch, spec, weights).train()
    logits = model(_t(images))
    loss = F.cross_entropy(logits, torch.from_numpy(labels))
    loss.backward()
    ours_logits, running = reference.forward_train(spec, weights, images)
    assert parity.rel_error(ours_logits, logits.detach().numpy()) <= 1e-12
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    for key, value in running.items():
        assert parity.rel_error(value, state[timm_key(spec, key)]) <= 1e-12, key
    step = backprop.step(spec, weights, images, labels)
    assert step.loss == pytest.approx(loss.item(), rel=1e-12)
    params = dict(model.named_parameters())
    assert len(params) == len(step.grads)
    worst = 0.0
    for key, g in step.grads.items():
        err = parity.rel_error(g, from_timm(params[timm_key(spec, key)].grad.numpy(), g.shape))
        worst = max(worst, err)
        assert err <= 1e-9, key
    print(f"{arch}: worst gradient rel {worst:.1e}")
