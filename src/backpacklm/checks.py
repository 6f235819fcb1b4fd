"""Numeric range rules, shared by the CLI's option types (`cli/options.py`) and the config dataclasses of the API,
so `--max-steps 0` and `TrainConfig(max_steps=0)` fail alike."""

from __future__ import annotations

import math

from .errors import BackpackError

# rule -> (type the value must have, test, what the message says it must be)
RULES = {
    "positive_int": (int, lambda v: v >= 1, "an integer >= 1"),
    "non_negative_int": (int, lambda v: v >= 0, "an integer >= 0"),
    "positive_float": (float, lambda v: v > 0, "a finite number > 0"),
    "non_negative_float": (float, lambda v: v >= 0, "a finite number >= 0"),
    "probability": (float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "unit_interval": (float, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "seed": (int, lambda v: 0 <= v < 2**64, "an integer in [0, 2**64)"),  # what torch's generators take
    "learning_rate": (float, lambda v: 0 < v <= 3.4e38, "a number in (0, 3.4e38], float32's range"),  # 1e300 overflowed
}


def range_problem(value, rule: str) -> str | None:
    """None when `value` satisfies `rule`, else what is wrong ("must be an integer >= 1, got 0")."""
    kind, test, what = RULES[rule]
    number_types = (int,) if kind is int else (int, float)
    ok = (isinstance(value, number_types) and not isinstance(value, bool)
          and (kind is int or math.isfinite(value)) and test(value))
    return None if ok else f"must be {what}, got {value!r}"


def check(name: str, value, rule: str):
    """`value` if it satisfies `rule`; else BackpackError naming `name`."""
    if problem := range_problem(value, rule):
        raise BackpackError(f"{name} {problem}")
    return value


def check_fields(obj, **rules: str) -> None:
    """Check attributes of `obj` (a config dataclass) by rule name; None means unset and passes."""
    for name, rule in rules.items():
        if getattr(obj, name) is not None:
            check(name, getattr(obj, name), rule)
