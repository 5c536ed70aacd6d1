"""The training loop: sampler -> jitted step -> callbacks, evaluation, checkpoints, metrics.

`run_training(config, data, weights, budget_tokens, out_dir=...)` is the Python entry point that
`mixjax train`, sweeps and mixing methods call (many times in one process: same-shaped runs reuse
one compiled step). Online methods are `Callback`s: they see each step's per-domain training
losses and each evaluation, and may call `ctx.sampler.set_weights(...)`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mixjax.errors import MixjaxError
from mixjax.io import write_json_atomic


FINAL_CHECKPOINT_ONLY = 10**12  # a checkpoint_every no run reaches: the last step is saved, nothing before


@dataclasses.dataclass
class TrainConfig:
    """A training run. `model` is a preset name or a Hugging Face directory (None: the --init
    checkpoint's model, else "tiny"); `init` a mixjax run/checkpoint directory or a HF directory."""

    model: str | None = None
    init: str | None = None
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 1e-3
    schedule: str = "cosine"          # cosine | linear | constant
    warmup: float = 0.05              # < 1: fraction of the steps; >= 1: steps
    final_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float | None = 1.0
    grad_accum: int = 1
    compute_dtype: str = "float32"    # float32 | bfloat16 (float32 master weights either way)
    loss_chunk: int | None = None     # cross-entropy over this many positions at a time (big vocabularies)
    seed: int = 0
    max_epochs: float = 10
    eval_every: int = 0               # steps between evaluations; 0 = only at the end
    eval_max_batches: int | None = None  # per domain; None = the whole held-out split
    keep_best: bool = False           # keep the lowest-validation-loss checkpoint (RUN_DIR/best)
    select_best: bool = False         # result val_loss = the lowest-mean evaluation (no checkpoint;
                                      # keep_best implies it)
    checkpoint_every: int = 0         # steps between checkpoints (RUN_DIR/checkpoints); 0 = none;
                                      # FINAL_CHECKPOINT_ONLY = the last step only
    resume: bool = True               # continue from RUN_DIR/checkpoints when present
    mesh_shape: tuple[int, int, int] | None = None  # (data, fsdp, tensor); None = all data
    progress: bool = True
    model_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class StepInfo:
    """What a step reports. Per-domain dicts have NaN for domains with no target in the batch."""

    step: int                            # 1-based: number of steps done
    loss: float                          # the objective: token mean, or the loss-weighted domain means
    train_loss: dict[str, float]         # each domain's mean token loss in this batch
    loss_counts: dict[str, int]          # each domain's number of loss targets in this batch
    tokens_per_domain: dict[str, int]    # each domain's tokens in this batch
    lr: float
    grad_norm: float
    batch: Any = None                    # the batch trained on, as device arrays (for a second pass)


@dataclasses.dataclass
class RunContext:
    """Handed to callbacks: the sampler (set its weights; it may have drawn the next batch ahead,
    which new weights void), the domains, and an `evaluate` function (per-domain validation loss
    now, optionally for a subset / fewer batches).

    For methods that need more than losses: `stepper` (the compiled steps), `params` (the current
    parameters; valid until the next step, which donates them), `domain_losses(batch, params=None)`
    (per-domain mean loss [K] of any parameters on a batch, e.g. `StepInfo.batch`) and
    `validation_arrays(domain, max_batches)` (the cached held-out batches, host arrays).

    `loss_weights` (None or [K]): a callback sets it to train on sum_j w_j x (mean loss of domain j)
    instead of the mean token loss (DoReMi's and DoGE's reweighted proxies); it is checkpointed."""

    sampler: Any
    domains: list[str]
    num_steps: int
    config: TrainConfig
    evaluate: Callable[..., dict[str, float]]
    step: int = 0
    stepper: Any = None
    params: Any = None
    domain_losses: Callable[..., np.ndarray] | None = None
    validation_arrays: Callable[..., list] | None = None
    loss_weights: np.ndarray | None = None


class Callback:
    """Base class of training callbacks (all methods optional)."""

    def on_train_start(self, ctx: RunContext) -> None:
        pass

    def on_step(self, ctx: RunContext, info: StepInfo) -> None:
        pass

    def on_eval(self, ctx: RunContext, step: int, val_loss: dict[str, float]) -> None:
        pass

    def on_train_end(self, ctx: RunContext, result: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# --------------------------------------------------------------------------------------------
_VAL_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _validation_arrays(data, domain, batch_size, seq_len, max_batches, validation_fn):
    try:
        cache = _VAL_CACHE.setdefault(data, {})
    except TypeError:
        cache = {}
    key = (domain, batch_size, seq_len, max_batches, validation_fn)
    if key not in cache:
        out = []
        for i, b in enumerate(validation_fn(data, domain, batch_size, seq_len)):
            if max_batches is not None and i >= max_batches:
                break
            out.append(b.arrays())
        cache[key] = out
    return cache[key]


def resolve_model_config(cfg: TrainConfig, vocab_size: int | None):
    """(ModelConfig, where its weights come from: ('hf', dir) | ('ckpt', dir) | None)."""
    from mixjax.model import get_config, is_hf_dir, load_hf_config
    from mixjax.train.checkpoint import read_meta
    from mixjax.model.config import ModelConfig

    init_cfg, init_src = None, None
    if cfg.init:
        if not Path(cfg.init).exists():
            raise MixjaxError(f"--init: {cfg.init} does not exist")
        if is_hf_dir(cfg.init):
            init_cfg, init_src = load_hf_config(cfg.init), ("hf", cfg.init)
        else:
            init_cfg, init_src = ModelConfig.from_dict(read_meta(cfg.init)["model"]), ("ckpt", cfg.init)
    if cfg.model is None:
        mcfg = init_cfg or get_config("tiny", vocab_size)
    elif Path(cfg.model).is_dir() or "/" in cfg.model:
        if not is_hf_dir(cfg.model):
            raise MixjaxError(f"--model: {cfg.model} is neither a preset nor a Hugging Face directory")
        mcfg = load_hf_config(cfg.model)
        if init_src is None:
            init_src = ("hf", cfg.model)
    else:
        mcfg = get_config(cfg.model, vocab_size if init_cfg is None else init_cfg.vocab_size)
    if cfg.model_overrides:
        mcfg = mcfg.replace(**cfg.model_overrides)
    if init_cfg is not None:
        keys = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "head_dim",
                "arch", "qkv_bias", "tie_embeddings")
        diff = [k for k in keys if getattr(init_cfg, k) != getattr(mcfg, k)]
        if diff:
            raise MixjaxError(f"--init {cfg.init}: model config does not match --model: "
                              + ", ".join(f"{k}={getattr(init_cfg, k)} vs {getattr(mcfg, k)}" for k in diff))
    if vocab_size is not None and vocab_size > mcfg.vocab_size:
        raise MixjaxError(f"model vocab_size {mcfg.vocab_size} is smaller than the data's {vocab_size} "
                          f"(prepare the data with the model's tokenizer)")
    return mcfg, init_src


def _per_domain(sums, counts, domains) -> dict[str, float]:
    return {d: (float(s) / float(c) if c > 0 else float("nan")) for d, s, c in zip(domains, sums, counts)}


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


def run_differences(saved: dict, cfg: TrainConfig, mcfg, data, weights, budget_tokens: int,
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
        old = {**json.loads(json.dumps(TrainConfig().to_dict(), default=float)), **saved["config"]}
        for k in now:
            if k in RESUMABLE_FIELDS or old.get(k) == now[k] or (k == "init" and _same_path(old.get(k), now[k])):
                continue
            diffs.append(f"{k} {_shown(old.get(k))} -> {_shown(now[k])}")
    return diffs


def _refuse_other_run(out: Path, source: Path, diffs: list[str]) -> None:
    if diffs:
        raise MixjaxError(f"--out {out}: {source} is of another configuration ({'; '.join(diffs)}); "
                          f"use a new --out, or delete {out} to start afresh")


def _close_all(closers) -> None:
    """Call every closer. When an exception is already on its way out (a full disk, a kill), a
    closer's own failure (often the same error again) is dropped so that one is reported."""
    failing = sys.exc_info()[1] is not None
    error = None
    for close in closers:
        try:
            close()
        except Exception as e:
            error = error or e
    if error is not None and not failing:
        raise error


def run_training(config: TrainConfig, data, weights, budget_tokens: int, *, out_dir: str | os.PathLike | None = None,
                 callbacks: Sequence[Callback] = (), sampler=None, validation_fn=None, devices=None,
                 check_result: bool = False) -> dict:
    """Train one model on the mixture `weights` (dict domain -> weight, or an array in domain order)
    of the prepared `data` for `budget_tokens` tokens. Returns (and writes to out_dir/result.json)
    {"tokens", "loss_tokens", "val_loss", "train_loss", "val_history", "steps", "config", "model",
    "timings", ...}. `sampler` may replace the MixtureSampler (any object with its API);
    `validation_fn(data, domain, batch_size, seq_len)` the held-out batches.

    out_dir's checkpoints are resumed only if they are of this run (weights, budget, data, model
    shape, the config bar RESUMABLE_FIELDS), else a MixjaxError; with `check_result` (`mixjax
    train`) so is an out_dir/result.json of another run. A full disk is a one-line MixjaxError; the
    last complete checkpoint is kept, so rerunning the same call resumes."""
    from mixjax.train.checkpoint import disk_full_error, quiet_disk_full_logs

    made = out_dir is not None and not os.path.lexists(out_dir)
    with quiet_disk_full_logs():
        try:
            return _run_training(config, data, weights, budget_tokens, out_dir=out_dir, callbacks=callbacks,
                                 sampler=sampler, validation_fn=validation_fn, devices=devices,
                                 check_result=check_result)
        except BaseException as e:
            if made:  # a run that failed before writing anything leaves no empty run directory
                _remove_empty_dirs(Path(out_dir))
            error = None if isinstance(e, MixjaxError) or not isinstance(e, Exception) else disk_full_error(e, out_dir)
            if error is None:
                raise
            raise error from e


def _remove_empty_dirs(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _remove_empty_dirs(child)
        try:
            path.rmdir()
        except OSError:
            pass


def _run_training(config: TrainConfig, data, weights, budget_tokens: int, *, out_dir, callbacks, sampler,
                  validation_fn, devices, check_result) -> dict:
    import jax

    from mixjax.model import load_hf
    from mixjax.train import mesh as meshlib
    from mixjax.train.checkpoint import Checkpointer, restore_params
    from mixjax.train.metrics import MetricsWriter, Progress
    from mixjax.train.optim import learning_rate
    from mixjax.train.step import StepConfig, get_stepper

    t_start = time.perf_counter()
    cfg = config
    meshlib.maybe_initialize_distributed()
    domains = list(data.domains)
    mcfg, init_src = resolve_model_config(cfg, getattr(data, "vocab_size", None))
    if sampler is None:
        from mixjax.data.sampler import MixtureSampler
        sampler = MixtureSampler(data, weights, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                                 budget_tokens=budget_tokens, seed=cfg.seed, max_epochs=cfg.max_epochs)
    if validation_fn is None:
        from mixjax.data.sampler import validation_batches as validation_fn
    num_steps = int(sampler.num_steps)
    if cfg.batch_size * cfg.seq_len > int(budget_tokens) or num_steps < 1:
        raise MixjaxError(f"--budget-tokens {budget_tokens} is smaller than one batch "
                          f"({cfg.batch_size} x {cfg.seq_len} tokens)")
    initial_weights = [float(w) for w in np.asarray(sampler.weights)]
    mesh = meshlib.make_mesh(cfg.mesh_shape, devices)
    try:
        stepper = get_stepper(StepConfig(
            model=mcfg, batch_size=cfg.batch_size, seq_len=cfg.seq_len, num_domains=len(domains),
            grad_accum=cfg.grad_accum, compute_dtype=cfg.compute_dtype, b1=cfg.b1, b2=cfg.b2,
            eps=cfg.eps, weight_decay=cfg.weight_decay, clip_norm=cfg.clip_norm, loss_chunk=cfg.loss_chunk), mesh)
    except ValueError as e:
        raise MixjaxError(f"--batch-size: {e}") from None

    # ---- out_dir: refuse another run's result or checkpoints before any work ------------------
    out = Path(out_dir) if out_dir is not None else None
    ckpt = best_ckpt = None
    resume_step = None
    if out is not None:
        if out.exists() and not out.is_dir():
            raise MixjaxError(f"--out {out}: a file, not a run directory")
        if check_result and (out / "result.json").is_file():
            try:
                saved = json.loads((out / "result.json").read_text())
                if not isinstance(saved, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as e:
                raise MixjaxError(f"--out {out}: {out / 'result.json'} is unreadable ({e}); use a new --out, "
                                  f"or delete {out} to start afresh") from None
            _refuse_other_run(out, out / "result.json",
                              run_differences(saved, cfg, mcfg, data, initial_weights, budget_tokens))
        try:
            out.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as e:
            raise MixjaxError(f"--out {out}: cannot make the run directory ({e.strerror}: {e.filename})") from None
        if cfg.checkpoint_every:
            ckpt = Checkpointer(out / "checkpoints", max_to_keep=1)  # deletes a save left half done
            try:
                latest = ckpt.latest_step()
                if latest is not None:
                    saved = ckpt.read_meta(latest)
                    _refuse_other_run(out, out / "checkpoints" / str(latest), run_differences(
                        saved, cfg, mcfg, data, initial_weights, budget_tokens, num_steps))
                    if cfg.resume:
                        resume_step = latest
            except BaseException:
                _close_all([ckpt.close])
                raise
        if cfg.keep_best:
            best_ckpt = Checkpointer(out / "best", max_to_keep=1, async_save=False)

    # ---- state: resume > init checkpoint > random -------------------------------------------
    start_step, meta = 0, None
    try:
        if resume_step is not None:
            start_step = resume_step
            state, meta = ckpt.restore(start_step, stepper.abstract_state, stepper.state_shardings)
            sampler.load_state_dict(meta["sampler"])
            for cb, s in zip(callbacks, meta.get("callbacks", [])):
                cb.load_state_dict(s)
        else:
            if init_src is None:
                params = stepper.init_params(cfg.seed)
            elif init_src[0] == "hf":
                params = stepper.params_from_model(load_hf(init_src[1], expect=mcfg))
            else:
                params, _ = restore_params(init_src[1], stepper.abstract_params, stepper.param_shardings)
            state = stepper.init_state(params)
        metrics = MetricsWriter(out / "metrics.jsonl" if out is not None and jax.process_index() == 0 else None,
                                resume_step=start_step if meta else None)
    except BaseException:
        _close_all([c.close for c in (ckpt, best_ckpt) if c is not None])
        raise

    loss_tokens = np.asarray(meta["loss_tokens"] if meta else np.zeros(len(domains)), np.int64)
    seen_tokens = np.asarray(meta["seen_tokens"] if meta else np.zeros(len(domains)), np.int64)
    val_history: list[dict] = list(meta["val_history"]) if meta else []
    best = meta.get("best") if meta else None
    timings = dict(meta["timings"]) if meta else {"train_s": 0.0, "timed_steps": 0, "eval_s": 0.0,
                                                  "first_step_s": None}
    initial_weights = meta["initial_weights"] if meta else initial_weights

    device_validation: dict = {}  # (domain, max_batches) -> batches already on the devices

    def evaluate(eval_domains=None, max_batches=cfg.eval_max_batches, params=None) -> dict[str, float]:
        """Per-domain validation loss. Batches are put on the devices once per run and every eval
        step is dispatched before one transfer back, since online methods evaluate often."""
        params = state["params"] if params is None else params
        names = list(eval_domains or domains)
        outputs = {}
        for d in names:
            key = (d, max_batches)
            if key not in device_validation:
                device_validation[key] = [stepper.put_batch(a) for a in _validation_arrays(
                    data, d, cfg.batch_size, cfg.seq_len, max_batches, validation_fn)]
            outputs[d] = [stepper.eval_step(params, b) for b in device_validation[key]]
        res = {}
        for d, ms in jax.device_get(outputs).items():
            s = sum(float(np.sum(m["domain_loss_sum"])) for m in ms)
            c = sum(float(np.sum(m["domain_count"])) for m in ms)
            res[d] = s / c if c > 0 else float("nan")
        return res

    def domain_losses(batch, params=None) -> np.ndarray:
        """Per-domain mean token loss [K] on one batch (NaN where a domain has no target)."""
        if not isinstance(batch, dict) or not isinstance(batch.get("tokens"), jax.Array):
            batch = stepper.put_batch(batch)
        m = jax.device_get(stepper.eval_step(state["params"] if params is None else params, batch))
        return np.array(list(_per_domain(m["domain_loss_sum"], m["domain_count"], domains).values()))

    def validation_arrays(domain, max_batches=cfg.eval_max_batches) -> list:
        return _validation_arrays(data, domain, cfg.batch_size, cfg.seq_len, max_batches, validation_fn)

    ctx = RunContext(sampler=sampler, domains=domains, num_steps=num_steps, config=cfg,
                     evaluate=evaluate, step=start_step, stepper=stepper, params=state["params"],
                     domain_losses=domain_losses, validation_arrays=validation_arrays,
                     loss_weights=None if not meta or meta.get("loss_weights") is None
                     else np.asarray(meta["loss_weights"], np.float64))

    def loss_weights() -> np.ndarray:
        if ctx.loss_weights is None:
            return stepper.no_loss_weights()
        w = np.asarray(ctx.loss_weights, np.float32)
        if w.shape != (len(domains),) or not np.all(np.isfinite(w)) or w.min() < 0 or not w.sum() > 0:
            raise MixjaxError(f"loss weights must be {len(domains)} non-negative numbers with a positive sum, "
                              f"got {w.tolist()}")
        return w

    if not meta:
        for cb in callbacks:
            cb.on_train_start(ctx)

    def run_eval(step: int):
        nonlocal best
        t0 = time.perf_counter()
        val = evaluate()
        timings["eval_s"] += time.perf_counter() - t0
        rec = {"step": step, "val_loss": val, "val_loss_mean": float(np.mean(list(val.values())))}
        val_history.append(rec)
        metrics.write(rec)
        for cb in callbacks:
            cb.on_eval(ctx, step, val)
        tracking = best_ckpt is not None or cfg.select_best
        if tracking and (best is None or rec["val_loss_mean"] < best["val_loss_mean"]):
            best = rec
            if best_ckpt is not None:
                best_ckpt.save(step, {"params": state["params"]}, {"step": step, "model": mcfg.to_dict(),
                                                                 "val_loss": val, "config": cfg.to_dict()})
        return val

    def save(step: int):
        meta_out = {"step": step, "sampler": sampler_state(),
                    "callbacks": [cb.state_dict() for cb in callbacks],
                    "loss_tokens": loss_tokens.tolist(), "seen_tokens": seen_tokens.tolist(),
                    "val_history": val_history, "best": best, "timings": timings,
                    "initial_weights": initial_weights, "model": mcfg.to_dict(), "config": cfg.to_dict(),
                    "budget_tokens": int(budget_tokens), "data": data_signature(data),
                    "loss_weights": None if ctx.loss_weights is None else np.asarray(ctx.loss_weights).tolist()}
        ckpt.save(step, state, json.loads(json.dumps(meta_out, default=float)))

    warmup = int(cfg.warmup * num_steps) if cfg.warmup < 1 else int(cfg.warmup)
    progress = Progress(num_steps, start_step, enabled=cfg.progress and jax.process_index() == 0)
    batch_tokens = cfg.batch_size * cfg.seq_len
    # The next batch is packed on the host while the device runs this step. A callback that then
    # changes the weights voids it: the sampler is rewound and the batch drawn again at the new
    # weights, so the batches are exactly those of drawing after the callbacks. After a step that
    # changed the weights the next is not drawn ahead (methods that change them every step).
    prefetch = hasattr(sampler, "state_dict") and hasattr(sampler, "load_state_dict")
    reweighted = False
    next_batch = before_prefetch = None

    def sampler_state() -> dict:
        return sampler.state_dict() if next_batch is None else before_prefetch

    def draw_ahead():
        nonlocal before_prefetch
        before_prefetch = sampler.state_dict()
        try:
            return sampler.next_batch()
        except Exception:  # e.g. a domain exhausted at the old weights: drawn (or raised) after the callbacks
            sampler.load_state_dict(before_prefetch)
            return None

    def void_if_reweighted(drawn_with: np.ndarray):
        nonlocal next_batch, reweighted
        weights = np.asarray(sampler.weights)
        reweighted = not np.array_equal(weights, drawn_with)
        if next_batch is not None and reweighted:
            sampler.load_state_dict(before_prefetch)
            sampler.set_weights(weights)
            next_batch = None

    try:
        for step in range(start_step, num_steps):
            t0 = time.perf_counter()
            batch = next_batch if next_batch is not None else sampler.next_batch()
            lr = learning_rate(step, num_steps, cfg.lr, cfg.schedule, warmup, cfg.final_lr_ratio)
            device_batch = stepper.put_batch(batch)
            state, m = stepper.train_step(state, device_batch, np.float32(lr), loss_weights())
            drawn_with = np.array(sampler.weights)
            next_batch = draw_ahead() if prefetch and not reweighted and step + 1 < num_steps else None
            m = jax.device_get(m)
            dt = time.perf_counter() - t0
            if step == start_step:  # includes compilation (unless cached in this process)
                timings["first_step_s"] = (timings["first_step_s"] or 0.0) + dt
            else:
                timings["train_s"] += dt
                timings["timed_steps"] += 1
            if not math.isfinite(float(m["loss"])):
                raise MixjaxError(f"training diverged at step {step + 1} (loss {float(m['loss'])}); lower --lr")
            tpd = np.asarray(batch.tokens_per_domain, np.int64)
            seen_tokens += tpd
            loss_tokens += np.asarray(batch.loss_tokens_per_domain, np.int64)
            info = StepInfo(step=step + 1, loss=float(m["loss"]),
                            train_loss=_per_domain(m["domain_loss_sum"], m["domain_count"], domains),
                            loss_counts={d: int(c) for d, c in zip(domains, m["domain_count"])},
                            tokens_per_domain={d: int(t) for d, t in zip(domains, tpd)},
                            lr=lr, grad_norm=float(m["grad_norm"]), batch=device_batch)
            ctx.step, ctx.params = step + 1, state["params"]
            metrics.write({"step": step + 1, "loss": info.loss, "train_loss": info.train_loss, "lr": lr,
                           "grad_norm": info.grad_norm, "tokens": int(seen_tokens.sum()),
                           "weights": [float(w) for w in np.asarray(sampler.weights)],
                           **({} if ctx.loss_weights is None else
                              {"loss_weights": [float(w) for w in np.asarray(ctx.loss_weights)]})})
            progress.update(info.loss, batch_tokens / dt)
            for cb in callbacks:
                cb.on_step(ctx, info)
            last = step + 1 == num_steps
            if last or (cfg.eval_every and (step + 1) % cfg.eval_every == 0):
                run_eval(step + 1)
            void_if_reweighted(drawn_with)
            if ckpt is not None and (last or (step + 1) % cfg.checkpoint_every == 0):
                save(step + 1)
    finally:
        _close_all([progress.close, metrics.close] + [c.close for c in (ckpt, best_ckpt) if c is not None])

    if not val_history:  # a finished run resumed: nothing left to do
        run_eval(num_steps)
    final = val_history[-1]
    chosen = best if ((cfg.keep_best or cfg.select_best) and best) else final
    consumed = getattr(sampler, "tokens_consumed", None)
    tokens = dict(consumed) if consumed else {d: int(t) for d, t in zip(domains, seen_tokens)}
    timings["total_s"] = time.perf_counter() - t_start
    timings["tokens_per_s"] = (timings["timed_steps"] * batch_tokens / timings["train_s"]
                               if timings["train_s"] else None)
    result = {
        "tokens": tokens,
        "loss_tokens": {d: int(t) for d, t in zip(domains, loss_tokens)},
        "val_loss": chosen["val_loss"],
        "val_loss_step": chosen["step"],
        "final_val_loss": final["val_loss"],
        "val_history": val_history,
        "steps": num_steps,
        "budget_tokens": int(budget_tokens),
        "domains": domains,
        "data": data_signature(data),
        "weights": dict(zip(domains, initial_weights)),
        "final_weights": {d: float(w) for d, w in zip(domains, np.asarray(sampler.weights))},
        "config": cfg.to_dict(),
        "model": mcfg.to_dict(),
        "num_params": mcfg.num_params(),
        "devices": {"count": len(mesh.devices.flat), "platform": mesh.devices.flat[0].platform,
                    "mesh": dict(mesh.shape)},
        "timings": timings,
    }
    for cb in callbacks:
        cb.on_train_end(ctx, result)
    if out is not None and jax.process_index() == 0:
        write_json_atomic(out / "result.json", json.loads(json.dumps(result, default=float),
                                                    parse_constant=lambda c: None))
    return result


def export_hf(run_dir: str | os.PathLike, out: str | os.PathLike, dtype: str = "float32"):
    """Write a run's best (else latest) checkpoint as a Hugging Face directory."""
    from mixjax.model.config import ModelConfig
    from mixjax.model.hf import save_hf
    from mixjax.train import mesh as meshlib
    from mixjax.train.checkpoint import read_meta, restore_params
    from mixjax.train.step import Stepper, StepConfig

    mcfg = ModelConfig.from_dict(read_meta(run_dir)["model"])
    st = Stepper(StepConfig(mcfg, 1, 2, 1), meshlib.make_mesh(None, __import__("jax").devices()[:1]))
    params, _ = restore_params(run_dir, st.abstract_params, st.param_shardings)
    return save_hf(st.merge(params), out, dtype)
