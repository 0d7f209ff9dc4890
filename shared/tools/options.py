"""What every command shares: the one-line user error, and the value parsers (one
comma-separated choice list, positive integers, stage depths, JSON-or-text values)."""

from __future__ import annotations

import argparse
import json

from shared.tools.adapter import PRECISIONS


class CliError(Exception):
    """A one-line error for the user (exit code 2, no traceback)."""


def csv_choices(choices, precisions=None):
    """``a,b`` -> ["a", "b"], each one of ``choices``, repeats dropped; unknown or empty: an error.
    With ``precisions`` (the command's ``--precision`` choices) the choices are targets, and a
    target named with a precision (``openvino-bf16``) is refused saying how to ask for it."""
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        for t in bad if precisions is not None else ():
            target, _, precision = t.rpartition("-")
            if target in choices and precision in PRECISIONS:
                raise argparse.ArgumentTypeError(
                    f"{t!r}: {precision} is a precision, not a target: "
                    + (f"--frameworks {target} --precision {precision}" if precision in precisions else
                       f"this command runs {', '.join(precisions)} only"))
        if bad or not items:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(map(repr, bad)) or 'empty list'}; "
                                             f"expected some of {', '.join(choices)}")
        return list(dict.fromkeys(items))

    return parse


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def depths(text: str) -> tuple[int, ...]:
    try:
        found = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected stage depths like 1,1,1,1, got {text!r}") from None
    if not found or min(found) < 1:
        raise argparse.ArgumentTypeError(f"every stage needs at least 1 block, got {text!r}")
    return found


def literal(text: str):
    """A JSON value (``1e-3``, ``true``, ``[1, 2]``), else the text itself (``1x1``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
