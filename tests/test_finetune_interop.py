"""The issue's "done when": a model fine-tuned for a few SGD steps in one framework, saved the
way that framework's users save it (torch: its state_dict as safetensors; Keras:
``save_weights("x.weights.h5")``; Flax: Orbax of ``nnx.state``), converted with
``resnet-parity convert`` into each other framework's own format and loaded there with that
framework's own API, predicts what the float64 reference predicts on the fine-tuned weights,
within 4x the float32 reference's own error on the same weights and input (``fp32_budget``); and
the weights survive save -> convert -> load -> export -> convert back bit for bit.
Keras-marked (it loads Keras): CI runs it once per KERAS_BACKEND."""

import numpy as np
import pytest

from shared import parity, reference, spec as S
from shared.tools import convert as formats  # every format, through the adapters
from shared.parity import fp32_budget
from shared.tools.cli import main

pytestmark = pytest.mark.keras
torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
pytest.importorskip("flax")
ocp = pytest.importorskip("orbax.checkpoint")
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import resnet_flax as rf  # noqa: E402
import resnet_keras as rk  # noqa: E402
import resnet_torch as rt  # noqa: E402

SPEC = S.preset("resnet50", "torchvision", depths=(1, 1), width=8, num_classes=5)
SIZE, STEPS, LR = 32, 3, 0.1
FILES = {"torch": "model.safetensors", "keras": "model.weights.h5", "flax": "ckpt"}


def _data():
    images = reference.random_images(SPEC, batch=4, size=SIZE, seed=1)
    labels = np.random.default_rng(1).integers(0, SPEC.num_classes, 4)
    return images, labels


# ----------------------------------------------------------------------------- train and save natively

def _torch_finetune(start, path):
    model = rt.load_weights(rt.build(SPEC), start).train()
    images, labels = _data()
    x, y = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for _ in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return rt.export_weights(model)


def _keras_finetune(start, path):
    model = rk.build(SPEC)
    rk.load_weights(model, start)
    model.compile(optimizer=keras.optimizers.SGD(LR),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images, labels = _data()
    model.fit(images, labels, batch_size=len(labels), epochs=STEPS, shuffle=False, verbose=0)
    model.save_weights(str(path))
    return rk.export_weights(model)


def _flax_finetune(start, path):
    model = rf.build(SPEC)
    rf.load_weights(model, start)
    model.train()
    optimizer = nnx.Optimizer(model, optax.sgd(LR), wrt=nnx.Param)
    images, labels = _data()

    def loss(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(images), labels).mean()

    for _ in range(STEPS):
        optimizer.update(model, nnx.grad(loss)(model))
    model.eval()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path.absolute(), nnx.state(model))
    checkpointer.wait_until_finished()
    return rf.export_weights(model)


FINETUNE = {"torch": _torch_finetune, "keras": _keras_finetune, "flax": _flax_finetune}


# ----------------------------------------------------------------------------- load natively

def _torch_load(path):
    model = rt.build(SPEC)
    model.load_state_dict(torch.load(path.with_suffix(".pth"), weights_only=True) if path.suffix == ".pth"
                          else load_file(str(path)), strict=True)
    return model, rt.predict, rt.export_weights


def _keras_load(path):
    model = rk.build(SPEC)
    model.load_weights(str(path))
    return model, rk.predict, rk.export_weights


def _flax_load(path):
    model = rf.build(SPEC)
    graphdef, state = nnx.split(model)
    nnx.update(model, ocp.StandardCheckpointer().restore(path.absolute(), state))
    return model, rf.predict, rf.export_weights


LOAD = {"torch": _torch_load, "keras": _keras_load, "flax": _flax_load}


def _convert(source, dest, *extra):
    assert main(["convert", str(source), str(dest), *extra]) == 0


@pytest.mark.slow  # skipped by the development run (README); CI runs it
@pytest.mark.parametrize("trainer", ["torch", "keras", "flax"])
def test_finetuned_model_predicts_the_same_in_the_other_two(tmp_path, trainer):
    start = reference.calibrated_weights(SPEC, seed=0, size=SIZE)
    native = tmp_path / trainer / FILES[trainer]
    native.parent.mkdir()
    tuned = FINETUNE[trainer](start, native)
    moved = max(float(np.abs(tuned[k] - start[k]).max()) for k in start)
    assert moved > 1e-3, f"{trainer}: fine-tuning did not change the weights ({moved:.1e})"

    images = reference.random_images(SPEC, batch=4, size=SIZE, seed=2)
    expected = reference.forward(SPEC, tuned, images)
    peer = parity.rel_error(reference.forward(SPEC, tuned, images, dtype=np.float32), expected)
    budget = fp32_budget(peer)
    errors = {}
    for target in (t for t in FILES if t != trainer):
        folder = tmp_path / f"{trainer}-to-{target}"
        folder.mkdir()
        dest = folder / FILES[target]
        _convert(native, dest, *(["--format", "torchvision-safetensors"] if target == "torch" else []))
        model, predict, export = LOAD[target](dest)
        exported = export(model)
        for key in tuned:
            assert exported[key].tobytes() == tuned[key].tobytes(), f"{trainer} -> {target}: {key}"
        errors[target] = parity.rel_error(predict(model, images), expected)
        # and back: the other framework's own file -> the trainer's format, bit for bit
        back = folder / f"back-{FILES[trainer]}"
        _convert(dest, back, *(["--format", "torchvision-safetensors"] if trainer == "torch" else []))
        again = LOAD[trainer](back)
        for key, value in again[2](again[0]).items():
            assert value.tobytes() == tuned[key].tobytes(), f"{trainer} -> {target} -> {trainer}: {key}"
    print(f"{trainer} fine-tuned ({keras.backend.backend()} backend for Keras): float32 reference {peer:.2e}, "
          f"budget {budget:.2e}, "
          + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert all(e <= budget for e in errors.values()), (budget, errors)
    assert formats.read(native)[0] == SPEC
