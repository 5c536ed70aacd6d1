"""AdamW with clipping, and learning-rate schedules (optax's) computed on the host.

The learning rate is an input of the jitted step (not baked into the optimizer), so runs with
different budgets, schedules or peak rates reuse one compiled step.
"""

from __future__ import annotations

import jax
import numpy as np
import optax

from mixjax.errors import MixjaxError
from mixjax.train.config import SCHEDULES


def schedule(num_steps: int, peak: float, schedule: str, warmup_steps: int, final_ratio: float) -> optax.Schedule:
    """optax's schedule of a run: linear warm-up to `peak` (step k at peak (k + 1) / warmup_steps),
    then cosine or linear decay to `final_ratio * peak` at `num_steps`, or constant."""
    if schedule not in SCHEDULES:
        raise MixjaxError(f"unknown `schedule` {schedule!r} ({', '.join(SCHEDULES)})")
    decay = max(num_steps - warmup_steps, 1)
    after = {"constant": optax.constant_schedule(peak),
             "cosine": optax.cosine_decay_schedule(peak, decay, alpha=final_ratio),
             "linear": optax.linear_schedule(peak, final_ratio * peak, decay)}[schedule]
    if warmup_steps <= 0:
        return after
    warm = optax.linear_schedule(peak / warmup_steps, peak, max(warmup_steps - 1, 1))
    return optax.join_schedules([warm, after], [warmup_steps])


def learning_rates(num_steps: int, peak: float, schedule_name: str, warmup_steps: int,
                   final_ratio: float) -> np.ndarray:
    """The learning rate of every step of a run (float64 [num_steps]), computed once on the host in
    double precision, so the loop does no per-step work for it."""
    with jax.enable_x64(True):
        steps = np.arange(num_steps, dtype=np.int64)
        rates = schedule(num_steps, peak, schedule_name, warmup_steps, final_ratio)(steps)
        return np.broadcast_to(np.asarray(rates, np.float64), steps.shape).copy()  # a constant is one number


def learning_rate(step: int, num_steps: int, peak: float, schedule_name: str, warmup_steps: int,
                  final_ratio: float) -> float:
    """The learning rate of one (0-based) step (see `learning_rates`)."""
    with jax.enable_x64(True):
        return float(schedule(num_steps, peak, schedule_name, warmup_steps, final_ratio)(step))


def decay_mask(params):
    """Weight decay on matrices only, not on norms or biases. By name, since shapes do not tell:
    the decoder's layer parameters carry a leading layer axis and its biases are [heads, head_dim]."""
    def decayed(path, p):
        names = [str(getattr(k, "key", k)) for k in path]
        return p.ndim >= 2 and not any("norm" in n or "bias" in n for n in names)

    return jax.tree_util.tree_map_with_path(decayed, params)


def adamw_direction(b1: float, b2: float, eps: float, weight_decay: float,
                    clip_norm: float | None) -> optax.GradientTransformation:
    """AdamW without the learning rate: the step applies `params - lr * direction` (the settings'
    defaults: TrainConfig's; clip_norm None or 0: no clipping)."""
    parts = []
    if clip_norm:
        parts.append(optax.clip_by_global_norm(clip_norm))
    parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
    return optax.chain(*parts)
