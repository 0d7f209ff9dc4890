"""shared.hub against a local HTTP server on 127.0.0.1 serving generated files (no test reaches
the internet): the right file, a wrong hash, a cut download, offline, a cache hit with no
network; names through load_weights, the constructors and the command line; the built-in
names against what torchvision and Keras Applications publish."""

import dataclasses
import hashlib
import importlib
import socket

import numpy as np
import pytest

from shared import hub, interop, keras_h5, reference, spec as S, weights as W
from shared.tools.cli import main
from local_server import serving

TINY = S.ResNetSpec(depths=(1, 1, 1, 1), width=8, num_classes=10)
FRAMEWORKS = [pytest.param("torch"), pytest.param("keras", marks=pytest.mark.keras), pytest.param("flax")]


@pytest.fixture
def server():
    """(base URL, files served by path, paths requested)."""
    with serving() as served:
        yield served


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A fresh cache and a private copy of the registry for every test."""
    monkeypatch.setenv(hub.ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "_REGISTRY", dict(hub._REGISTRY))
    return tmp_path / "cache"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: nothing listens there


def _files(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    weights = reference.calibrated_weights(TINY, seed=1)
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    W.save(weights, path, spec=TINY)
    data = path.read_bytes()
    return weights, data, hashlib.sha256(data).hexdigest()


def test_fetch_downloads_verifies_and_then_uses_the_cache(server, cache, tiny_checkpoint):
    url, files, hits = server
    _, data, sha = tiny_checkpoint
    files["/w/tiny.safetensors"] = data
    hub.register("test/tiny", f"{url}/w/tiny.safetensors", sha, "safetensors")
    path = hub.fetch("test/tiny")
    assert path == cache / "test" / "tiny" / "tiny.safetensors" == hub.cached_path("test/tiny")
    assert path.read_bytes() == data and _files(cache) == [path]
    assert hub.fetch("test/tiny") == path and hits == ["/w/tiny.safetensors"]  # the second time, no request


def test_wrong_hash_leaves_nothing(server, cache, tiny_checkpoint):
    url, files, _ = server
    _, data, sha = tiny_checkpoint
    files["/w/tiny.safetensors"] = data
    wrong = hashlib.sha256(b"another file").hexdigest()
    hub.register("test/wrong", f"{url}/w/tiny.safetensors", wrong, "safetensors")
    with pytest.raises(hub.HubError, match=rf"test/wrong: {url}/w/tiny.safetensors gave a file whose sha256 is "
                                           rf"{sha}, expected sha256 {wrong}; nothing was kept in the cache"):
        hub.fetch("test/wrong")
    assert _files(cache) == [] and not (cache / "test").exists()


def test_cut_download_leaves_nothing(server, cache, tiny_checkpoint):
    url, files, _ = server
    _, data, sha = tiny_checkpoint
    files["/w/tiny.safetensors"] = data
    hub.register("test/cut", f"{url}/cut/w/tiny.safetensors", sha, "safetensors")
    with pytest.raises(hub.HubError, match=rf"the download of {url}/cut/w/tiny.safetensors was cut: "
                                           rf"{len(data) // 2:,} of {len(data):,} bytes; nothing was kept"):
        hub.fetch("test/cut")
    assert _files(cache) == []


def test_http_error_names_the_status(server, cache):
    url, _, _ = server
    hub.register("test/missing", f"{url}/nothing.safetensors", "0" * 64, "safetensors")
    with pytest.raises(hub.HubError, match=r"HTTP 404"):
        hub.fetch("test/missing")
    assert _files(cache) == []


def test_offline_names_the_url_and_the_cache_path_and_a_cached_file_needs_no_network(cache, tiny_checkpoint):
    _, data, sha = tiny_checkpoint
    url = f"http://127.0.0.1:{_closed_port()}/w/tiny.safetensors"
    hub.register("test/offline", url, sha, "safetensors")
    target = cache / "test" / "offline" / "tiny.safetensors"
    with pytest.raises(hub.HubError, match=rf"cannot reach {url} .*offline\? The cache file is {target}: put "
                                           rf"the file there by hand \(sha256 {sha}\)"):
        hub.fetch("test/offline")
    assert _files(cache) == []
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not the file")
    with pytest.raises(hub.HubError, match=r"the cached file .* has sha256 .* delete it and fetch again"):
        hub.fetch("test/offline")
    target.write_bytes(data)  # put there by hand: used with nothing listening at the URL
    assert hub.fetch("test/offline") == target


def test_publishers_digests_md5_and_sha256_prefix(server, tiny_checkpoint, monkeypatch):
    """Keras Applications' md5 and torchvision's sha256 prefix verify as their publishers do; the
    built-in keras name refuses a file that is not the published one."""
    url, files, _ = server
    _, data, sha = tiny_checkpoint
    files["/w/tiny.safetensors"] = data
    hub._add(hub.Entry("test/md5", f"{url}/w/tiny.safetensors", "safetensors", hashlib.md5(data).hexdigest(), "md5"))
    hub._add(hub.Entry("test/prefix", f"{url}/w/tiny.safetensors", "safetensors", sha[:8], "sha256"))
    assert hub.fetch("test/md5").read_bytes() == hub.fetch("test/prefix").read_bytes() == data
    published = hub.entry("keras/resnet50.imagenet")
    hub._add(dataclasses.replace(published, url=f"{url}/w/tiny.safetensors"), replace=True)
    with pytest.raises(hub.HubError, match=rf"md5 is {hashlib.md5(data).hexdigest()}, expected md5 {published.digest}"):
        hub.fetch("keras/resnet50.imagenet")


def test_register_checks_its_arguments():
    with pytest.raises(ValueError, match=r"sha256: expected 64 hex digits, got '0676ba61'"):
        hub.register("test/short", "https://example.org/w.pth", "0676ba61", "pth")
    with pytest.raises(ValueError, match=r"fmt: expected one of \('safetensors', 'pth', 'h5'\), got 'onnx'"):
        hub.register("test/onnx", "https://example.org/w.onnx", "0" * 64, "onnx")
    with pytest.raises(ValueError, match=r"torchvision/resnet50.IMAGENET1K_V2: already registered"):
        hub.register("torchvision/resnet50.IMAGENET1K_V2", "https://example.org/w.pth", "0" * 64, "pth")
    with pytest.raises(ValueError, match=r"not a registered checkpoint name; did you mean torchvision/resnet50.IMAGENET1K_V"):
        hub.fetch("torchvision/resnet50.IMAGENET1K_V3")


def test_builtin_torchvision_names_are_what_torchvision_publishes():
    """Every weights enum member torchvision has for every preset it is the peer of, and no more."""
    models = pytest.importorskip("torchvision.models")
    from torch.hub import HASH_REGEX

    expected = set()
    for arch, preset in S.PRESETS.items():
        if not preset.peer.startswith("torchvision."):
            continue
        for published in models.get_model_weights(arch):
            e = hub.entry(f"torchvision/{arch}.{published.name}")
            assert (e.url, e.fmt, e.algorithm) == (published.url, "pth", "sha256")
            assert e.digest == HASH_REGEX.search(published.url.rsplit("/", 1)[1]).group(1)
            expected.add(e.name)
    assert {n for n in hub.names() if n.startswith("torchvision/")} == expected
    assert len(expected) == 17  # 10 architectures, 7 of them with a V2 recipe


@pytest.mark.keras
def test_builtin_keras_names_are_what_keras_applications_publishes():
    """Every ImageNet file Keras Applications has for a preset of the keras style (ResNet V1
    and V2), with and without the top, and no more."""
    pytest.importorskip("keras")
    resnet = importlib.import_module("keras.src.applications.resnet")
    expected = set()
    for arch in (a for a, p in S.PRESETS.items() if "keras" in p.styles and a in resnet.WEIGHTS_HASHES):
        for suffix, name_end, md5 in (("", ".imagenet", resnet.WEIGHTS_HASHES[arch][0]),
                                      ("_notop", ".imagenet-notop", resnet.WEIGHTS_HASHES[arch][1])):
            e = hub.entry(f"keras/{arch}{name_end}")
            url = f"{resnet.BASE_WEIGHTS_PATH}{arch}_weights_tf_dim_ordering_tf_kernels{suffix}.h5"
            assert (e.url, e.fmt, e.algorithm, e.digest) == (url, "h5", "md5", md5)
            expected.add(e.name)
    assert {n for n in hub.names() if n.startswith("keras/")} == expected
    assert {"keras/resnet50v2.imagenet", "keras/resnet152v2.imagenet-notop"} <= expected and len(expected) == 12


# ----------------------------------------------------------------------------- names everywhere

@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_load_weights_takes_a_name(framework, server, tiny_checkpoint):
    fw = pytest.importorskip({"torch": "resnet_torch", "keras": "resnet_keras", "flax": "resnet_flax"}[framework])
    url, files, _ = server
    weights, data, sha = tiny_checkpoint
    files["/w/tiny.safetensors"] = data
    hub.register("test/tiny", f"{url}/w/tiny.safetensors", sha, "safetensors")
    model = fw.load_weights(fw.build(TINY), "test/tiny")
    assert all(np.array_equal(v, weights[k]) for k, v in fw.export_weights(model).items())


def test_constructor_takes_a_name_of_a_torchvision_file(server, tmp_path):
    torch = pytest.importorskip("torch")
    import resnet_torch as rt

    spec = S.resnet50(num_classes=10)
    weights = W.init(spec, seed=2)
    torch.save({k: torch.from_numpy(v) for k, v in interop.to_torchvision(spec, weights).items()}, tmp_path / "r.pth")
    url, files, _ = server
    files["/r50-10.pth"] = (tmp_path / "r.pth").read_bytes()
    hub.register("test/r50-10", f"{url}/r50-10.pth", hashlib.sha256(files["/r50-10.pth"]).hexdigest(), "pth")
    model = rt.ResNet50(num_classes=10, weights="test/r50-10")
    assert all(np.array_equal(v, weights[k]) for k, v in rt.export_weights(model).items())
    with pytest.raises(ValueError, match=r"checkpoint is resnet50 \(torchvision style, 10 classes"):
        rt.ResNet50(weights="test/r50-10")


def test_cli_convert_and_check_take_a_name(server, tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("torch")
    url, files, _ = server
    weights, data, sha = tiny_checkpoint
    files["/w/tiny.safetensors"] = data
    hub.register("test/tiny", f"{url}/w/tiny.safetensors", sha, "safetensors")
    assert main(["convert", "test/tiny", str(tmp_path / "out.h5")]) == 0
    spec, back = keras_h5.from_keras_applications(tmp_path / "out.h5")
    assert spec == TINY and all(np.array_equal(back[k], v) for k, v in weights.items())
    assert main(["check", "--weights", "test/tiny", "--frameworks", "torch", "--batch", "2", "--size", "32"]) == 0
    assert "all checks passed" in capsys.readouterr().out
    assert main(["convert", "test/nothing", str(tmp_path / "x.safetensors")]) == 2
    assert "'test/nothing': not a registered checkpoint name" in capsys.readouterr().err
