"""The compiled steps kept on disk between processes."""

from __future__ import annotations

import os

import jax


def enable_compilation_cache() -> None:
    """Keep compiled steps on disk (MIXJAX_JAX_CACHE, default ~/.cache/mixjax/jax; empty = off),
    so repeated `mixjax train` runs of one shape skip most of the compilation."""
    path = os.environ.get("MIXJAX_JAX_CACHE", os.path.expanduser("~/.cache/mixjax/jax"))
    if path and not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
