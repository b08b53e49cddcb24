"""User-input errors and argument types shared by the scripts and the systems' own flags (a
system adds its generate.py flags with these; the CLI layer sits above and re-exports them)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["UsageError", "comma_list", "finite", "non_negative", "positive"]


class UsageError(ValueError):
    """A bad flag value or input; the message names the flag or file and what was expected."""


def _number(kind: type, ok: Callable[[float], bool], bound: str) -> Callable[[str], int | float]:
    what = ("an integer" if kind is int else "a finite number") + bound

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}") from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    return parse


def positive(kind: type = int) -> Callable[[str], int | float]:
    """argparse type: a finite number > 0."""
    return _number(kind, lambda v: v > 0, " > 0")


def non_negative(kind: type = float) -> Callable[[str], int | float]:
    """argparse type: a finite number ≥ 0."""
    return _number(kind, lambda v: v >= 0, " >= 0")


def finite(kind: type = float) -> Callable[[str], int | float]:
    """argparse type: a finite number (no nan or inf)."""
    return _number(kind, lambda v: True, "")


def comma_list(item: Callable[[str], int | float]) -> Callable[[str], tuple[int | float, ...]]:
    """argparse type: comma-separated values, each read by `item` (e.g. positive(float)); a bad
    one is named with the list it came in."""
    def parse(text: str) -> tuple[int | float, ...]:
        try:
            return tuple(item(v) for v in text.split(","))
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentTypeError(f"{err} in the comma-separated list {text!r}"
                                             ) from None

    return parse
