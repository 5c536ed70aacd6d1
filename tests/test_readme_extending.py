"""The README's "Extending mixjax" steps, followed on a toy law and a toy method: what the README
says to write and register is enough for the commands to take it by name."""

import json
import sys
import types
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import laws
from mixjax.cli import main


class ToyParams(NamedTuple):
    c: jax.Array  # (K,) the loss with unlimited data
    a: jax.Array  # (K,) > 0


def toy_law_module() -> types.ModuleType:
    """`mixjax/laws/toy.py` as the README describes it: L_i = c_i + a_i n_i^(-1/2)."""
    module = types.ModuleType("mixjax.laws.toy")

    def domain_loss(p, tokens_K, i):
        return p.c + p.a * tokens_K[i] ** -0.5

    def random_raw(key, tokens_RxK, losses_R, weights_R, i):
        mean = jnp.sum(weights_R * losses_R) / jnp.maximum(jnp.sum(weights_R), 1e-12)
        return jnp.stack([mean, 0.1 * jax.random.normal(key, (), losses_R.dtype)])

    module.LAW = laws.Law(
        name="toy", params_type=ToyParams,
        field_shapes=lambda K: {"c": (K,), "a": (K,)},
        n_free=lambda K: 2,
        domain_loss=domain_loss,
        unpack=lambda raw_P, K, i: ToyParams(c=raw_P[0], a=jnp.exp(raw_P[1])),
        pack=lambda p, K, i: jnp.stack([p.c, jnp.log(p.a)]),
        random_raw=random_raw,
        rescale=lambda p, r: ToyParams(c=p.c, a=p.a * r ** 0.5),
        check=lambda fields: None if np.all(np.asarray(fields["a"]) > 0) else "params.a must be > 0",
        uses_proportions=False,
    )
    return module


def test_a_law_written_and_registered_as_the_readme_says_is_fitted_and_optimised(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mixjax.laws.toy", toy_law_module())
    monkeypatch.setitem(laws.LAW_MODULES, "toy", "toy")
    c, a = np.array([1.5, 2.0, 0.8]), np.array([0.3, 0.6, 1.2])
    rng = np.random.default_rng(0)
    tokens = np.round(rng.uniform(0.2e6, 3e6, (8, 3)))  # whole tokens, as a CSV of runs has
    losses = c + a * (tokens / 1e6) ** -0.5  # the law, in its default unit of 1e6 tokens
    rows = ["run," + ",".join(f"tokens_{d}" for d in "xyz") + "," + ",".join(f"loss_{d}" for d in "xyz")]
    rows += [f"r{r}," + ",".join(f"{t:.0f}" for t in tokens[r]) + "," + ",".join(repr(float(v)) for v in losses[r])
             for r in range(8)]
    (tmp_path / "runs.csv").write_text("\n".join(rows) + "\n")

    assert main(["fit", "--law", "toy", "--observations", str(tmp_path / "runs.csv"), "--out",
                 str(tmp_path / "law.json"), "--starts", "8", "--bootstrap", "0", "--no-loo"]) == 0
    law_file = json.loads((tmp_path / "law.json").read_text())
    assert law_file["law"] == "toy"
    np.testing.assert_allclose(law_file["params"]["c"], c, rtol=1e-6)
    np.testing.assert_allclose(law_file["params"]["a"], a, rtol=1e-6)

    assert main(["optimize", "--law-file", str(tmp_path / "law.json"), "--budget-tokens", "4M",
                 "--out", str(tmp_path / "weights.json")]) == 0
    result = json.loads((tmp_path / "weights.json").read_text())["results"][0]
    # minimising sum_i a_i (w_i B)^(-1/2) on the simplex: w_i proportional to a_i^(2/3)
    expected = a ** (2 / 3) / np.sum(a ** (2 / 3))
    np.testing.assert_allclose([result["weights"][d] for d in "xyz"], expected, atol=1e-4)


def toy_method_module() -> types.ModuleType:
    """`mixjax/methods/toy.py` as the README describes it: an offline method that trains one run
    leaning towards each domain and gives each domain a weight in proportion to its loss there."""
    from mixjax.methods.base import OfflineMethod, ProposedRun

    class Lean(OfflineMethod):
        name = "toy"
        options = {"lean": "toy: the weight of each run's own domain"}  # a flag, --lean

        def __init__(self, lean: float = 0.75):
            self.lean = lean

        def propose(self, domains, budget_tokens):
            rest = (1 - self.lean) / (len(domains) - 1)
            return [ProposedRun(f"toy-{d}", {e: self.lean if e == d else rest for e in domains}, budget_tokens)
                    for d in domains]

        def recommend(self, observations, domains, budget_tokens):
            own = [observations.losses[observations.runs.index(f"toy-{d}"), j] for j, d in enumerate(domains)]
            return {d: float(loss / sum(own)) for d, loss in zip(domains, own)}

    module = types.ModuleType("mixjax.methods.toy")
    module.Lean = Lean
    return module


def test_a_method_written_and_registered_as_the_readme_says_is_mixed(tmp_path, monkeypatch):
    import csv

    from mixjax import methods
    from tests.data_fixtures import prepared_domains

    monkeypatch.setitem(sys.modules, "mixjax.methods.toy", toy_method_module())
    monkeypatch.setitem(methods.METHOD_CLASSES, "toy", "toy:Lean")
    monkeypatch.setattr(methods, "OFFLINE", methods.OFFLINE + ("toy",))  # made from METHOD_CLASSES
    data_dir = prepared_domains(tmp_path, "ab")
    assert main(["mix", "--method", "toy", "--lean", "0.875", "--data", str(data_dir), "--budget-tokens", "256",
                 "--out", str(tmp_path / "mix"), "--model", "tiny", "--batch-size", "8", "--seq-len", "16",
                 "--quiet"]) == 0
    with open(tmp_path / "mix" / "sweep" / "observations.csv") as f:
        runs = {row["run"]: row for row in csv.DictReader(f)}
    assert {name: (int(r["tokens_a"]), int(r["tokens_b"])) for name, r in runs.items()} == {
        "toy-a": (224, 32), "toy-b": (32, 224)}  # --lean 0.875 of 256 tokens
    own = {d: float(runs[f"toy-{d}"][f"loss_{d}"]) for d in "ab"}
    weights = json.loads((tmp_path / "mix" / "weights.json").read_text())["results"][0]["weights"]
    assert weights == pytest.approx({d: own[d] / sum(own.values()) for d in "ab"}, rel=1e-6)
    final = json.loads((tmp_path / "mix" / "final" / "result.json").read_text())
    assert sum(final["tokens"].values()) == 256
