"""Issue #16 for sweeps, mixes, observations, fit and optimize: a name read from any record (sweep.json,
a run's result.json, mix.json, prereq.json, an online run's record, an observations CSV) or proposed by
a method cannot make mixjax write outside --out; weights files and output paths that cannot work are
one-line errors; an observations CSV with one run twice is refused; a killed sweep's
observations.csv holds every run finished before the kill. Each error case checks exit code 2, a
one-line message naming the file, line or flag, and that every file already there is unchanged."""

import json
import shutil

import pytest

import mixjax.commands.flags as flags
from mixjax.cli import main
from tests.data_fixtures import prepared_domains
from tests.law_fixtures import PAPER_LIKE

TRAIN = ["--model", "tiny", "--batch-size", "8", "--seq-len", "16", "--quiet"]  # 8 fake devices
SMALL = {"n_layers": 1, "dim": 64, "hidden_dim": 128}


def _small(monkeypatch):
    """The CLI's tiny preset made smaller still (no flag sets these fields)."""
    real = flags.execution_overrides
    monkeypatch.setattr(flags, "execution_overrides", lambda args: {**SMALL, **real(args)})


@pytest.fixture(autouse=True)
def small_model(monkeypatch):
    _small(monkeypatch)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_domains(tmp_path_factory.mktemp("reliability"), "ab")


def _sweep(data_dir, out, step="0.5"):
    return main(["sweep", "--method", "grid", "--grid-step", step, "--data", str(data_dir),
                 "--budget-tokens", "256", "--out", str(out), *TRAIN])


def _mix(data_dir, out, method, *options):
    return main(["mix", "--method", method, *options, "--data", str(data_dir), "--budget-tokens", "256",
                 "--out", str(out), *TRAIN])


@pytest.fixture(scope="module")
def finished_sweep(data_dir, tmp_path_factory):
    """A finished one-run grid sweep (grid-000 at a = b = 0.5); tests spoil copies of it."""
    out = tmp_path_factory.mktemp("finished") / "sweep"
    with pytest.MonkeyPatch.context() as mp:
        _small(mp)
        assert _sweep(data_dir, out) == 0
    return out


def snapshot(root):
    """Every file under root: path -> bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(capsys, command, *names):
    """The error printed: one line, `mixjax COMMAND: error: ...`, naming each of `names`."""
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"mixjax {command}: error: "), err
    for name in names:
        assert str(name) in err, (name, err)
    return err


def unchanged(before, after):
    """Every file of `before` is in `after` with the same bytes (new files may appear)."""
    return all(after.get(path) == data for path, data in before.items())


# 1. Names read from records, or proposed by a method, never become paths outside --out.

@pytest.mark.slow
def test_sweep_refuses_a_run_name_in_sweep_json_that_leaves_the_folder(data_dir, finished_sweep, tmp_path, capsys):
    out = tmp_path / "work" / "sweep"
    shutil.copytree(finished_sweep, out)
    record = json.loads((out / "sweep.json").read_text())
    record["runs"][0]["name"] = "../../escaped"
    (out / "sweep.json").write_text(json.dumps(record))
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert _sweep(data_dir, out) == 2
    one_line_error(capsys, "sweep", out / "sweep.json", "runs[0]: run name '../../escaped'")
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_sweep_refuses_a_domain_name_in_a_runs_result_json(data_dir, finished_sweep, tmp_path, capsys):
    out = tmp_path / "work" / "sweep"
    shutil.copytree(finished_sweep, out)
    path = out / "runs" / "grid-000" / "result.json"
    result = json.loads(path.read_text())
    result["tokens"] = {"../a": result["tokens"]["a"], "b": result["tokens"]["b"]}
    path.write_text(json.dumps(result))
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert _sweep(data_dir, out) == 2
    one_line_error(capsys, "sweep", path, "domain name '../a'")
    assert snapshot(tmp_path) == before


def test_sweep_and_mix_refuse_a_proposed_run_name_that_leaves_the_folder(data_dir, tmp_path, capsys, monkeypatch):
    from mixjax.methods.base import ProposedRun
    from mixjax.methods.skillit import SkillIt
    from mixjax.methods.static import Grid

    escape = [ProposedRun("../../escaped", {"a": 0.5, "b": 0.5}, 256)]
    monkeypatch.setattr(Grid, "propose", lambda self, domains, budget: escape)
    monkeypatch.setattr(SkillIt, "prerequisite_runs", lambda self, domains, budget: escape)
    (tmp_path / "work").mkdir()
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert _sweep(data_dir, tmp_path / "work" / "sweep") == 2
    one_line_error(capsys, "sweep", "--method grid: run name '../../escaped'")
    assert _mix(data_dir, tmp_path / "work" / "mix", "skillit") == 2
    one_line_error(capsys, "mix", "--method skillit: run name '../../escaped'")
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.rglob("*")) == ["work"]


@pytest.mark.parametrize("record, method, message", [
    ("mix.json", "grid", "mix.json: domains[0]: domain name '../a'"),
    ("prereq/prereq.json", "skillit", "prereq.json: runs[0]: run name '../../escaped'"),
    ("final/result.json", "aioli", "result.json: online weights: domain name '../a'"),
])
def test_mix_refuses_names_in_its_records_that_leave_the_folder(data_dir, tmp_path, capsys, record, method, message):
    out = tmp_path / "work" / "mix"
    path = out / record
    path.parent.mkdir(parents=True)
    if record == "mix.json":
        path.write_text(json.dumps({"method": "grid", "domains": ["../a", "b"]}))
    elif record == "prereq/prereq.json":
        path.write_text(json.dumps({"domains": ["a", "b"], "runs": [{"name": "../../escaped"}]}))
    else:
        path.write_text(json.dumps({"val_loss": {"a": 3.0, "b": 3.0}, "tokens": {"a": 128, "b": 128},
                                    "online": {"weights": {"../a": 0.5, "b": 0.5}, "trajectory": [],
                                               "evaluations": []}}))
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert _mix(data_dir, out, method) == 2
    one_line_error(capsys, "mix", path, message)
    after = snapshot(tmp_path)
    assert unchanged(before, after) and set(after) - set(before) <= {"work/mix/mix.json"}  # the new record only


# 1 and 3. Observations CSVs: run names and domain names checked, each run once.

GOOD_ROWS = ["r1,100,300,2.0,2.5", "r2,200,200,1.9,2.6", "r3,300,100,1.8,2.7", "r4,150,250,1.95,2.55"]


@pytest.mark.parametrize("header, rows, message", [
    ("run,tokens_a,tokens_b,loss_a,loss_b", GOOD_ROWS[:2] + ["../../escaped,250,150,1.85,2.65"] + GOOD_ROWS[2:],
     "line 4: run name '../../escaped'"),
    ("run,tokens_a,tokens_../b,loss_a,loss_../b", GOOD_ROWS, "line 1: domain name '../b'"),
    ("run,tokens_a,tokens_b,loss_a,loss_b", GOOD_ROWS + ["r2,250,150,1.85,2.65"],
     "line 6: run 'r2' is also on line 3"),
])
def test_fit_refuses_bad_names_and_duplicate_runs_in_observations(tmp_path, capsys, header, rows, message):
    csv = tmp_path / "runs.csv"
    csv.write_text("\n".join([header, *rows]) + "\n")
    out = tmp_path / "law.json"
    out.write_text("the law file of an earlier fit\n")
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(["fit", "--law", "linear", "--observations", str(csv), "--out", str(out), "--bootstrap", "0",
                 "--no-loo", "--starts", "2"]) == 2
    one_line_error(capsys, "fit", f"{csv}: {message}")
    assert snapshot(tmp_path) == before


# 2. Weights files with no results or an empty result; --out that is a folder.

@pytest.mark.parametrize("content, message", [
    ({"law": "li2025", "domains": ["a", "b"], "results": []}, "no results"),
    ({"law": "li2025", "domains": ["a", "b"]}, "no 'results'"),
    ({"law": "li2025", "domains": ["a", "b"], "results": [{"budget": 256, "predicted_loss": {}}]},
     "its first result has no weights"),
    ({"law": "li2025", "domains": ["a", "b"], "results": [{"budget": 256, "weights": {}}]},
     "its first result has no weights"),
])
def test_train_refuses_a_weights_file_without_weights(data_dir, tmp_path, capsys, content, message):
    weights = tmp_path / "weights.json"
    weights.write_text(json.dumps(content))
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(["train", "--data", str(data_dir), "--weights", str(weights), "--budget-tokens", "256",
                 "--out", str(tmp_path / "run"), *TRAIN]) == 2
    one_line_error(capsys, "train", f"--weights: {weights}: {message}")
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


def test_fit_and_optimize_refuse_an_out_that_is_a_folder_before_the_work(tmp_path, capsys, monkeypatch):
    import mixjax.fit
    import mixjax.optimize

    def must_not_run(*args, **kwargs):
        raise AssertionError("the work ran before --out was checked")

    monkeypatch.setattr(mixjax.fit, "fit", must_not_run)
    monkeypatch.setattr(mixjax.optimize, "optimize", must_not_run)
    csv = tmp_path / "runs.csv"
    csv.write_text("\n".join(["run,tokens_a,tokens_b,loss_a,loss_b", *GOOD_ROWS]) + "\n")
    law = tmp_path / "law.json"
    law.write_text(json.dumps(PAPER_LIKE))
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "earlier.json").write_text("{}\n")
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(["fit", "--law", "linear", "--observations", str(csv), "--out", str(folder)]) == 2
    one_line_error(capsys, "fit", f"--out: {folder} is a folder")
    assert main(["optimize", "--law-file", str(law), "--budget-tokens", "5e6", "--out", str(folder)]) == 2
    one_line_error(capsys, "optimize", f"--out: {folder} is a folder")
    assert main(["optimize", "--law-file", str(law), "--budget-tokens", "5e6", "--out", str(tmp_path / "w.json"),
                 "--plot", str(csv)]) == 2
    one_line_error(capsys, "optimize", f"--plot: {csv} is a file")
    assert snapshot(tmp_path) == before


# 4. A killed sweep's observations.csv holds every run finished before the kill.

@pytest.mark.slow
def test_a_killed_sweep_keeps_every_finished_run_in_observations_csv(data_dir, tmp_path, capsys, monkeypatch):
    import mixjax.train

    real, started = mixjax.train.run_training, []

    def killed_at_the_second_run(*args, **kwargs):
        started.append(kwargs["out_dir"].name)
        if len(started) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(mixjax.train, "run_training", killed_at_the_second_run)
    out = tmp_path / "sweep"
    assert _sweep(data_dir, out, step="0.25") == 130                   # grid-000, grid-001, grid-002
    assert started == ["grid-000", "grid-001"]
    killed = (out / "observations.csv").read_text()
    assert [line.split(",")[0] for line in killed.splitlines()] == ["run", "grid-000"]
    before = snapshot(out)

    monkeypatch.setattr(mixjax.train, "run_training", real)
    capsys.readouterr()
    assert _sweep(data_dir, out, step="0.25") == 0                     # resumes: trains the other two
    assert "grid-000: done already" in capsys.readouterr().out
    whole = (out / "observations.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in whole] == ["run", "grid-000", "grid-001", "grid-002"]
    assert killed.splitlines() == whole[:2]                             # the same header and row
    after = snapshot(out)
    assert all(after[p] == data for p, data in before.items() if p != "observations.csv")
