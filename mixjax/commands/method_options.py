"""Command-line options of the mixture methods, shared by `mixjax sweep` and `mixjax mix`."""

from __future__ import annotations

import argparse

from mixjax.errors import MixjaxError
from mixjax.token_counts import parse_tokens

# flag dest -> (methods it applies to, constructor keyword)
OPTION_TARGETS = {
    "grid_step": (("grid",), "step"),
    "factors": (("li2025",), "factors"),
    "base_fraction": (("li2025",), "base_fraction"),
    "no_extra_runs": (("li2025",), "add_runs"),  # the flag stores False
    "huber": (("li2025",), "huber_delta"),
    "perturbation_evals": (("li2025",), "perturbation_evals"),
    "adaptive": (("li2025",), "adaptive"),
    "max_runs": (("li2025",), "max_runs"),
    "tolerance": (("li2025",), "tolerance"),
    "law": (("li2025",), "law"),
    "r_star": (("li2025",), "r_star"),
    "target_budget": (("li2025",), "target_budget"),
    "along_run": (("li2025",), "along_run"),
    "scales": (("li2025",), "scales"),
    "design_budget": (("li2025",), "design_budget"),
    "runs": (("dml", "regmix"), "n_runs"),
    "eta": (("aioli", "doremi", "doge", "skillit"), "eta"),
    "lp_rounds": (("aioli",), "lp_rounds"),
    "lp_steps": (("aioli",), "lp_steps"),
    "one_hot_factor": (("aioli",), "one_hot_factor"),
    "update_steps": (("aioli", "skillit"), "update_steps"),
    "ema": (("aioli",), "ema"),
    "cumulative": (("aioli",), "cumulative"),
    "dynamic_start": (("aioli",), "dynamic_start"),
    "prior_weights": (("aioli",), "prior_weights"),
    "prior_steps": (("aioli",), "prior_steps"),
    "update_every": (("doremi", "doge"), "update_every"),
    "proxy_fraction": (("doremi", "doge"), "proxy_fraction"),
    "proxy_sampling": (("doremi", "doge"), "sampling"),
    "smoothing": (("doremi",), "smoothing"),
    "reference": (("doremi",), "reference"),
    "window": (("skillit",), "window"),
    "single_fraction": (("skillit",), "single_fraction"),
    "evaluations": (("skillit",), "evaluations"),
}


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


ONLINE_ONLY = {"online_eval_batches": ("aioli", "doremi", "doge", "skillit")}


class _OptionsOf:
    """An argument group whose help lists only the options of `methods` (`sweep --help` lists no
    option of an online method, which `sweep` does not take)."""

    def __init__(self, group, methods):
        self.group, self.methods = group, set(methods)

    def add_argument(self, flag: str, **kwargs) -> None:
        dest = flag.lstrip("-").replace("-", "_")
        targets = OPTION_TARGETS.get(dest, (ONLINE_ONLY.get(dest),))[0]
        if targets is not None and not self.methods & set(targets):
            kwargs["help"] = argparse.SUPPRESS  # still parsed, so using it says which methods take it
        self.group.add_argument(flag, **kwargs)


def _tokens(text: str) -> int:
    try:
        return parse_tokens(text, "tokens")
    except MixjaxError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_method_arguments(p: argparse.ArgumentParser, methods: list[str]) -> None:
    p.add_argument("--method", required=True, choices=methods)
    g = _OptionsOf(p.add_argument_group("method options (defaults: the papers' settings)"), methods)
    g.add_argument("--grid-step", type=float, help="grid: weight step, e.g. 0.125 (the paper's 21 mixtures)")
    g.add_argument("--factors", type=_floats, help="li2025: perturbation factors (default 0.25,0.5,2,3)")
    g.add_argument("--base-fraction", type=float,
                   help="li2025: base run size as a fraction of the budget (default 0.25)")
    g.add_argument("--no-extra-runs", action="store_const", const=False, default=None,
                   help="li2025: do not add runs when the fit would be under-determined")
    g.add_argument("--huber", type=float, metavar="DELTA",
                   help="li2025: fit with a Huber loss of this delta (default 1e-3, the paper's); "
                        "0 = least squares")
    g.add_argument("--perturbation-evals", type=int, metavar="N",
                   help="li2025: evaluate each perturbation run at most N times (every ceil(steps / N) steps) and "
                        "record its best evaluation, as the paper keeps the best checkpoint (default 10); "
                        "0 = the final loss")
    g.add_argument("--adaptive", action="store_const", const=True, default=None,
                   help="li2025: train the runs one at a time, each the one that most narrows the optimal "
                        "weights' intervals (`mixjax next`), until every 90%% interval is narrower than "
                        "--tolerance or --max-runs runs are done")
    g.add_argument("--max-runs", type=int, metavar="N",
                   help="li2025 --adaptive: at most N runs in all (default 1 + 4K, the fixed design's count)")
    g.add_argument("--tolerance", type=float,
                   help="li2025 --adaptive: stop when every weight's 90%% interval is narrower (default 0.02)")
    g.add_argument("--law", choices=("li2025", "li2025-pairwise", "li2025-repeat"),
                   help="li2025: the law fitted (default li2025; li2025-repeat with --target-budget); "
                        "li2025-repeat counts a domain's repeated tokens as Muennighoff et al.'s effective data, "
                        "from the data's training tokens")
    g.add_argument("--r-star", type=float, metavar="R",
                   help="li2025 --law li2025-repeat: fix R* (repetitions at which a repeated token's value has "
                        "decayed by 1/e; their fit: 15); default fitted per domain")
    g.add_argument("--target-budget", type=_tokens, metavar="T",
                   help="li2025: cut each domain's training data to run budget / T for each run, so it repeats "
                        "as often as in a run of T tokens; the law li2025-repeat then learns how repetition "
                        "pays (R*)")
    g.add_argument("--along-run", type=int, metavar="N",
                   help="li2025: train the runs at a constant learning rate and record N evaluations of each, "
                        "every one an observation of the fit (default 0: one per run)")
    g.add_argument("--scales", type=_floats, metavar="S,...",
                   help="li2025: the perturbation design at each of these sizes of its base run (e.g. 1,0.25: "
                        "runs at two sizes; default 1)")
    g.add_argument("--design-budget", metavar="N",
                   help="li2025: size the perturbation runs as for this budget (e.g. 500k; at most "
                        "--budget-tokens, its default) and optimise the law at --budget-tokens; weights.json "
                        "records the runs' sizes and the ratio target / largest run")
    g.add_argument("--runs", type=int, help="dml/regmix: number of Dirichlet runs")
    g.add_argument("--eta", type=float,
                   help="EG step size: aioli (released: 0.2 for 2 domains, 0.1 for 3-4, 1 for more), "
                        "doremi 1, doge 1/mu (released: 100 for up to 4 domains, 10 for more), skillit 0.2")
    g.add_argument("--lp-rounds", type=int, help="aioli: LearnParams sweeps per round")
    g.add_argument("--lp-steps", type=int, help="aioli: steps per LearnParams interval")
    g.add_argument("--one-hot-factor", type=float, help="aioli: weight of the interval's own domain")
    g.add_argument("--update-steps", type=int,
                   help="aioli (default 250) / skillit (default 500, 400 for more than 6 domains): steps per round")
    g.add_argument("--ema", type=float,
                   help="aioli: weight of the old EMA of the interaction matrix; the weights are recomputed "
                        "from uniform each round (released: 0.1 for 2 domains, 0.5 for 3-4, 0.1 for more)")
    g.add_argument("--cumulative", action="store_const", const=True, default=None,
                   help="aioli: accumulate each round's EG step instead (the release without --ema)")
    g.add_argument("--dynamic-start", choices=("uniform", "prior"),
                   help="aioli restricted setting: after --prior-steps the rounds start from uniform "
                        "(the release, default) or from --prior-weights")
    g.add_argument("--prior-weights", type=_floats, help="aioli: start from these weights (restricted)")
    g.add_argument("--prior-steps", type=int, help="aioli: steps at --prior-weights first")
    g.add_argument("--update-every", type=int,
                   help="doremi (default 1) / doge (default 100): steps between weight updates")
    g.add_argument("--proxy-fraction", type=float,
                   help="doremi/doge: proxy (and doremi's reference) run size as a fraction of the budget (default 1)")
    g.add_argument("--proxy-sampling", choices=("reweight", "resample"),
                   help="doremi/doge: sample the proxy stratified and weight each domain's loss (reweight, "
                        "the releases; default) or sample at the current weights (resample)")
    g.add_argument("--smoothing", type=float, help="doremi: weight of the uniform distribution mixed in (default 1e-3)")
    g.add_argument("--reference", metavar="RUN_DIR",
                   help="doremi: an existing reference run with a checkpoint (default: train one at stratified weights)")
    g.add_argument("--window", type=int, help="skillit: evaluations whose losses are summed (default 3)")
    g.add_argument("--single-fraction", type=float,
                   help="skillit: each single-domain run's size as a fraction of the budget (default 1/K)")
    g.add_argument("--evaluations", type=int, metavar="N",
                   help="skillit: validation evaluations per run, every num_steps/N steps from step 0 (default 20)")
    g.add_argument("--online-eval-batches", type=int, default=4,
                   help="validation batches per domain for each evaluation an online method asks for")


def method_options(args) -> dict:
    """The constructor options the user set; an option of another method is an error."""
    options = {}
    for dest, (methods, keyword) in OPTION_TARGETS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if args.method not in methods:
            flag = "--" + dest.replace("_", "-")
            raise MixjaxError(f"{flag} does not apply to --method {args.method} (only {', '.join(methods)})")
        if dest == "design_budget":
            value = parse_tokens(str(value), "--design-budget")
        options[keyword] = value
    return options
