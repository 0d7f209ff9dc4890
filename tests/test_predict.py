"""``resnet-parity predict`` as a user meets it: a published name whose file was put in the cache
by hand (``hub.cached_path``, docs/usage.md), offline, in torch, Keras, Flax and onnxruntime;
a name downloaded from a local HTTP server; every bad input refused in one line. Each
framework's probabilities are checked against the float64 reference's softmax computed here,
and the verdict is shown to fail on broken logits and to pass legitimate float32 ones."""

import hashlib
import json
import os
import socket

import numpy as np
import pytest
from helpers import random_weights
from local_server import serving

from shared import hub, interop, parity, reference
from shared import preprocess as pre
from shared import spec as S
from shared import weights as W
from shared.tools import predict
from shared.tools.adapter import installed
from shared.tools.cli import main

NAME = "torchvision/resnet50.IMAGENET1K_V2"
TINY = S.ResNetSpec(depths=(1, 1, 1, 1), width=8)  # 1000 classes: decode_predictions names them


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A fresh cache, private copies of the registries, and NAME pointing at a closed port: a test
    that reaches for the network fails."""
    monkeypatch.setenv(hub.ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "_REGISTRY", dict(hub._REGISTRY))
    monkeypatch.setattr(pre, "PREPROCESSING", dict(pre.PREPROCESSING))
    hub.register(NAME, f"http://127.0.0.1:{_closed_port()}/{hub.entry(NAME).filename}", "0" * 64, "pth",
                 replace=True)
    return tmp_path / "cache"


def _photo(h, w, seed):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    rgb = np.stack([128 + 100 * np.sin(x / 37) * np.cos(y / 23), 128 + 90 * np.cos((x + y) / 51),
                    255 * (x / w) * (y / h)], -1) + np.random.default_rng(seed).normal(0, 6, (h, w, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A JPEG, an RGBA PNG, a grey PNG, and a file that is no image."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    files = {k.split(".")[0]: folder / k for k in ("cat.jpg", "rgba.png", "grey.png", "broken.jpg")}
    Image.fromarray(_photo(375, 500, 0)).save(files["cat"], quality=90)
    alpha = np.linspace(0, 255, 400, dtype=np.uint8)[None].repeat(300, 0)
    Image.fromarray(np.dstack([_photo(300, 400, 1), alpha])).save(files["rgba"])
    Image.fromarray(_photo(333, 250, 2)).convert("L").save(files["grey"])
    files["broken"].write_text("not a JPEG")
    return {k: str(v) for k, v in files.items()}


def _oracle(spec, weights, images):
    """Computed here from the reference, as predict's docstring derives it: per image the
    float64 softmax and the probability budget fp32_budget(rel(float32, float64)) * ||z||_2."""
    ref = reference.forward(spec, weights, images)
    peer = reference.forward(spec, weights, images, dtype=np.float32)
    b = np.array([parity.fp32_budget(parity.rel_error(p, r)) for p, r in zip(peer, ref)])
    e = np.exp(ref - ref.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True), b * np.linalg.norm(ref, axis=1)


def _check_report(report, probs, prob_budget, labels):
    """Every framework's top-k against the float64 softmax (within half the pairwise budget:
    one framework's own share), top-1 the reference's, differences within the budget."""
    assert list(report["top"]) == labels
    for label, per_image in report["top"].items():
        for n, top in enumerate(per_image):
            assert top[0][0] == int(np.argmax(probs[n])), (label, n)
            for index, name, p in top:
                assert name == pre.imagenet_classes()[index]
                assert abs(p - probs[n, index]) <= prob_budget[n] / 2, (label, n, index)
    for n, im in enumerate(report["images"]):
        assert im["top1_agree"] and im["prob_budget"] == pytest.approx(prob_budget[n], rel=1e-9)
        assert im["max_prob_diff"] <= prob_budget[n]
    assert report["ok"] and report["failed"] == {}


def test_offline_from_the_cache_in_every_framework(photos, cache, tmp_path, capsys):
    """ResNet-50 at 224 px under a published name, its .pth put at hub.cached_path by hand, no
    network (the name's URL is a closed port): torch, keras, flax and onnxruntime agree."""
    if not installed("torch", "keras", "flax", "onnx", os.environ.get("KERAS_BACKEND") or "tensorflow"):
        pytest.skip("needs torch, keras (and its backend), flax and onnxruntime")  # found, not imported here
    import torch

    spec = S.resnet50()
    images = [photos["rgba"]]
    x = pre.preprocess(images, weights=NAME)
    # BatchNorm calibrated on this photo and the classifier x4: the probabilities spread (top-1
    # about 0.1-0.3), not a one-hot vector whose differences would all be ~0.
    weights = reference.calibrate(spec, random_weights(spec, seed=3), x)
    weights["predictions.kernel"] = weights["predictions.kernel"] * 4
    path = tmp_path / "by-hand.pth"
    torch.save({k: torch.from_numpy(v) for k, v in interop.to_torchvision(spec, weights).items()}, path)
    entry = hub.entry(NAME)
    hub.register(NAME, entry.url, hashlib.sha256(path.read_bytes()).hexdigest(), "pth", replace=True)
    hub.cached_path(NAME).parent.mkdir(parents=True)
    path.rename(hub.cached_path(NAME))
    out = tmp_path / "predict.json"
    assert main(["predict", *images, "--weights", NAME, "--json", str(out)]) == 0
    probs, prob_budget = _oracle(spec, weights, x)
    report = json.loads(out.read_text())
    keras = f"keras[{os.environ.get('KERAS_BACKEND') or 'tensorflow'}]"
    _check_report(report, probs, prob_budget, ["torch", keras, "flax", "onnx"])
    assert report["preprocessing"]["resize"] == 232  # torchvision V2's recipe, from the name
    text = capsys.readouterr().out
    assert "rgba.png: Pillow mode RGBA, not RGB: converted to RGB (alpha dropped)" in text
    assert pre.imagenet_classes()[int(np.argmax(probs[0]))] in text and "the frameworks agree" in text


def test_a_name_downloads_from_a_server_then_predicts(photos, cache, capsys):
    """A registered name (a small 1000-class spec) fetched once from a local HTTP server into the
    cache; a grey image converted."""
    weights = reference.calibrated_weights(TINY, seed=1)
    with serving() as (url, files, hits):
        data_path = cache.parent / "tiny.safetensors"
        W.save(weights, data_path, spec=TINY)
        files["/w/tiny.safetensors"] = data_path.read_bytes()
        hub.register("test/tiny", f"{url}/w/tiny.safetensors", hashlib.sha256(files["/w/tiny.safetensors"]).hexdigest(),
                     "safetensors")
        pre.register("test/tiny", pre.KERAS_V2)
        json_path = cache.parent / "tiny.json"
        args = ["predict", photos["grey"], photos["cat"], "--weights", "test/tiny",
                "--frameworks", "torch,onnx", "--top", "3", "--json", str(json_path)]
        assert main(args) == 0
        assert hits == ["/w/tiny.safetensors"] and hub.cached_path("test/tiny").is_file()
    probs, prob_budget = _oracle(TINY, weights, pre.preprocess([photos["grey"], photos["cat"]],
                                                               style=pre.KERAS_V2))
    _check_report(json.loads(json_path.read_text()), probs, prob_budget, ["torch", "onnx"])
    assert "grey.png: Pillow mode L, not RGB: converted to RGB" in capsys.readouterr().out


def test_the_verdict_fails_broken_logits_and_passes_float32_ones(photos):
    """judge() on the float32 reference and float64 rounded to float32 (legitimate, both pass);
    then one image's logits broken three ways, each caught by the rule it breaks."""
    weights = reference.calibrated_weights(TINY, seed=1)
    images = pre.preprocess([photos["cat"], photos["grey"]], style="torchvision")
    ref = reference.forward(TINY, weights, images)
    peer = reference.forward(TINY, weights, images, dtype=np.float32).astype(np.float64)
    legit = {"float32": peer, "rounded": ref.astype(np.float32).astype(np.float64)}
    verdict = predict.judge(legit, ref, peer)
    _, prob_budget = _oracle(TINY, weights, images)
    assert verdict["ok"] and [im["prob_budget"] for im in verdict["images"]] == pytest.approx(prob_budget, rel=1e-12)

    p = predict.softmax(ref[0])
    first, second = np.argsort(-p)[:2]
    bump = peer.copy()  # one class's probability moved by 3x the budget, the top-1 kept
    bump[0, second] += 3 * prob_budget[0] / (p[second] * (1 - p[second]))
    swap = peer.copy()  # the top two classes exchanged
    swap[0, [first, second]] = swap[0, [second, first]]
    scaled = peer.copy()  # every logit 0.02% off: 100x the logits budget, the probabilities barely moved
    scaled[0] *= 1.0002
    for broken, caught in ((bump, "prob"), (swap, "top1"), (scaled, "logits")):
        verdict = predict.judge({"float32": peer, "broken": broken}, ref, peer)
        im = verdict["images"][0]
        assert not verdict["ok"] and not verdict["frameworks"]["broken"]["pass"]
        assert verdict["frameworks"]["float32"]["pass"] and verdict["images"][1]["max_prob_diff"] == 0
        assert (im["prob_pass"], im["top1_agree"]) == {"prob": (False, True), "top1": (im["prob_pass"], False),
                                                       "logits": (True, True)}[caught]
        if caught == "prob":
            assert im["class"] == second and im["max_prob_diff"] > 2 * prob_budget[0]


def test_the_command_exits_1_when_the_frameworks_disagree(photos, tmp_path, monkeypatch, capsys):
    """The verdict end to end on logits a test hands the command (``predict.run`` replaced): the
    float32 reference as one framework, and as another with its top two classes swapped."""
    path, out = tmp_path / "tiny.safetensors", tmp_path / "verdict.json"
    W.save(reference.calibrated_weights(TINY, seed=1), path, spec=TINY)

    def run(spec, weights, images, frameworks, keras_backend, **_):
        z = reference.forward(spec, weights, images, dtype=np.float32).astype(np.float64)
        swapped = z.copy()
        first, second = np.argsort(-z[0])[:2]
        swapped[0, [first, second]] = swapped[0, [second, first]]
        return {"torch": z, "onnx": swapped}, {}

    monkeypatch.setattr(predict, "run", run)
    assert main(["predict", photos["cat"], "--weights", str(path), "--style", "torchvision", "--json", str(out)]) == 1
    report = json.loads(out.read_text())
    assert not report["ok"] and not report["images"][0]["top1_agree"]
    assert report["frameworks"]["torch"]["pass"] and not report["frameworks"]["onnx"]["pass"]
    assert "DIFFER" in capsys.readouterr().out


def test_softmax_is_half_lipschitz_and_no_better():
    """The derivation's step: ||softmax(a) - softmax(b)||_2 <= ||a - b||_2 / 2, tight at p = (1/2, 1/2)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2000, 10)) * rng.uniform(0.1, 10, (2000, 1))
    b = a + rng.standard_normal(a.shape) * rng.uniform(1e-6, 1, (2000, 1))
    ratio = np.linalg.norm(predict.softmax(a) - predict.softmax(b), axis=1) / np.linalg.norm(a - b, axis=1)
    assert ratio.max() <= 0.5
    eps = 1e-4
    tight = np.linalg.norm(predict.softmax(np.array([eps, -eps])) - 0.5) / np.linalg.norm([eps, -eps])
    assert tight == pytest.approx(0.5, rel=1e-6)


@pytest.fixture
def tiny10(tmp_path):
    path = tmp_path / "tiny10.safetensors"
    W.save(W.init(TINY.replace(num_classes=10), seed=0), path, spec=TINY.replace(num_classes=10))
    return str(path)


@pytest.mark.parametrize("args, message", [
    (["/nowhere/cat.jpg", "--weights", NAME], "image /nowhere/cat.jpg: no such file"),
    (["{broken}", "--weights", NAME], "broken.jpg: cannot read it as an image"),
    (["{cat}", "--weights", "test/no-recipe"],
     "--weights test/no-recipe: a weights name without known preprocessing; pass --style torchvision or --style keras"),
    (["{cat}", "--weights", "{tiny10}"], "a file without known preprocessing; pass --style torchvision or"),
    (["{cat}", "--weights", "{tiny10}", "--style", "torchvision"],
     "predict needs an ImageNet head of 1000 classes, the checkpoint has 10"),
    (["{cat}", "--weights", "/nowhere/w.safetensors", "--style", "keras"], "--weights: no such file /nowhere/w"),
    (["{cat}", "--weights", NAME, "--json", "/nowhere/out.json"], "--json /nowhere/out.json: no such folder /nowhere"),
])
def test_bad_input_is_refused_in_one_line(photos, tiny10, args, message, capsys):
    hub.register("test/no-recipe", f"http://127.0.0.1:{_closed_port()}/w.safetensors", "0" * 64, "safetensors")
    args = [a.format(tiny10=tiny10, **photos) if a.startswith("{") else a for a in args]
    assert main(["predict", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnet-parity predict: error: ") and message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["x.jpg"], "the following arguments are required: --weights"),
    (["x.jpg", "--weights", NAME, "--top", "0"], "argument --top: must be >= 1, got 0"),
    (["x.jpg", "--weights", NAME, "--frameworks", "torch,mxnet"], "unknown 'mxnet'"),
    (["x.jpg", "--weights", NAME, "--style", "caffe"], "argument --style: invalid choice: 'caffe'"),
])
def test_usage_errors_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["predict", *args])
    assert stop.value.code == 2 and message in capsys.readouterr().err
