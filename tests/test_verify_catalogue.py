"""#30: verify over a catalogue of odd-but-legal torch and Flax constructs (Keras':
tests/test_verify_catalogue_keras.py). Each is one of: passes, fails with a diagnosis, or one
line naming what verify met (VerifyError; exit 2 from the command) — never a traceback."""

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from torch import nn  # noqa: E402

from shared.tools import verify as V  # noqa: E402


def outcome(port, **kwargs) -> tuple[str, str]:
    """('pass' | 'diagnosed: MUTANTS' | 'fail' | 'line', the report or the line)."""
    try:
        verdict = V.verify(port, size=32, batch=1, **kwargs)
    except V.VerifyError as e:
        line = str(e)
        assert "\n" not in line and "Traceback" not in line
        return "line", line
    if verdict.passed:
        return "pass", str(verdict)
    if verdict.diagnosis:
        return "diagnosed: " + ",".join(verdict.diagnosis[0]["mutants"]), str(verdict)
    return "fail", str(verdict)


def _resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10)


class Wrapped(nn.Module):
    """A model inside a model, the output a dict, a tuple or an object with ``.logits``."""

    def __init__(self, out="tensor"):
        super().__init__()
        self.net, self.out = _resnet18(), out

    def forward(self, x):
        y = self.net(x)
        if self.out == "dict":
            return {"logits": y}
        if self.out == "tuple":
            return y, x.mean()
        if self.out == "object":
            return type("Output", (), {"logits": y})()
        return y


def _sequential_stem():
    m = _resnet18()
    return nn.Sequential(nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool), m.layer1, m.layer2, m.layer3, m.layer4,
                         m.avgpool, nn.Flatten(), m.fc)


def _tied():
    m = _resnet18()
    m.layer1[1] = m.layer1[0]
    return m


def _lambda_pad():
    """A stem conv written as an explicit pad and an unpadded conv (a ``Pad``/``Lambda`` layer)."""
    m = _resnet18()
    conv = nn.Conv2d(3, 64, 7, 2, 0, bias=False)
    m.conv1 = nn.Sequential(nn.ZeroPad2d(3), conv)
    return m


def _no_resnet():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))


def _raises():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _resnet18()

        def forward(self, x):
            raise RuntimeError("this port's own bug")

    return Broken()


CATALOGUE = [
    ("nested model", lambda: Wrapped(), "pass"),
    ("dict output", lambda: Wrapped("dict"), "pass"),
    ("tuple output", lambda: Wrapped("tuple"), "pass"),
    ("output object with .logits", lambda: Wrapped("object"), "pass"),
    ("Sequential stem, whole model a Sequential", _sequential_stem, "pass"),
    ("explicit pad layer before an unpadded conv", _lambda_pad, "pass"),
    ("torch.jit.script", lambda: torch.jit.script(_resnet18()), "pass"),
    ("a module used twice (tied)", _tied, "line"),
    ("no ResNet", _no_resnet, "line"),
    ("its forward raises", _raises, "line"),
]


@pytest.mark.parametrize("build, expected", [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_torch_constructs(build, expected):
    got, text = outcome(build())
    assert got == expected, text


def test_the_tied_module_is_named():
    assert outcome(_tied())[1].startswith("PORT: layer1.1.conv1.weight (64, 64, 3, 3) is the very tensor of "
                                          "layer1.0.conv1.weight")


def test_flax_nnx_sequential():
    pytest.importorskip("flax")
    from flax import nnx

    port = str(Path(__file__).parent / "ports" / "flax_resnet.py")
    assert outcome(nnx.Sequential(V.load_port(f"{port}:ResNet18(classes=10)")))[0] == "pass"
    got, line = outcome(nnx.Sequential(nnx.Linear(4, 4, rngs=nnx.Rngs(0))))
    assert got == "line" and line.startswith("PORT: its first parameter is no conv kernel"), line
    assert outcome(nnx.Sequential(nnx.Linear(4, 4, rngs=nnx.Rngs(0))))[0] == "line"
