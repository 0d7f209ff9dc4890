"""Every checkpoint format, for the tools: ``shared.formats`` with the framework formats' readers
and writers reached through the adapters (``shared.tools.adapter``), each loaded only when a file
of its format is read or written. ``resnet-parity convert`` and ``check --weights`` read here; the
core and the framework packages never do (each reads the core's formats and its own).
"""

from __future__ import annotations

import os
from typing import Iterator, Mapping

import numpy as np

from shared import checkpoint, formats
from shared.spec import ResNetSpec
from shared.tools import adapter

FORMATS = formats.FORMATS
FrameworkMissing = formats.FrameworkMissing
detect, destination_format = formats.detect, formats.destination_format


class _Through(Mapping):
    """format -> the adapter's reader (``READERS``) or writer (``WRITERS``), the adapter loaded
    on first use; a format whose framework is not installed is absent, so ``shared.formats``
    names the package and the extra."""

    def __init__(self, table: str):
        self.table = table

    def __getitem__(self, fmt: str):
        owner = formats.OWNER.get(fmt)
        if owner is None or not adapter.installed(owner[1]):
            raise KeyError(fmt)
        return getattr(adapter.load(owner[1]), self.table)[fmt]

    def __iter__(self) -> Iterator[str]:
        return iter(formats.OWNER)

    def __len__(self) -> int:
        return len(formats.OWNER)


READERS, WRITERS = _Through("READERS"), _Through("WRITERS")


def read(source: str | os.PathLike, spec: ResNetSpec | None = None, style: str | None = None,
         format: str | None = None) -> tuple[ResNetSpec, dict[str, np.ndarray]]:
    """(spec, canonical weights) of a checkpoint file or directory, or a ``shared.hub`` name, in
    any format (``shared.checkpoint.read`` with every framework's readers)."""
    return checkpoint.read(source, spec=spec, style=style, format=format, readers=READERS)


def write(spec: ResNetSpec, weights: Mapping[str, np.ndarray], path: str | os.PathLike,
          format: str | None = None) -> str:
    """Canonical weights -> ``path`` in any format (``shared.formats.write``); the format written."""
    return formats.write(spec, weights, path, format=format, writers=WRITERS)
