"""AdamW with clipping, and learning-rate schedules computed on the host.

The learning rate is an input of the jitted step (not baked into the optimizer), so runs with
different budgets, schedules or peak rates reuse one compiled step.
"""

from __future__ import annotations

import math

import jax
import optax

from mixjax.errors import MixjaxError

SCHEDULES = ("cosine", "linear", "constant")


def learning_rate(step: int, num_steps: int, peak: float, schedule: str = "cosine",
                  warmup_steps: int = 0, final_ratio: float = 0.1) -> float:
    """Learning rate for (0-based) `step`: linear warm-up to `peak`, then cosine/linear decay to
    `final_ratio * peak` at `num_steps`, or constant."""
    if schedule not in SCHEDULES:
        raise MixjaxError(f"unknown --schedule {schedule!r} ({', '.join(SCHEDULES)})")
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if schedule == "constant":
        return peak
    decay = max(num_steps - warmup_steps, 1)
    t = min(max(step - warmup_steps, 0) / decay, 1.0)
    end = final_ratio * peak
    if schedule == "cosine":
        return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * t))
    return peak + (end - peak) * t


def decay_mask(params):
    """Weight decay on matrices only, not on norms or biases. By name, since shapes do not tell:
    the decoder's layer parameters carry a leading layer axis and its biases are [heads, head_dim]."""
    def decayed(path, p):
        names = [str(getattr(k, "key", k)) for k in path]
        return p.ndim >= 2 and not any("norm" in n or "bias" in n for n in names)

    return jax.tree_util.tree_map_with_path(decayed, params)


def adamw_direction(b1: float = 0.9, b2: float = 0.95, eps: float = 1e-8, weight_decay: float = 0.0,
                    clip_norm: float | None = 1.0) -> optax.GradientTransformation:
    """AdamW without the learning rate: the step applies `params - lr * direction`."""
    parts = []
    if clip_norm:
        parts.append(optax.clip_by_global_norm(clip_norm))
    parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
    return optax.chain(*parts)
