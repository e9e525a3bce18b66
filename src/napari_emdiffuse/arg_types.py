"""Value types for command-line options: a bad number is refused by argparse on one line that
names the option (``argument --dose: ...``), before any file is opened."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
from typing import Any, Callable, Iterator

from .errors import ConfigError, InputError


def number(low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """A finite float within the bounds (``low_open``: the bound itself is excluded)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            left = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
            right = "" if high is None else f"{high:g}" + (")" if high_open else "]")
            raise argparse.ArgumentTypeError(f"{text} is out of range: expected a number in {left or '(-inf'}, {right or 'inf)'}")
        return value

    return parse


def whole(low: int = 1, high: int | None = None) -> Callable[[str], int]:
    """An integer within the bounds (inclusive)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range: expected {low} to {high}" if high is not None else f"{value} is out of range: expected at least {low}")
        return value

    return parse


def variant_option(text: str) -> tuple[str, Any]:
    """``--option KEY=VALUE``: the value as JSON where it parses (``factor=2`` is a number), else
    as text."""
    key, sep, value = text.partition("=")
    if not sep:
        raise InputError(f"--option {text!r}: expected KEY=VALUE, e.g. factor=2")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


@contextlib.contextmanager
def as_flags(section: str, keys: Any) -> Iterator[None]:
    """Name the command-line options, not the preset keys, in a refusal of values given on the
    command line (``--tile-size 7``: "--tile-size: ..." rather than "sample.tile_size: ...");
    ``keys`` are the ``section``'s keys the options set."""
    try:
        yield
    except ConfigError as err:
        named = [key for key in keys if f"{section}.{key}" in str(err)]
        if not named:
            raise  # a value from a preset file: its message names the file and the key
        text = str(err)
        for key in named:
            text = text.replace(f"{section}.{key}", "--" + key.replace("_", "-"))
        raise ConfigError(text) from None
