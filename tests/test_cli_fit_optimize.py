"""`mixjax fit` and `mixjax optimize` round trips through `mixjax.cli.main`, and their errors."""

import json

import numpy as np
import pytest

from mixjax.cli import main
from mixjax.laws import FittedLaw
from mixjax.observations import perturbation_design, simulate, write_csv
from tests.law_fixtures import PAPER_LIKE

DOMAINS = ["if", "math", "code"]


@pytest.fixture(scope="module")
def runs_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "runs.csv"
    runs, tokens = perturbation_design(DOMAINS, 660e3)
    write_csv(simulate(FittedLaw.from_json(PAPER_LIKE), runs, tokens, noise=0.002, seed=3), path)
    return path


@pytest.fixture
def hand_written_law(tmp_path):
    path = tmp_path / "paper_law.json"
    path.write_text(json.dumps(PAPER_LIKE))
    return path


def test_fit_then_optimize_round_trip(runs_csv, tmp_path, capsys):
    law_file, weights_file = tmp_path / "law.json", tmp_path / "weights.json"
    rc = main(["fit", "--law", "li2025", "--observations", str(runs_csv), "--out", str(law_file),
               "--huber", "1e-3", "--budget", "5e6", "--budget", "2e7"])
    assert rc == 0
    law = json.loads(law_file.read_text())
    assert law["law"] == "li2025" and law["domains"] == DOMAINS and law["token_unit"] == 1000000
    assert set(law["params"]) == {"C", "k", "alpha", "beta", "E"}
    d = law["diagnostics"]
    assert d["under_determined"] is False and "leave_one_out" in d and len(d["bootstrap"]["results"]) == 2
    out = capsys.readouterr().out
    assert "LOO RMSE" in out and "bootstrap interval" in out

    rc = main(["optimize", "--law-file", str(law_file), "--budget", "5e6", "--budget", "2e7",
               "--out", str(weights_file), "--plot", str(tmp_path / "plots"),
               "--observations", str(runs_csv)])
    assert rc == 0
    result = json.loads(weights_file.read_text())
    assert result["law"] == "li2025" and result["domains"] == DOMAINS
    assert [r["budget"] for r in result["results"]] == [5000000, 20000000]
    for r in result["results"]:
        assert set(r["weights"]) == set(DOMAINS) and set(r["predicted_loss"]) == set(DOMAINS)
        assert sum(r["weights"].values()) == pytest.approx(1.0, abs=1e-9)
    assert (tmp_path / "plots" / "weights_vs_budget.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "fit.png").stat().st_size > 1000
    table = capsys.readouterr().out
    assert "budget" in table and "5e+06" in table


def test_hand_written_law_file_with_paper_parameters(hand_written_law, tmp_path, capsys):
    out = tmp_path / "w.json"
    rc = main(["optimize", "--law-file", str(hand_written_law), "--budget", "5e6", "--budget", "2e8",
               "--out", str(out), "--available", "code=2e7", "--max-epochs", "3",
               "--min-weight", "if=0.3"])
    assert rc == 0
    results = json.loads(out.read_text())["results"]
    w = [r["weights"] for r in results]
    assert w[0]["if"] >= 0.3 - 1e-12 and w[1]["code"] <= 0.3 + 1e-12  # 2e7 x 3 / 2e8
    assert np.isclose(results[1]["tokens"]["code"], 6e7, rtol=1e-9)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "make_argv, message",
    [
        (lambda t, csv, law: ["fit", "--law", "chinchilla", "--observations", csv, "--out", f"{t}/o.json"],
         "unknown law 'chinchilla'"),
        (lambda t, csv, law: ["fit", "--law", "li2025", "--observations",
                              write(t, "few.csv", "run,tokens_a,tokens_b,loss_a,loss_b\nr1,1,2,3,3\nr2,2,1,2,3\n"),
                              "--out", f"{t}/o.json"],
         "add at least 3 more run"),
        (lambda t, csv, law: ["fit", "--law", "li2025", "--observations",
                              write(t, "nan.csv", "run,tokens_a,tokens_b,loss_a\nr1,1,2,nan\n"),
                              "--out", f"{t}/o.json"],
         "line 2: loss_a is 'nan'"),
        (lambda t, csv, law: ["fit", "--law", "li2025", "--observations", csv, "--out", f"{t}/o.json",
                              "--budget", "0"],
         "--budget: must be a positive number"),
        (lambda t, csv, law: ["optimize", "--law-file", law, "--budget", "-1", "--out", f"{t}/w.json"],
         "--budget: must be a positive number"),
        (lambda t, csv, law: ["optimize", "--law-file", law, "--budget", "lots", "--out", f"{t}/w.json"],
         "--budget: not a number"),
        (lambda t, csv, law: ["optimize", "--law-file", law, "--budget", "1e6", "--out", f"{t}/w.json",
                              "--observations",
                              write(t, "other.csv", "run,tokens_if,tokens_web,loss_if\nr,1,2,3\n")],
         "do not match the law file's domains"),
        (lambda t, csv, law: ["optimize", "--law-file", write(t, "bad.json", '{"law": "li2025"}'),
                              "--budget", "1e6", "--out", f"{t}/w.json"],
         "missing field 'domains'"),
        (lambda t, csv, law: ["optimize", "--law-file",
                              write(t, "neg.json", json.dumps({**PAPER_LIKE, "params": {**PAPER_LIKE["params"], "alpha": [0.5, 1.5, 0.4]}})),
                              "--budget", "1e6", "--out", f"{t}/w.json"],
         "params.alpha must be in \\[0, 1\\]"),
        (lambda t, csv, law: ["optimize", "--law-file", law, "--budget", "1e6", "--out", f"{t}/w.json",
                              "--min-weight", "web=0.2"],
         "--min-weight: unknown domain 'web'"),
        (lambda t, csv, law: ["optimize", "--law-file", law, "--budget", "1e9", "--out", f"{t}/w.json",
                              "--available", "if=1e6", "--available", "math=1e6", "--available", "code=1e6"],
         "budget 1e\\+09: the weight caps allow only"),
    ],
)
def test_bad_input_exits_2_with_one_line(make_argv, message, runs_csv, hand_written_law, tmp_path, capsys):
    argv = make_argv(tmp_path, str(runs_csv), str(hand_written_law))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mixjax {argv[0]}: error: ") and "\n" not in err
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "w.json").exists()
