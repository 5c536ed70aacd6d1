"""`mixjax sweep` and `mixjax mix` with the real trainer on a tiny model: resume and sharding give
the same observations CSV as one uninterrupted sweep; bad input gets one-line errors."""

import json
import shutil

import pytest

from mixjax.cli import main
from tests.data_fixtures import prepared_domains

TRAIN = ["--model", "tiny", "--batch-size", "8", "--seq-len", "16", "--quiet"]  # 8 fake devices


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_domains(tmp_path_factory.mktemp("sweep"), "ab")


def _sweep(data_dir, out, *extra):
    return main(["sweep", "--method", "grid", "--grid-step", "0.25", "--data", str(data_dir),
                 "--budget-tokens", "256", "--out", str(out), *TRAIN, *extra])


@pytest.mark.slow
def test_sweep_resume_and_shards_give_the_same_csv(data_dir, tmp_path, capsys):
    assert _sweep(data_dir, tmp_path / "whole") == 0
    whole = (tmp_path / "whole" / "observations.csv").read_text()
    assert whole.splitlines()[0] == "run,tokens_a,tokens_b,loss_a,loss_b"
    assert [l.split(",")[:3] for l in whole.splitlines()[1:]] == [
        ["grid-000", "64", "192"], ["grid-001", "128", "128"], ["grid-002", "192", "64"]]

    assert _sweep(data_dir, tmp_path / "sharded", "--shard", "1/2") == 0
    partial = (tmp_path / "sharded" / "observations.csv").read_text().splitlines()
    assert [l.split(",")[0] for l in partial[1:]] == ["grid-001"]          # only its shard so far
    assert _sweep(data_dir, tmp_path / "sharded", "--shard", "0/2") == 0
    assert (tmp_path / "sharded" / "observations.csv").read_text() == whole

    shutil.rmtree(tmp_path / "whole" / "runs" / "grid-001")               # a run that was killed
    capsys.readouterr()
    assert _sweep(data_dir, tmp_path / "whole") == 0
    printed = capsys.readouterr().out
    assert "grid-000: done already" in printed and "grid-001: 256 tokens" in printed
    assert (tmp_path / "whole" / "observations.csv").read_text() == whole


@pytest.mark.slow
def test_sweep_refuses_a_directory_of_another_configuration(data_dir, tmp_path, capsys):
    assert _sweep(data_dir, tmp_path / "s", "--shard", "0/3") == 0
    capsys.readouterr()
    assert main(["sweep", "--method", "grid", "--grid-step", "0.5", "--data", str(data_dir),
                 "--budget-tokens", "256", "--out", str(tmp_path / "s"), *TRAIN]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds a sweep of another configuration (options, runs differ)" in err and "\n" not in err


@pytest.mark.parametrize("argv,message", [
    (["--method", "grid", "--eta", "0.1"], "--eta does not apply to --method grid (only aioli, doremi, doge, skillit)"),
    (["--method", "grid", "--shard", "2/2"], "--shard: expected i/n with 0 <= i < n"),
    (["--method", "dml", "--runs", "2"], "dml: --runs 2 is too few"),
    (["--method", "li2025", "--huber", "-1"], "--huber: must be a positive delta, or 0 for least squares; got -1"),
    (["--method", "li2025", "--perturbation-evals", "-2"], "--perturbation-evals: must be a whole number >= 0"),
    (["--method", "dml", "--huber", "1e-3"], "--huber does not apply to --method dml (only li2025)"),
    (["--method", "li2025", "--target-budget", "200"], "--target-budget 200 is smaller than the run budget 256"),
])
def test_sweep_bad_input(data_dir, tmp_path, capsys, argv, message):
    assert main(["sweep", *argv, "--data", str(data_dir), "--budget-tokens", "256",
                 "--out", str(tmp_path / "x"), *TRAIN]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


@pytest.mark.slow
def test_mix_offline_and_online(data_dir, tmp_path, capsys):
    assert main(["mix", "--method", "grid", "--grid-step", "0.5", "--data", str(data_dir),
                 "--budget-tokens", "256", "--out", str(tmp_path / "g"), *TRAIN]) == 0
    weights = json.loads((tmp_path / "g" / "weights.json").read_text())
    assert weights["results"][0]["weights"] == {"a": 0.5, "b": 0.5} and weights["extra_runs"] == 1
    final = json.loads((tmp_path / "g" / "final" / "result.json").read_text())
    assert final["tokens"] == {"a": 128, "b": 128}

    assert main(["mix", "--method", "aioli", "--lp-rounds", "1", "--lp-steps", "1", "--update-steps", "3",
                 "--data", str(data_dir), "--budget-tokens", "768", "--out", str(tmp_path / "o"), *TRAIN]) == 0
    trajectory = json.loads((tmp_path / "o" / "trajectory.json").read_text())["trajectory"]
    assert [t["step"] for t in trajectory[:3]] == [0, 1, 2]                # the two LearnParams intervals
    assert {tuple(t["learnparams"].values()) for t in trajectory[:2]} == {(0.625, 0.375), (0.375, 0.625)}
    assert [t["weights"] for t in trajectory[:2]] == [{"a": 0.5, "b": 0.5}] * 2  # the method's, still uniform
    reported = json.loads((tmp_path / "o" / "weights.json").read_text())["results"][0]["weights"]
    assert trajectory[-1]["weights"] == reported and "learnparams" not in trajectory[2]
    result = json.loads((tmp_path / "o" / "final" / "result.json").read_text())
    assert result["steps"] == 6 and sum(result["tokens"].values()) == 768
    printed = capsys.readouterr().out
    assert "before its first weight update" not in printed
    assert printed.count("model: tiny from random weights (no --init)") == 2  # once per mix, at its start

    # 2 steps, the first update due after step 2: a one-line word at start, and the trajectory's
    # weights are the uniform ones it reports (the probes sit beside them)
    assert main(["mix", "--method", "aioli", "--lp-rounds", "1", "--lp-steps", "1", "--update-steps", "3",
                 "--data", str(data_dir), "--budget-tokens", "256", "--out", str(tmp_path / "short"), *TRAIN]) == 0
    printed = capsys.readouterr().out
    assert ("aioli: 2 steps end before its first weight update (step 2: --prior-steps + lp_rounds x K x "
            "lp_steps = 0 + 1 x 2 x 1); it only runs LearnParams and its weights stay at uniform") in printed
    reported = json.loads((tmp_path / "short" / "weights.json").read_text())["results"][0]["weights"]
    trajectory = json.loads((tmp_path / "short" / "trajectory.json").read_text())["trajectory"]
    assert reported == {"a": 0.5, "b": 0.5} and all(t["weights"] == reported for t in trajectory)
    assert [t["learnparams"]["a"] for t in trajectory] in ([0.625, 0.375], [0.375, 0.625])


@pytest.mark.slow
def test_a_sweep_written_before_a_training_setting_existed_still_resumes(data_dir, tmp_path, capsys):
    assert _sweep(data_dir, tmp_path / "s", "--shard", "0/3") == 0
    path = tmp_path / "s" / "sweep.json"
    old = json.loads(path.read_text())
    del old["train_config"]["loss_chunk"]          # as written by a mixjax without --loss-chunk
    path.write_text(json.dumps(old))
    capsys.readouterr()
    assert _sweep(data_dir, tmp_path / "s", "--shard", "0/3") == 0
    assert "done already" in capsys.readouterr().out
    old["train_config"]["lr"] = 0.5                # a setting that really differs is still refused
    path.write_text(json.dumps(old))
    assert _sweep(data_dir, tmp_path / "s", "--shard", "0/3") == 2
    assert "(train_config differ)" in capsys.readouterr().err


def _best_evaluation(result):
    """(step, val_loss) of the evaluation of lowest mean loss, from the run's val_history."""
    means = [sum(h["val_loss"].values()) / len(h["val_loss"]) for h in result["val_history"]]
    h = result["val_history"][min(range(len(means)), key=means.__getitem__)]
    return h["step"], h["val_loss"]


@pytest.mark.slow
def test_li2025_sweep_runs_record_their_best_evaluation(data_dir, tmp_path, capsys):
    """As the authors keep each perturbation run's best checkpoint: a li2025 run (--perturbation-evals
    10) is evaluated every ceil(steps / 10) steps and records its lowest-mean evaluation, without a
    checkpoint, measured on the first 4 validation batches of each domain (the default
    --perturbation-batches, as --eval-max-batches is not given)."""
    out = tmp_path / "s"
    capsys.readouterr()
    assert main(["sweep", "--method", "li2025", "--base-fraction", "1", "--perturbation-evals", "10",
                 "--data", str(data_dir), "--budget-tokens", "512", "--out", str(out), *TRAIN, "--lr", "0.1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["run_selection"] == {"evaluations": 10, "val_loss": "best evaluation",
                                      "select_max_batches_default": 1, "eval_max_batches_default": 4}
    rows = {l.split(",")[0]: [float(x) for x in l.split(",")[3:]]
            for l in (out / "observations.csv").read_text().splitlines()[1:]}
    assert len(rows) == 9
    not_final, trained = 0, {}
    for name, row in rows.items():
        result = json.loads((out / "runs" / name / "result.json").read_text())
        steps = result["steps"]                                       # 2 to 8 steps of 128 tokens
        assert result["config"]["eval_every"] == -(-steps // 10) == 1 and result["config"]["select_best"]
        assert result["config"]["select_max_batches"] == 1 and result["selection"]["max_batches"] == 1
        assert [h["step"] for h in result["val_history"]] == list(range(1, steps + 1))
        step, best = _best_evaluation(result)                         # on the first batch of each domain
        assert result["selection"]["val_loss"] == best and result["val_loss_step"] == step
        assert result["config"]["eval_max_batches"] == result["val_loss_batches"] == 4  # reported, at that step
        assert row == pytest.approx([result["val_loss"]["a"], result["val_loss"]["b"]], rel=1e-12)  # fitted
        assert not (out / "runs" / name / "best").exists()
        not_final += step != steps
        trained[name] = sum(result["tokens"].values())
        assert trained[name] == steps * 128
    assert not_final >= 1                                            # lr 0.1 overshoots: the test can tell
    # the tokens said are the ones trained: the total before the first run, each run's after its name
    asked = sum(r["budget_tokens"] for r in sweep["runs"])
    assert asked != sum(trained.values())                            # some budgets round down here
    said = [i for i, line in enumerate(printed) if line.startswith("9 run(s) to train: ")]
    assert [printed[i] for i in said] == [f"9 run(s) to train: {sum(trained.values()):,} tokens (budgets round down "
                                          f"to whole steps of 8 x 16 = 128 tokens: {asked:,} asked)"]
    assert printed[said[0] + 1].startswith("[1/9] ")                 # before the first run
    for i, r in enumerate(sweep["runs"]):
        assert any(line.startswith(f"[{i + 1}/9] {r['name']}: {trained[r['name']]:,} tokens at ") for line in printed)
    estimate = printed[said[0] + 2]                                   # after the first run
    assert estimate.startswith("the first run took ") and " the other 8 need about " in estimate

    # sweep.json records how runs are chosen: another cadence (or the final loss) is another sweep
    capsys.readouterr()
    assert main(["sweep", "--method", "li2025", "--base-fraction", "1", "--perturbation-evals", "0",
                 "--data", str(data_dir), "--budget-tokens", "512", "--out", str(out), *TRAIN, "--lr", "0.1"]) == 2
    assert "(options, run_selection differ)" in capsys.readouterr().err


@pytest.mark.slow
def test_mix_li2025_least_squares_and_evaluation_flags(data_dir, tmp_path, capsys):
    """--huber 0: the law is fitted by least squares (law.json says so; the default is the paper's
    Huber 1e-3, see test_methods_offline); --perturbation-evals 2: the sweep's and the extra runs
    evaluate every ceil(steps / 2) steps and keep their best; the final run keeps the user's settings."""
    out = tmp_path / "m"
    assert main(["mix", "--method", "li2025", "--base-fraction", "1", "--factors", "2", "--huber", "0",
                 "--perturbation-evals", "2", "--data", str(data_dir), "--budget-tokens", "512",
                 "--out", str(out), *TRAIN, "--lr", "0.1"]) == 0
    assert json.loads((out / "law.json").read_text())["diagnostics"]["fit"]["huber_delta"] is None
    runs = sorted((out / "sweep" / "runs").iterdir()) + sorted((out / "sweep-extra" / "runs").iterdir())
    spent = {r.name: sum(json.loads((r / "result.json").read_text())["tokens"].values()) for r in runs}
    assert json.loads((out / "weights.json").read_text())["extra_tokens"] == sum(spent.values())  # as trained
    planned = spent["a-x2"] + spent["b-x2"] + spent["base"]
    assert (f"li2025: 3 run(s) of {planned:,} tokens and a final run of 512: {planned + 512:,} tokens to train "
            "(more if its runs leave the law under-determined)") in capsys.readouterr().out.splitlines()
    assert [r.name for r in runs] == ["a-x2", "b-x2", "base", "a-rest-x0.5", "a-rest-x2", "b-rest-x0.5", "b-rest-x2"]
    for run in runs:
        result = json.loads((run / "result.json").read_text())
        every = -(-result["steps"] // 2)                     # at most 2: 4 steps (base), 6 (x2), 3 (x0.5)
        assert result["config"]["eval_every"] == every and result["config"]["select_best"], run.name
        assert [h["step"] for h in result["val_history"]] == sorted(
            set(range(every, result["steps"] + 1, every)) | {result["steps"]}), run.name
        assert (result["val_loss_step"], result["selection"]["val_loss"]) == _best_evaluation(result), run.name
    final = json.loads((out / "final" / "result.json").read_text())
    assert final["config"]["eval_every"] == 0 and not final["config"]["select_best"]
    assert [h["step"] for h in final["val_history"]] == [final["val_loss_step"]] == [4]


def test_sweep_help_offers_only_the_options_sweep_takes(capsys):
    """`sweep` takes offline methods only: its help lists no option of an online method (which it
    would then reject), while `mix --help` lists them all."""
    from mixjax.commands.method_options import method_flags
    from mixjax.methods import OFFLINE

    def help_of(command):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        return capsys.readouterr().out

    sweep, mix = help_of("sweep"), help_of("mix")
    for dest, (methods, _) in method_flags().items():
        flag = "--" + dest.replace("_", "-")
        assert flag in mix
        assert (flag in sweep) == any(m in OFFLINE for m in methods), flag
    assert "--online-eval-batches" in mix and "--online-eval-batches" not in sweep
    assert "--eta" not in sweep and "--grid-step" in sweep


def test_readme_methods_table_states_the_constructors_defaults():
    """Every `--flag VALUE` with a number (or n/K) in the README's methods table is the default the
    method's constructor gives that option for K = 3 domains (`Method.option_defaults`), and the flag
    is one of that method's."""
    import re
    from pathlib import Path

    from mixjax.commands.method_options import method_flags
    from mixjax.methods import method_class

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (.*)$", readme, flags=re.M)
    flags, checked = method_flags(), 0
    for method, row in rows:
        defaults = method_class(method).option_defaults(3)
        for flag, value in re.findall(r"`--([\w-]+) ([\d.e/K-]+)`", row):
            dest = flag.replace("-", "_")
            assert method in flags[dest][0], (method, flag)
            stated = 1 / 3 * float(value[:-2]) if value.endswith("/K") else float(value)
            assert stated == pytest.approx(defaults[flags[dest][1]], rel=1e-12), (method, flag, value)
            checked += 1
    assert {m for m, _ in rows} >= {"grid", "doremi", "doge", "skillit"} and checked >= 10


@pytest.mark.slow
def test_li2025_repetition_matched_runs_and_observations_along_each_run(data_dir, tmp_path):
    """--target-budget T: each run trains on its budget / T of every domain's examples (result.json
    says how many tokens that left); --along-run 2: constant learning rate, and each run's
    evaluation half-way is an observation too, at half the run's tokens."""
    common = ["--method", "li2025", "--base-fraction", "1", "--factors", "2", "--data", str(data_dir),
              "--budget-tokens", "512", *TRAIN]
    assert main(["sweep", *common, "--target-budget", "4096", "--out", str(tmp_path / "m")]) == 0
    from mixjax.data.prepared import PreparedData

    train_tokens = PreparedData(data_dir).train_tokens()
    for run in ("base", "a-x2"):
        result = json.loads((tmp_path / "m" / "runs" / run / "result.json").read_text())
        assert result["config"]["train_subset"] == result["budget_tokens"] / 4096
        assert 0 < result["unique_tokens"]["a"] < train_tokens["a"] / 2
    assert main(["sweep", *common, "--along-run", "2", "--out", str(tmp_path / "r")]) == 0
    lines = (tmp_path / "r" / "observations.csv").read_text().splitlines()
    rows = {l.split(",")[0]: [float(x) for x in l.split(",")[1:]] for l in lines[1:]}
    assert list(rows) == ["base.step2", "base", "a-x2.step3", "a-x2", "b-x2.step3", "b-x2"]
    assert rows["base.step2"][:2] == [128, 128] and rows["base"][:2] == [256, 256]
    result = json.loads((tmp_path / "r" / "runs" / "base" / "result.json").read_text())
    assert result["config"]["schedule"] == "constant"
    assert rows["base.step2"][2:] == [result["val_history"][0]["val_loss"][d] for d in ("a", "b")]
