"""Running any method end to end: its weights, and a final run trained at them.

Offline: the sweep of its proposed runs (MIX_DIR/sweep, resumable), its recommendation, the law
it fitted (MIX_DIR/law.json, for li2025 and dml), and MIX_DIR/final. Online: one run in
MIX_DIR/final with the method setting the weights as it trains, and MIX_DIR/trajectory.json.
MIX_DIR/weights.json has the weights-file format of `mixjax optimize` plus what the method spent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mixjax.errors import MixjaxError
from mixjax.io import write_json_atomic
from mixjax.methods import get, is_online


def run_mix(method_name: str, options: dict, data, budget_tokens: int, out, config, *,
            eval_max_batches: int | None = 4, log=print) -> dict:
    from mixjax.train import run_training

    out = Path(out)
    domains = list(data.domains)
    method = get(method_name, len(domains), **options)
    summary = {"method": method_name, "options": options, "domains": domains}
    if is_online(method_name):
        from mixjax.methods.online_callback import OnlineMethodCallback

        callback = OnlineMethodCallback(method, eval_max_batches=eval_max_batches)
        log(f"{method_name}: one run of {budget_tokens:,} tokens, weights set while it trains")
        final = run_training(config, data, {d: 1 / len(domains) for d in domains}, budget_tokens,
                             out_dir=out / "final", callbacks=[callback])
        weights = dict(zip(domains, np.asarray(method.state_dict()["weights"], float).tolist()))
        write_json_atomic(out / "trajectory.json", {"domains": domains, "trajectory": [
            {"step": s, "weights": dict(zip(domains, w))} for s, w in callback.trajectory]})
        summary.update(extra_runs=0, extra_tokens=0, evaluations=callback.evaluations)
    else:
        from mixjax.methods.sweep import run_sweep

        runs, observations = run_sweep(method, method_name, options, data, budget_tokens, out / "sweep",
                                       config, log=log)
        if len(observations.runs) < len(runs):
            raise MixjaxError(f"{out / 'sweep'}: {len(runs) - len(observations.runs)} run(s) unfinished")
        weights = method.recommend(observations, domains, budget_tokens)
        fitted = getattr(method, "fitted", None)
        if fitted is not None:
            write_json_atomic(out / "law.json", json.loads(json.dumps(fitted.to_json(), default=float)))
            summary["law"] = fitted.law.name
        summary.update(extra_runs=len(runs), extra_tokens=int(sum(r.budget_tokens for r in runs)))
        shown = ", ".join(f"{d}={w:.3f}" for d, w in weights.items())
        log(f"{method_name}: recommends {shown}; final run of {budget_tokens:,} tokens")
        final = run_training(config, data, weights, budget_tokens, out_dir=out / "final")
    summary["results"] = [{"budget": int(budget_tokens), "weights": weights,
                           "val_loss": final["val_loss"]}]
    write_json_atomic(out / "weights.json", summary)
    return summary
