"""li2025 with an adaptive design: train runs one at a time until the optimal weights are known.

Starts from `adaptive_design.initial_runs` (a small set that identifies the li2025 law), then
alternates: fit and assess the optimal weights at the budget (`adaptive_design.assess`: their 90%
intervals); stop when every interval is narrower than the tolerance (`adaptive_design.should_stop`)
or `max_runs` runs are done; otherwise train the candidate that `adaptive_design.propose_next`
picks. The runs train into SWEEP_DIR/runs/<name> with li2025's run settings (`Li2025.run_config`),
SWEEP_DIR/observations.csv holds every finished run, and SWEEP_DIR/adaptive.json records the run
list and every round (runs so far, weights, intervals, the run proposed). A proposed run is recorded before it trains, so a
killed sweep resumes with the same runs; the list only grows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mixjax.errors import MixjaxError
from mixjax.io import write_json_atomic
from mixjax.methods.base import ProposedRun
from mixjax.runners.sweep import check_run_names, check_sweep_dir, describe_runs, read_record, train_runs

RECORD = "adaptive.json"


def default_max_runs(num_domains: int) -> int:
    """The fixed design's run count, 1 + 4K: adaptive never spends more unless told to."""
    return 1 + 4 * num_domains


def _read_runs(path: Path, initial: list[ProposedRun]) -> tuple[list[ProposedRun], list[dict]]:
    """The recorded run list (which starts with `initial`) and rounds, or (initial, [])."""
    if not path.is_file():
        return list(initial), []
    record = read_record(path)
    try:
        runs = [ProposedRun(r["name"], {d: float(w) for d, w in r["weights"].items()}, int(r["budget_tokens"]))
                for r in record["runs"]]
        rounds = list(record.get("rounds", []))
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise MixjaxError(f"{path}: not an adaptive design's record ({e!r}); use a new directory") from None
    if [r.name for r in runs[:len(initial)]] != [r.name for r in initial]:
        raise MixjaxError(f"{path}: its runs do not start with this design's initial runs; use a new directory")
    return runs, rounds


def _write_runs(path: Path, runs, rounds) -> None:
    write_json_atomic(path, {"runs": [{"name": r.name, "weights": r.weights, "budget_tokens": r.budget_tokens}
                                      for r in runs], "rounds": rounds})


def run_adaptive_sweep(method, method_name: str, options: dict, data, budget_tokens: int, out, config,
                       log=print, n_samples: int = 200, seed: int = 0):
    """Train li2025's adaptive design (module doc); returns (runs, observations, record) with
    record = {"stopped": why, "rounds": [...]}."""
    from mixjax import laws
    from mixjax.methods import adaptive_design

    out = Path(out)
    domains = list(data.domains)
    tolerance = method.tolerance if method.tolerance is not None else adaptive_design.DEFAULT_TOLERANCE
    max_runs = method.max_runs if method.max_runs is not None else default_max_runs(len(domains))
    initial = adaptive_design.initial_runs(domains, budget_tokens, method.base_fraction)
    if max_runs < len(initial):
        raise MixjaxError(f"`max_runs` {max_runs}: the adaptive design starts with {len(initial)} runs "
                          f"(a spread-out start that identifies the li2025 law); give at least that")
    check_run_names(initial, f"`method` {method_name}")
    # sweep.json holds the fixed part (settings and the initial runs); adaptive.json the growing list
    check_sweep_dir(out, describe_runs(method_name, options, initial, budget_tokens, data, config,
                                       method.run_selection()))
    law = laws.get(method.law_name)
    runs, rounds = _read_runs(out / RECORD, initial)
    while True:
        observations = train_runs(method, runs, runs, data, out, config, log, log_done=False)
        a = adaptive_design.assess(observations, law, budget_tokens, n_boot=n_samples, seed=seed,
                            fit_options=method.fit_options)
        widest = int(np.argmax(a.widths))
        entry = {"runs": len(runs), "weights": dict(zip(domains, a.weights.tolist())),
                 "p05": dict(zip(domains, a.p05.tolist())), "p95": dict(zip(domains, a.p95.tolist()))}
        shown = ", ".join(f"{d}={w:.3f}" for d, w in zip(domains, a.weights))
        log(f"{len(runs)} runs: optimum {shown}; widest 90% interval {domains[widest]} "
            f"{a.widths[widest]:.4f} (tolerance {tolerance:g})")
        stopped = None
        if adaptive_design.should_stop(a.widths, tolerance):
            stopped = f"every 90% interval narrower than {tolerance:g}"
        elif len(runs) >= max_runs:
            stopped = f"--max-runs {max_runs} reached"
        else:
            candidates = adaptive_design.candidate_runs(observations, domains, budget_tokens, method.base_fraction,
                                                 weights=a.weights)
            proposed = adaptive_design.propose_next(observations, law, budget_tokens, candidates, n=1, fitted=a.fitted)
            if not proposed:
                stopped = "no candidate run left"
            else:
                check_run_names(runs + proposed, f"`method` {method_name}")
                entry["proposed"] = proposed[0].name
                runs = runs + proposed
        if stopped:
            entry["stopped"] = stopped
        rounds = [r for r in rounds if r.get("runs") != entry["runs"]] + [entry]
        _write_runs(out / RECORD, runs, rounds)
        if stopped:
            log(f"{method_name} --adaptive: stopped after {len(runs)} runs: {stopped}")
            return runs, observations, {"stopped": stopped, "rounds": rounds}
