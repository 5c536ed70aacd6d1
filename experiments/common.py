"""What every experiment shares: its scale, the bundled domains and the base model (cached), one
method's result at a budget and seed (cached, so a rerun or a killed run resumes), statistics over
seeds, and writing results/ (JSON, Markdown with the command that made it, PNG plots).

Runs that share a model shape reuse one compiled train step inside the process (the trainer's
`get_stepper` cache), so an experiment pays compilation once per shape, not once per run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Scale:
    """Model, budget and seeds of an experiment (the tiny preset, byte-level, on 2 CPU cores)."""

    budget: int = 250_000
    seeds: tuple = (0, 1, 2)
    batch_size: int = 16
    seq_len: int = 256
    sft_lr: float = 1e-3
    base_tokens: int = 600_000
    base_lr: float = 3e-3
    size_mb: float = 2.0
    eval_max_batches: int = 8           # per domain: 8 x 16 x 256 tokens, the same ones every time
    online_eval_batches: int | None = 2  # per domain, for the frequent evaluations of online methods
    grid_step: float = 0.125            # the grid method's simplex step: 21 mixtures of 3 domains


QUICK = Scale(budget=8192, seeds=(0,), batch_size=8, seq_len=64, base_tokens=16_384, size_mb=0.1,
              eval_max_batches=2, online_eval_batches=None,  # 1 batch may hold no loss tokens of a domain
              grid_step=0.25)                                # 3 grid mixtures of 3 domains: the script end to end


def online_options(method: str, num_steps: int, k: int) -> dict:
    """Online methods' schedules scaled to a run of `num_steps` steps. The published settings
    assume thousands of steps (Aioli: LearnParams of 4 x K x 6 steps every 250 of 5000; Skill-It
    rounds of 500; DoGE updates every 100); the shapes are kept (4 rounds per run, LearnParams ~30%
    of a round, 6 DoGE updates) with fewer steps. DoReMi keeps its defaults (an update every step)."""
    round_steps = max(num_steps // 4, 2 * k + 2)
    if method == "aioli":
        lp_steps = max(1, round_steps * 3 // 10 // k)
        return {"lp_rounds": 1, "lp_steps": lp_steps, "update_steps": max(round_steps, k * lp_steps + 1)}
    if method == "skillit":  # 2 evaluations per round as released (every 250 of 500 steps)
        return {"update_steps": round_steps, "evaluations": 8}
    if method == "doge":
        return {"update_every": max(1, num_steps // 6)}
    return {}


def common_arguments(description: str, default_name: str, data_flags: bool = True) -> argparse.ArgumentParser:
    """The flags every experiment takes; `data_flags`: also --data and --init (not for a simulation,
    or a script with flags of its own for them)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--work", default=None,
                   help=f"where runs are cached, so a rerun resumes (default experiments/work/{default_name}, "
                        "with _quick appended for --quick)")
    p.set_defaults(default_work_name=default_name)
    p.add_argument("--results", default=str(ROOT / "results"), help="where JSON, Markdown and PNG go")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the scale's)")
    p.add_argument("--budget", type=int, default=None, help="tokens per run (default: the scale's)")
    if data_flags:
        p.add_argument("--data", default=None, metavar="DIR",
                       help="a prepared data directory (`mixjax prepare`, 2 to 8 domains) instead of the bundled "
                            "domains; the default --work then gets a folder of its own")
        p.add_argument("--init", default=None, metavar="PATH",
                       help="the model to fine-tune (a mixjax run or checkpoint, or a Hugging Face directory) "
                            "instead of the cached tiny base; its vocabulary must match --data's")
    p.add_argument("--quick", action="store_true", help="a tiny scale that checks the script end to end")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def exit_code(script: str, run) -> int:
    """run() -> its exit code; a MixjaxError (bad flag, file or cached run) becomes one line and 2."""
    from mixjax.errors import MixjaxError

    try:
        return run()
    except MixjaxError as e:
        from mixjax.commands.flags import flag_name

        print(f"{script}: error: {e.render(flag_name)}", file=sys.stderr)  # the library's settings as flags
        return 2


# Baselines the experiments train besides mixjax's methods: the data's natural proportions (each
# domain's share of the training tokens, what concatenating the files gives).
BASELINES = ("natural",)


def parse_methods(text: str, always: str) -> list[str]:
    """--methods as a list starting with `always`; an unknown name stops before anything trains."""
    from mixjax.errors import MixjaxError
    from mixjax.methods import names

    methods = [always] + [m for m in text.split(",") if m and m != always]
    known = names() + list(BASELINES)
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise MixjaxError(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    return methods


def natural_weights(data) -> dict:
    """Each domain's share of the training tokens: what concatenating the files gives."""
    tokens = data.train_tokens()
    return {d: tokens[d] / sum(tokens.values()) for d in data.domains}


def skewed_data(work: Path, scale: Scale, progress: bool = False):
    """The skewed setting's prepared data in WORK/data_skewed (built once; reused when present):
    dialogue, code and dataset descriptions of the bundled collection in unequal sizes, natural
    proportions about 0.77 / 0.18 / 0.05 (mixjax.data.bundled.skewed_data, which `mixjax demo` uses)."""
    from mixjax.data.bundled import skewed_data

    return skewed_data(work, scale.size_mb, progress)


def scale_from(args, default: Scale = Scale()) -> Scale:
    """The scale the flags ask for; also fills in the default --work (quick runs get their own)."""
    if args.work is None:
        name = args.default_work_name + ("_quick" if args.quick else "")
        own = [str(Path(x).resolve()) for x in (getattr(args, "data", None), getattr(args, "init", None)) if x]
        if own:  # runs on other data or from another model must not meet the bundled setting's cache
            import hashlib

            name += "-" + Path(own[0]).name + "-" + hashlib.sha1("|".join(own).encode()).hexdigest()[:8]
        args.work = str(ROOT / "experiments" / "work" / name)
    scale = QUICK if args.quick else default
    if args.seeds:
        scale = dataclasses.replace(scale, seeds=tuple(range(args.seeds)))
    if args.budget:
        scale = dataclasses.replace(scale, budget=args.budget)
    return scale


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


MAX_DOMAINS = 8


def user_data(path, budget: int, grid_step: float | None = None, max_epochs: float | None = None):
    """A prepared data directory given with --data, checked before anything trains: 2 to 8
    domains, and every domain large enough for the grid's largest weight at the budget."""
    from mixjax.data.prepared import PreparedData
    from mixjax.errors import MixjaxError

    from mixjax.methods.static import Grid
    from mixjax.train import TrainConfig

    grid_step = Grid().step if grid_step is None else grid_step  # the grid experiments train
    max_epochs = TrainConfig().max_epochs if max_epochs is None else max_epochs  # the sampler's limit
    data = PreparedData(path)
    k = len(data.domains)
    if not 2 <= k <= MAX_DOMAINS:
        raise MixjaxError(f"--data {path}: has {k} domain(s); the experiments need 2 to {MAX_DOMAINS}")
    largest = 1 - (k - 1) * grid_step  # the grid's largest weight (no zero weights)
    for domain, available in data.train_tokens().items():
        need = largest * budget
        if available * max_epochs < need:
            raise MixjaxError(f"--data {path}: domain {domain} has {available:,} training tokens; the grid's "
                              f"largest weight {largest:g} at {budget:,} tokens needs {need:,.0f}, "
                              f"{need / max(available, 1):.1f} repetitions (at most {max_epochs:g}); "
                              "give a smaller --budget or more data")
    return data


def check_init(path) -> str:
    """--init: a mixjax run/checkpoint or a Hugging Face directory, else a one-line error."""
    from mixjax.errors import MixjaxError, about
    from mixjax.train.checkpoint import find_checkpoint

    from mixjax.model import is_hf_dir

    p = Path(path)
    if is_hf_dir(p):
        return str(p)
    if not p.exists():
        raise MixjaxError(f"--init: {path} does not exist")
    with about("init"):
        find_checkpoint(p)  # a one-line error when there is no checkpoint
    return str(p)


def setup(work: Path, scale: Scale, domains=None, progress: bool = False, data_name: str = "data",
          data_dir=None, init=None, max_epochs: float | None = None):
    """(prepared data, base TrainConfig fine-tuning from the cached base model): the bundled
    domains and the tiny base unless `data_dir` (--data) or `init` (--init) replace them."""
    from mixjax.starter import prepare_bundled, pretrained_base
    from mixjax.train import TrainConfig

    if init is not None:
        init = check_init(init)
    if data_dir is not None:
        data = user_data(data_dir, scale.budget, max_epochs=max_epochs)
        if domains:
            from mixjax.errors import MixjaxError
            raise MixjaxError("--data: this experiment picks bundled domains by name; give the domains you "
                              "want as their own prepared directory instead")
    else:
        data = prepare_bundled(work, scale.size_mb, domains=domains, progress=progress, log=log,
                               data_dir=work / data_name)
    base = init or pretrained_base(work, scale.base_tokens, scale.batch_size, scale.seq_len, scale.base_lr,
                                   text_mb=scale.size_mb, progress=progress, log=log)
    config = TrainConfig(init=str(base), batch_size=scale.batch_size, seq_len=scale.seq_len, lr=scale.sft_lr,
                         eval_max_batches=scale.eval_max_batches, progress=progress)
    return data, config


def fixed_weights_result(data, weights: dict, budget: int, config, out: Path) -> dict:
    """One run at fixed `weights` (OUT/final, reused when finished), as a method's result:
    {"weights", "val_loss", "runs", "tokens", "seconds"} (seconds: the run's own timing)."""
    from mixjax.starter import cached_run

    final = cached_run(config, data, weights, int(budget), Path(out) / "final")
    return {"weights": dict(weights), "val_loss": final["val_loss"], "runs": 1, "tokens": int(budget),
            "seconds": final["timings"]["total_s"]}


def method_result(name: str, data, budget: int, config, out: Path, options: dict | None = None,
                  eval_batches: int = 2) -> dict:
    """One method at one budget and seed: {"weights", "val_loss", "runs", "tokens", "seconds"}
    (runs and tokens: everything it trained, the final run included). Cached in OUT/summary.json.
    Grid's final run is its best sweep run, not a repeat of it."""
    from mixjax.errors import MixjaxError
    from mixjax.io import write_json_atomic
    from mixjax.runners.mix import run_mix

    out = Path(out)
    cached = out / "summary.json"
    if cached.is_file():
        summary = json.loads(cached.read_text())
        if summary["budget"] != int(budget) or summary["seed"] != config.seed:
            raise MixjaxError(f"{cached}: a run of another budget or seed; use a new --work")
        return summary
    started = time.perf_counter()
    options = dict(options or {})
    domains = list(data.domains)
    if name in BASELINES:
        summary = fixed_weights_result(data, natural_weights(data), budget, config, out)
    elif name == "grid":
        from mixjax.methods.static import Grid
        from mixjax.runners.sweep import run_sweep

        method = Grid(**options)
        runs, obs = run_sweep(method, "grid", options, data, budget, out / "sweep", config, log=lambda s: None)
        weights = method.recommend(obs, domains, budget)
        totals = np.nansum(obs.losses, axis=1)
        best = int(np.argmin(totals))
        summary = {"weights": weights, "val_loss": dict(zip(domains, obs.losses[best].tolist())),
                   "runs": len(runs), "tokens": int(sum(r.budget_tokens for r in runs)),
                   "grid": [{"weights": dict(zip(domains, (t / t.sum()).tolist())),
                             "val_loss": dict(zip(domains, l.tolist()))} for t, l in zip(obs.tokens, obs.losses)]}
    else:
        mix = run_mix(name, options, data, budget, out, config, eval_max_batches=eval_batches, log=lambda s: None)
        final = mix["results"][0]
        summary = {"weights": final["weights"], "val_loss": final["val_loss"],
                   "runs": int(mix.get("extra_runs", 0)) + 1, "tokens": int(mix.get("extra_tokens", 0)) + int(budget)}
    summary.update(method=name, options=options, seed=config.seed, budget=int(budget),
                   seconds=round(time.perf_counter() - started, 1))
    write_json_atomic(cached, summary)
    return summary


def run_method(name: str, data, budget: int, config, seed: int, out: Path, scale: Scale) -> dict:
    """`method_result` for one seed of an experiment: the config at that seed, online schedules
    scaled to the run's steps, the scale's evaluation batches for online methods."""
    from mixjax.methods.static import Grid

    num_steps = budget // (scale.batch_size * scale.seq_len)
    options = online_options(name, num_steps, len(data.domains))
    if name == "grid" and scale.grid_step != Grid().step:  # the default stays out of cached runs' options
        options = {**options, "step": scale.grid_step}
    return method_result(name, data, budget, dataclasses.replace(config, seed=seed, progress=False), out, options,
                         eval_batches=scale.online_eval_batches)


def gap_recovered(regret, stratified_regret) -> dict:
    """Share of the stratified-to-grid-best gap a method recovers, 1 - regret / stratified's regret,
    per seed (paired; NaN on a seed where stratified is not behind the grid's best: no gap there):
    mean and standard error over the seeds with a gap, their number, and the share of the mean gap,
    1 - mean regret / stratified's mean regret, which a small gap on one seed cannot blow up."""
    regret, strat = np.asarray(regret, np.float64), np.asarray(stratified_regret, np.float64)
    shares = np.where(strat > 0, 1 - regret / np.where(strat > 0, strat, 1.0), np.nan)
    seen = shares[np.isfinite(shares)]
    n = int(seen.size)
    return {"per_seed": shares.tolist(), "mean": float(seen.mean()) if n else float("nan"),
            "se": float(seen.std(ddof=1) / np.sqrt(n)) if n > 1 else None, "n": n,
            "of_mean_gap": float(1 - regret.mean() / strat.mean()) if strat.mean() > 0 else float("nan")}


def method_minutes(summaries) -> float:
    """Wall minutes the given method results took when they were trained (cached or not)."""
    return sum(float(r.get("seconds", 0.0)) for r in summaries) / 60


def mean_std(values) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def command_line(script: str | None = None, argv=None) -> str:
    """The command that reruns this experiment (default: this process's own)."""
    script = os.path.abspath(script or sys.argv[0])
    argv = sys.argv[1:] if argv is None else argv
    shown = os.path.relpath(script, ROOT) if script.startswith(str(ROOT)) else script
    return "python " + " ".join(shlex.quote(a) for a in [shown, *argv])


def write_results(results: Path, name: str, payload: dict, markdown: str, figures: dict, seconds: float,
                  command: str | None = None) -> list[str]:
    """results/NAME.json, results/NAME.md and results/NAME_<figure>.png, each written atomically."""
    from mixjax.io import write_json_atomic, write_text_atomic

    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    command = command or command_line()
    payload = {"command": command, "seconds": round(seconds, 1), **payload}
    write_json_atomic(results / f"{name}.json", json.loads(json.dumps(payload, default=float)))
    paths = []
    for fig_name, fig in figures.items():
        path = results / f"{name}_{fig_name}.png"
        tmp = path.with_name(path.name + ".tmp.png")
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
        paths.append(path.name)
    header = (f"<!-- made by `{command}`; edit the script, not this file -->\n"
              f"Made by `{command}` (this invocation: {seconds / 60:.1f} min on {os.cpu_count()} CPU cores; "
              "runs already in its --work directory are reused, not retrained).\n\n")
    plots = "".join(f"\n![{p}]({p})\n" for p in paths)
    write_text_atomic(results / f"{name}.md", header + markdown.rstrip() + "\n" + plots)
    return paths


def publish(args, name: str, payload: dict, markdown: str, figures: dict, started: float, script: str, argv) -> int:
    """write_results for an experiment's run (NAME_quick with --quick), its wall time counted from
    `started` and the command that reruns it; logs where the results went; returns exit code 0."""
    name += "_quick" if args.quick else ""
    write_results(Path(args.results), name, payload, markdown, figures, time.perf_counter() - started,
                  command=command_line(script, argv))
    log(f"results in {args.results}/{name}.md")
    return 0


# -- checking a fitted law by training at its weights (budget_sweep.py, reweight_collection.py) --

def law_losses(fitted, weights: dict, budget: float) -> dict:
    """A fitted law's per-domain loss for `weights` (domain -> weight) at `budget` tokens."""
    from mixjax.validation import predicted_losses

    tokens_K = np.array([weights.get(d, 0.0) * budget for d in fitted.domains])
    return dict(zip(fitted.domains, predicted_losses(fitted, tokens_K)[0].tolist()))


def train_arms(data, config, arms: dict, budget: int, seeds, out: Path, root: Path | None = None) -> dict:
    """Train each arm (name -> weights) at `budget` tokens once per seed, cached in
    OUT/<arm>/seed<seed> (a rerun reuses finished runs). Returns {arm: {seed: {"weights",
    "val_loss", "tokens", "run"}}}, `run` the run directory relative to `root` (default OUT)."""
    from mixjax.starter import cached_run

    out = Path(out)
    root = Path(root) if root is not None else out
    table = {}
    for name, weights in arms.items():
        table[name] = {}
        for seed in seeds:
            started = time.perf_counter()
            run_dir = out / name / f"seed{seed}"
            cfg = dataclasses.replace(config, seed=int(seed), progress=False)
            r = cached_run(cfg, data, weights, int(budget), run_dir)
            table[name][seed] = {"weights": dict(weights), "val_loss": r["val_loss"], "tokens": r["tokens"],
                                 "run": os.path.relpath(run_dir, root)}
            log(f"{budget:,} tokens, {name:>12s}, seed {seed}: total val loss {sum(r['val_loss'].values()):.4f} "
                f"({time.perf_counter() - started:.0f} s)")
    return table


# two-sided 95% critical values of Student's t with 1..10 degrees of freedom (then ~normal)
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def paired_difference(a, b) -> dict:
    """a - b over paired seeds: mean, std, standard error and the 95% t critical value (None with
    one seed), n and the per-seed differences."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    n = int(d.size)
    std = float(d.std(ddof=1)) if n > 1 else None
    return {"mean": float(d.mean()), "std": std, "se": std / np.sqrt(n) if std is not None else None, "n": n,
            "t95": (T95[n - 2] if n - 1 <= len(T95) else 1.96) if n > 1 else None, "per_seed": d.tolist()}


def verdict(diff: dict, what: str) -> str:
    """A plain reading of a paired difference (negative = lower loss): resolved when its 95%
    t-interval (n - 1 degrees of freedom) excludes zero."""
    m, se, t95 = diff["mean"], diff["se"], diff.get("t95")
    if se is None:
        return f"{what}: {m:+.4f} nats from one seed, so no error estimate; not evidence either way"
    head = f"{what}: {m:+.4f} ± {se:.4f} nats (mean ± s.e., {diff['n']} seeds; 95% interval ± {t95 * se:.4f})"
    if abs(m) <= t95 * se:
        return head + " - the interval contains zero: no difference this experiment can resolve"
    return head + " - " + ("lower (better)" if m < 0 else "HIGHER (worse)") + ", resolved at 95%"


def training_compute(run_dirs) -> dict:
    """Runs, tokens and training seconds (each run's own timing, so cached runs count) of the
    runs whose result.json is in `run_dirs`."""
    results = [json.loads((Path(r) / "result.json").read_text()) for r in run_dirs]
    return {"runs": len(results), "tokens": int(sum(sum(r["tokens"].values()) for r in results)),
            "seconds": round(sum(r["timings"]["total_s"] for r in results), 1)}
