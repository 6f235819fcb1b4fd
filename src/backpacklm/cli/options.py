"""Range-checked argparse `type=` functions: a nonsense number is a one-line usage error before any work starts.
The ranges are `backpacklm.checks.RULES`, the same the API's config dataclasses enforce."""

from __future__ import annotations

import argparse

from ..checks import RULES, range_problem


def _option(rule: str):
    kind = RULES[rule][0]

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if problem := range_problem(value, rule):
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = rule
    return parse


positive_int = _option("positive_int")
non_negative_int = _option("non_negative_int")
positive_float = _option("positive_float")
non_negative_float = _option("non_negative_float")
probability = _option("probability")
unit_interval = _option("unit_interval")
seed = _option("seed")
learning_rate = _option("learning_rate")
