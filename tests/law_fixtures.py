"""A li2025 law with parameters in the paper's ranges (token unit 1e6), as a hand-written law file
would give them; the tests simulate runs from it and check what the fit and optimiser recover."""

from __future__ import annotations

import copy

PAPER_LIKE = {
    "law": "li2025",
    "domains": ["if", "math", "code"],
    "token_unit": 1000000,
    "params": {
        "C": [3.0, 2.5, 2.8],
        "k": [0.5, 0.3, 0.4],
        "alpha": [0.5, 0.6, 0.4],
        "beta": [0.3, 0.4, 0.35],
        "E": [1.0, 0.6, 0.8],
    },
}


def paper_like_law(law_name: str = "li2025"):
    """The law file above, loaded (optionally read as another law with the same fields)."""
    from mixjax.laws import FittedLaw

    return FittedLaw.from_json({**copy.deepcopy(PAPER_LIKE), "law": law_name})


def simulated_training(truth, noise: float = 0.0, fail_at=()):
    """A stand-in for `run_training` whose runs have the law `truth`'s losses (+ Gaussian noise of
    `noise`, one fixed draw per run folder name), writing result.json as a run does; a run folder
    named in `fail_at` raises instead. Returns (the function, the run folder names in order)."""
    import json
    import zlib

    import numpy as np

    from mixjax.errors import MixjaxError
    from mixjax.mixture import Mixture
    from mixjax.testing import simulate

    trained = []

    def run_training(config, data, weights, budget_tokens, *, out_dir=None, callbacks=()):
        if out_dir.name in fail_at:
            raise MixjaxError(f"killed while training {out_dir.name}")
        weights = weights.as_dict() if isinstance(weights, Mixture) else weights  # a mix's final run: a Mixture
        tokens = {d: weights.get(d, 0.0) * budget_tokens for d in truth.domains}
        loss = simulate(truth, ["r"], np.array([[tokens[d] for d in truth.domains]])).losses[0]
        if noise:
            loss = loss + noise * np.random.default_rng(zlib.crc32(out_dir.name.encode())).standard_normal(len(loss))
        result = {"tokens": tokens, "val_loss": dict(zip(truth.domains, loss.tolist())),
                  "budget_tokens": int(budget_tokens), "weights": dict(weights)}
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "result.json").write_text(json.dumps(result))
        trained.append(out_dir.name)
        return result

    return run_training, trained
