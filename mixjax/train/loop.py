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

from mixjax.errors import MixjaxError, about
from mixjax.io import write_json_atomic
from mixjax.train.config import TrainConfig
from mixjax.train.draw_ahead import DrawAhead
from mixjax.train.evaluate import RUN_DEFAULT, Evaluator, mean_losses, per_domain
from mixjax.train.run_dir import data_signature, open_run_dir


@dataclasses.dataclass
class StepInfo:
    """What a step reports. Per-domain dicts have NaN for domains with no target in the batch."""

    steps_done: int                      # steps done, this one included (1 after the first step)
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
    steps_done: int = 0
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

    def on_train_end(self, ctx: RunContext, result: dict) -> dict | None:
        """What this callback adds to the result (a dict of new keys), or None; `result` is to read."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def check_vocabulary(cfg: TrainConfig, model_vocab: int, data_vocab: int | None, tokenizer: dict | None) -> None:
    """A model whose vocabulary is far larger than the data's tokenizer's (more than max(1024, 5%)
    over: real models pad theirs by a few hundred at most) was made for another tokenizer: a random
    494M Qwen on byte-level data trains, slowly, on nothing it knows. One line, before any work."""
    if data_vocab is None or model_vocab - data_vocab <= max(1024, 0.05 * model_vocab):
        return
    setting = "`model`" if cfg.model is not None else "`init`"
    name = cfg.model if cfg.model is not None else cfg.init
    kind = "the byte-level tokenizer" if (tokenizer or {}).get("kind") == "byte" else "a tokenizer"
    raise MixjaxError(f"{setting} {name}: its vocabulary has {model_vocab:,} tokens but the data was prepared "
                      f"with {kind} of {data_vocab:,}; prepare the data with the model's tokenizer "
                      "(mixjax prepare --tokenizer HF_DIR) or train a preset that takes the data's "
                      "vocabulary (tiny, small, base, 1b)")


def resolve_model_config(cfg: TrainConfig, vocab_size: int | None, tokenizer: dict | None = None):
    """(ModelConfig, where its weights come from: ('hf', dir) | ('ckpt', dir) | None). `tokenizer`:
    the prepared data's tokenizer spec (its manifest's), for the error of a mismatched vocabulary."""
    from mixjax.model import get_config, is_hf_dir, load_hf_config
    from mixjax.train.checkpoint import read_meta
    from mixjax.model.config import ModelConfig

    init_cfg, init_src = None, None
    if cfg.init:
        if not Path(cfg.init).exists():
            raise MixjaxError(f"`init`: {cfg.init} does not exist")
        if is_hf_dir(cfg.init):
            init_cfg, init_src = load_hf_config(cfg.init), ("hf", cfg.init)
        else:
            with about("init"):
                init_cfg, init_src = ModelConfig.from_dict(read_meta(cfg.init)["model"]), ("ckpt", cfg.init)
    if cfg.model is None:
        mcfg = init_cfg or get_config("tiny", vocab_size)
    elif Path(cfg.model).is_dir() or "/" in cfg.model:
        if not is_hf_dir(cfg.model):
            raise MixjaxError(f"`model`: {cfg.model} is neither a preset nor a Hugging Face directory")
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
            raise MixjaxError(f"`init` {cfg.init}: model config does not match `model`: "
                              + ", ".join(f"{k}={getattr(init_cfg, k)} vs {getattr(mcfg, k)}" for k in diff))
    if vocab_size is not None and vocab_size > mcfg.vocab_size:
        raise MixjaxError(f"model vocab_size {mcfg.vocab_size} is smaller than the data's {vocab_size} "
                          f"(prepare the data with the model's tokenizer)")
    check_vocabulary(cfg, mcfg.vocab_size, vocab_size, tokenizer)
    return mcfg, init_src


_NOTED: "weakref.WeakKeyDictionary[Any, set]" = weakref.WeakKeyDictionary()  # data -> seq_lens noted


def note_late_responses(data, seq_len: int) -> None:
    """Say once per data and row length, before training, which domains have responses starting
    after the row (trained and evaluated cut from their prompts), with their counts."""
    from mixjax.data.prepare import late_response_note, late_responses

    if not hasattr(data, "manifest"):  # not prepared data (a test's stand-in)
        return
    try:
        noted = _NOTED.setdefault(data, set())
    except TypeError:
        noted = set()
    if seq_len not in noted:
        noted.add(seq_len)
        note = late_response_note(late_responses(data, seq_len), seq_len)
        if note:
            print(note, file=sys.stderr, flush=True)


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
    """Train one model on the mixture `weights` (a `Mixture`, taken as it is; or a dict domain ->
    weight or an array in domain order, which `Mixture.of` checks and normalises) of the prepared
    `data` for `budget_tokens` tokens (`config.run_steps` whole steps). Returns (and writes to out_dir/result.json)
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


@dataclasses.dataclass
class _Record:
    """What a run accumulates, checkpointed with it: tokens seen and trained on per domain, the
    evaluations, the best one, timings and the weights it started at."""

    initial_weights: list[float]
    loss_tokens: np.ndarray
    seen_tokens: np.ndarray
    val_history: list[dict] = dataclasses.field(default_factory=list)
    best: dict | None = None
    timings: dict = dataclasses.field(default_factory=lambda: {"train_s": 0.0, "timed_steps": 0, "eval_s": 0.0,
                                                               "first_step_s": None})

    @classmethod
    def start(cls, meta: dict | None, num_domains: int, initial_weights: list[float]) -> "_Record":
        if not meta:
            return cls(initial_weights, np.zeros(num_domains, np.int64), np.zeros(num_domains, np.int64))
        return cls(meta["initial_weights"], np.asarray(meta["loss_tokens"], np.int64),
                   np.asarray(meta["seen_tokens"], np.int64), list(meta["val_history"]), meta.get("best"),
                   dict(meta["timings"]))

    def time_step(self, first: bool, seconds: float) -> None:
        if first:  # includes compilation (unless cached in this process)
            self.timings["first_step_s"] = (self.timings["first_step_s"] or 0.0) + seconds
        else:
            self.timings["train_s"] += seconds
            self.timings["timed_steps"] += 1

    def meta(self) -> dict:
        return {"loss_tokens": self.loss_tokens.tolist(), "seen_tokens": self.seen_tokens.tolist(),
                "val_history": self.val_history, "best": self.best, "timings": self.timings,
                "initial_weights": self.initial_weights}


def _start_state(stepper, run_dir, cfg, mcfg, init_src, sampler, callbacks):
    """(train state, checkpoint meta or None): resumed from RUN_DIR's checkpoint, else from `init`
    (a Hugging Face directory or another run's parameters), else freshly initialised."""
    from mixjax.model import load_hf
    from mixjax.train.checkpoint import restore_params

    if run_dir.resume_step is not None:
        state, meta = run_dir.ckpt.restore(run_dir.resume_step, stepper.abstract_state, stepper.state_shardings)
        sampler.load_state_dict(meta["sampler"])
        for cb, s in zip(callbacks, meta.get("callbacks", [])):
            cb.load_state_dict(s)
        return state, meta
    if init_src is None:
        params = stepper.init_params(cfg.seed)
    elif init_src[0] == "hf":
        params = stepper.params_from_model(load_hf(init_src[1], expect=mcfg))
    else:
        with about("init"):
            params, _ = restore_params(init_src[1], stepper.abstract_params, stepper.param_shardings)
    return stepper.init_state(params), None


def _checked_loss_weights(ctx: RunContext, stepper) -> np.ndarray:
    """The loss weights a callback set (zeros = the token mean), checked."""
    if ctx.loss_weights is None:
        return stepper.no_loss_weights()
    w = np.asarray(ctx.loss_weights, np.float32)
    if w.shape != (len(ctx.domains),) or not np.all(np.isfinite(w)) or w.min() < 0 or not w.sum() > 0:
        raise MixjaxError(f"loss weights must be {len(ctx.domains)} non-negative numbers with a positive sum, "
                          f"got {w.tolist()}")
    return w


def _step_info(step, m, batch, device_batch, lr, domains) -> StepInfo:
    tpd = np.asarray(batch.tokens_per_domain, np.int64)
    return StepInfo(steps_done=step + 1, loss=float(m["loss"]),
                    train_loss=per_domain(m["domain_loss_sum"], m["domain_count"], domains),
                    loss_counts={d: int(c) for d, c in zip(domains, m["domain_count"])},
                    tokens_per_domain={d: int(t) for d, t in zip(domains, tpd)},
                    lr=lr, grad_norm=float(m["grad_norm"]), batch=device_batch)


def selection_batches(cfg: TrainConfig) -> int | None:
    """The validation batches per domain that pick a run's best evaluation when they are fewer than
    the reported loss's (`select_max_batches` < `eval_max_batches`, with select_best or keep_best),
    else None: every evaluation is then on the run's eval_max_batches."""
    subset = cfg.select_max_batches
    if not (cfg.select_best or cfg.keep_best) or subset is None:
        return None
    return subset if cfg.eval_max_batches is None or subset < cfg.eval_max_batches else None


def _host_copy(params):
    """A copy of the parameters that the next (donating) step cannot overwrite: on the host when this
    process holds all of them, else on the devices."""
    import jax

    if all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(params)):
        return jax.tree.map(lambda x: np.array(x, copy=True), params)
    return jax.tree.map(lambda x: x.copy(), params)


class _Run:
    """One run's moving parts after set-up: the state, the record, evaluation, checkpoints."""

    def __init__(self, cfg, mcfg, data, budget_tokens, stepper, sampler, callbacks, run_dir, state,
                 record, evaluator, ctx, metrics, start_step: int):
        self.cfg, self.mcfg, self.data, self.budget_tokens = cfg, mcfg, data, budget_tokens
        self.start_step = start_step
        self.stepper, self.sampler, self.callbacks, self.run_dir = stepper, sampler, callbacks, run_dir
        self.state, self.record, self.evaluator, self.ctx = state, record, evaluator, ctx
        self.metrics, self.draws = metrics, DrawAhead(sampler)
        self.subset = selection_batches(cfg)  # the selection's batches per domain (None: the run's own)
        self.best_params = None               # with a subset: the best evaluation's parameters (a copy)
        self.best_sums = None                 # and its batches' (loss sum, count): the report reuses them
        self.reported = None                  # with a subset: the picked parameters on eval_max_batches

    def evaluate_and_report(self, step: int) -> dict:
        """Evaluate (on the selection's subset when there is one), log, tell the callbacks, and keep
        the best evaluation (its parameters with a subset; its checkpoint with keep_best)."""
        t0 = time.perf_counter()
        sums = self.evaluator.batch_sums(max_batches=self.subset or RUN_DEFAULT)
        val = mean_losses(sums)
        self.record.timings["eval_s"] += time.perf_counter() - t0
        rec = {"step": step, "val_loss": val, "val_loss_mean": float(np.mean(list(val.values())))}
        self.record.val_history.append(rec)
        self.metrics.write(rec)
        for cb in self.callbacks:
            cb.on_eval(self.ctx, step, val)
        best_ckpt = self.run_dir.best_ckpt
        if (best_ckpt is not None or self.cfg.select_best) and (
                self.record.best is None or rec["val_loss_mean"] < self.record.best["val_loss_mean"]):
            self.record.best = rec
            if self.subset:
                self.best_params, self.best_sums = _host_copy(self.state["params"]), sums
            if best_ckpt is not None:
                best_ckpt.save(step, {"params": self.state["params"]},
                               {"step": step, "model": self.mcfg.to_dict(), "val_loss": val,
                                "config": self.cfg.to_dict()})
        return val

    def evaluate_selected(self, num_steps: int) -> None:
        """With a selection subset: the picked evaluation's parameters on the run's eval_max_batches,
        once (the reported loss). A run resumed after its pick has lost those parameters (they are
        not checkpointed): it reports the selection's own evaluation, and says so."""
        import jax

        best = self.record.best
        if not self.subset or best is None:
            return
        params = self.best_params
        if params is None and best["step"] == num_steps:
            params = self.state["params"]
        if params is None:
            print(f"note: resumed after step {best['step']}, whose evaluation was the best: its parameters "
                  f"are gone, so the reported loss is that evaluation's ({self.subset} batches per domain)",
                  file=sys.stderr)
            return
        t0 = time.perf_counter()
        # the subset's batches lead the split's and were evaluated with these parameters: only the rest run
        done = self.best_sums if self.best_params is not None else {}
        rest = self.evaluator.batch_sums(params=jax.device_put(params, self.stepper.param_shardings),
                                         skip={d: len(pairs) for d, pairs in done.items()})
        val = mean_losses({d: done.get(d, []) + pairs for d, pairs in rest.items()})
        seconds = time.perf_counter() - t0
        self.record.timings["eval_s"] += seconds
        self.record.timings["report_eval_s"] = seconds
        self.reported = {"step": best["step"], "val_loss": val, "val_loss_mean": float(np.mean(list(val.values())))}
        self.metrics.write({**self.reported, "selected": True})

    def save(self, step: int) -> None:
        meta = {"step": step, "sampler": self.draws.sampler_state(),
                "callbacks": [cb.state_dict() for cb in self.callbacks], **self.record.meta(),
                "model": self.mcfg.to_dict(), "config": self.cfg.to_dict(), "budget_tokens": int(self.budget_tokens),
                "data": data_signature(self.data),
                "loss_weights": None if self.ctx.loss_weights is None else np.asarray(self.ctx.loss_weights).tolist()}
        self.run_dir.ckpt.save(step, self.state, json.loads(json.dumps(meta, default=float)))

    def step(self, step: int, num_steps: int, lr: float, progress) -> None:
        """Train one step, then report it: metrics, callbacks, evaluation, checkpoint."""
        import jax

        t0 = time.perf_counter()
        batch = self.draws.take()
        device_batch = self.stepper.put_batch(batch)
        self.state, m = self.stepper.train_step(self.state, device_batch, np.float32(lr),
                                                _checked_loss_weights(self.ctx, self.stepper))
        self.draws.draw_next(more_steps=step + 1 < num_steps)
        m = jax.device_get(m)
        dt = time.perf_counter() - t0
        self.record.time_step(step == self.start_step, dt)
        if not math.isfinite(float(m["loss"])):
            raise MixjaxError(f"training diverged at step {step + 1} (loss {float(m['loss'])}); lower `lr`")
        self.record.seen_tokens += np.asarray(batch.tokens_per_domain, np.int64)
        self.record.loss_tokens += np.asarray(batch.loss_tokens_per_domain, np.int64)
        info = _step_info(step, m, batch, device_batch, lr, self.ctx.domains)
        self.ctx.steps_done, self.ctx.params = step + 1, self.state["params"]
        self.metrics.write({"step": step + 1, "loss": info.loss, "train_loss": info.train_loss, "lr": lr,
                            "grad_norm": info.grad_norm, "tokens": int(self.record.seen_tokens.sum()),
                            "weights": [float(w) for w in np.asarray(self.sampler.weights)],
                            **({} if self.ctx.loss_weights is None else
                               {"loss_weights": [float(w) for w in np.asarray(self.ctx.loss_weights)]})})
        progress.update(info.loss, self.cfg.batch_tokens / dt)
        for cb in self.callbacks:
            cb.on_step(self.ctx, info)
        last = step + 1 == num_steps
        if last or (self.cfg.eval_every and (step + 1) % self.cfg.eval_every == 0):
            self.evaluate_and_report(step + 1)
        self.draws.after_callbacks()
        if self.run_dir.ckpt is not None and (last or (step + 1) % self.cfg.checkpoint_every == 0):
            self.save(step + 1)


def _result(run: _Run, num_steps: int, domains, mesh, t_start: float) -> dict:
    """The run's result.json: the chosen evaluation (the best with keep_best/select_best, else
    the final), tokens, settings, devices and timings; callbacks add their own keys."""
    cfg, record, sampler = run.cfg, run.record, run.sampler
    final = record.val_history[-1]
    chosen = record.best if ((cfg.keep_best or cfg.select_best) and record.best) else final
    picked_on_subset = run.subset and run.reported is None  # resumed after the pick: its own evaluation
    consumed = getattr(sampler, "tokens_consumed", None)
    timings = record.timings
    timings["total_s"] = time.perf_counter() - t_start
    timings["tokens_per_s"] = (timings["timed_steps"] * cfg.batch_tokens / timings["train_s"]
                               if timings["train_s"] else None)
    return {
        "tokens": dict(consumed) if consumed else {d: int(t) for d, t in zip(domains, record.seen_tokens)},
        **({"unique_tokens": sampler.unique_tokens} if getattr(sampler, "train_subset", 1.0) < 1 else {}),
        "loss_tokens": {d: int(t) for d, t in zip(domains, record.loss_tokens)},
        "val_loss": (run.reported or chosen)["val_loss"],
        "val_loss_step": chosen["step"],
        "val_loss_batches": run.subset if picked_on_subset else cfg.eval_max_batches,  # per domain; None: all
        **({"selection": {"max_batches": run.subset, "val_loss": chosen["val_loss"]}} if run.subset else {}),
        "final_val_loss": final["val_loss"],
        "val_history": record.val_history,
        "steps": num_steps,
        "budget_tokens": int(run.budget_tokens),
        "domains": domains,
        "data": data_signature(run.data),
        "weights": dict(zip(domains, record.initial_weights)),
        "final_weights": {d: float(w) for d, w in zip(domains, np.asarray(sampler.weights))},
        "config": cfg.to_dict(),
        "model": run.mcfg.to_dict(),
        "num_params": run.mcfg.num_params(),
        "devices": {"count": len(mesh.devices.flat), "platform": mesh.devices.flat[0].platform,
                    "mesh": dict(mesh.shape)},
        "timings": timings,
    }


def _run_training(config: TrainConfig, data, weights, budget_tokens: int, *, out_dir, callbacks, sampler,
                  validation_fn, devices, check_result) -> dict:
    import jax

    from mixjax.train import mesh as meshlib
    from mixjax.train.metrics import MetricsWriter, Progress
    from mixjax.train.optim import learning_rates
    from mixjax.train.step import StepConfig, get_stepper

    t_start, cfg, domains = time.perf_counter(), config, list(data.domains)
    meshlib.maybe_initialize_distributed()
    mcfg, init_src = resolve_model_config(cfg, getattr(data, "vocab_size", None),
                                          getattr(data, "manifest", {}).get("tokenizer"))
    num_steps = cfg.run_steps(budget_tokens)
    if sampler is None:
        from mixjax.data.sampler import MixtureSampler
        sampler = MixtureSampler(data, weights, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                                 num_steps=num_steps, seed=cfg.seed, max_epochs=cfg.max_epochs,
                                 train_subset=cfg.train_subset)
    if validation_fn is None:
        from mixjax.data.sampler import validation_batches as validation_fn
    note_late_responses(data, cfg.seq_len)
    initial_weights = [float(w) for w in np.asarray(sampler.weights)]
    mesh = meshlib.make_mesh(cfg.mesh_shape, devices)
    stepper = get_stepper(StepConfig.of(cfg, mcfg, len(domains)), mesh)
    evaluator = Evaluator(stepper, data, domains, cfg.batch_size, cfg.seq_len, cfg.eval_max_batches, validation_fn,
                          current_params=lambda: ctx.params)
    evaluator.check_measurable(selection_batches(cfg) or RUN_DEFAULT)  # before any folder or step
    run_dir = open_run_dir(out_dir, cfg, mcfg, data, initial_weights, budget_tokens, num_steps, check_result, _close_all)
    try:
        state, meta = _start_state(stepper, run_dir, cfg, mcfg, init_src, sampler, callbacks)
        start_step = run_dir.resume_step if meta else 0
        metrics = MetricsWriter(run_dir.out / "metrics.jsonl" if run_dir.out is not None and jax.process_index() == 0
                                else None, resume_step=start_step if meta else None)
    except BaseException:
        _close_all(run_dir.closers())
        raise
    ctx = RunContext(sampler=sampler, domains=domains, num_steps=num_steps, config=cfg, evaluate=None,
                     steps_done=start_step, stepper=stepper, params=state["params"],
                     loss_weights=None if not meta or meta.get("loss_weights") is None
                     else np.asarray(meta["loss_weights"], np.float64))
    ctx.evaluate, ctx.domain_losses, ctx.validation_arrays = evaluator.evaluate, evaluator.domain_losses, evaluator.arrays
    run = _Run(cfg, mcfg, data, budget_tokens, stepper, sampler, callbacks, run_dir, state,
               _Record.start(meta, len(domains), initial_weights), evaluator, ctx, metrics, start_step)
    if not meta:
        for cb in callbacks:
            cb.on_train_start(ctx)
    warmup = int(cfg.warmup * num_steps) if cfg.warmup < 1 else int(cfg.warmup)
    progress = Progress(num_steps, start_step, enabled=cfg.progress and jax.process_index() == 0)
    lrs = learning_rates(num_steps, cfg.lr, cfg.schedule, warmup, cfg.final_lr_ratio)
    try:
        for step in range(start_step, num_steps):
            run.step(step, num_steps, float(lrs[step]), progress)
        if not run.record.val_history:  # a finished run resumed: nothing left to do
            run.evaluate_and_report(num_steps)
        run.evaluate_selected(num_steps)
    finally:
        _close_all([progress.close, metrics.close] + run_dir.closers())
    result = _result(run, num_steps, domains, mesh, t_start)
    for cb in callbacks:
        added = cb.on_train_end(ctx, result)
        if added:
            result.update(added)
    if run_dir.out is not None and jax.process_index() == 0:
        write_json_atomic(run_dir.out / "result.json", json.loads(json.dumps(result, default=float),
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
    st = Stepper(StepConfig(mcfg, batch_size=1, seq_len=2, num_domains=1), meshlib.make_mesh(None, __import__("jax").devices()[:1]))
    params, _ = restore_params(run_dir, st.abstract_params, st.param_shardings)
    return save_hf(st.merge(params), out, dtype)
