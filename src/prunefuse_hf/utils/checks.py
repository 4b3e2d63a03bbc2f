"""Checks of single setting values (a choice, a boolean, an integer or a number in range): each error names the
field, the value and what is allowed."""

from __future__ import annotations

import math
import numbers


def check_choice(name: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}.")


def check_boolean(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}.")


def check_integer(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_number(name: str, value, check, allowed: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or math.isnan(value)
        or not check(value)
    ):
        raise ValueError(f"{name} must be {allowed}, got {value!r}.")
    return float(value)
