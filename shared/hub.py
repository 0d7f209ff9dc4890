"""Named checkpoints: ``fetch("torchvision/resnet50.IMAGENET1K_V2")`` -> a verified local file.

A name maps to a URL, a format (``safetensors``, ``pth``, ``h5``) and a digest. ``fetch``
downloads the file once into ``$RESNET_PARITY_CACHE`` (default ``~/.cache/resnet-parity``), at
``<cache>/<name>/<file name of the URL>``, streaming it into a temporary file beside that path
while hashing it, and renames it into place only when the digest matches. A wrong digest, a cut
download or an interrupt leaves nothing in the cache. A cached file is checked and used without
touching the network, so a file put there by hand works offline.

Publishers give what they give: torchvision a sha256 prefix in the file name
(``resnet50-0676ba61.pth``, checked as ``torch.hub`` checks it), Keras Applications an md5 in
``WEIGHTS_HASHES`` (keras/src/applications/resnet.py). The built-in names verify with exactly
that; ``register`` takes a full sha256.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from shared.spec import PRESETS
from shared.weights import atomic_path

ENV = "RESNET_PARITY_CACHE"
FORMATS = ("safetensors", "pth", "h5")
TIMEOUT = 60.0  # seconds without a byte before a download counts as cut
_NAME = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


class HubError(OSError):
    """A named checkpoint could not be fetched or verified; the message says what to do."""


@dataclass(frozen=True)
class Entry:
    """One named checkpoint. ``digest`` is hex; with ``algorithm="sha256"`` a shorter digest is
    a prefix (torchvision publishes 8 hex digits in its file names)."""

    name: str
    url: str
    fmt: str
    digest: str
    algorithm: str = "sha256"

    @property
    def filename(self) -> str:
        return urllib.parse.urlsplit(self.url).path.rsplit("/", 1)[-1] or "checkpoint"

    def matches(self, hexdigest: str) -> bool:
        return hexdigest.startswith(self.digest) if self.algorithm == "sha256" else hexdigest == self.digest


_REGISTRY: dict[str, Entry] = {}


def _add(entry: Entry, replace: bool = False) -> Entry:
    if not _NAME.match(entry.name) or ".." in entry.name.split("/"):
        raise ValueError(f"name: expected path-like words (letters, digits, '._-', '/'), got {entry.name!r}")
    if entry.fmt not in FORMATS:
        raise ValueError(f"fmt: expected one of {FORMATS}, got {entry.fmt!r}")
    if not entry.url.startswith(("https://", "http://", "file://")):
        raise ValueError(f"url: expected an http(s):// or file:// URL, got {entry.url!r}")
    old = _REGISTRY.get(entry.name)
    if old is not None and old != entry and not replace:
        raise ValueError(f"{entry.name}: already registered for {old.url}; pass replace=True to change it")
    _REGISTRY[entry.name] = entry
    return entry


def register(name: str, url: str, sha256: str, fmt: str, *, replace: bool = False) -> None:
    """Name a checkpoint: ``fetch(name)`` then downloads ``url`` and accepts it only if its
    sha256 is ``sha256`` (64 hex digits). ``fmt``: "safetensors" (canonical), "pth"
    (torchvision state_dict) or "h5" (Keras Applications)."""
    sha256 = str(sha256).lower()
    if not _SHA256.match(sha256):
        raise ValueError(f"sha256: expected 64 hex digits, got {sha256!r}")
    _add(Entry(name, url, fmt, sha256, "sha256"), replace=replace)


def names() -> list[str]:
    return sorted(_REGISTRY)


def is_registered(name) -> bool:
    return isinstance(name, str) and name in _REGISTRY


def entry(name: str) -> Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(str(name), _REGISTRY, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(names())}"
        raise ValueError(f"{name!r}: not a registered checkpoint name{hint}") from None


def cache_dir() -> Path:
    return Path(os.environ.get(ENV) or Path.home() / ".cache" / "resnet-parity")


def cached_path(name: str) -> Path:
    """Where ``fetch(name)`` keeps the file (and where to put it by hand when offline)."""
    e = entry(name)
    return cache_dir() / e.name / e.filename


def _file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _expected(e: Entry) -> str:
    return f"{e.algorithm} {e.digest}" + ("..." if e.algorithm == "sha256" and len(e.digest) < 64 else "")


def fetch(name: str, *, progress: bool = True) -> Path:
    """The verified local file for ``name``, downloading it on first use (with a progress bar
    on stderr). Raises HubError naming the URL, the cache path and what to do."""
    e = entry(name)
    path = cache_dir() / e.name / e.filename
    if path.is_file():
        actual = _file_digest(path, e.algorithm)
        if e.matches(actual):
            return path
        raise HubError(f"{name}: the cached file {path} has {e.algorithm} {actual}, expected {_expected(e)}; "
                       "delete it and fetch again (or put the right file there)")
    created = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _download(e, path, progress)
    except BaseException:
        if created:
            _remove_empty(path.parent, cache_dir())
        raise
    return path


def _remove_empty(folder: Path, stop: Path) -> None:
    """rmdir ``folder`` and its empty parents up to (not including) ``stop``."""
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _download(e: Entry, path: Path, progress: bool) -> None:
    offline = (f"put the file there by hand ({_expected(e)}) and it is used without a network")
    try:
        response = urllib.request.urlopen(e.url, timeout=TIMEOUT)
    except urllib.error.HTTPError as err:
        raise HubError(f"{e.name}: downloading {e.url} failed: HTTP {err.code} {err.reason}. "
                       f"Check the URL, or {offline}: {path}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise HubError(f"{e.name}: cannot reach {e.url} ({reason}); offline? The cache file is {path}: "
                       f"{offline}") from None
    with response, atomic_path(path) as tmp:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        h, received = hashlib.new(e.algorithm), 0
        try:
            with open(tmp, "wb") as f, _bar(e, total, progress) as advance:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    h.update(chunk)
                    received += len(chunk)
                    advance(len(chunk))
        except (OSError, http.client.HTTPException) as err:
            raise HubError(f"{e.name}: the download of {e.url} was cut after {received:,} bytes "
                           f"({type(err).__name__}: {err}); nothing was kept in the cache, try again") from None
        if total is not None and received != total:
            raise HubError(f"{e.name}: the download of {e.url} was cut: {received:,} of {total:,} bytes; "
                           "nothing was kept in the cache, try again")
        actual = h.hexdigest()
        if not e.matches(actual):
            raise HubError(f"{e.name}: {e.url} gave a file whose {e.algorithm} is {actual}, expected "
                           f"{_expected(e)}; nothing was kept in the cache. The download was corrupted or "
                           "the file on the server changed: try again, and check the URL if it persists")


class _bar:
    """A rich download bar on stderr; ``advance(n)`` inside the block."""

    def __init__(self, e: Entry, total: int | None, enabled: bool):
        self.e, self.total, self.enabled, self.progress = e, total, enabled, None

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
        self.progress.start()
        task = self.progress.add_task(f"fetching {self.e.name}", total=self.total)
        return lambda n: self.progress.advance(task, n)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
        return False


# ----------------------------------------------------------------------------- built-in names
# One name per published checkpoint of an architecture of ``shared.spec.PRESETS``:
# ``torchvision/<arch>.<tag>`` and ``keras/<arch>.imagenet`` / ``.imagenet-notop``.
#
# torchvision/models/resnet.py (torchvision 0.29.1, read 2026-11-27): every ``*_Weights`` enum's
# file ``<arch>-<first 8 hex digits of its sha256>.pth``; the prefix is what torchvision publishes.
_TORCHVISION_BASE = "https://download.pytorch.org/models/"
_TORCHVISION = {
    "resnet18": {"IMAGENET1K_V1": "f37072fd"},
    "resnet34": {"IMAGENET1K_V1": "b627a593"},
    "resnet50": {"IMAGENET1K_V1": "0676ba61", "IMAGENET1K_V2": "11ad3fa6"},
    "resnet101": {"IMAGENET1K_V1": "63fe2227", "IMAGENET1K_V2": "cd907fc2"},
    "resnet152": {"IMAGENET1K_V1": "394f9c45", "IMAGENET1K_V2": "f82ba261"},
    "resnext50_32x4d": {"IMAGENET1K_V1": "7cdf4587", "IMAGENET1K_V2": "1a0047aa"},
    "resnext101_32x8d": {"IMAGENET1K_V1": "8ba56ff5", "IMAGENET1K_V2": "110c445d"},
    "resnext101_64x4d": {"IMAGENET1K_V1": "173b62eb"},
    "wide_resnet50_2": {"IMAGENET1K_V1": "95faca4d", "IMAGENET1K_V2": "9ba9bcbe"},
    "wide_resnet101_2": {"IMAGENET1K_V1": "32ee1156", "IMAGENET1K_V2": "d733dc28"},
}
# keras/src/applications/resnet.py (keras 3.15.1, read 2026-11-27): BASE_WEIGHTS_PATH and the md5
# pairs (with top, without top) of WEIGHTS_HASHES, keyed by the ``weights_name`` that
# ResNet50..ResNet152V2 pass (the preset's name); files ``<name>_weights_tf_dim_ordering_tf_kernels[_notop].h5``.
_KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
_KERAS_MD5 = {
    "resnet50": ("2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626"),
    "resnet101": ("f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21"),
    "resnet152": ("100835be76be38e30d865e96f2aaae62", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
    "resnet50v2": ("3ef43a0b657b3be2300d5770ece849e0", "fac2f116257151a9d068a22e544a4917"),
    "resnet101v2": ("6343647c601c52e1368623803854d971", "c0ed64b8031c3730f411d2eb4eea35b5"),
    "resnet152v2": ("a49b44d1979771252814e80f8ec446f9", "ed17cf2e0169df9d443503ef94b23b33"),
}


def _builtin() -> None:
    for arch, preset in PRESETS.items():
        if "torchvision" in preset.styles:
            for tag, prefix in _TORCHVISION.get(arch, {}).items():
                _add(Entry(f"torchvision/{arch}.{tag}", f"{_TORCHVISION_BASE}{arch}-{prefix}.pth", "pth", prefix))
        if "keras" in preset.styles and arch in _KERAS_MD5:
            for suffix, name_end, md5 in zip(("", "_notop"), (".imagenet", ".imagenet-notop"), _KERAS_MD5[arch]):
                _add(Entry(f"keras/{arch}{name_end}",
                           f"{_KERAS_BASE}{arch}_weights_tf_dim_ordering_tf_kernels{suffix}.h5", "h5", md5, "md5"))


_builtin()
