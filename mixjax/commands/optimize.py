"""`mixjax optimize`: optimal weights of a law file at one or more budgets (weights file + table)."""

from __future__ import annotations

import argparse

DESCRIPTION = """Weights on the simplex that minimise the law's total predicted loss at each budget
(tokens). Optional per-domain weight bounds and a cap from the data that exists
(tokens_i <= available_i x max_epochs). Prints a table of weights vs budget; --plot saves fitted
curves (with --observations, against the observed points) and weights vs budget."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "optimize", help="optimal mixture weights from a law file", description=DESCRIPTION
    )
    parser.add_argument("--law-file", required=True, metavar="JSON", help="from `mixjax fit` or by hand")
    parser.add_argument("--budget", action="append", required=True, metavar="N",
                        help="training budget in tokens (e.g. 5e6); repeatable")
    parser.add_argument("--out", required=True, metavar="JSON", help="weights file to write")
    parser.add_argument("--min-weight", action="append", default=[], metavar="D=X",
                        help="lower bound on a domain's weight; repeatable")
    parser.add_argument("--max-weight", action="append", default=[], metavar="D=X",
                        help="upper bound on a domain's weight; repeatable")
    parser.add_argument("--available", action="append", default=[], metavar="D=TOKENS",
                        help="tokens of a domain that exist (caps its tokens at this x --max-epochs)")
    parser.add_argument("--max-epochs", type=float, default=None, metavar="E",
                        help="passes allowed over --available data (default 1)")
    parser.add_argument("--plot", metavar="DIR", help="save PNG plots in this folder")
    parser.add_argument("--observations", metavar="CSV", help="observed runs to draw in the plots")
    parser.set_defaults(func=run)


def parse_assignments(values: list[str], flag: str) -> dict[str, float]:
    """NAME=NUMBER pairs; one-line errors name the flag."""
    from mixjax.errors import MixjaxError

    out = {}
    for v in values:
        name, sep, number = v.partition("=")
        if not sep or not name:
            raise MixjaxError(f"{flag}: expected NAME=NUMBER, got {v!r}")
        try:
            out[name] = float(number)
        except ValueError:
            raise MixjaxError(f"{flag}: {name}: not a number: {number!r}") from None
    return out


def run(args: argparse.Namespace) -> int:
    from mixjax.commands.fit import check_output_path, parse_budgets
    from mixjax.errors import MixjaxError
    from mixjax.io import write_json_atomic
    from mixjax.laws import load_law_file
    from mixjax.observations import read_csv
    from mixjax.optimize import check_budgets, optimize

    check_output_path(args.out, "--out")
    if args.plot:
        check_output_path(args.plot, "--plot", folder=True)
    budgets = check_budgets(parse_budgets(args.budget))
    fitted = load_law_file(args.law_file)
    bounds = dict(
        min_weight=parse_assignments(args.min_weight, "--min-weight"),
        max_weight=parse_assignments(args.max_weight, "--max-weight"),
        available=parse_assignments(args.available, "--available"),
        max_epochs=args.max_epochs,
    )
    if args.max_epochs is not None and not bounds["available"]:
        raise MixjaxError("--max-epochs needs --available (the tokens each domain has)")
    obs = None
    if args.observations:
        obs = read_csv(args.observations)
        if sorted(obs.domains) != sorted(fitted.domains):
            raise MixjaxError(
                f"{args.observations}: domains {obs.domains} do not match the law file's "
                f"domains {fitted.domains}"
            )
        obs = obs.select(fitted.domains)
    result = optimize(fitted, budgets, **bounds)
    write_json_atomic(args.out, result.to_json())
    print(table(result))
    if not result.converged.all():
        print("warning: the optimiser did not fully converge at some budgets (see 'converged')")
    if args.plot:
        paths = plot(fitted, result, obs, args.plot, bounds)
        print("plots: " + ", ".join(paths))
    print(f"wrote {args.out}")
    return 0


def table(result) -> str:
    """Weights vs budget, with the predicted total loss."""
    width = max(8, *(len(d) + 1 for d in result.domains))
    head = f"{'budget':>12}" + "".join(f"{d:>{width}}" for d in result.domains) + f"{'total loss':>12}"
    rows = [head]
    for b, budget in enumerate(result.budgets):
        cells = "".join(f"{w:>{width}.4f}" for w in result.weights[b])
        rows.append(f"{budget:>12.4g}{cells}{result.predicted_loss[b].sum():>12.5g}")
    return "\n".join(rows)


def plot(fitted, result, obs, out_dir, bounds) -> list[str]:
    """Save weights_vs_budget.png and fit.png (per-domain curves, observed points if any)."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from mixjax.errors import MixjaxError
    from mixjax.optimize import optimize

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    lo, hi = result.budgets.min() / 4, result.budgets.max() * 4
    try:
        dense = optimize(fitted, np.geomspace(lo, hi, 40), **bounds)
    except MixjaxError:
        dense = result
    fig, ax = plt.subplots(figsize=(6, 4))
    for j, d in enumerate(fitted.domains):
        line = ax.plot(dense.budgets, dense.weights[:, j], label=d)[0]
        ax.scatter(result.budgets, result.weights[:, j], color=line.get_color(), zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("budget (tokens)")
    ax.set_ylabel("optimal weight")
    ax.set_title(f"{fitted.law.name}: optimal weights vs budget")
    ax.legend()
    fig.tight_layout()
    paths.append(_save(fig, os.path.join(out_dir, "weights_vs_budget.png")))
    plt.close(fig)
    paths.append(_plot_fit(fitted, obs, result, os.path.join(out_dir, "fit.png")))
    return paths


def _plot_fit(fitted, obs, result, path) -> str:
    """Per domain: the law's loss vs that domain's tokens, others held at their median."""
    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np

    from mixjax.laws import predict

    K = len(fitted.domains)
    if obs is not None:
        base_tokens = np.median(obs.tokens, axis=0)
    else:
        base_tokens = np.full(K, result.budgets.min() / K)
    fig, axes = plt.subplots(1, K, figsize=(4 * K, 3.5), squeeze=False)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), fitted.params)
        predict_many = jax.vmap(lambda t: predict(fitted.law, params, t))
        for j, d in enumerate(fitted.domains):
            ax = axes[0, j]
            if obs is not None:
                own = obs.tokens[:, j]
                xs = np.geomspace(max(own[own > 0].min() / 2, 1.0), own.max() * 2, 80)
            else:
                xs = np.geomspace(base_tokens[j] / 10, base_tokens[j] * 10, 80)
            grid = np.tile(base_tokens, (xs.size, 1))
            grid[:, j] = xs
            curve = np.asarray(predict_many(jnp.asarray(grid / fitted.token_unit)))[:, j]
            ax.plot(xs, curve, label="law (others at median)")
            if obs is not None:
                seen = obs.observed[:, j]
                predicted = np.asarray(predict_many(jnp.asarray(obs.tokens / fitted.token_unit)))[:, j]
                ax.scatter(obs.tokens[seen, j], obs.losses[seen, j], color="k", s=14, label="observed")
                ax.scatter(obs.tokens[seen, j], predicted[seen], marker="x", color="C1", s=18,
                           label="law at each run")
            ax.set_xscale("log")
            ax.set_xlabel(f"tokens of {d}")
            ax.set_ylabel(f"loss on {d}")
            ax.set_title(d)
        axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def _save(fig, path) -> str:
    """Save a figure atomically (temp file in the same folder, then rename)."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=".plot.", suffix=".png", dir=os.path.dirname(path) or ".")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
