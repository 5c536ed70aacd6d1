"""li2025 --adaptive end to end (`mix`, `sweep`) on runs simulated from a known law: the runs it
trains are the ones `mixjax next` proposes from the same runs, it stops by its rule, finds the true
optimum, resumes a killed design without retraining; `sweep --run-list` trains `next`'s file; the
one-line errors."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from mixjax.cli import main
from mixjax.errors import MixjaxError
from mixjax.runners.mix import run_mix
from mixjax.train import TrainConfig
from tests.law_fixtures import paper_like_law, simulated_training

BUDGET = 20_000_000
QUIET = dict(log=lambda message: None)
OPTIONS = {"adaptive": True, "base_fraction": 0.1, "perturbation_evals": 0}


@pytest.fixture
def simulated(monkeypatch):
    """run_training replaced by the true law's losses (+ noise, a fixed draw per run name; set
    `noise[0]` before the first run); runs named in `fail_at` raise."""
    import mixjax.train

    truth, noise, fail_at = paper_like_law(), [0.0], set()
    trained = []

    def run_training(*args, **kwargs):
        fake, names = simulated_training(truth, noise[0], fail_at)
        result = fake(*args, **kwargs)
        trained.extend(names)
        return result

    monkeypatch.setattr(mixjax.train, "run_training", run_training)
    return SimpleNamespace(truth=truth, trained=trained, noise=noise, fail_at=fail_at,
                           data=SimpleNamespace(domains=truth.domains, manifest={}))


def _initial(sim):
    from mixjax.methods import adaptive_design as adaptive
    return adaptive.initial_runs(sim.truth.domains, BUDGET, OPTIONS["base_fraction"])


@pytest.mark.slow
def test_noise_free_runs_stop_after_the_initial_design_at_the_true_optimum(simulated, tmp_path):
    from mixjax.optimize import optimize

    summary = run_mix("li2025", OPTIONS, simulated.data, BUDGET, tmp_path, TrainConfig(), **QUIET)
    initial = [r.name for r in _initial(simulated)]
    assert simulated.trained == initial + ["final"]
    assert summary["adaptive"] == {"stopped": "every 90% interval narrower than 0.02", "rounds": 1}
    assert summary["extra_runs"] == len(initial)
    got = summary["results"][0]["weights"]
    np.testing.assert_allclose([got[d] for d in simulated.truth.domains],
                               optimize(simulated.truth, [BUDGET]).weights[0], atol=2e-3)


@pytest.mark.slow
def test_each_run_is_the_one_next_proposes_and_max_runs_caps_the_design(simulated, tmp_path, capsys):
    simulated.noise[0] = 3e-3
    options = {**OPTIONS, "tolerance": 1e-6, "max_runs": len(_initial(simulated)) + 2}
    summary = run_mix("li2025", options, simulated.data, BUDGET, tmp_path / "mix", TrainConfig(), **QUIET)
    record = json.loads((tmp_path / "mix" / "sweep" / "adaptive.json").read_text())
    names = [r["name"] for r in record["runs"]]
    assert len(names) == options["max_runs"] and simulated.trained == names + ["final"]
    assert summary["adaptive"] == {"stopped": f"--max-runs {options['max_runs']} reached", "rounds": 3}
    assert summary["extra_runs"] == len(names)
    assert summary["extra_tokens"] == sum(r["budget_tokens"] // 4096 * 4096 for r in record["runs"])  # whole steps
    # `mixjax next` on the CSV of the runs before each proposal proposes that run
    csv = (tmp_path / "mix" / "sweep" / "observations.csv").read_text().splitlines()
    for n_runs, round_ in zip((len(names) - 2, len(names) - 1), record["rounds"]):
        assert round_["runs"] == n_runs
        (tmp_path / "so_far.csv").write_text("\n".join(csv[:1 + n_runs]) + "\n")
        assert main(["next", str(tmp_path / "so_far.csv"), "--budget-tokens", str(BUDGET), "--tolerance", "1e-6",
                     "--base-fraction", "0.1", "--out", str(tmp_path / "next.json")]) == 0
        proposed = json.loads((tmp_path / "next.json").read_text())
        assert [r["name"] for r in proposed] == [round_["proposed"]] == [names[n_runs]]
    assert "proposed" not in record["rounds"][-1] and record["rounds"][-1]["stopped"].startswith("--max-runs")


@pytest.mark.slow
def test_a_killed_adaptive_design_resumes_with_the_same_runs(simulated, tmp_path):
    simulated.noise[0] = 3e-3
    options = {**OPTIONS, "tolerance": 1e-6, "max_runs": len(_initial(simulated)) + 2}
    done = run_mix("li2025", options, simulated.data, BUDGET, tmp_path / "ref", TrainConfig(), **QUIET)
    ref = json.loads((tmp_path / "ref" / "sweep" / "adaptive.json").read_text())
    simulated.trained.clear()
    simulated.fail_at.add(ref["runs"][-1]["name"])  # the second proposed run
    with pytest.raises(MixjaxError, match="killed while training"):
        run_mix("li2025", options, simulated.data, BUDGET, tmp_path / "mix", TrainConfig(), **QUIET)
    simulated.fail_at.clear()
    before = list(simulated.trained)
    assert before == [r["name"] for r in ref["runs"][:-1]]
    simulated.trained.clear()
    assert run_mix("li2025", options, simulated.data, BUDGET, tmp_path / "mix", TrainConfig(), **QUIET) == done
    assert simulated.trained == [ref["runs"][-1]["name"], "final"]  # nothing trained twice
    assert json.loads((tmp_path / "mix" / "sweep" / "adaptive.json").read_text())["runs"] == ref["runs"]


@pytest.mark.slow
def test_sweep_trains_the_run_list_next_writes(tmp_path):
    """A real (tiny) run: `mixjax sweep --run-list` trains the file's run into SWEEP_DIR."""
    from tests.data_fixtures import prepared_letters

    data = prepared_letters(tmp_path, 40)
    runs = [{"name": "a=200+b=368+c=200", "weights": {"a": 200 / 768, "b": 368 / 768, "c": 200 / 768},
             "budget_tokens": 768}]
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    args = ["sweep", "--method", "li2025", "--perturbation-evals", "0", "--data", str(data), "--budget-tokens", "768",
            "--run-list", str(tmp_path / "runs.json"), "--out", str(tmp_path / "s"),
            "--model", "tiny", "--batch-size", "8", "--seq-len", "16", "--quiet"]
    assert main(args) == 0
    result = json.loads((tmp_path / "s" / "runs" / "a=200+b=368+c=200" / "result.json").read_text())
    assert result["weights"] == pytest.approx(runs[0]["weights"]) and sum(result["tokens"].values()) == 768
    assert (tmp_path / "s" / "observations.csv").read_text().splitlines()[1].startswith("a=200+b=368+c=200,")
    assert json.loads((tmp_path / "s" / "sweep.json").read_text())["runs"][0]["name"] == "a=200+b=368+c=200"


@pytest.mark.parametrize("entries,message", [
    ("{", "unreadable"),
    ([], "expected a non-empty list of runs"),
    ([{"name": "x"}], "run 0: expected an object with name, weights and budget_tokens"),
    ([{"name": "../x", "weights": {"a": 1, "b": 1}, "budget_tokens": 10}], "run 0"),
    ([{"name": "x", "weights": {"a": 1}, "budget_tokens": 10}], "run 0 (x): weights must name exactly the data's domains"),
    ([{"name": "x", "weights": {"a": -1, "b": 1}, "budget_tokens": 10}], "run 0 (x): weights must be finite numbers >= 0"),
    ([{"name": "x", "weights": {"a": 1, "b": 1}, "budget_tokens": 1.5}], "run 0 (x): budget_tokens must be a whole number > 0"),
    ([{"name": "x", "weights": {"a": 1, "b": 1}, "budget_tokens": 10}] * 2, "run name 'x' is proposed twice"),
])
def test_bad_run_lists_are_one_line_errors(tmp_path, entries, message):
    from mixjax.runners.sweep import read_run_list

    import re

    path = tmp_path / "RUNS"
    path.write_text(entries if isinstance(entries, str) else json.dumps(entries))
    with pytest.raises(MixjaxError, match=f"^run_list {re.escape(str(path))}: .*{re.escape(message.replace('RUNS', str(path)))}"):
        read_run_list(path, ["a", "b"])


def test_adaptive_options_are_checked_before_any_run(simulated, tmp_path):
    n = len(_initial(simulated))
    with pytest.raises(MixjaxError, match=f"max_runs {n - 1}: the adaptive design starts with {n} runs"):
        run_mix("li2025", {**OPTIONS, "max_runs": n - 1}, simulated.data, BUDGET, tmp_path / "a", TrainConfig(), **QUIET)
    with pytest.raises(MixjaxError, match="tolerance: must be a positive number, got 0"):
        run_mix("li2025", {**OPTIONS, "tolerance": 0.0}, simulated.data, BUDGET, tmp_path / "b", TrainConfig(), **QUIET)
    with pytest.raises(MixjaxError, match="max_runs and tolerance apply to li2025 with adaptive"):
        run_mix("li2025", {"max_runs": 20}, simulated.data, BUDGET, tmp_path / "c", TrainConfig(), **QUIET)
    assert simulated.trained == []


def test_adaptive_cli_errors(tmp_path, capsys):
    from tests.data_fixtures import prepared_letters

    data = prepared_letters(tmp_path, 40)
    common = ["--data", str(data), "--budget-tokens", "768", "--model", "tiny", "--quiet"]
    cases = [
        (["sweep", "--method", "li2025", "--adaptive", "--shard", "0/2", "--out", str(tmp_path / "s"), *common],
         "--shard: an adaptive sweep trains one run at a time"),
        (["sweep", "--method", "li2025", "--adaptive", "--run-list", str(tmp_path / "r.json"),
          "--out", str(tmp_path / "s"), *common], "--run-list: the runs of an --adaptive sweep are chosen as it goes"),
        (["mix", "--method", "dml", "--adaptive", "--out", str(tmp_path / "m"), *common],
         "--adaptive does not apply to --method dml (only li2025)"),
    ]
    for args, message in cases:
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "s").exists() and not (tmp_path / "m").exists()
