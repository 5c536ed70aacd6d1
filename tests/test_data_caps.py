"""Data-aware weights (issue 24): `optimize`, `fit` and `mix` read each domain's training tokens from
the prepared data, keep every domain within --max-epochs passes, say where the cap binds (with the
optimum without it); `mix --design-budget` records its runs' sizes and the extrapolation ratio;
the one-line errors for data of other domains and a design budget above the target."""

import copy
import functools
import json

import numpy as np
import pytest

from mixjax.cli import main
from mixjax.laws import FittedLaw
from mixjax.optimize import optimize
from tests.data_fixtures import prepared_domains
from tests.law_fixtures import PAPER_LIKE, simulated_training

ABC_LAW = {**copy.deepcopy(PAPER_LIKE), "domains": ["a", "b", "c"], "token_unit": 20_000}  # b gets most at ~5k tokens


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_domains(tmp_path_factory.mktemp("caps"), "abc", n=40)


@pytest.fixture(scope="module")
def train_tokens(data_dir):
    from mixjax.data.prepared import PreparedData

    return PreparedData(data_dir).train_tokens()


def one_line_error(capsys, command: str, message: str) -> None:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mixjax {command}: error: ") and "\n" not in err and message in err, err


def test_optimize_with_data_caps_every_domain_and_says_what_binds(data_dir, train_tokens, tmp_path, capsys):
    law = tmp_path / "law.json"
    law.write_text(json.dumps(ABC_LAW))
    budget = int(0.9 * sum(train_tokens.values()))  # the law wants nearly all of it on b
    out = tmp_path / "w.json"
    assert main(["optimize", "--law-file", str(law), "--data", str(data_dir), "--max-epochs", "1",
                 "--budget-tokens", str(budget), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    entry = record["results"][0]
    assert record["data"] == {"train_tokens": train_tokens, "max_epochs": 1.0}
    for d, n in train_tokens.items():
        assert entry["tokens"][d] <= n * 1 - 2 + 1e-6 and entry["passes"][d] == pytest.approx(entry["tokens"][d] / n)
    free = optimize(FittedLaw.from_json(ABC_LAW), [budget]).weights[0]
    assert free[1] * budget > train_tokens["b"]  # without the data, b would be repeated
    assert entry["cap_binds"] == ["b"]
    np.testing.assert_allclose(list(entry["unconstrained_weights"].values()), free, atol=1e-6)
    assert f"the data cap binds for b ({train_tokens['b']:,} tokens), held at 1 passes" in printed

    # --available overrides one domain's count from --data; the default --max-epochs is train's
    from mixjax.train import TrainConfig

    assert main(["optimize", "--law-file", str(law), "--data", str(data_dir), "--available", "b=1M",
                 "--budget-tokens", str(budget), "--out", str(out)]) == 0
    again = json.loads(out.read_text())
    assert again["data"]["max_epochs"] == TrainConfig().max_epochs == 10
    assert again["data"]["train_tokens"]["b"] == 1_000_000 and again["results"][0]["cap_binds"] == []
    assert "no data cap binds" in capsys.readouterr().out


def test_data_of_other_domains_is_a_one_line_error(data_dir, tmp_path, capsys):
    law = tmp_path / "law.json"
    law.write_text(json.dumps(PAPER_LIKE))  # if, math, code
    assert main(["optimize", "--law-file", str(law), "--data", str(data_dir), "--budget-tokens", "1k",
                 "--out", str(tmp_path / "w.json")]) == 2
    one_line_error(capsys, "optimize", f"--data {data_dir}: its domains ['a', 'b', 'c'] differ from the law's "
                                       "domains ['if', 'math', 'code']")
    csv = tmp_path / "runs.csv"
    csv.write_text("run,tokens_if,tokens_math,loss_if,loss_math\nr,1,2,3,3\n")
    assert main(["fit", "--law", "linear", "--observations", str(csv), "--data", str(data_dir),
                 "--out", str(tmp_path / "l.json")]) == 2
    one_line_error(capsys, "fit", "differ from the observations' domains ['if', 'math']")
    assert main(["optimize", "--law-file", str(law), "--max-epochs", "2", "--budget-tokens", "1k",
                 "--out", str(tmp_path / "w.json")]) == 2
    one_line_error(capsys, "optimize", "--max-epochs needs --data")
    assert not (tmp_path / "w.json").exists() and not (tmp_path / "l.json").exists()


@pytest.fixture
def simulated(monkeypatch):
    """Training replaced by the paper-like law's losses on domains a, b, c; fits without bootstrap."""
    import mixjax.fit
    import mixjax.train
    from mixjax.fit import FitOptions

    fake, trained = simulated_training(FittedLaw.from_json(ABC_LAW))
    monkeypatch.setattr(mixjax.train, "run_training", fake)
    monkeypatch.setattr(mixjax.fit, "FitOptions", functools.partial(FitOptions, n_bootstrap=0, leave_one_out=False))
    return trained


def test_mix_caps_its_weights_and_records_its_design(simulated, data_dir, train_tokens, tmp_path, capsys):
    """li2025 from runs sized for an eighth of the target: the weights stay within --max-epochs passes
    of each domain, weights.json records the cap that binds, the runs' sizes and the ratio."""
    from mixjax.methods.offline import Li2025

    budget, design, epochs = int(1.5 * sum(train_tokens.values())), sum(train_tokens.values()) // 4, 2
    out = tmp_path / "mix"
    assert main(["mix", "--method", "li2025", "--data", str(data_dir), "--budget-tokens", str(budget),
                 "--design-budget", str(design), "--max-epochs", str(epochs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "weights.json").read_text())
    entry = record["results"][0]
    for d, n in train_tokens.items():
        assert entry["weights"][d] * budget <= n * epochs - 2 + 1e-6
    over = [d for d, n in train_tokens.items() if entry["unconstrained_weights"][d] * budget > n * epochs]
    assert over and entry["cap_binds"] == over  # the law's own optimum would repeat a domain too often
    sizes = [r.budget_tokens for r in Li2025().propose(["a", "b", "c"], design)]
    assert record["design"] == {"design_budget": design, "target_budget": budget,
                                "run_tokens": {"min": min(sizes), "max": max(sizes)},
                                "extrapolation_ratio": pytest.approx(budget / max(sizes))}
    ratio = budget / max(sizes)
    assert ratio > 10 and (f"warning: extrapolation: {budget:.4g} is {ratio:.3g}x the largest run (li2025's runs: "
                           f"{min(sizes):,} to {max(sizes):,} tokens, sized for a design budget of {design:,})") in printed
    assert "past 10x the experiments saw the law's weights fall behind stratified" in printed
    assert f"the data cap binds for {', '.join(over)}" in printed
    assert simulated[-1] == "final" and len(simulated) == 14

    # sweep: the same runs, the same line
    assert main(["sweep", "--method", "li2025", "--data", str(data_dir), "--budget-tokens", str(budget),
                 "--design-budget", str(design), "--out", str(tmp_path / "sweep")]) == 0
    assert f"sized for a design budget of {design:,})" in capsys.readouterr().out
    swept = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [r["budget_tokens"] for r in swept["runs"]] == sizes and swept["budget_tokens"] == budget

    # a design budget above the target, or for a method without one: one line, nothing trained
    simulated.clear()
    for argv, message in ((["--method", "li2025", "--design-budget", str(2 * budget)], "exceeds the target budget"),
                          (["--method", "dml", "--design-budget", "1k"], "--design-budget does not apply to --method dml")):
        assert main(["mix", *argv, "--data", str(data_dir), "--budget-tokens", str(budget),
                     "--out", str(tmp_path / "other")]) == 2
        one_line_error(capsys, "mix", message)
    assert simulated == [] and not (tmp_path / "other").exists()
