"""`mixjax sweep` and `mixjax mix` with the real trainer on a tiny model: resume and sharding give
the same observations CSV as one uninterrupted sweep; bad input gets one-line errors."""

import json
import shutil

import pytest

from mixjax.cli import main
from mixjax.data.prepare import PrepareOptions, parse_domain_flag, prepare
from tests.data_fixtures import letter_domain

TRAIN = ["--model", "tiny", "--batch-size", "8", "--seq-len", "16", "--quiet"]  # 8 fake devices


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    specs = [parse_domain_flag(f"{c}={letter_domain(root / f'{c}.jsonl', c, 40)}") for c in "ab"]
    prepare(specs, root / "data", PrepareOptions(), progress=False)
    return root / "data"


def _sweep(data_dir, out, *extra):
    return main(["sweep", "--method", "grid", "--grid-step", "0.25", "--data", str(data_dir),
                 "--budget-tokens", "256", "--out", str(out), *TRAIN, *extra])


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
])
def test_sweep_bad_input(data_dir, tmp_path, capsys, argv, message):
    assert main(["sweep", *argv, "--data", str(data_dir), "--budget-tokens", "256",
                 "--out", str(tmp_path / "x"), *TRAIN]) == 2
    assert message in capsys.readouterr().err


def test_mix_offline_and_online(data_dir, tmp_path):
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
    assert {tuple(t["weights"].values()) for t in trajectory[:2]} == {(0.625, 0.375), (0.375, 0.625)}
    result = json.loads((tmp_path / "o" / "final" / "result.json").read_text())
    assert result["steps"] == 6 and sum(result["tokens"].values()) == 768


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
