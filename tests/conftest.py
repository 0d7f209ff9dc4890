"""Shared test helpers: peers' models with every BatchNorm randomised, so no test can pass by
ignoring a BatchNorm parameter or statistic."""

import importlib.util

import pytest

from shared import interop, reference

if importlib.util.find_spec("torchvision") is not None:
    # torchvision imported after TensorFlow segfaults inside torch._dynamo (torch 2.14,
    # tensorflow 2.21); imported first, both work. Any test file may load either first.
    import torchvision  # noqa: F401


@pytest.fixture(scope="session")
def torchvision_model():
    """``torchvision_model(arch, **kwargs)``: a torchvision ResNet in eval mode whose weights are
    ``shared.reference.calibrated_weights`` (BatchNorm randomised and calibrated), plus them."""
    torchvision = pytest.importorskip("torchvision")
    import torch

    def make(arch: str, seed: int = 0, **kwargs):
        model = getattr(torchvision.models, arch)(weights=None, **kwargs).eval()
        spec, _ = interop.from_torchvision(model.state_dict())
        weights = reference.calibrated_weights(spec, seed=seed)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in interop.to_torchvision(spec, weights).items()})
        return model, spec, weights

    return make

