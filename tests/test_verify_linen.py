"""``resnet-parity verify`` on Flax linen ports written in the shape of the Flax ImageNet example
(tests/ports/linen_resnet.py: ``@nn.compact``, linen's own layer names, ``params`` and
``batch_stats``), not built from the spec: mapped by the order a forward calls their layers,
judged in eval, ``--trace``, ``--mode train`` and ``--precision bf16``."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flax")

from flax import linen as nn  # noqa: E402

from shared.spec import preset  # noqa: E402
from shared.tools import verify as V  # noqa: E402

PORT = Path(__file__).parent / "ports" / "linen_resnet.py"
linen_resnet = V._import(str(PORT))


def _small(**kwargs):
    """The port's basic-block ResNet at depths 1-1-1-1, width 8, 10 classes (a structure no
    preset has: verify infers it)."""
    return linen_resnet.ResNet18(stage_sizes=(1, 1, 1, 1), num_filters=8, num_classes=10, **kwargs)


@pytest.mark.parametrize("padding", ["torch", "SAME"])
def test_a_linen_resnet50_is_judged_and_the_flax_examples_padding_traced_to_the_stem(padding):
    """With torchvision's padding the port passes, every block within budget, each of linen's
    names mapped to the canonical weight of its layer (the shortcut's ``conv_proj`` after the
    main path, as the example creates it). With the example's 'SAME' on the strided 3x3 convs and
    the stem pool (the stem conv padded 3, as torchvision) it fails, and the trace names the
    stem (the pool) as where it first leaves the spec, and the diagnosis names
    ``same_padding_flax``, not TF's ``same_padding`` (which pads the 7x7 stem conv (2, 3) too)."""
    verdict = V.verify(f"{PORT}:ResNet50(padding={padding!r})", size=32, trace_blocks=True)
    assert (verdict.framework, verdict.spec.arch, verdict.spec.style) == ("flax", "resnet50", "torchvision")
    assert sorted(verdict.mapping.values()) == sorted(preset("resnet50", "torchvision").param_shapes())
    assert verdict.mapping["params/conv_init/kernel"] == "conv1_conv.kernel"
    assert verdict.mapping["batch_stats/bn_init/mean"] == "conv1_bn.mean"
    assert verdict.mapping["params/BottleneckResNetBlock_0/conv_proj/kernel"] == "conv2_block1_0_conv.kernel"
    assert verdict.mapping["batch_stats/BottleneckResNetBlock_15/BatchNorm_2/var"] == "conv5_block3_3_bn.var"
    assert verdict.mapping["params/Dense_0/bias"] == "predictions.bias"
    assert len(verdict.trace) == 17  # the stem and 16 blocks
    first = verdict.first_out_of_budget
    if padding == "torch":
        assert verdict.passed and verdict.rel <= verdict.budget and verdict.diagnosis == [] and first is None
    else:
        assert not verdict.passed and verdict.rel > 10 * verdict.budget
        assert first["block"] == "stem" and first["rel"] > 10 * first["budget"]
        assert [d["mutants"] for d in verdict.diagnosis] == [["same_padding_flax"]]


def test_train_mode_runs_linens_batch_statistics_and_momentum_rule():
    """One train step (``train=True``, ``mutable=['batch_stats']``) of the small port passes:
    its logits from batch statistics, the gradient of every parameter against shared.backprop,
    and every running statistic after Flax's update (momentum 0.9, the old value's weight; the
    biased variance) within check's budgets (an update with momentum 0.5 is 0.15 away; a
    statistic left as it was, further). 64 px: at 32 px the last stage's BatchNorm normalises 2
    values per channel."""
    good = V.verify(_small(), size=64, mode="train")
    assert (good.framework, good.mode, good.passed, good.detail) == ("flax", "train", True, "")
    assert good.rel <= good.budget and len(good.mapping) == 62


def test_bf16_judges_a_linen_port_built_with_a_bfloat16_dtype():
    """``dtype="bfloat16"`` (the example's dtype field; BatchNorm in bfloat16 too) passes check's
    emulated-bf16 rule; the port built in float32 is refused at bf16, naming its first conv."""
    good = V.verify(_small(dtype="bfloat16"), size=32, precision="bf16")
    assert good.precision == "bf16" and good.passed and good.rel <= good.budget < 0.5
    with pytest.raises(V.VerifyError, match=r"layer conv_init \(float32\) does not compute in bfloat16"):
        V.verify(_small(), size=32, precision="bf16")


class _Outputs(nn.Module):
    """A small linen ResNet inside a module that returns a dict (``logits`` and features)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        logits = _small()(x, train=train)
        return {"features": x.mean(axis=(1, 2)), "logits": logits}


def test_a_port_returning_module_and_variables_is_judged_with_its_variables():
    """PORT ``Restored`` returns ``(module, variables)`` as a restored checkpoint gives them: the
    variables (1 input channel, which the module alone does not say) are those judged; loading
    the seeded weights never writes the caller's. A module returning a dict is read by its
    ``logits``."""
    from shared.tools.adapters import flax as adapter

    verdict = V.verify(f"{PORT}:Restored", size=32)
    assert verdict.passed and (verdict.spec.image_channels, verdict.spec.num_classes) == (1, 10)
    module, variables = V.load_port(f"{PORT}:Restored")
    port = adapter.port_wrap((module, variables), 32)
    adapter.port_load(port, [np.ones(shape, np.float32) for _, shape in adapter.port_arrays(port)])
    assert port.variables["params"]["conv_init"]["kernel"].all()
    assert not variables["params"]["conv_init"]["kernel"].any()  # still the zeros it gave
    assert V.verify(_Outputs(), size=32).passed


class _Mlp(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(10)(nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1))))


class _LayerNormed(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.LayerNorm()(nn.Conv(8, (3, 3))(x)).mean(axis=(1, 2)))


class _NoTrainArgument(nn.Module):
    """Its __call__ takes no ``train``: its BatchNorms always use the running statistics."""

    @nn.compact
    def __call__(self, x):
        return _small()(x, train=False)


class _NoLogits(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return {"scores": _small()(x, train=train), "features": x.mean(axis=(1, 2))}


@pytest.mark.parametrize("make, kwargs, message", [
    (_Mlp, {}, "its first parameter is no conv kernel: not a ResNet"),
    (_LayerNormed, {}, "params/LayerNorm_0/bias (8,) of the linen _LayerNormed belongs to no nn.Conv, nn.BatchNorm "
                       "or nn.Dense its forward calls"),
    (_NoLogits, {}, "its forward returns a dict with keys ['features', 'scores']: expected 'logits'"),
    (_NoTrainArgument, {"mode": "train"}, "--mode train: the linen _NoTrainArgument's __call__ takes no train, "
                                          "training, is_training argument"),
])
def test_a_linen_module_verify_cannot_judge_gets_one_line(make, kwargs, message):
    with pytest.raises(V.VerifyError) as e:
        V.verify(make(), size=32, **kwargs)
    assert message in str(e.value) and len(str(e.value).splitlines()) == 1
