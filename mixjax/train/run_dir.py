"""A run's directory: refusing another run's result or checkpoints, and opening its checkpoints.

RUN_DIR holds one run: result.json when finished, checkpoints/ (and best/) while training. A rerun
into it must be the same run (weights, budget, data, model shape and the settings that change what
it learns), which `run_differences` compares; `open_run_dir` refuses anything else with a one-line
error before any work, and says which checkpoint to resume.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from mixjax.errors import MixjaxError


# TrainConfig fields a run may be resumed (or its result reported) with other values of: they change
# how a step is computed or when it is saved, not what the run learns. `model` and `model_overrides`
# are compared as the model's shape (ModelConfig.shape_dict, which leaves out attention, remat and
# scanning); the weights, the budget and the data are compared besides the rest of the config.
RESUMABLE_FIELDS = ("model", "model_overrides", "mesh_shape", "grad_accum", "loss_chunk", "progress",
                    "resume", "checkpoint_every")


def data_signature(data) -> dict:
    """The prepared data a run trains on: its domains and the fingerprints of their sources (so
    the same data moved to another directory is the same, and re-prepared other data is not)."""
    groups = (getattr(data, "manifest", None) or {}).get("source_groups") or []
    return {"domains": list(data.domains),
            "sources": [[g.get("fingerprint"), g.get("domains")] for g in groups if isinstance(g, dict)] or None}


def _same_path(a, b) -> bool:
    if a == b:
        return True
    return isinstance(a, str) and isinstance(b, str) and Path(a).resolve() == Path(b).resolve()


def _shown(x) -> str:
    text = x if isinstance(x, str) else json.dumps(x)
    return text if len(text) <= 60 else text[:57] + "..."


def run_differences(saved: dict, cfg, mcfg, data, weights, budget_tokens: int,
                    num_steps: int | None = None) -> list[str]:
    """What differs between a run recorded in `saved` (a result.json, or a checkpoint's meta) and
    this one, as "name old -> new" texts; empty when a resume (or the report) is the same run."""
    from mixjax.model.config import ModelConfig

    diffs = []
    domains = list(data.domains)
    old_domains = saved.get("domains") or (saved.get("sampler") or {}).get("domains")
    old_data = saved.get("data")
    if old_domains is not None and list(old_domains) != domains:
        diffs.append(f"domains {','.join(old_domains)} -> {','.join(domains)}")
    elif isinstance(old_data, dict) and old_data.get("sources") != data_signature(data)["sources"]:
        diffs.append("data (the prepared sources differ)")
    old_w = saved.get("weights", saved.get("initial_weights"))
    if isinstance(old_w, dict):
        old_w = [old_w.get(d, 0.0) for d in domains]
    new_w = [float(w) for w in weights]
    if old_w is not None and not (old_domains is not None and list(old_domains) != domains) and (
            len(old_w) != len(new_w) or any(abs(float(a) - b) > 1e-9 for a, b in zip(old_w, new_w))):
        show = lambda w: ",".join(f"{d}={float(x):g}" for d, x in zip(domains, w))
        diffs.append(f"weights {show(old_w)} -> {show(new_w)}")
    old_budget = saved.get("budget_tokens")
    if old_budget is not None and int(old_budget) != int(budget_tokens):
        diffs.append(f"budget_tokens {int(old_budget)} -> {int(budget_tokens)}")
    elif old_budget is None and num_steps is not None and int(saved.get("step", 0)) > num_steps:
        diffs.append(f"budget_tokens (the checkpoint is at step {saved['step']}, past this budget's {num_steps} steps)")
    if isinstance(saved.get("model"), dict):
        old_m, new_m = ModelConfig.from_dict(saved["model"]).shape_dict(), mcfg.shape_dict()
        diffs += [f"model {k} {_shown(old_m.get(k))} -> {_shown(new_m.get(k))}"
                  for k in new_m if old_m.get(k) != new_m.get(k)]
    if isinstance(saved.get("config"), dict):
        now = json.loads(json.dumps(cfg.to_dict(), default=float))
        old = {**json.loads(json.dumps(type(cfg)().to_dict(), default=float)), **saved["config"]}
        for k in now:
            if k in RESUMABLE_FIELDS or old.get(k) == now[k] or (k == "init" and _same_path(old.get(k), now[k])):
                continue
            diffs.append(f"{k} {_shown(old.get(k))} -> {_shown(now[k])}")
    return diffs


def _refuse_other_run(out: Path, source: Path, diffs: list[str]) -> None:
    if diffs:
        raise MixjaxError(f"`out_dir` {out}: {source} is of another configuration ({'; '.join(diffs)}); "
                          f"use a new `out_dir`, or delete {out} to start afresh")


@dataclasses.dataclass
class RunDir:
    """The opened run directory: where to write, its checkpointers, and the step to resume from."""

    out: Path | None
    ckpt: object = None  # Checkpointer of RUN_DIR/checkpoints (checkpoint_every > 0)
    best_ckpt: object = None  # Checkpointer of RUN_DIR/best (keep_best)
    resume_step: int | None = None

    def closers(self) -> list:
        return [c.close for c in (self.ckpt, self.best_ckpt) if c is not None]


def open_run_dir(out_dir, cfg, mcfg, data, weights, budget_tokens: int, num_steps: int, check_result: bool,
                 close_all) -> RunDir:
    """Refuse another run's result.json (with `check_result`) or checkpoints, make the directory,
    open its checkpointers (a save left half done is deleted) and find the step to resume."""
    from mixjax.train.checkpoint import Checkpointer

    if out_dir is None:
        return RunDir(None)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MixjaxError(f"`out_dir` {out}: a file, not a run directory")
    if check_result and (out / "result.json").is_file():
        try:
            saved = json.loads((out / "result.json").read_text())
            if not isinstance(saved, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise MixjaxError(f"`out_dir` {out}: {out / 'result.json'} is unreadable ({e}); use a new `out_dir`, "
                              f"or delete {out} to start afresh") from None
        _refuse_other_run(out, out / "result.json", run_differences(saved, cfg, mcfg, data, weights, budget_tokens))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise MixjaxError(f"`out_dir` {out}: cannot make the run directory ({e.strerror}: {e.filename})") from None
    run_dir = RunDir(out)
    if cfg.checkpoint_every:
        run_dir.ckpt = Checkpointer(out / "checkpoints", max_to_keep=1)  # deletes a save left half done
        try:
            latest = run_dir.ckpt.latest_step()
            if latest is not None:
                saved = run_dir.ckpt.read_meta(latest)
                _refuse_other_run(out, out / "checkpoints" / str(latest), run_differences(
                    saved, cfg, mcfg, data, weights, budget_tokens, num_steps))
                if cfg.resume:
                    run_dir.resume_step = latest
        except BaseException:
            close_all(run_dir.closers())
            raise
    if cfg.keep_best:
        run_dir.best_ckpt = Checkpointer(out / "best", max_to_keep=1, async_save=False)
    return run_dir
