"""Running any method end to end: its weights, and a final run trained at them.

Offline: the sweep of its proposed runs (MIX_DIR/sweep, resumable; li2025 --adaptive: runs
proposed one at a time until the optimum is known, `adaptive_sweep`), extra runs when it asks for
them once the first ones are in (li2025, under-determined: MIX_DIR/sweep-extra), its
recommendation, the law it fitted (MIX_DIR/law.json, for li2025 and dml), and MIX_DIR/final.
(li2025's sweep and extra runs record their best evaluation, see `Li2025.run_config`; the final
run keeps the training settings given.)
Online: its prerequisite runs (MIX_DIR/prereq/<name>, resumable), then one run with the method
setting the weights as it trains: the final model itself (aioli, skillit), or a proxy run
(MIX_DIR/proxy; doremi, doge) whose averaged weights the final run in MIX_DIR/final trains at.
MIX_DIR/trajectory.json holds the online run's weights over its steps. MIX_DIR/weights.json has
the weights-file format of `mixjax optimize` plus what the method spent besides the final run
(`extra_runs`, `extra_tokens`). MIX_DIR/mix.json records the configuration; a rerun with
another one is refused.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from mixjax.errors import MixjaxError
from mixjax.io import write_json_atomic
from mixjax.methods import get
from mixjax.methods.base import OnlineMethod, ProposedRun
from mixjax.mixture import Mixture
from mixjax.names import check_domain_name
from mixjax.runners.sweep import RunList, read_result, trained_tokens


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a method trains besides its final run, known before training (asked of the method
    once): an offline method's proposed runs, or an online method's prerequisite runs and the
    tokens of its proxy run (None: no proxy run). li2025's extra runs depend on the results and
    are not in it."""

    runs: list[ProposedRun]
    proxy_tokens: int | None = None
    may_add_runs: bool = False  # li2025: more runs if these leave its law under-determined

    def spend(self, config=None) -> tuple[int, int]:
        """(runs, tokens) the plan trains; with `config`, the tokens they really train (whole steps)."""
        def tokens(budget) -> int:
            return int(budget) if config is None else trained_tokens(budget, config)

        runs, spent = len(self.runs), sum(tokens(r.budget_tokens) for r in self.runs)
        if self.proxy_tokens is not None:
            runs, spent = runs + 1, spent + tokens(self.proxy_tokens)
        return runs, spent


def plan_runs(method, domains: list[str], budget_tokens: int) -> RunPlan:
    """The method's `RunPlan` for `budget_tokens` (its options' errors raised here, before any file)."""
    if isinstance(method, OnlineMethod):
        proxy = method.proxy_tokens(budget_tokens) if method.proxy_fraction else None
        return RunPlan(method.prerequisite_runs(domains, budget_tokens), proxy)
    return RunPlan(method.propose(domains, budget_tokens), may_add_runs=method.add_runs)


def use_data_caps(method, data, config) -> None:
    """An offline method that optimises weights keeps each domain's tokens within its training tokens
    x config.max_epochs (the limit the final run's sampler enforces), unless it was given caps."""
    train_tokens = getattr(data, "train_tokens", None)  # a prepared collection's (absent in some tests' data)
    if train_tokens is None or isinstance(method, OnlineMethod) or not method.caps_weights \
            or method.available is not None:
        return
    method.available = {d: float(n) for d, n in train_tokens().items()}
    method.max_epochs = float(config.max_epochs)


def design_record(runs, budget_tokens: int, method) -> dict:
    """The sizes of the runs an offline method trained and how far the target lies past them."""
    sizes = [int(r.budget_tokens) for r in runs]
    return {"design_budget": int(method.design_budget or budget_tokens),
            "target_budget": int(budget_tokens), "run_tokens": {"min": min(sizes), "max": max(sizes)},
            "extrapolation_ratio": float(budget_tokens) / max(sizes)}


def announce_design(runs, budget_tokens: int, method, method_name: str, log=print) -> None:
    """Say how far the target lies past the runs a method will train (nothing for methods without runs)."""
    if runs:
        log(design_line(design_record(runs, budget_tokens, method), method_name))


def design_line(design: dict, method_name: str) -> str:
    """One line: the target against the method's runs (a warning past the validated ratio)."""
    from mixjax.optimize import extrapolation_line

    smallest, largest = design["run_tokens"]["min"], design["run_tokens"]["max"]
    return extrapolation_line([design["target_budget"]], (smallest, largest),
                              f"({method_name}'s runs: {smallest:,} to {largest:,} tokens, sized for a design "
                              f"budget of {design['design_budget']:,})")


def _describe_mix(method_name, options, budget_tokens, data, config) -> dict:
    return {"method": method_name, "options": options, "budget_tokens": int(budget_tokens),
            "domains": list(data.domains),
            "train_config": {k: v for k, v in config.to_dict().items() if k not in ("progress", "resume")}}


def _offline(method, plan, method_name, options, data, budget_tokens, out, config, log):
    from mixjax.runners.sweep import run_sweep

    domains = list(data.domains)
    design = None
    if method.adaptive:
        from mixjax.runners.adaptive_sweep import run_adaptive_sweep

        runs, observations, design = run_adaptive_sweep(method, method_name, options, data, budget_tokens,
                                                        out / "sweep", config, log=log)
    else:
        runs, observations = run_sweep(RunList(plan.runs, like=method), method_name, options, data, budget_tokens,
                                       out / "sweep", config, log=log)
    if len(observations.runs) < len(runs):
        raise MixjaxError(f"{out / 'sweep'}: {len(runs) - len(observations.runs)} run(s) unfinished")
    extra = method.extra_runs(observations, domains, budget_tokens) if design is None else []
    if extra:
        log(f"{method_name}: the runs leave the law under-determined; {len(extra)} more run(s) "
            f"({', '.join(r.name for r in extra)})")
        _, more = run_sweep(RunList(extra, like=method), f"{method_name} (extra runs)", options, data,
                            budget_tokens, out / "sweep-extra", config, log=log)
        observations, runs = observations.concat(more), runs + extra
    weights = method.recommend(observations, domains, budget_tokens)
    summary = {}
    fitted = method.fitted
    if fitted is not None:
        write_json_atomic(out / "law.json", json.loads(json.dumps(fitted.to_json(), default=float)))
        summary["law"] = fitted.law.name
        summary["under_determined"] = bool(fitted.diagnostics.get("under_determined"))
    summary.update(extra_runs=len(runs), extra_tokens=sum(trained_tokens(r.budget_tokens, config) for r in runs))
    if runs:
        summary["design"] = design_record(runs, budget_tokens, method)
    if method.result is not None:
        summary["optimum"] = method.result  # the WeightsResult: passes, the caps that bind (run_mix writes them)
    if design is not None:
        summary["adaptive"] = {"stopped": design["stopped"], "rounds": len(design["rounds"])}
    shown = ", ".join(f"{d}={w:.3f}" for d, w in weights.items())
    log(f"{method_name}: recommends {shown}; final run of {budget_tokens:,} tokens")
    final = _final_run(config, data, Mixture.of(weights, domains), budget_tokens, out / "final", log)
    return weights, final, summary


def _final_run(config, data, mixture: Mixture, budget_tokens: int, run_dir: Path, log) -> dict:
    """Train the final run at `mixture`, or reuse one finished at the same weights (mix.json has
    already checked that the rest of the configuration is the same)."""
    from mixjax.train import run_training

    weights = mixture.as_dict()
    if (run_dir / "result.json").is_file():
        done = read_result(run_dir)
        done_weights = done.get("weights")
        if done.get("budget_tokens") == int(budget_tokens) and isinstance(done_weights, dict) \
                and done_weights.keys() == weights.keys() \
                and all(_is_number(done_weights[d]) and abs(done_weights[d] - w) < 1e-9 for d, w in weights.items()):
            log(f"final run done already ({run_dir})")
            return done
    return run_training(config, data, mixture, budget_tokens, out_dir=run_dir)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _finished_online_run(run_dir: Path, domains: list[str]) -> dict | None:
    """The result of a finished online run in run_dir (with its "online" record: weights for
    `domains`, trajectory, evaluations), or None."""
    if not (run_dir / "result.json").is_file():
        return None
    path = run_dir / "result.json"
    result = read_result(run_dir)
    if "online" not in result:
        raise MixjaxError(f"{path}: not an online method's run; delete {run_dir} to retrain it")
    record = result["online"]
    weights = record.get("weights") if isinstance(record, dict) else None
    for name in weights if isinstance(weights, dict) else ():
        check_domain_name(name, f"{path}: online weights")
    if not isinstance(weights, dict) or sorted(weights) != sorted(domains) \
            or not all(_is_number(w) for w in weights.values()) \
            or not isinstance(record.get("trajectory"), list) or "evaluations" not in record:
        raise MixjaxError(f"{path}: its online record lacks weights for the domains {domains}, a trajectory "
                          f"or evaluations; delete {run_dir} to retrain it")
    return result


def _online(method, plan, method_name, options, data, budget_tokens, out, config, eval_max_batches, log):
    from mixjax.runners.prerequisites import train_prerequisites
    from mixjax.train import run_training

    domains = list(data.domains)
    n_runs, n_tokens = plan.spend(config)
    if plan.runs:
        method.use_prerequisites(train_prerequisites(plan.runs, method.keep_prerequisite_params, method_name,
                                                     options, data, budget_tokens, out / "prereq", config, log=log))
    proxy = plan.proxy_tokens is not None
    run_dir = out / ("proxy" if proxy else "final")
    tokens = plan.proxy_tokens if proxy else budget_tokens
    result = _finished_online_run(run_dir, domains)
    if result is not None:
        log(f"{method_name}: {'proxy' if proxy else 'online'} run done already ({run_dir})")
    else:
        callback = method.make_callback(eval_max_batches, log=log)
        log(f"{method_name}: {'proxy' if proxy else 'one'} run of {tokens:,} tokens, weights set while it trains")
        result = run_training(config, data, {d: 1 / len(domains) for d in domains}, tokens,
                              out_dir=run_dir, callbacks=[callback])
    record = result["online"]
    write_json_atomic(out / "trajectory.json", {"domains": domains, "run": run_dir.name,
                                                "trajectory": record["trajectory"]})
    weights = record["weights"]
    if proxy:
        shown = ", ".join(f"{d}={w:.3f}" for d, w in weights.items())
        log(f"{method_name}: average weights of the proxy run {shown}; final run of {budget_tokens:,} tokens")
        final = _final_run(config, data, Mixture.of(weights, domains), budget_tokens, out / "final", log)
    else:
        final = result
    return weights, final, {"extra_runs": n_runs, "extra_tokens": n_tokens, "evaluations": record["evaluations"]}


def _announce(plan, method_name, budget_tokens, config, log) -> None:
    """Before the first run: the tokens the whole mix trains (whole steps), its runs and the final one."""
    n_runs, n_tokens = plan.spend(config)
    final = trained_tokens(budget_tokens, config)
    rounds = "" if final == int(budget_tokens) else (
        f" ({int(budget_tokens):,} rounded down to whole steps of {config.batch_size} x {config.seq_len})")
    maybe = " (more if its runs leave the law under-determined)" if plan.may_add_runs else ""
    log(f"{method_name}: {n_runs} run(s) of {n_tokens:,} tokens and a final run of {final:,}{rounds}: "
        f"{n_tokens + final:,} tokens to train{maybe}")


def run_mix(method_name: str, options: dict, data, budget_tokens: int, out, config, *,
            eval_max_batches: int | None = 4, log=print) -> dict:
    from mixjax.runners.sweep import check_run_names, check_sweep_dir

    out = Path(out)
    domains = list(data.domains)
    method = get(method_name, len(domains), **options)
    use_data_caps(method, data, config)
    plan = plan_runs(method, domains, budget_tokens)  # bad options: fail before any file
    online = isinstance(method, OnlineMethod)
    if not online and not method.adaptive:
        announce_design(plan.runs, budget_tokens, method, method_name, log)
    if online:  # folders MIX_DIR/prereq/<name> (a sweep checks its own)
        check_run_names(plan.runs, f"`method` {method_name}")
    check_sweep_dir(out, _describe_mix(method_name, options, budget_tokens, data, config),
                    filename="mix.json", what="a mix")
    _announce(plan, method_name, budget_tokens, config, log)
    if online:
        weights, final, spent = _online(method, plan, method_name, options, data, budget_tokens, out, config,
                                        eval_max_batches, log)
    else:
        weights, final, spent = _offline(method, plan, method_name, options, data, budget_tokens, out, config, log)
    optimum = spent.pop("optimum", None)
    entry = {"budget": int(budget_tokens), "weights": weights, "val_loss": final["val_loss"]}
    if optimum is not None:  # passes at the budget, caps that bind, the optimum without them, ratio
        entry = {**optimum.to_json()["results"][0], **entry}
        entry.pop("extrapolation_ratio", None)  # the design's, from the runs as planned, is in "design"
        if optimum.available:
            spent["data"] = optimum.to_json()["data"]
    summary = {"method": method_name, "options": options, "domains": domains, **spent, "results": [entry]}
    write_json_atomic(out / "weights.json", summary)
    return summary
