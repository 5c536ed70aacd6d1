"""Running an offline method's proposed runs: resumable, shardable, one observations CSV.

SWEEP_DIR/sweep.json records the configuration (method, budget, domains, training settings and
the proposed runs); a rerun with another configuration is refused rather than mixing results.
Each run trains into SWEEP_DIR/runs/<name>/ and is skipped once its result.json exists, so a
killed sweep resumes, and `shard=(i, n)` trains only runs i, i+n, i+2n, ... so an array job
splits the runs over hosts sharing the directory. SWEEP_DIR/observations.csv always holds every
finished run, in proposal order.

A method may set each run's training settings (`method.run_config(config, run)`: li2025 evaluates
its runs every few steps and records the best evaluation) and say so in sweep.json
(`method.run_selection()`, recorded as "run_selection" when not empty).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mixjax.errors import MixjaxError
from mixjax.io import write_json_atomic
from mixjax.methods.base import OfflineMethod, ProposedRun
from mixjax.names import check_domain_name, check_run_name


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
        assert 0 <= i < n
    except (ValueError, AssertionError):
        raise MixjaxError(f"`shard`: expected i/n with 0 <= i < n, got {text!r}") from None
    return i, n


def describe_runs(method_name, options, runs, budget_tokens, data, config, selection: dict | None = None) -> dict:
    """The record of a set of runs that a rerun must match (sweep.json, prereq.json)."""
    description = {
        "method": method_name, "options": options, "budget_tokens": int(budget_tokens),
        "domains": list(data.domains), "data_source_groups": data.manifest.get("source_groups"),
        "train_config": {k: v for k, v in config.to_dict().items() if k not in ("progress", "resume")},
        "runs": [{"name": r.name, "weights": r.weights, "budget_tokens": r.budget_tokens} for r in runs]}
    if selection:  # absent when runs record their final loss, as in sweeps written before the key
        description["run_selection"] = selection
    return description


def _train_config_defaults() -> dict:
    from mixjax.train import TrainConfig
    return json.loads(json.dumps(TrainConfig().to_dict()))


def check_run_names(runs, where: str) -> None:
    """Every proposed run's name is one safe folder name and no two are the same (before any
    folder is made from them); `where` names the setting (the method)."""
    seen = set()
    for run in runs:
        check_run_name(run.name, where)
        if run.name in seen:
            raise MixjaxError(f"{where}: run name {run.name!r} is proposed twice")
        seen.add(run.name)


class RunList(OfflineMethod):
    """A fixed list of runs as an offline method (to train them with `run_sweep`), trained and
    recorded as `like`'s own runs (its `run_config`, `run_selection` and `along_run`)."""

    def __init__(self, runs, like: OfflineMethod | None = None):
        self.runs, self.like = list(runs), like if like is not None else OfflineMethod()
        self.along_run = self.like.along_run

    def propose(self, domains, budget_tokens):
        return self.runs

    def run_selection(self):
        return self.like.run_selection()

    def run_config(self, config, run):
        return self.like.run_config(config, run)


def read_run_list(path, domains) -> list:
    """The runs of a run-list file ([{"name", "weights", "budget_tokens"}], as `mixjax next` and
    sweep.json's "runs" write them) for the prepared `domains`, or a one-line error naming the file
    and the entry."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise MixjaxError(f"`run_list` {path}: unreadable ({e})") from None
    if isinstance(entries, dict) and "runs" in entries:  # a sweep.json
        entries = entries["runs"]
    if not isinstance(entries, list) or not entries:
        raise MixjaxError(f"`run_list` {path}: expected a non-empty list of runs "
                          '[{"name", "weights", "budget_tokens"}]')
    runs = []
    for i, entry in enumerate(entries):
        where = f"`run_list` {path}: run {i}"
        if not isinstance(entry, dict) or set(entry) < {"name", "weights", "budget_tokens"}:
            raise MixjaxError(f"{where}: expected an object with name, weights and budget_tokens")
        check_run_name(entry["name"], where)
        weights, budget = entry["weights"], entry["budget_tokens"]
        if not isinstance(weights, dict) or sorted(weights) != sorted(domains):
            raise MixjaxError(f"{where} ({entry['name']}): weights must name exactly the data's domains {list(domains)}")
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and np.isfinite(w) and w >= 0
                   for w in weights.values()) or sum(weights.values()) <= 0:
            raise MixjaxError(f"{where} ({entry['name']}): weights must be finite numbers >= 0, not all 0")
        if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
            raise MixjaxError(f"{where} ({entry['name']}): budget_tokens must be a whole number > 0, got {budget!r}")
        total = float(sum(weights.values()))
        runs.append(ProposedRun(entry["name"], {d: float(weights[d]) / total for d in domains}, budget))
    check_run_names(runs, f"`run_list` {path}")
    return runs


def read_record(path: Path) -> dict:
    """A directory's record (sweep.json, mix.json, prereq.json) with the domain and run names in it
    checked, or a one-line error naming the file."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise MixjaxError(f"{path}: unreadable ({e}); use a new directory") from None
    if not isinstance(record, dict):
        raise MixjaxError(f"{path}: not a JSON object; use a new directory")
    domains, runs = record.get("domains", []), record.get("runs", [])
    if not isinstance(domains, list) or not isinstance(runs, list):
        raise MixjaxError(f"{path}: 'domains' and 'runs' must be lists; use a new directory")
    for i, domain in enumerate(domains):
        check_domain_name(domain, f"{path}: domains[{i}]")
    for i, run in enumerate(runs):
        check_run_name(run.get("name") if isinstance(run, dict) else run, f"{path}: runs[{i}]")
    return record


def check_sweep_dir(out: Path, description: dict, filename: str = "sweep.json", what: str = "a sweep") -> None:
    """Record `description` in out/filename, or refuse a directory made for another one."""
    path = out / filename
    description = json.loads(json.dumps(description))  # as it reads back from the file
    if out.exists() and not out.is_dir():
        raise MixjaxError(f"`out`: {out} is not a folder")
    if path.is_file():
        old = read_record(path)
        if isinstance(old.get("train_config"), dict) and isinstance(description.get("train_config"), dict):
            # a training setting added to mixjax since the file was written counts at its default
            added = {k: v for k, v in _train_config_defaults().items() if k in description["train_config"]}
            old["train_config"] = {**added, **old["train_config"]}
        if old != description:
            differs = sorted(k for k in set(old) | set(description) if old.get(k) != description.get(k))
            raise MixjaxError(f"`out`: {out} holds {what} of another configuration ({', '.join(differs)} "
                              "differ); use a new directory")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, description)


def read_result(run_dir: Path) -> dict:
    """A run's result.json with the domain names of its maps checked (a record read back brings in
    no name the rules refuse), or a one-line error naming it."""
    path = Path(run_dir) / "result.json"
    try:
        result = json.loads(path.read_text())
        if not isinstance(result, dict) or not isinstance(result.get("val_loss"), dict):
            raise ValueError("no val_loss")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise MixjaxError(f"{path}: unreadable ({e}); delete {run_dir} to retrain it") from None
    for key in ("val_loss", "tokens", "weights"):
        names = result.get(key)
        for name in names if isinstance(names, dict) else ():
            check_domain_name(name, str(path))
    return result


def read_run_result(path: Path, domains) -> tuple[list[float], list[float]]:
    """A finished run's tokens and validation losses (NaN = not measured) in `domains` order, from
    its result.json; a one-line error naming the file if it is not a run's result."""
    redo = f"delete {path.parent} to retrain it"
    result = read_result(path.parent)
    if not isinstance(result.get("tokens"), dict):
        raise MixjaxError(f"{path}: no 'tokens' and 'val_loss' maps; {redo}")

    def number(key, d, allow_none):
        value = result[key].get(d)
        if value is None and allow_none:
            return np.nan
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MixjaxError(f"{path}: {key} of domain {d!r} is {value!r}, not a number; {redo}")
        return float(value)

    return [number("tokens", d, False) for d in domains], [number("val_loss", d, True) for d in domains]


def along_run_rows(result_path: Path, name: str, run_tokens, domains) -> list[tuple[str, list, list]]:
    """A run's evaluations before its last, each an observation (li2025 `along_run`): named
    <run>.step<S> after the S steps done by then, with the run's tokens times S / its steps (its
    weights are constant, so the sampler had given each domain that many, to within a token)."""
    result = read_result(result_path.parent)
    steps, rows = result.get("steps"), []
    for record in result.get("val_history") or []:
        done = int(record["step"])
        if not isinstance(steps, int) or done >= steps:
            continue
        losses = [float(record["val_loss"].get(d, np.nan)) for d in domains]
        rows.append((f"{name}.step{done}", [t * done / steps for t in run_tokens], losses))
    return rows


def observations_from_results(out: Path, runs, domains, along_run: bool = False):
    """The finished runs' tokens and validation losses as an Observations table (with `along_run`,
    each run's earlier evaluations too, before it)."""
    from mixjax.observations import Observations

    names, tokens, losses = [], [], []
    for run in runs:
        result_path = out / "runs" / run.name / "result.json"
        if not result_path.is_file():
            continue
        run_tokens, run_losses = read_run_result(result_path, domains)
        for row_name, row_tokens, row_losses in (along_run_rows(result_path, run.name, run_tokens, domains)
                                                 if along_run else ()):
            names.append(row_name)
            tokens.append(row_tokens)
            losses.append(row_losses)
        names.append(run.name)
        tokens.append(run_tokens)
        losses.append(run_losses)
    return Observations(names, list(domains), np.array(tokens, np.float64).reshape(-1, len(domains)),
                        np.array(losses, np.float64).reshape(-1, len(domains)))


def run_sweep(method, method_name: str, options: dict, data, budget_tokens: int, out, config,
              shard: tuple[int, int] = (0, 1), log=print):
    """Train the method's proposed runs (this shard's, unfinished ones); returns (runs, observations)."""
    out = Path(out)
    runs = method.propose(list(data.domains), int(budget_tokens))
    check_run_names(runs, f"`method` {method_name}")
    selection = method.run_selection()
    check_sweep_dir(out, describe_runs(method_name, options, runs, budget_tokens, data, config, selection))
    mine = [r for i, r in enumerate(runs) if i % shard[1] == shard[0]]
    return runs, train_runs(method, mine, runs, data, out, config, log)


def trained_tokens(budget_tokens: int, config) -> int:
    """The tokens a run of `budget_tokens` really trains: whole steps of batch_size x seq_len."""
    return config.steps_for(budget_tokens) * config.batch_tokens


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def announce_runs(todo, config, log, what: str = "run(s)") -> None:
    """Say, before the first run, the tokens `todo` will train, and once if budgets round down to
    whole steps (the sweep's per-run lines then give the trained tokens)."""
    asked = sum(int(r.budget_tokens) for r in todo)
    trained = sum(trained_tokens(r.budget_tokens, config) for r in todo)
    rounding = "" if asked == trained else (
        f" (budgets round down to whole steps of {config.batch_size} x {config.seq_len} = "
        f"{config.batch_tokens:,} tokens: {asked:,} asked)")
    log(f"{len(todo)} {what} to train: {trained:,} tokens{rounding}")


def _estimate_after_first(result: dict, first, rest, config, log) -> None:
    """After the first run: the rest's wall time, its seconds per trained token times theirs (its
    first step, which compiled, counted as a plain one)."""
    if not rest:
        return
    timings = result.get("timings") or {}
    total, first_step = float(timings.get("total_s") or 0.0), float(timings.get("first_step_s") or 0.0)
    plain_step = float(timings.get("train_s") or 0.0) / max(1, int(timings.get("timed_steps") or 0))
    per_token = max(total - first_step + plain_step, 0.0) / max(1, trained_tokens(first.budget_tokens, config))
    rest_tokens = sum(trained_tokens(r.budget_tokens, config) for r in rest)
    log(f"the first run took {_duration(total)}; the other {len(rest)} need about {_duration(per_token * rest_tokens)}")


def train_runs(method, mine, runs, data, out: Path, config, log=print, log_done: bool = True):
    """Train the runs of `mine` without a result yet into OUT/runs/<name> (with the method's run
    settings), rewriting OUT/observations.csv of all `runs` after each, so a killed sweep leaves it
    complete so far; returns those observations. Says the tokens to train before the first run and
    the wall time it expects after it."""
    from mixjax.observations import write_csv
    from mixjax.train import run_training

    along = bool(method.along_run)  # li2025's rows along each run
    todo = [r for r in mine if not (out / "runs" / r.name / "result.json").is_file()]
    if todo:
        announce_runs(todo, config, log)
    for number, run in enumerate(mine, start=1):
        run_dir = out / "runs" / run.name
        if (run_dir / "result.json").is_file():
            if log_done:
                log(f"[{number}/{len(mine)}] {run.name}: done already")
            continue
        weights = ", ".join(f"{d}={w:.3f}" for d, w in run.weights.items())
        log(f"[{number}/{len(mine)}] {run.name}: {trained_tokens(run.budget_tokens, config):,} tokens at {weights}")
        run_cfg = method.run_config(config, run)
        result = run_training(run_cfg, data, run.weights, run.budget_tokens, out_dir=run_dir)
        if run is todo[0]:
            _estimate_after_first(result, run, todo[1:], config, log)
        write_csv(observations_from_results(out, runs, data.domains, along), out / "observations.csv")
    observations = observations_from_results(out, runs, data.domains, along)
    write_csv(observations, out / "observations.csv")
    return observations
