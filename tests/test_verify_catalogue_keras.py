"""#30: verify over odd-but-legal Keras constructs (torch's and Flax's:
tests/test_verify_catalogue.py): a model nested in a Sequential behind a Lambda, a dict output, a
layer without weights in front: each passes (broken Keras ports are named in tests/test_verify.py)."""

from pathlib import Path

import pytest

keras = pytest.importorskip("keras")

from shared.tools import verify as V  # noqa: E402

pytestmark = pytest.mark.keras
PORT = str(Path(__file__).parent / "ports" / "keras_resnet.py")


def _inner():
    return V.load_port(f"{PORT}:ResNet18(input_shape=(32, 32, 3), classes=10)")


def _nested():
    return keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Lambda(lambda x: x * 1.0), _inner()])


def _dict_output():
    inputs = keras.Input((32, 32, 3))
    return keras.Model(inputs, {"logits": _inner()(keras.layers.Rescaling(1.0)(inputs))})


@pytest.mark.parametrize("build, expected", [(_nested, "pass"), (_dict_output, "pass")],
                         ids=["Sequential(Lambda, functional model)", "dict output behind Rescaling"])
def test_keras_constructs(build, expected):
    try:
        verdict = V.verify(build(), size=32, batch=1)
    except V.VerifyError as e:
        pytest.fail(f"one line where a verdict was expected: {e}")
    got = "pass" if verdict.passed else "diagnosed: " + ",".join(verdict.diagnosis[0]["mutants"]) if verdict.diagnosis else "fail"
    assert got == expected, str(verdict)


def test_an_eca_kernel_held_flat_is_read():
    """ECA's channel conv kernel as resnet_keras holds it, ``(k,)`` (torch's Conv1d: (1, 1, k))."""
    from resnet_keras.model import keras_model
    from shared.spec import preset

    verdict = V.verify(keras_model(preset("ecaresnet26t", depths=(1, 1, 1, 1), num_classes=10)), size=32, batch=1)
    assert verdict.passed and verdict.spec.attention == "eca" and verdict.spec.depths == (1, 1, 1, 1), str(verdict)
