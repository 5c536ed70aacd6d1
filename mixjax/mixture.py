"""A mixture: the domains and their weights (fractions of the training tokens), and the weights
files and NAME=W lists that give one.

`Mixture.of` is the one normalisation, from a {domain: weight} mapping (domains left out: 0) or
an array in domain order: finite, non-negative weights of known domains whose sum is within
WEIGHT_TOLERANCE of 1, divided by that sum in float64 (the rule trained runs have always used, so
a fixed-seed run trains on the same floats). A Mixture handed on in the same domain order is
never normalised again: a method's weights become one in the runner, which the trainer and the
sampler take as they are.

A weights file is what `mixjax optimize` and `mixjax mix` write ({"results": [{"budget": N,
"weights": {...}}, ...]}) or a plain {domain: weight} object; FILE@BUDGET picks a result.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Mapping

import numpy as np

from mixjax.errors import MixjaxError
from mixjax.names import check_domain_name
from mixjax.token_counts import parse_tokens, tokens_text

WEIGHT_TOLERANCE = 1e-6


@dataclasses.dataclass(frozen=True, eq=False)
class Mixture:
    """Domains and their normalised float64 weights (same order, summing to 1)."""

    domains: tuple[str, ...]
    weights: np.ndarray

    @classmethod
    def of(cls, weights, domains, where: str = "`weights`") -> "Mixture":
        """The mixture of `weights` over `domains` (a Mixture, a mapping or an array in domain
        order), checked and normalised; one-line errors name `where`."""
        domains = tuple(domains)
        if isinstance(weights, Mixture):
            if set(weights.domains) <= set(domains):  # the same weights, reordered: not divided again
                given = weights.as_dict()
                return weights if weights.domains == domains else \
                    cls(domains, np.array([given.get(d, 0.0) for d in domains], np.float64))
            weights = weights.as_dict()  # an unknown domain: the error below
        if isinstance(weights, Mapping):
            unknown = [d for d in weights if d not in domains]
            if unknown:
                raise MixjaxError(f"{where}: unknown domain(s) {', '.join(map(str, unknown))}; "
                                  f"the data has {', '.join(domains)}")
            array = np.array([float(weights.get(d, 0.0)) for d in domains], np.float64)
        else:
            array = np.asarray(weights, np.float64)
            if array.shape != (len(domains),):
                raise MixjaxError(f"{where}: expected {len(domains)} weights, got shape {array.shape}")
        if not np.all(np.isfinite(array)):
            raise MixjaxError(f"{where}: weights must be finite numbers")
        if np.any(array < 0):
            bad = [d for d, w in zip(domains, array) if w < 0]
            raise MixjaxError(f"{where}: negative weight for {', '.join(bad)}")
        if abs(array.sum() - 1.0) > WEIGHT_TOLERANCE:
            raise MixjaxError(f"{where}: weights sum to {array.sum():.6g}, not 1")
        return cls(domains, array / array.sum())

    def as_dict(self) -> dict[str, float]:
        """{domain: weight} in domain order (the form of result.json and weights files)."""
        return {d: float(w) for d, w in zip(self.domains, self.weights)}


def weights_in_file(obj, where: str) -> dict:
    """The weights a parsed weights file holds: the first result of the format `mixjax optimize`
    and `mixjax mix` write ({"results": [{"weights": {...}}, ...]}) or a plain {domain: weight}
    object. A file with no results, an empty result or no weights is a one-line error naming
    `where` (the flag and the file); the caller checks the numbers."""
    if isinstance(obj, dict) and "results" in obj:
        results = obj["results"]
        if not isinstance(results, list) or not results:
            raise MixjaxError(f"{where}: no results (its 'results' list is empty)")
        first = results[0]
        if not isinstance(first, dict) or not isinstance(first.get("weights"), dict) or not first["weights"]:
            raise MixjaxError(f"{where}: its first result has no weights")
        obj = first["weights"]
    elif isinstance(obj, dict) and any(k in obj and not isinstance(obj[k], (int, float)) for k in ("law", "domains")):
        raise MixjaxError(f"{where}: no 'results' (a weights file from `mixjax optimize` lists them)")
    if not isinstance(obj, dict) or not obj:
        raise MixjaxError(f"{where}: holds no weights object")
    for name in obj:
        check_domain_name(name, where)
    return obj


def result_for_budget(obj, budget: int | None, where: str, *, exact: bool = False,
                      warn=print) -> tuple[dict, float | None]:
    """(weights, the result's budget) of a parsed weights file for `budget` tokens. A file of
    results (`mixjax optimize`/`mix`) gives the result whose budget equals `budget`; with none, a
    file of several results (or `exact`) is a one-line error listing its budgets, and a file of one
    result is used with a one-line warning naming both budgets (a researcher training a little
    off the optimised budget usually means it). A plain {domain: weight} object has no budget."""
    if not (isinstance(obj, dict) and isinstance(obj.get("results"), list) and obj["results"]):
        return weights_in_file(obj, where), None
    results = obj["results"]
    budgets = [r.get("budget") if isinstance(r, dict) else None for r in results]
    known = [b for b in budgets if isinstance(b, (int, float)) and not isinstance(b, bool)]
    listed = ", ".join(tokens_text(b) for b in known) or "none"
    if budget is None:
        if len(results) > 1:
            raise MixjaxError(f"{where}: holds results for budgets {listed}; name one "
                              "(--budget-tokens, or FILE@BUDGET)")
        index = 0
    else:
        matches = [i for i, b in enumerate(budgets) if b in known and math.isclose(b, budget, rel_tol=1e-9)]
        if matches:
            index = matches[0]
        elif exact or len(results) > 1:
            raise MixjaxError(f"{where}: no result for {tokens_text(budget)} tokens; it has budgets {listed} "
                              f"(train at one of them, or pick one as FILE@BUDGET)")
        else:
            index = 0
            if budgets[0] in known:
                warn(f"warning: {where}: weights optimised for {tokens_text(budgets[0])} tokens, "
                     f"training {tokens_text(budget)}")
    weights = weights_in_file({"results": [results[index]]}, where)
    return weights, (budgets[index] if budgets[index] in known else None)


def _name_weight_list(text: str, flag: str) -> dict:
    """NAME=W,NAME=W,... as a dict (the numbers unchecked)."""
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = part.partition("=")
        try:
            if not eq or not name:
                raise ValueError
            weights[name.strip()] = float(value)
        except ValueError:
            raise MixjaxError(f"{flag}: expected NAME=WEIGHT[,NAME=WEIGHT...], got {part!r}") from None
    return weights


def weights_and_source(text: str | None, flag: str = "--weights", budget: int | None = None,
                       warn=print) -> tuple[dict[str, float] | None, dict | None]:
    """(weights, where they come from) of NAME=W,NAME=W,... or a weights JSON file, whose result
    for `budget` tokens is taken (FILE@BUDGET names one); where: {"file", "budget"} for a file,
    else None. `Mixture.of` checks the numbers against the data's domains."""
    if text is None:
        return None, None
    file_text, at, budget_text = (text.rpartition("@") if "@" in text and not Path(text).is_file()
                                  else (text, "", ""))
    path = Path(file_text)
    source = None
    if path.suffix == ".json" or path.is_file():
        try:
            obj = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise MixjaxError(f"{flag}: cannot read {file_text}: {e}") from None
        chosen = parse_tokens(budget_text, f"{flag} {text}") if at else None
        weights, result_budget = result_for_budget(obj, chosen or budget, f"{flag}: {file_text}",
                                                   exact=chosen is not None, warn=warn)
        source = {"file": str(path), "budget": result_budget}
        if not isinstance(weights, dict):
            raise MixjaxError(f"{flag}: {file_text} holds no weights object")
    else:
        weights = _name_weight_list(text, flag)
    try:
        weights = {str(k): float(v) for k, v in weights.items()}
    except (TypeError, ValueError):
        raise MixjaxError(f"{flag}: weights must be numbers") from None
    if not weights:
        raise MixjaxError(f"{flag}: no weights given")
    return weights, source
