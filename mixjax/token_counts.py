"""Token counts as users write them (5e6, 5M, 500k, 2G) and as messages show them (5,000,000):
the budgets of every command and of a weights file's FILE@BUDGET."""

from __future__ import annotations

import math

from mixjax.errors import MixjaxError

_SUFFIXES = {"k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}


def tokens_value(text: str) -> float:
    """5e6, 5M, 500k or 2G as a number; ValueError for anything else."""
    mult = _SUFFIXES.get(text[-1:].lower(), 1)
    return float(text[:-1] if mult != 1 else text) * mult


def parse_tokens(text: str, flag: str) -> int:
    """A positive, finite token count; one-line errors name `flag`."""
    try:
        value = tokens_value(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value):
        finite = "" if value is None else "finite "
        raise MixjaxError(f"{flag}: expected a {finite}number of tokens (e.g. 5e6 or 5M), got {text!r}")
    if value <= 0:
        raise MixjaxError(f"{flag}: must be positive")
    return int(value)


def tokens_text(budget) -> str:
    """5,000,000 (or 2,500.5 for a fraction): a token count as messages show it."""
    return f"{int(budget):,}" if float(budget).is_integer() else f"{float(budget):,g}"
