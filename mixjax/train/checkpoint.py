"""Orbax checkpoints of a run.

Layout (RUN_DIR/checkpoints/<step>/ and, with keep_best, RUN_DIR/best/<step>/):
  state/  the train state {"params": float32 master weights (pure dict), "opt": optax state}
  meta/   JSON: step, sampler state, callback states, tokens consumed, model config, train config,
          validation history
Only `params` is needed to start another run from a checkpoint (`--init RUN_DIR`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from mixjax.errors import MixjaxError
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
                          f"with that version (mixjax train ... --export-hf DIR) and --init from DIR")


class Checkpointer:
    def __init__(self, directory: str | Path, max_to_keep: int | None = 1, async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "meta"),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
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

    def restore(self, step: int, abstract_state, shardings):
        check_layout(self.directory, step)
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_arrays(abstract_state, shardings)),
            meta=ocp.args.JsonRestore()))
        return out["state"], out["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


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
    raise MixjaxError(f"--init: {path} holds no mixjax checkpoint (nor a Hugging Face config.json)")


def read_meta(path: str | Path) -> dict:
    """The JSON metadata of a run's best (else latest) checkpoint."""
    directory, step = find_checkpoint(path)
    f = directory / str(step) / "meta" / "metadata"
    if not f.is_file():
        raise MixjaxError(f"--init: {directory / str(step)} has no metadata (not a mixjax checkpoint)")
    return json.loads(f.read_text())


def restore_params(path: str | Path, abstract_params, shardings):
    """Only the model parameters of a checkpoint (for --init): (params, meta)."""
    directory, step = find_checkpoint(path)
    check_layout(directory, step)
    ck = Checkpointer(directory, max_to_keep=None, async_save=False)
    restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s), {"params": shardings})
    out = ck.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item={"params": abstract_arrays(abstract_params, shardings)},
                                     restore_args=restore_args, partial_restore=True),
        meta=ocp.args.JsonRestore()))
    ck.close()
    return out["state"]["params"], out["meta"]
