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


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
        assert 0 <= i < n
    except (ValueError, AssertionError):
        raise MixjaxError(f"--shard: expected i/n with 0 <= i < n, got {text!r}") from None
    return i, n


def _describe(method_name, options, runs, budget_tokens, data, config, selection: dict | None = None) -> dict:
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


def check_sweep_dir(out: Path, description: dict, filename: str = "sweep.json", what: str = "a sweep") -> None:
    """Record `description` in out/filename, or refuse a directory made for another one."""
    path = out / filename
    description = json.loads(json.dumps(description))  # as it reads back from the file
    if path.is_file():
        old = json.loads(path.read_text())
        if isinstance(old.get("train_config"), dict) and isinstance(description.get("train_config"), dict):
            # a training setting added to mixjax since the file was written counts at its default
            added = {k: v for k, v in _train_config_defaults().items() if k in description["train_config"]}
            old["train_config"] = {**added, **old["train_config"]}
        if old != description:
            differs = sorted(k for k in set(old) | set(description) if old.get(k) != description.get(k))
            raise MixjaxError(f"--out: {out} holds {what} of another configuration ({', '.join(differs)} "
                              "differ); use a new directory")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, description)


def observations_from_results(out: Path, runs, domains):
    """The finished runs' tokens and validation losses as an Observations table."""
    from mixjax.observations import Observations

    names, tokens, losses = [], [], []
    for run in runs:
        result_path = out / "runs" / run.name / "result.json"
        if not result_path.is_file():
            continue
        result = json.loads(result_path.read_text())
        names.append(run.name)
        tokens.append([result["tokens"][d] for d in domains])
        losses.append([np.nan if result["val_loss"].get(d) is None else result["val_loss"][d] for d in domains])
    return Observations(names, list(domains), np.array(tokens, np.float64).reshape(-1, len(domains)),
                        np.array(losses, np.float64).reshape(-1, len(domains)))


def run_sweep(method, method_name: str, options: dict, data, budget_tokens: int, out, config,
              shard: tuple[int, int] = (0, 1), log=print):
    """Train the method's proposed runs (this shard's, unfinished ones); returns (runs, observations)."""
    from mixjax.observations import write_csv
    from mixjax.train import run_training

    out = Path(out)
    runs = method.propose(list(data.domains), int(budget_tokens))
    selection = method.run_selection() if hasattr(method, "run_selection") else None
    check_sweep_dir(out, _describe(method_name, options, runs, budget_tokens, data, config, selection))
    mine = [r for i, r in enumerate(runs) if i % shard[1] == shard[0]]
    for number, run in enumerate(mine, start=1):
        run_dir = out / "runs" / run.name
        if (run_dir / "result.json").is_file():
            log(f"[{number}/{len(mine)}] {run.name}: done already")
            continue
        weights = ", ".join(f"{d}={w:.3f}" for d, w in run.weights.items())
        log(f"[{number}/{len(mine)}] {run.name}: {run.budget_tokens:,} tokens at {weights}")
        run_cfg = method.run_config(config, run) if hasattr(method, "run_config") else config
        run_training(run_cfg, data, run.weights, run.budget_tokens, out_dir=run_dir)
    observations = observations_from_results(out, runs, data.domains)
    write_csv(observations, out / "observations.csv")
    return runs, observations
