"""How well a fitted law predicts runs it was not fitted to (the Aioli paper's law-fidelity check).

For held-out runs (an observations table): the law's predicted loss of every domain beside the
measured one, per-domain and total RMSE, and the Spearman rank correlation of predicted against
measured total loss over the runs (does the law order the mixtures as training does?).
"""

from __future__ import annotations

import numpy as np

from mixjax.errors import MixjaxError


def predicted_losses(fitted, tokens_RxK) -> np.ndarray:
    """The law's per-domain losses (R, K) at runs of `tokens_RxK` tokens (in the fit's domain order)."""
    import jax
    import jax.numpy as jnp

    from mixjax.laws import predict

    tokens = np.asarray(tokens_RxK, np.float64).reshape(-1, len(fitted.domains)) / fitted.token_unit
    with jax.enable_x64(True):
        params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), fitted.params)
        one = jax.jit(lambda t: predict(fitted.law, params, t))
        return np.asarray(jax.vmap(one)(jnp.asarray(tokens))) if len(tokens) else np.zeros((0, tokens.shape[1]))


def ranks(values) -> np.ndarray:
    """Ranks 1..n, ties given their average rank (as Spearman's correlation needs)."""
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="stable")
    r = np.empty(len(values))
    r[order] = np.arange(1, len(values) + 1)
    for v in np.unique(values):
        tied = values == v
        r[tied] = r[tied].mean()
    return r


def spearman(a, b) -> float:
    """Spearman's rank correlation (Pearson's on average ranks); NaN when either side is constant."""
    ra, rb = ranks(a), ranks(b)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def validate(fitted, observations) -> dict:
    """Predicted against measured losses on `observations` (runs the fit need not have seen):
    {"runs": [{"run", "measured": {d: loss}, "predicted": {d: loss}}], "rmse": {d: ..., "total": ...},
    "spearman_total": rho over the runs with every domain measured, "n_runs"}."""
    missing = [d for d in fitted.domains if d not in observations.domains]
    if missing:
        raise MixjaxError(f"validation runs lack the law's domain(s) {', '.join(missing)}")
    obs = observations.select(fitted.domains)
    if not len(obs.runs):
        raise MixjaxError("no validation runs")
    pred = predicted_losses(fitted, obs.tokens)
    meas = obs.losses
    seen = np.isfinite(meas)
    rmse = {}
    for j, d in enumerate(fitted.domains):
        err = (pred[seen[:, j], j] - meas[seen[:, j], j])
        rmse[d] = float(np.sqrt(np.mean(err ** 2))) if err.size else float("nan")
    complete = seen.all(axis=1)
    totals_m, totals_p = meas[complete].sum(axis=1), pred[complete].sum(axis=1)
    rmse["total"] = float(np.sqrt(np.mean((totals_p - totals_m) ** 2))) if complete.any() else float("nan")
    runs = [{"run": name, "measured": {d: (float(meas[r, j]) if seen[r, j] else None) for j, d in enumerate(fitted.domains)},
             "predicted": {d: float(pred[r, j]) for j, d in enumerate(fitted.domains)}}
            for r, name in enumerate(obs.runs)]
    return {"runs": runs, "rmse": rmse, "spearman_total": spearman(totals_p, totals_m) if complete.sum() > 1
            else float("nan"), "n_runs": len(obs.runs), "n_complete": int(complete.sum())}


def write_validation_csv(report: dict, domains, path) -> None:
    """run, measured_<d>, predicted_<d> per row (written atomically; empty = not measured)."""
    from mixjax.io import write_text_atomic

    head = ["run"] + [f"{kind}_{d}" for d in domains for kind in ("measured", "predicted")]
    lines = [",".join(head)]
    for r in report["runs"]:
        cells = [r["run"]]
        for d in domains:
            m = r["measured"][d]
            cells += ["" if m is None else f"{m:.6g}", f"{r['predicted'][d]:.6g}"]
        lines.append(",".join(cells))
    write_text_atomic(path, "\n".join(lines) + "\n")


def summary(report: dict, domains) -> str:
    """A few lines for the terminal: RMSE per domain and of the total, Spearman of the totals."""
    parts = ", ".join(f"{d} {report['rmse'][d]:.4g}" for d in domains)
    return (f"validation on {report['n_runs']} held-out run(s): RMSE {parts}; total {report['rmse']['total']:.4g}; "
            f"Spearman of total loss {report['spearman_total']:.3f} over {report['n_complete']} run(s)")
