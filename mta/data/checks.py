"""The value checks every task shares: one ValueError line naming the parameter and what is
allowed. The config layer prefixes the key (`data.niah: num_needles must be >= 1, got 0`)."""

import numpy as np


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """Returns `value` as an int; ValueError naming `name` unless it is an int in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return int(value)


def check_fraction(name: str, value: object) -> float:
    """Returns value as a float; ValueError unless it is a number strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not 0 < value < 1:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value}")
    return float(value)


def check_choice(name: str, value: object, allowed: tuple) -> object:
    """Returns `value`; ValueError naming `name` and listing `allowed` unless it is one of them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")
    return value
