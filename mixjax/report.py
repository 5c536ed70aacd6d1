"""What the commands, the demo and the starter print and save: a prepared data manifest as a table;
an `optimize` result's weights vs budget as a table and as plots (with the law's fitted curves);
a mix's summary lines; the note on a model trained from random weights."""

from __future__ import annotations

from pathlib import Path


def format_manifest(manifest: dict) -> str:
    """A table of each domain's train/validation examples and tokens (a `prepare` manifest)."""
    rows = [f"{'domain':<16} {'train ex':>9} {'train tok':>11} {'loss tok':>11} {'val ex':>7} {'val tok':>9}"]
    for name, d in manifest["domains"].items():
        t, v = d["train"], d["validation"]
        rows.append(f"{name:<16} {t['examples']:>9,} {t['tokens']:>11,} {t['loss_tokens']:>11,} "
                    f"{v['examples']:>7,} {v['tokens']:>9,}")
    last = manifest.get("last_prepare", {})
    rebuilt = last.get("rebuilt") or []
    if last.get("first_build"):
        rows.append(f"built: {', '.join(rebuilt)}")
    else:
        rows.append(f"rebuilt: {', '.join(rebuilt) if rebuilt else 'nothing (inputs unchanged)'}")
    return "\n".join(rows)


def table(result) -> str:
    """Weights vs budget, with the predicted total loss; with the data, each domain's passes over
    its training tokens and, per budget, what the data cap binds (with the optimum without it)."""
    width = max(8, *(len(d) + 1 for d in result.domains))
    head = f"{'budget':>12}" + "".join(f"{d:>{width}}" for d in result.domains) + f"{'total loss':>12}"
    rows = [head]
    for b, budget in enumerate(result.budgets):
        cells = "".join(f"{w:>{width}.4f}" for w in result.weights[b])
        rows.append(f"{budget:>12.4g}{cells}{result.predicted_loss[b].sum():>12.5g}")
    if getattr(result, "available", None):
        rows += _passes_rows(result, width)
    return "\n".join(rows)


def _passes_rows(result, width: int) -> list[str]:
    """Passes over each domain's training tokens ('*': held at the cap) and a line per budget."""
    passes = result.passes()
    rows = [f"passes over each domain's training tokens (cap: {result.max_epochs:g} = --max-epochs; *: at the cap)"]
    for b, budget in enumerate(result.budgets):
        binds = result.cap_binds(b)
        cells = "".join(f"{'-' if p != p else f'{p:.2f}' + ('*' if d in binds else ''):>{width}}"
                        for d, p in zip(result.domains, passes[b]))
        rows.append(f"{budget:>12.4g}{cells}")
    for b, budget in enumerate(result.budgets):
        binds = result.cap_binds(b)
        if binds:
            free = ", ".join(f"{d}={w:.4f}" for d, w in zip(result.domains, result.unconstrained[b]))
            held = ", ".join(f"{d} ({result.available[d]:,.0f} tokens)" for d in binds)
            rows.append(f"at {budget:.4g}: the data cap binds for {held}, held at {result.max_epochs:g} passes; "
                        f"without the cap: {free}")
        else:
            j = max(range(len(result.domains)), key=lambda k: -1 if passes[b, k] != passes[b, k] else passes[b, k])
            rows.append(f"at {budget:.4g}: no data cap binds (most passes: {result.domains[j]} {passes[b, j]:.2f} "
                        f"of {result.max_epochs:g})")
    return rows


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
    fig = weights_figure(fitted, result, dense)
    paths.append(_save(fig, os.path.join(out_dir, "weights_vs_budget.png")))
    plt.close(fig)
    paths.append(_plot_fit(fitted, obs, result, os.path.join(out_dir, "fit.png")))
    return paths


def weights_figure(fitted, result, dense):
    """The optimal weights against the budget (log axis): the optimiser's curve over `dense`'s
    budgets, a point at each of `result`'s, ticks labelled in tokens (5M, 20M) without overlap."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for j, d in enumerate(fitted.domains):
        line = ax.plot(dense.budgets, dense.weights[:, j], label=d)[0]
        ax.scatter(result.budgets, result.weights[:, j], color=line.get_color(), zorder=3)
    ax.set_xscale("log")
    _budget_ticks(ax, result.budgets)
    ax.set_xlabel("budget (tokens)")
    ax.set_ylabel("optimal weight")
    ax.set_title(f"{fitted.law.name}: optimal weights vs budget")
    ax.legend()
    fig.tight_layout()
    return fig


def tokens_label(x: float) -> str:
    """300k, 5M, 1.25M, 2G: a token count as a tick label."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.3g}"


def _budget_ticks(ax, budgets) -> None:
    """Major ticks at the budgets when they are few and far enough apart to label (else at the
    decades), labelled in tokens; minor ticks unlabelled (matplotlib labels them on a log axis of
    under two decades, where 2x10^6, 3x10^6, ... run into each other)."""
    import numpy as np
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    b = np.unique(np.asarray(budgets, np.float64))
    spaced = len(b) <= 6 and (len(b) < 2 or float(np.min(b[1:] / b[:-1])) >= 1.8)
    ax.xaxis.set_major_locator(FixedLocator(b) if spaced else LogLocator(base=10))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: tokens_label(x)))
    ax.xaxis.set_minor_formatter(NullFormatter())


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


def mix_lines(summary: dict) -> list[str]:
    """What `mix` prints besides the weights: each domain's passes at the budget and the cap that
    binds (with the optimum without it)."""
    entry, lines = summary["results"][0], []
    if "passes" in entry:
        cap = summary["data"]["max_epochs"]
        shown = ", ".join(f"{d} {p:.2f}{'*' if d in entry['cap_binds'] else ''}" for d, p in entry["passes"].items())
        lines.append(f"passes over each domain's training tokens (cap: {cap:g} = --max-epochs; *: at the cap): {shown}")
        if entry["cap_binds"]:
            free = ", ".join(f"{d}={w:.4f}" for d, w in entry["unconstrained_weights"].items())
            lines.append(f"the data cap binds for {', '.join(entry['cap_binds'])}; without the cap: {free}")
    return lines


def random_start_note(cfg) -> str | None:
    """One line when the model starts from random weights (no --init, --model not a Hugging Face
    directory): fine-tuning usually means a pre-trained base, and nothing else would say so."""
    if cfg.init or (cfg.model and (Path(cfg.model).is_dir() or "/" in cfg.model)):
        return None
    return (f"model: {cfg.model or 'tiny'} from random weights (no --init); to fine-tune a pre-trained model "
            "pass --init HF_DIR (data prepared with --tokenizer HF_DIR), or --init mixjax_demo/base after "
            "`mixjax demo` on the bundled data")
