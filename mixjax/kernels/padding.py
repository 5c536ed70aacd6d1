"""Padding the sequence axis up to a kernel's tile: shared by the blockwise, Pallas and cuDNN paths."""

from __future__ import annotations

import jax.numpy as jnp


def pad_to(x, length: int, value=0):
    """Pad axis 1 of x up to `length`."""
    extra = length - x.shape[1]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def round_up(n: int, m: int) -> int:
    """The least multiple of m that is >= n."""
    return -(-n // m) * m
