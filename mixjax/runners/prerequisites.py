"""Training the runs an online method needs before its own (DoReMi's reference model, Skill-It's
single-domain runs): MIX_DIR/prereq/<name>/, each skipped once its result.json exists, so a killed
mix resumes without retraining them. MIX_DIR/prereq/prereq.json records the configuration and a
rerun with another one is refused (as a sweep directory does)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mixjax.errors import MixjaxError
from mixjax.methods.base import ProposedRun
from mixjax.runners.sweep import read_result


@dataclasses.dataclass(frozen=True)
class PrerequisiteResult:
    """A finished prerequisite run: what was asked, where it lives, its result.json."""

    run: ProposedRun
    dir: Path
    result: dict


def train_prerequisites(runs, keep: bool, method_name: str, options: dict, data, budget_tokens: int, out, config,
                        log=print) -> dict[str, PrerequisiteResult]:
    """Train the prerequisite runs `runs` (a method's `prerequisite_runs`) that are not finished,
    keeping their final parameters with `keep`; {name: PrerequisiteResult}."""
    from mixjax.runners.sweep import check_sweep_dir, describe_runs
    from mixjax.train import FINAL_CHECKPOINT_ONLY, run_training
    from mixjax.train.checkpoint import find_checkpoint

    out = Path(out)
    if keep and not config.checkpoint_every:
        config = dataclasses.replace(config, checkpoint_every=FINAL_CHECKPOINT_ONLY)
    if runs:
        check_sweep_dir(out, describe_runs(method_name, options, runs, budget_tokens, data, config),
                        filename="prereq.json", what="prerequisite runs")
    results = {}
    for number, run in enumerate(runs, start=1):
        run_dir = out / run.name
        if (run_dir / "result.json").is_file():
            log(f"[prerequisite {number}/{len(runs)}] {run.name}: done already")
            result = read_result(run_dir)
        else:
            shown = ", ".join(f"{d}={w:.3f}" for d, w in run.weights.items())
            log(f"[prerequisite {number}/{len(runs)}] {run.name}: {run.budget_tokens:,} tokens at {shown}")
            run_training(config, data, run.weights, run.budget_tokens, out_dir=run_dir)
            result = read_result(run_dir)
        if keep:
            try:
                find_checkpoint(run_dir)
            except MixjaxError:
                raise MixjaxError(f"{run_dir}: finished but its checkpoint is missing; delete {run_dir} "
                                  "to retrain it") from None
        results[run.name] = PrerequisiteResult(run, run_dir, result)
    return results
