"""The table of training runs: tokens of each domain a run consumed, validation loss on each domain.

CSV format (DESIGN.md): a `run` column, then `tokens_<domain>` and `loss_<domain>` for every
domain; an empty loss is "not measured". Other columns are kept (and written back) but ignored.
Runs may come from anywhere: the mixjax trainer, or a CSV written by hand from PyTorch runs.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

import numpy as np

from mixjax.errors import MixjaxError
from mixjax.names import check_domain_name, check_run_name


@dataclass
class Observations:
    """Runs x domains: tokens (R, K) and losses (R, K, NaN = not measured)."""

    runs: list[str]
    domains: list[str]
    tokens: np.ndarray  # (R, K) float64, >= 0
    losses: np.ndarray  # (R, K) float64, NaN where not measured
    extra: dict[str, list[str]] = field(default_factory=dict)  # other CSV columns, kept verbatim

    def __post_init__(self):
        self.tokens = np.asarray(self.tokens, dtype=np.float64)
        self.losses = np.asarray(self.losses, dtype=np.float64)
        R, K = len(self.runs), len(self.domains)
        if self.tokens.shape != (R, K) or self.losses.shape != (R, K):
            raise MixjaxError(
                f"observations: tokens {self.tokens.shape} and losses {self.losses.shape} "
                f"must both be (runs, domains) = ({R}, {K})"
            )
        for r, name in enumerate(self.runs):  # same rules as the CSV reader, for tables built in code
            t, loss = self.tokens[r], self.losses[r]
            if not np.all(np.isfinite(t)) or np.any(t < 0) or t.sum() <= 0:
                raise MixjaxError(f"observations: run {name!r} has invalid tokens {t.tolist()}")
            if np.any(np.isinf(loss)) or np.any(loss[~np.isnan(loss)] < 0):
                raise MixjaxError(f"observations: run {name!r} has an infinite or negative loss")

    @property
    def observed(self) -> np.ndarray:
        """(R, K) bool: the loss of that run on that domain was measured."""
        return ~np.isnan(self.losses)

    def select(self, domains: list[str]) -> "Observations":
        """The same runs with the domain columns in the order `domains` (must be the same set)."""
        if sorted(domains) != sorted(self.domains):
            raise MixjaxError(
                f"domains {domains} do not match the observations' domains {self.domains}"
            )
        order = [self.domains.index(d) for d in domains]
        return Observations(
            self.runs, list(domains), self.tokens[:, order], self.losses[:, order], self.extra
        )

    def concat(self, other: "Observations") -> "Observations":
        """These runs followed by `other`'s (its domain columns put in this table's order)."""
        other = other.select(self.domains)
        return Observations(self.runs + other.runs, self.domains, np.vstack([self.tokens, other.tokens]),
                            np.vstack([self.losses, other.losses]))


def _parse_number(text: str, where: str, what: str, allow_empty: bool) -> float:
    text = text.strip()
    if text == "":
        if allow_empty:
            return math.nan
        raise MixjaxError(f"{where}: {what} is empty")
    try:
        value = float(text)
    except ValueError:
        raise MixjaxError(f"{where}: {what} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise MixjaxError(f"{where}: {what} is {text!r}; it must be a finite number")
    if value < 0:
        raise MixjaxError(f"{where}: {what} is negative ({text})")
    return value


def parse_csv(text: str, source: str = "observations") -> Observations:
    """Parse the observations CSV; every problem is one MixjaxError naming the file and line."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise MixjaxError(f"{source}: empty file") from None
    if "run" not in header:
        raise MixjaxError(f"{source}: line 1: no 'run' column")
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise MixjaxError(f"{source}: line 1: duplicate columns {dup}")
    domains = [h[len("tokens_") :] for h in header if h.startswith("tokens_") and len(h) > 7]
    loss_domains = [h[len("loss_") :] for h in header if h.startswith("loss_") and len(h) > 5]
    if len(domains) < 2:
        raise MixjaxError(f"{source}: line 1: need tokens_<domain> columns for at least 2 domains")
    for d in domains:
        check_domain_name(d, f"{source}: line 1")
    for d in loss_domains:
        if d not in domains:
            raise MixjaxError(f"{source}: line 1: column loss_{d} has no tokens_{d} column")
    col = {h: j for j, h in enumerate(header)}
    known = {"run"} | {f"tokens_{d}" for d in domains} | {f"loss_{d}" for d in domains}
    extra_cols = [h for h in header if h not in known]
    runs, tokens, losses, extra = [], [], [], {h: [] for h in extra_cols}
    line_of = {}  # run name -> the line it is on
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise MixjaxError(
                f"{source}: line {line_no}: {len(row)} fields, the header has {len(header)}"
            )
        where = f"{source}: line {line_no}"
        name = row[col["run"]].strip()
        if not name:
            raise MixjaxError(f"{where}: empty run name")
        check_run_name(name, where)
        if name in line_of:
            raise MixjaxError(f"{where}: run {name!r} is also on line {line_of[name]}; run names must be unique")
        line_of[name] = line_no
        tok = [_parse_number(row[col[f"tokens_{d}"]], where, f"tokens_{d}", False) for d in domains]
        if sum(tok) <= 0:
            raise MixjaxError(f"{where}: run {name!r} has no tokens in any domain")
        loss = [
            _parse_number(row[col[f"loss_{d}"]], where, f"loss_{d}", True)
            if f"loss_{d}" in col
            else math.nan
            for d in domains
        ]
        runs.append(name)
        tokens.append(tok)
        losses.append(loss)
        for h in extra_cols:
            extra[h].append(row[col[h]])
    if not runs:
        raise MixjaxError(f"{source}: no runs (only a header)")
    return Observations(runs, domains, np.array(tokens), np.array(losses), extra)


def read_csv(path) -> Observations:
    """Read an observations CSV file."""
    try:
        with open(path, newline="") as f:
            text = f.read()
    except FileNotFoundError:
        raise MixjaxError(f"{path}: no such observations file") from None
    return parse_csv(text, source=str(path))


def to_csv_text(obs: Observations) -> str:
    """The CSV text: run, tokens_*, loss_* (empty where not measured), then the extra columns."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    extra_cols = list(obs.extra)
    writer.writerow(
        ["run"]
        + [f"tokens_{d}" for d in obs.domains]
        + [f"loss_{d}" for d in obs.domains]
        + extra_cols
    )
    for r, name in enumerate(obs.runs):
        writer.writerow(
            [name]
            + [_format(x) for x in obs.tokens[r]]
            + ["" if math.isnan(x) else repr(float(x)) for x in obs.losses[r]]
            + [obs.extra[h][r] for h in extra_cols]
        )
    return out.getvalue()


def write_csv(obs: Observations, path) -> None:
    """Write the observations CSV atomically."""
    from mixjax.io import write_text_atomic

    write_text_atomic(path, to_csv_text(obs))


def _format(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))

