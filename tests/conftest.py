"""Shared test set-up: 8 fake CPU devices so sharded and single-device runs can be compared, and one
on-disk JAX compilation cache for the whole session (its subprocesses included: the experiments, the
CLI and the notebook compile the same small steps and fits again), kept apart from the user's own
~/.cache/mixjax/jax and removed at the end."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "MIXJAX_JAX_CACHE" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="mixjax-tests-jax-cache-")
    os.environ["MIXJAX_JAX_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
if os.environ["MIXJAX_JAX_CACHE"]:  # empty: the cache off, as for the commands
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["MIXJAX_JAX_CACHE"])
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
