"""`mixjax train` under an adversarial user (issue #16): a rerun with other settings is refused, not
reported as the old run; a torn metrics line, a full disk or a kill during a checkpoint save leave
a run that the same command resumes exactly; bad numbers, damaged --init checkpoints and an --out
that is a file are one-line errors; progress in a log file is a few plain lines. Every refusal
leaves what was already written byte for byte."""

import errno
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mixjax.cli import main
from tests.data_fixtures import prepared_letters

BATCH = 8 * 64
ROOT = Path(__file__).resolve().parent.parent


def prepare(p: Path, n: int = 120) -> Path:
    return prepared_letters(p, n)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("reliability_data"))


def train_args(data_dir, out, *extra, steps=6, weights="a=0.5,b=0.25,c=0.25"):
    return ["train", "--data", str(data_dir), "--out", str(out), "--weights", weights,
            "--budget-tokens", str(steps * BATCH), "--batch-size", "8", "--seq-len", "64", "--model", "tiny",
            "--checkpoint-every", "2", "--quiet", *extra]


def files(d: Path) -> dict[str, bytes]:
    """Every file under d, by relative path: what a refusal must leave unchanged."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(Path(d).rglob("*")) if p.is_file()}


def one_line_error(capsys, rc, *needles) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("mixjax train: error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def result_of(run: Path) -> dict:
    r = json.loads((run / "result.json").read_text())
    return {k: r[k] for k in ("tokens", "loss_tokens", "val_loss", "val_history", "steps", "budget_tokens", "weights")}


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """An uninterrupted run (6 steps, a checkpoint every 2) that interrupted ones must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(train_args(data_dir, out)) == 0
    return out


# ---- 1. a rerun with other settings ------------------------------------------------------------
@pytest.mark.slow
def test_rerun_with_other_settings_is_refused_and_the_same_one_resumes(data_dir, reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = files(run)
    capsys.readouterr()

    for extra, needles in [
        (["--weights", "a=0.2,b=0.4,c=0.4"], ["weights a=0.5,b=0.25,c=0.25 -> a=0.2,b=0.4,c=0.4"]),
        (["--budget-tokens", str(4 * BATCH)], [f"budget_tokens {6 * BATCH} -> {4 * BATCH}"]),
        (["--budget-tokens", str(8 * BATCH)], [f"budget_tokens {6 * BATCH} -> {8 * BATCH}"]),
        (["--lr", "0.002", "--seed", "1"], ["lr 0.001 -> 0.002", "seed 0 -> 1"]),
        (["--keep-best"], ["keep_best false -> true"]),
    ]:
        rc = main(train_args(data_dir, run) + extra)
        one_line_error(capsys, rc, f"--out {run}: {run / 'result.json'} is of another configuration", *needles,
                       f"use a new --out, or delete {run} to start afresh")
        assert files(run) == before, extra

    other = prepare(tmp_path / "other", n=100)  # the same domain names, other examples
    rc = main(train_args(other, run))
    one_line_error(capsys, rc, "data (the prepared sources differ)")
    assert files(run) == before

    # killed before result.json: the checkpoint's record is compared
    (run / "result.json").unlink()
    before = files(run)
    rc = main(train_args(data_dir, run, "--budget-tokens", str(4 * BATCH)))
    one_line_error(capsys, rc, f"{run / 'checkpoints' / '6'} is of another configuration",
                   f"budget_tokens {6 * BATCH} -> {4 * BATCH}")
    assert files(run) == before

    # the same command (and settings that only change how a step computes) reports the run again
    assert main(train_args(data_dir, run, "--remat", "full", "--no-scan-layers")) == 0
    assert result_of(run) == result_of(reference)
    assert (run / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    assert main(train_args(data_dir, run)) == 0
    assert result_of(run) == result_of(reference)


# ---- 2 + 3. a full disk while metrics.jsonl is written: a torn last line ------------------------
@pytest.mark.slow
def test_full_disk_in_metrics_leaves_a_torn_line_that_resume_drops(data_dir, reference, tmp_path, capsys,
                                                                   monkeypatch):
    from mixjax.train import metrics as metrics_mod

    run = tmp_path / "run"
    write = metrics_mod.MetricsWriter.write

    def full_at_step_5(self, record):
        if record.get("step") == 5 and "loss" in record:
            self._fh.write(json.dumps(record)[:25])  # what fits on the disk
            self._fh.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, record)

    monkeypatch.setattr(metrics_mod.MetricsWriter, "write", full_at_step_5)
    rc = main(train_args(data_dir, run))
    one_line_error(capsys, rc, f"no space left on device: {run}", "resumes from the checkpoint of step 4")
    monkeypatch.setattr(metrics_mod.MetricsWriter, "write", write)
    last = (run / "metrics.jsonl").read_text().splitlines()[-1]
    with pytest.raises(ValueError):
        json.loads(last)  # the torn line is there

    assert main(train_args(data_dir, run)) == 0
    assert (run / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    assert result_of(run) == result_of(reference)


def test_unparsable_metrics_line_in_the_middle_is_an_error_naming_it(data_dir, tmp_path, capsys, monkeypatch):
    from mixjax.train import metrics as metrics_mod

    run = tmp_path / "run"
    write = metrics_mod.MetricsWriter.write

    def killed_at_step_5(self, record):
        if record.get("step") == 5:
            raise KeyboardInterrupt
        write(self, record)

    monkeypatch.setattr(metrics_mod.MetricsWriter, "write", killed_at_step_5)
    assert main(train_args(data_dir, run)) == 130
    monkeypatch.setattr(metrics_mod.MetricsWriter, "write", write)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[2] = lines[2][:30] + "\n"
    (run / "metrics.jsonl").write_text("".join(lines))
    before = files(run)
    capsys.readouterr()
    rc = main(train_args(data_dir, run))
    one_line_error(capsys, rc, f"{run / 'metrics.jsonl'}:3: not a metrics record")
    assert files(run) == before


# ---- 3. full disk during a checkpoint save; 4. its leftover --------------------------------------
def _fail_meta_save_at(monkeypatch, step, exc):
    """Make orbax's writer thread fail while it writes step `step`'s metadata (its state and the
    <step>.orbax-checkpoint-tmp folder are being written)."""
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as jch

    save_fn = jch.JsonCheckpointHandler._save_fn

    async def failing(self, x, directory):
        if isinstance(x, dict) and x.get("step") == step:
            raise exc(directory)
        return await save_fn(self, x, directory)

    monkeypatch.setattr(jch.JsonCheckpointHandler, "_save_fn", failing)
    return lambda: monkeypatch.setattr(jch.JsonCheckpointHandler, "_save_fn", save_fn)


def _slow_state_write_at(monkeypatch, step):
    """Make step `step`'s state save end with a write 0.5 s late, as tensorstore's do on a loaded
    machine: it lands in <step>.orbax-checkpoint-tmp after the metadata's write has failed."""
    import concurrent.futures
    import threading
    import time
    from orbax.checkpoint._src.handlers import standard_checkpoint_handler as sch

    async_save = sch.StandardCheckpointHandler.async_save

    async def slow(self, directory, *args, **kwargs):
        futures = list(await async_save(self, directory, *args, **kwargs) or [])
        folder = Path(str(getattr(directory, "path", directory)))
        if f"{step}.orbax-checkpoint-tmp" in str(folder):
            late = concurrent.futures.Future()

            def write():
                time.sleep(0.5)
                (folder / "late-write").write_text("x")
                late.set_result(None)

            threading.Thread(target=write).start()
            futures.append(late)
        return futures

    monkeypatch.setattr(sch.StandardCheckpointHandler, "async_save", slow)
    return lambda: monkeypatch.setattr(sch.StandardCheckpointHandler, "async_save", async_save)


@pytest.mark.slow
def test_full_disk_during_checkpoint_save_is_one_line_and_the_rerun_resumes(data_dir, reference, tmp_path,
                                                                          capsys, caplog, monkeypatch):
    run = tmp_path / "run"
    undo = _fail_meta_save_at(monkeypatch, 4, lambda d: OSError(errno.ENOSPC, "No space left on device",
                                                                 str(d / "metadata")))
    undo_slow = _slow_state_write_at(monkeypatch, 4)
    rc = main(train_args(data_dir, run))
    err = one_line_error(capsys, rc, "no space left on device: ", "4.orbax-checkpoint-tmp",
                         "rerun the same command: it resumes from the checkpoint of step 2")
    assert not [r for r in caplog.records if r.levelname == "ERROR"], "orbax's tracebacks were logged"
    # the error comes after the save's last write: a rerun in this process must not delete the
    # unfinished folder while a write still lands in it (CI once failed "Directory not empty")
    assert list((run / "checkpoints").rglob("late-write")), "the error was reported before the save's writes ended"
    undo(), undo_slow()
    assert [p.name for p in (run / "checkpoints").iterdir() if "tmp" in p.name] == ["4.orbax-checkpoint-tmp"], err
    assert (run / "checkpoints" / "2").is_dir() and not (run / "result.json").exists()

    assert main(train_args(data_dir, run)) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["6"]  # the leftover is gone
    assert (run / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    assert result_of(run) == result_of(reference)


KILL_DURING_SAVE = """
import os, sys
import jax
jax.config.update("jax_num_cpu_devices", 8)
from orbax.checkpoint._src.handlers import json_checkpoint_handler as jch
save_fn = jch.JsonCheckpointHandler._save_fn
async def die(self, x, directory):
    if isinstance(x, dict) and x.get("step") == 4:
        os._exit(137)  # SIGKILL-like: no finally, no orbax clean-up, mid-save
    return await save_fn(self, x, directory)
jch.JsonCheckpointHandler._save_fn = die
from mixjax.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_kill_during_checkpoint_save_resumes_exactly(data_dir, reference, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, *train_args(data_dir, run)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 137, proc.stderr[-3000:]
    left = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert left == ["2", "4.orbax-checkpoint-tmp"], left
    # resumed with checkpoints at 3 and 6 (when to save may change on resume): the unfinished save of
    # step 4 is not overwritten by a new one, it is deleted when the run opens its checkpoints
    assert main(train_args(data_dir, run, "--checkpoint-every", "3")) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["6"]
    assert (run / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    assert result_of(run) == result_of(reference)


# ---- 3. numbers and paths ------------------------------------------------------------------------
@pytest.mark.parametrize("extra,message", [
    (["--budget-tokens", "inf"], "--budget-tokens: expected a finite number of tokens (e.g. 5e6 or 5M), got 'inf'"),
    (["--budget-tokens", "nan"], "--budget-tokens: expected a finite number of tokens (e.g. 5e6 or 5M), got 'nan'"),
    (["--budget-tokens", "1e999"], "--budget-tokens: expected a finite number of tokens"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
    (["--lr=-1e-3"], "--lr must be a finite number > 0, got -0.001"),
    (["--warmup", "nan"], "--warmup must be a finite number >= 0, got nan"),
    (["--max-epochs", "0"], "--max-epochs must be a finite number > 0, got 0.0"),
])
def test_bad_numbers_are_refused_before_any_work(data_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    one_line_error(capsys, main(train_args(data_dir, out) + extra), message)
    assert not out.exists()


def test_out_that_is_a_file_is_refused_before_any_work(data_dir, tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("mine\n")
    one_line_error(capsys, main(train_args(data_dir, f)), f"--out {f}: an existing file, not a directory")
    one_line_error(capsys, main(train_args(data_dir, f / "run")), f"--out {f / 'run'}: {f} is a file, not a directory")
    one_line_error(capsys, main(train_args(data_dir, tmp_path / "run", "--export-hf", str(f))),
                   f"--export-hf {f}: an existing file")
    assert f.read_text() == "mine\n" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# ---- 3. --init from a damaged checkpoint ---------------------------------------------------------
def _largest(d: Path) -> Path:
    return max((p for p in d.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.slow
@pytest.mark.parametrize("damage,message", [
    (lambda s: os.truncate(_largest(s / "state" / "d"), 100), "not a readable mixjax checkpoint ("),
    (lambda s: (s / "state" / "manifest.ocdbt").unlink(), "not a readable mixjax checkpoint (NOT_FOUND"),
    (lambda s: os.truncate(s / "meta" / "metadata", 20), "not a readable mixjax checkpoint (Unterminated string"),
    (lambda s: (s / "meta" / "metadata").unlink(), "has no metadata (not a mixjax checkpoint)"),
])
def test_init_from_a_damaged_checkpoint_is_one_line(data_dir, reference, tmp_path, capsys, damage, message):
    src = tmp_path / "src"
    shutil.copytree(reference, src)
    damage(src / "checkpoints" / "6")
    before = files(src)
    out = tmp_path / "new"
    rc = main(train_args(data_dir, out, "--init", str(src), "--budget-tokens", str(2 * BATCH)))
    one_line_error(capsys, rc, "--init", message)
    assert files(src) == before and not out.exists()


@pytest.mark.slow
def test_resume_from_a_damaged_checkpoint_is_one_line(data_dir, reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "result.json").unlink()
    os.truncate(_largest(run / "checkpoints" / "6" / "state" / "d"), 100)
    before = files(run)
    rc = main(train_args(data_dir, run))
    one_line_error(capsys, rc, f"{run / 'checkpoints' / '6'}: not a readable mixjax checkpoint (",
                   f"delete {run / 'checkpoints'} to start afresh")
    assert files(run) == before


# ---- 5. progress in a log file -------------------------------------------------------------------
def test_progress_in_a_log_file_is_a_few_plain_lines(data_dir, tmp_path, capsys):
    from mixjax.progress import ProgressBar, track

    log = io.StringIO()
    bar = ProgressBar(1000, desc="train", unit="step", file=log)
    for i in range(1000):
        bar.update(1, loss=f"{1 / (i + 1):.4f}")
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and 20 <= len(lines) <= 22, lines
    assert lines[0].startswith("train: 1/1000 steps (0%), loss=1.0000") and lines[-1].startswith("train: 1000/1000 steps (100%)")

    resumed = io.StringIO()  # a resumed run counts from its first step
    bar = ProgressBar(100, initial=60, desc="train", unit="step", file=resumed)
    for _ in range(40):
        bar.update(1)
    bar.close()
    assert [ln.split()[1] for ln in resumed.getvalue().splitlines()][:2] == ["61/100", "65/100"]

    assert list(track(range(7), desc="prepare", unit="source", file=(out := io.StringIO()))) == list(range(7))
    assert len(out.getvalue().splitlines()) == 7 and "prepare: 7/7 sources (100%)" in out.getvalue()

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty = Terminal()
    bar = ProgressBar(50, desc="train", unit="step", file=tty)
    for _ in range(50):
        bar.update(1)
    bar.close()
    assert "\r" in tty.getvalue()  # a terminal gets the tqdm bar

    # the training loop's progress, stderr captured (not a terminal)
    args = [a for a in train_args(data_dir, tmp_path / "run", steps=4) if a != "--quiet"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and [ln.split()[1] for ln in err.splitlines() if ln.startswith("train:")] == \
        ["1/4", "2/4", "3/4", "4/4"]
