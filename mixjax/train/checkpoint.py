"""Orbax checkpoints of a run.

Layout (RUN_DIR/checkpoints/<step>/ and, with keep_best, RUN_DIR/best/<step>/):
  state/  the train state {"params": float32 master weights (pure dict), "opt": optax state}
  meta/   JSON: step, sampler state, callback states, tokens consumed, model config, train config,
          validation history
Only `params` is needed to start another run from a checkpoint (TrainConfig.init = RUN_DIR).

A save writes <step>.orbax-checkpoint-tmp/ and renames it to <step>/ once complete, so a kill or a
full disk during a save leaves the previous checkpoint whole; a run's own Checkpointer deletes such
leftovers when it opens the directory. Orbax reports a full disk from its writer threads as
ValueError("RESOURCE_EXHAUSTED: ... No space left on device"), logged once per thread with a
traceback: `disk_full_error` and `quiet_disk_full_logs` turn that into one line.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from mixjax.errors import MixjaxError
from mixjax.io import DISK_FULL_TEXT, disk_full, exception_chain
from mixjax.train.mesh import abstract_arrays

# "stacked": every layer parameter has a leading layer axis (the scanned decoder). Checkpoints
# without this key hold one subtree per layer (mixjax before scanned layers) and cannot be read.
PARAM_LAYOUT = "stacked"


def check_layout(directory: Path, step: int) -> None:
    """One-line error for a checkpoint written with the old per-layer parameter layout."""
    f = Path(directory) / str(step) / "meta" / "metadata"
    try:
        layout = json.loads(f.read_text()).get("param_layout")
    except (OSError, ValueError):
        return  # no readable metadata: the restore itself reports what is wrong
    if layout != PARAM_LAYOUT:
        raise MixjaxError(f"{Path(directory) / str(step)}: checkpoint has the per-layer parameter layout of "
                          f"an older mixjax (this one stacks layers); export it to a Hugging Face directory "
                          f"with that version (mixjax train ... --export-hf DIR) and `init` from DIR")


def _brief(e: BaseException, limit: int = 300) -> str:
    """An exception as one short line (orbax/tensorstore messages run to several hundred characters)."""
    text = " ".join(str(e).split()).split(" See full TensorStore details")[0] or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def unreadable(what: str, e: BaseException, hint: str = "") -> MixjaxError:
    _drop_closed_loop_callbacks()
    return MixjaxError(f"{what}: not a readable mixjax checkpoint ({_brief(e)}){hint}")


def _raised_in_orbax(e: BaseException | None) -> bool:
    tb = e.__traceback__ if e is not None else None
    while tb is not None:
        if "/orbax/" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


class _DropOrbaxLeftovers(logging.Filter):
    """asyncio's "Future exception was never retrieved" for an exception raised inside orbax."""

    def filter(self, record: logging.LogRecord) -> bool:
        e = record.exc_info[1] if record.exc_info else None
        return not ("never retrieved" in str(record.msg) and _raised_in_orbax(e))


def _drop_closed_loop_callbacks() -> None:
    """After orbax gave up on a read or write, tensorstore's other operations still finish: each
    reports to orbax's closed asyncio loop with a "RuntimeError: Event loop is closed" traceback (an
    unraisable exception, from tensorstore's threads, until the process ends), and their own errors
    are printed as "Exception ignored in <coroutine>" or logged by asyncio as "exception was never
    retrieved". Those say nothing more than the error already raised in the main thread, so this
    process-wide unraisable hook and asyncio log filter (installed once) drop them."""
    previous = sys.unraisablehook
    if getattr(previous, "_mixjax_drops_closed_loop", False):
        return

    def hook(unraisable):
        e = unraisable.exc_value
        closed_loop = unraisable.object is None and isinstance(e, RuntimeError) and str(e) == "Event loop is closed"
        if not (closed_loop or _raised_in_orbax(e)):
            previous(unraisable)

    hook._mixjax_drops_closed_loop = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_DropOrbaxLeftovers())


class Checkpointer:
    """A run's checkpoints. `own=False` for another run's (`init`'s, which may be training still):
    the directory is neither created nor cleaned of unfinished saves."""

    def __init__(self, directory: str | Path, max_to_keep: int | None = 1, async_save: bool = True,
                 own: bool = True):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "meta"),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=own, cleanup_tmp_directories=own,
                                                 enable_async_checkpointing=async_save))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict[str, Any]) -> None:
        if step in self.manager.all_steps():  # written by a run that was killed after it
            self.manager.wait_until_finished()
            self.manager.delete(step)
        meta = {**meta, "param_layout": PARAM_LAYOUT}
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)), force=True)

    def read_meta(self, step: int) -> dict:
        """The JSON metadata of one step (read directly: cheap, before any model is built)."""
        f = self.directory / str(step) / "meta" / "metadata"
        try:
            meta = json.loads(f.read_text())
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise unreadable(str(self.directory / str(step)), e,
                             f"; delete {self.directory} to start afresh, or use a new `out_dir`") from None
        return meta

    def restore(self, step: int, abstract_state, shardings):
        check_layout(self.directory, step)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_arrays(abstract_state, shardings)),
                meta=ocp.args.JsonRestore()))
        except (MixjaxError, KeyboardInterrupt):
            raise
        except Exception as e:
            if is_disk_full(e):
                raise
            raise unreadable(str(self.directory / str(step)), e,
                             f"; delete {self.directory} to start afresh, or use a new `out_dir`") from None
        return out["state"], out["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Wait for the last save and release the manager (also when that save failed: its error
        is raised after the release, which may be here or from the `save` that followed it)."""
        error = None
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            error = e
        self._settle_failed_save()
        try:
            self.manager.close()
        except Exception as e:
            error = error or e
        if error is not None:
            raise error

    def _settle_failed_save(self, timeout_s: float = 60.0) -> None:
        """Wait for the other writes of a save that failed (after one that succeeded they are all
        done). Orbax stops waiting at the first failed write while tensorstore goes on writing the
        state into <step>.orbax-checkpoint-tmp, and a rerun in the same process (a notebook, a test)
        would delete that folder as it still grows ("Directory not empty"). Orbax keeps the save's
        futures, and chains of them, on private attributes; if a later orbax moves them, this does
        nothing."""
        checkpointer = getattr(self.manager, "_checkpointer", None)
        pending = list(getattr(getattr(checkpointer, "_async_manager", None), "_commit_futures", None) or ())
        while pending:
            f = pending.pop()
            chained = getattr(f, "_futures", None)  # a ChainedFuture stops at its first failure
            if chained is not None:
                pending.extend(chained)
                continue
            try:
                f.result(timeout=timeout_s)
            except Exception:
                pass  # the failure itself is already being reported


def find_checkpoint(path: str | Path) -> tuple[Path, int]:
    """(checkpoint manager directory, step) for a run directory, a checkpoints/ or best/ directory,
    or one step directory. Prefers RUN_DIR/best over RUN_DIR/checkpoints."""
    path = Path(path).absolute()
    if (path / "meta").is_dir() and (path / "state").is_dir() and path.name.isdigit():
        return path.parent, int(path.name)
    for cand in (path / "best", path / "checkpoints", path):
        if cand.is_dir():
            steps = [int(p.name) for p in cand.iterdir() if p.name.isdigit() and (p / "state").is_dir()]
            if steps:
                return cand, max(steps)
    raise MixjaxError(f"{path} holds no mixjax checkpoint (nor a Hugging Face config.json)")


def read_meta(path: str | Path) -> dict:
    """The JSON metadata of a run's best (else latest) checkpoint."""
    directory, step = find_checkpoint(path)
    f = directory / str(step) / "meta" / "metadata"
    if not f.is_file():
        raise MixjaxError(f"{directory / str(step)} has no metadata (not a mixjax checkpoint)")
    try:
        meta = json.loads(f.read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
            raise ValueError(f"{f} holds no model configuration")
    except (OSError, ValueError) as e:
        raise unreadable(str(path), e) from None
    return meta


def restore_params(path: str | Path, abstract_params, shardings):
    """Only the model parameters of a checkpoint (for TrainConfig.init): (params, meta)."""
    directory, step = find_checkpoint(path)
    check_layout(directory, step)
    restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s), {"params": shardings})
    try:
        ck = Checkpointer(directory, max_to_keep=None, async_save=False, own=False)
        try:
            out = ck.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item={"params": abstract_arrays(abstract_params, shardings)},
                                             restore_args=restore_args, partial_restore=True),
                meta=ocp.args.JsonRestore()))
        finally:
            ck.manager.close()
    except (MixjaxError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise unreadable(str(path), e) from None
    return out["state"]["params"], out["meta"]


# ---- a full disk --------------------------------------------------------------------------------
def is_disk_full(e: BaseException | None) -> bool:
    return disk_full(e) is not None


def disk_full_error(e: BaseException, where: str | Path | None = None) -> MixjaxError | None:
    """A one-line MixjaxError for an exception caused by a full disk (else None): the file the
    error names, else `where`; and which checkpoint a rerun of the same command resumes from."""
    phrase = disk_full(e)
    if phrase is None:
        return None
    _drop_closed_loop_callbacks()
    path = None
    for x in exception_chain(e):
        if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT) and x.filename:
            path = x.filename
            break
        m = re.search(r'(?:Failed writing|local file): "([^"]+)"', str(x))
        if m:
            path = m.group(1)
            break
    path = path or where or "?"
    hint = ""
    if where is not None:
        steps = sorted(int(p.name) for p in (Path(where) / "checkpoints").glob("*")
                       if p.name.isdigit() and (p / "meta" / "metadata").is_file())
        hint = (f" (free space and rerun the same command: it resumes from the checkpoint of step {steps[-1]})"
                if steps else " (free space and rerun the same command)")
    return MixjaxError(f"{phrase}: {path}{hint}")


class _DropDiskFull(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if DISK_FULL_TEXT.search(record.getMessage()):
            return False
        return not (record.exc_info and is_disk_full(record.exc_info[1]))


@contextlib.contextmanager
def quiet_disk_full_logs():
    """Drop orbax's log records (each with a traceback) of a full disk while the block runs: the
    error that ends the run reports it, in one line. (Also installs _drop_closed_loop_callbacks.)"""
    _drop_closed_loop_callbacks()
    flt, logger = _DropDiskFull(), logging.getLogger("absl")
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)
