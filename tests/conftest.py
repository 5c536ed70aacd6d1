"""Shared test set-up: 8 fake CPU devices so sharded and single-device runs can be compared."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
