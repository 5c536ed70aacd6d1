"""`mixjax fit` and `mixjax optimize` round trips through `mixjax.cli.main`, and their errors."""

import json

import numpy as np
import pytest
import yaml

from mixjax.cli import main
from mixjax.laws import FittedLaw
from mixjax.observations import write_csv
from mixjax.methods.li2025_design import perturbation_design
from mixjax.testing import simulate
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


@pytest.mark.slow
def test_fit_then_optimize_round_trip(runs_csv, tmp_path, capsys):
    """--budget-tokens takes train's number syntax (--budget, the old name, still works with a note);
    the law file records its runs' sizes, and optimize prints each budget's ratio to the largest."""
    law_file, weights_file = tmp_path / "law.json", tmp_path / "weights.json"
    rc = main(["fit", "--law", "li2025", "--observations", str(runs_csv), "--out", str(law_file),
               "--huber", "1e-3", "--budget", "5M", "--budget-tokens", "2e7"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "--budget is now --budget-tokens" in captured.err
    law = json.loads(law_file.read_text())
    run_tokens = perturbation_design(DOMAINS, 660e3)[1].sum(axis=1)
    assert law["diagnostics"]["run_tokens"] == {"min": run_tokens.min(), "max": run_tokens.max()}
    assert [r["budget"] for r in law["diagnostics"]["bootstrap"]["results"]] == [5_000_000, 20_000_000]
    assert law["law"] == "li2025" and law["domains"] == DOMAINS and law["token_unit"] == 1000000
    assert set(law["params"]) == {"C", "k", "alpha", "beta", "E"}
    d = law["diagnostics"]
    assert d["under_determined"] is False and "leave_one_out" in d and len(d["bootstrap"]["results"]) == 2
    # 13 runs: 13 LOO + 20 bootstrap refits -> 40 slots x 8 starts, as `fit --help` says
    assert d["fit"]["starts_per_domain"] == 320
    assert "LOO RMSE" in captured.out and "bootstrap interval" in captured.out
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert "e.g. 320 for 13 runs and 20 bootstraps" in " ".join(capsys.readouterr().out.split())

    rc = main(["optimize", "--law-file", str(law_file), "--budget-tokens", "5e6", "--budget-tokens", "2e7",
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
    ratio = 2e7 / run_tokens.max()
    assert result["results"][1]["extrapolation_ratio"] == pytest.approx(ratio)
    assert f"extrapolation: 5e+06 is {5e6 / run_tokens.max():.3g}x, 2e+07 is {ratio:.3g}x the largest run" in table
    assert "warning" not in table  # 6x: within the validated ratio

    # export: the weights of the budget named, in each trainer's form, domain order kept
    second = result["results"][1]["weights"]
    assert main(["export", str(weights_file), "--to", "levanter", "--budget-tokens", "20M"]) == 0
    block = yaml.safe_load(capsys.readouterr().out)
    assert list(block["data"]["train_weights"]) == DOMAINS
    assert block["data"]["train_weights"] == pytest.approx(second, abs=1e-12)
    snippet = tmp_path / "mix.py"
    assert main(["export", f"{weights_file}@2e7", "--to", "datasets", "--out", str(snippet)]) == 0
    assigned = _assignments(snippet.read_text())
    assert assigned["domains"] == DOMAINS and sum(assigned["probabilities"]) == pytest.approx(1.0, abs=1e-12)
    assert assigned["probabilities"] == pytest.approx([second[d] for d in DOMAINS], abs=1e-12)
    assert main(["export", str(weights_file), "--to", "levanter"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"mixjax export: error: WEIGHTS: {weights_file}: holds results for budgets 5,000,000, 20,000,000; "
        "name one (--budget-tokens, or FILE@BUDGET)")


def test_one_budget_flag_no_abbreviations_one_max_epochs():
    """Every budget is --budget-tokens (fit, optimize, next: --budget kept as its alias); no command
    takes an abbreviated flag (`train --budget 20k` was read as --budget-tokens); --max-epochs has
    one default in train, sweep, mix, optimize and fit."""
    from mixjax.cli import build_parser
    from mixjax.optimize import DEFAULT_MAX_EPOCHS
    from mixjax.train import TrainConfig

    parser = build_parser()
    args = parser.parse_args(["next", "r.csv", "--budget", "5M", "--out", "n.json"])
    assert args.budget_tokens == "5M"
    args = parser.parse_args(["optimize", "--law-file", "l", "--budget-tokens", "500k", "--budget", "2e7", "--out", "w"])
    assert args.budget_tokens == ["500k", "2e7"]
    for argv in (["train", "--data", "D", "--out", "R", "--budget", "20k"],
                 ["optimize", "--law-file", "l", "--out", "w", "--budget-tok", "5M"],
                 ["mix", "--method", "grid", "--data", "D", "--out", "M", "--budget-tokens", "5M", "--grid", "0.5"],
                 ["fit", "--law", "linear", "--observations", "o.csv", "--out", "l", "--boot", "3"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    assert TrainConfig().max_epochs == DEFAULT_MAX_EPOCHS == 10
    common = ["--data", "D", "--out", "O", "--budget-tokens", "5M"]
    for argv in (["train", *common], ["sweep", "--method", "grid", *common], ["mix", "--method", "grid", *common]):
        assert parser.parse_args(argv).max_epochs == DEFAULT_MAX_EPOCHS, argv


def _assignments(source: str) -> dict:
    """The literal top-level assignments of a Python snippet (it must parse)."""
    import ast

    return {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(source).body
            if isinstance(node, ast.Assign) and isinstance(node.value, (ast.List, ast.Constant))}


def test_export_to_datasets_turns_token_fractions_into_example_probabilities(tmp_path, capsys):
    """interleave_datasets samples examples: probability_i ~ weight_i / mean example tokens_i, read
    from the prepared data's manifest (a MIX_DIR stands for its weights.json)."""
    from tests.data_fixtures import prepared_domains

    data = prepared_domains(tmp_path, "ab")
    mix_dir = tmp_path / "mix"
    mix_dir.mkdir()
    (mix_dir / "weights.json").write_text(json.dumps(
        {"method": "li2025", "domains": ["a", "b"], "results": [{"budget": 4096, "weights": {"a": 0.25, "b": 0.75}}]}))
    assert main(["export", str(mix_dir), "--to", "datasets", "--data", str(data)]) == 0
    assigned = _assignments(capsys.readouterr().out)
    train = {d: json.loads((data / "manifest.json").read_text())["domains"][d]["train"] for d in "ab"}
    per_example = np.array([0.25 * train["a"]["examples"] / train["a"]["tokens"],
                            0.75 * train["b"]["examples"] / train["b"]["tokens"]])
    assert assigned["domains"] == ["a", "b"]
    np.testing.assert_allclose(assigned["probabilities"], per_example / per_example.sum(), rtol=1e-12)
    assert main(["export", str(mix_dir), "--to", "datasets", "--data", str(tmp_path)]) == 2
    assert "is not a prepared data directory" in capsys.readouterr().err


def test_hand_written_law_file_with_paper_parameters(hand_written_law, tmp_path, capsys):
    out = tmp_path / "w.json"
    rc = main(["optimize", "--law-file", str(hand_written_law), "--budget-tokens", "5e6", "--budget-tokens", "2e8",
               "--out", str(out), "--available", "code=2e7", "--max-epochs", "3",
               "--min-weight", "if=0.3"])
    assert rc == 0
    results = json.loads(out.read_text())["results"]
    w = [r["weights"] for r in results]
    assert w[0]["if"] >= 0.3 - 1e-12 and w[1]["code"] <= 0.3 + 1e-12  # 2e7 x 3 / 2e8
    assert np.isclose(results[1]["tokens"]["code"], 6e7 - 2, rtol=1e-12)  # the cap, less its 2-token margin


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
                              "--budget-tokens", "0"],
         "--budget-tokens: must be positive"),
        (lambda t, csv, law: ["optimize", "--law-file", law, "--budget-tokens", "-1", "--out", f"{t}/w.json"],
         "--budget-tokens: must be positive"),
        (lambda t, csv, law: ["optimize", "--law-file", law, "--budget-tokens", "lots", "--out", f"{t}/w.json"],
         "--budget-tokens: expected a number of tokens"),
        (lambda t, csv, law: ["optimize", "--law-file", law, "--budget-tokens", "1e6", "--out", f"{t}/w.json",
                              "--observations",
                              write(t, "other.csv", "run,tokens_if,tokens_web,loss_if\nr,1,2,3\n")],
         "do not match the law file's domains"),
        (lambda t, csv, law: ["optimize", "--law-file", write(t, "bad.json", '{"law": "li2025"}'),
                              "--budget-tokens", "1e6", "--out", f"{t}/w.json"],
         "missing field 'domains'"),
        (lambda t, csv, law: ["optimize", "--law-file",
                              write(t, "neg.json", json.dumps({**PAPER_LIKE, "params": {**PAPER_LIKE["params"], "alpha": [0.5, 1.5, 0.4]}})),
                              "--budget-tokens", "1e6", "--out", f"{t}/w.json"],
         "params.alpha must be in \\[0, 1\\]"),
        (lambda t, csv, law: ["optimize", "--law-file", law, "--budget-tokens", "1e6", "--out", f"{t}/w.json",
                              "--min-weight", "web=0.2"],
         "--min-weight: unknown domain 'web'"),
        (lambda t, csv, law: ["optimize", "--law-file", law, "--budget-tokens", "1e9", "--out", f"{t}/w.json",
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


@pytest.mark.slow
def test_fit_validate_predicts_held_out_runs(runs_csv, tmp_path, capsys):
    """--validate on Dirichlet runs the fit never saw: the CSV holds the measured losses and the
    fitted law's predictions; RMSE and Spearman printed match numpy and scipy on that CSV; and the
    noise-free law itself (the truth) predicts them within the noise."""
    import csv

    from scipy.stats import spearmanr

    from mixjax import validation

    truth = FittedLaw.from_json(PAPER_LIKE)
    rng = np.random.default_rng(0)
    tokens = rng.dirichlet(np.ones(3), size=12) * rng.uniform(0.3e6, 3e6, size=(12, 1))
    held_out = tmp_path / "held_out.csv"
    write_csv(simulate(truth, [f"dir{i}" for i in range(12)], tokens, noise=0.002, seed=5), held_out)
    law_file = tmp_path / "law.json"
    assert main(["fit", "--law", "li2025", "--observations", str(runs_csv), "--out", str(law_file), "--no-loo",
                 "--bootstrap", "0", "--validate", str(held_out)]) == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "law.validation.csv").open()))
    assert [r["run"] for r in rows] == [f"dir{i}" for i in range(12)]
    measured = np.array([[float(r[f"measured_{d}"]) for d in DOMAINS] for r in rows])
    predicted = np.array([[float(r[f"predicted_{d}"]) for d in DOMAINS] for r in rows])
    np.testing.assert_allclose(measured, simulate(truth, [f"dir{i}" for i in range(12)], tokens, noise=0.002,
                                                  seed=5).losses, rtol=1e-5)
    rmse = np.sqrt(((predicted - measured) ** 2).mean(axis=0))
    rho = spearmanr(predicted.sum(axis=1), measured.sum(axis=1)).statistic
    import re

    printed = re.search(r"RMSE if ([\d.e-]+), math ([\d.e-]+), code ([\d.e-]+);", out)
    np.testing.assert_allclose([float(x) for x in printed.groups()], rmse, rtol=2e-3)  # the CSV has 6 digits
    assert f"Spearman of total loss {rho:.3f} over 12 run(s)" in out
    assert rmse.max() < 0.01 and rho > 0.8  # the fitted law generalises to mixtures it never saw
    np.testing.assert_allclose(validation.predicted_losses(truth, tokens),
                               simulate(truth, ["x"] * 12, tokens).losses, rtol=1e-9)


def test_spearman_with_ties_matches_scipy():
    from scipy.stats import spearmanr

    from mixjax.validation import spearman

    a, b = [1.0, 2.0, 2.0, 3.0, 5.0, 4.0], [0.3, 0.1, 0.2, 0.2, 0.9, 0.5]
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)


@pytest.mark.parametrize("extra,message", [
    (["--validate-out", "x.csv"], "--validate-out needs --validate CSV"),
    (["--validate", "MISSING"], "MISSING"),
    (["--validate", "OTHER"], "--validate OTHER: validation runs lack the law's domain(s) code"),
    (["--validate", "HELD", "--validate-out", "DIR"], "--validate-out: DIR is a folder"),
])
def test_validate_errors_are_one_line(runs_csv, tmp_path, capsys, extra, message):
    (tmp_path / "other.csv").write_text("run,tokens_if,tokens_math,loss_if,loss_math\nr,1,1,2,2\n")
    (tmp_path / "dir").mkdir()
    subs = {"MISSING": str(tmp_path / "missing.csv"), "OTHER": str(tmp_path / "other.csv"),
            "HELD": str(runs_csv), "DIR": str(tmp_path / "dir")}
    extra = [subs.get(x, x) for x in extra]
    rc = main(["fit", "--law", "li2025", "--observations", str(runs_csv), "--out", str(tmp_path / "law.json"),
               "--no-loo", "--bootstrap", "0", *extra])
    err = capsys.readouterr().err.strip()
    for key, value in subs.items():
        message = message.replace(key, value)
    assert rc == 2 and len(err.splitlines()) == 1 and message in err, err


@pytest.mark.slow
@pytest.mark.parametrize("budgets", [[5e6, 2e7], [3e5, 3e6, 3e7], [1e6, 1.2e6, 1.5e6, 2e6, 3e6, 5e6, 8e6]])
def test_weights_vs_budget_tick_labels_do_not_overlap(hand_written_law, budgets):
    """Budgets within two decades (the README's 5M and 20M) drew 2x10^6, 3x10^6, ... on top of
    each other; every drawn tick label must now sit clear of the next."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mixjax.laws import load_law_file
    from mixjax.optimize import optimize
    from mixjax.report import weights_figure

    fitted = load_law_file(hand_written_law)
    result = optimize(fitted, budgets)
    fig = weights_figure(fitted, result, optimize(fitted, np.geomspace(min(budgets) / 4, max(budgets) * 4, 12)))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    labels = [t for t in ax.get_xticklabels() + ax.get_xticklabels(minor=True) if t.get_visible() and t.get_text()]
    boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
    assert len(boxes) >= 2 and all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:]))
    if len(budgets) == 2:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["5M", "20M"]
    plt.close(fig)


def test_fit_repetition_aware_law_takes_the_unique_tokens_from_the_data(runs_csv, tmp_path, capsys):
    """`fit --law li2025-repeat` needs each domain's training tokens: without --data/--available a
    one-line error before the fit; with them, the law file holds them (in the law's token unit)."""
    law_file = tmp_path / "law.json"
    argv = ["fit", "--law", "li2025-repeat", "--observations", str(runs_csv), "--out", str(law_file),
            "--starts", "4", "--bootstrap", "0", "--no-loo"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--law li2025-repeat: needs each domain's training tokens" in err and len(err.splitlines()) == 1
    assert not law_file.exists()
    unique = {"if": 9e6, "math": 2e6, "code": 4e6}
    assert main(argv + sum((["--available", f"{d}={n:g}"] for d, n in unique.items()), [])) == 0
    law = json.loads(law_file.read_text())
    assert law["law"] == "li2025-repeat"
    assert law["params"]["unique"] == pytest.approx([unique[d] / law["token_unit"] for d in law["domains"]])
