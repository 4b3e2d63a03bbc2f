"""Checks of single setting values (a choice, a boolean, an integer or a number in range): each error names the
field, the value and what is allowed."""

from __future__ import annotations

import math
import numbers
import re

_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20,
               "gib": 2**30, "tib": 2**40}  # fmt: skip
_NO_SIZE = ("none", "unlimited")


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


def validate_pruning_ratio(pruning_ratio) -> float:
    """Return `pruning_ratio` as a float, or raise a `ValueError` saying what is allowed. `prune_model` and
    `PruneFuseConfig` both check the ratio with it.

    Args:
        pruning_ratio (`float`): The fraction of every prunable width to remove.

    Returns:
        `float`: the ratio, in [0, 1).

    Raises:
        `ValueError`: not a real number (booleans and strings included), NaN, or outside [0, 1).

    Example:

    ```python
    >>> validate_pruning_ratio(1 / 2)
    0.5
    ```
    """
    return check_number(
        "pruning_ratio",
        pruning_ratio,
        lambda v: 0 <= v < 1,
        "a number in [0, 1) (the fraction of every prunable width that is removed: 0.5 halves each width, 0 "
        "keeps the dense model as its own selector)",
    )


def check_size(name: str, value) -> int | None:
    """
    A size in bytes: an `int`, or a string such as `"50GB"`, `"500MB"`, `"1.5TB"` or `"2GiB"` (as `save_pretrained`'s
    `max_shard_size`); `None`, `"none"` or `"unlimited"` give `None` (no limit).
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in _NO_SIZE):
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0:
        return int(value)
    match = (
        re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", value.lower()) if isinstance(value, str) else None
    )
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise ValueError(
            f"{name} must be a size such as '50GB', '500MB' or '2GiB' (or bytes as an integer, or 'none' for no "
            f"limit), got {value!r}."
        )
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
