"""Keep freed host memory for reuse, so XLA's CPU backend does not page-fault its buffers every step.

XLA on the CPU allocates each execution's temporary buffers in one block (212 MB for the `tiny`
train step at 16x256, 726 MB for `small`, by strace) from a pool thread. glibc serves a block that
large with a fresh mmap and returns it with munmap, so every step the kernel zero-fills and maps
every page again: 53,000 page faults per `tiny` step, about a quarter of its time. Told to keep
large blocks in one heap (no mmap, no trimming, one arena shared by all threads), glibc hands the
same memory back each step. See benchmarks/bench_train.py for the speed with and without it.

It must run before JAX starts its CPU client, since threads keep the arena they first used, so
`import mixjax` applies it. It is skipped where a JAX accelerator plugin is installed or
JAX_PLATFORMS names another platform (there the host memory held after a large free would be a
cost with no gain), and off glibc. MIXJAX_MALLOC_TUNING=0 leaves malloc alone, =1 forces it.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import pkgutil

ENV = "MIXJAX_MALLOC_TUNING"

# mallopt(3) parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_applied = False


def _glibc():
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return None
        return ctypes.CDLL("libc.so.6")
    except (ValueError, OSError, AttributeError):
        return None


def accelerator_plugin_installed() -> bool:
    """Whether JAX may pick a GPU/TPU backend here (installed PJRT plugin or libtpu)."""
    if importlib.metadata.entry_points(group="jax_plugins"):
        return True
    spec = importlib.util.find_spec("jax_plugins")
    if spec is not None and spec.submodule_search_locations:
        if any(True for _ in pkgutil.iter_modules(list(spec.submodule_search_locations))):
            return True
    return importlib.util.find_spec("libtpu") is not None


def wanted() -> bool:
    setting = os.environ.get(ENV, "auto").strip().lower()
    if setting in ("0", "false", "no", "off"):
        return False
    if setting in ("1", "true", "yes", "on"):
        return True
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0] == "cpu"
    return not accelerator_plugin_installed()


def reuse_freed_memory() -> bool:
    """Apply the malloc settings once if wanted here; return whether they are in force."""
    global _applied
    if _applied:
        return True
    if not wanted():
        return False
    libc = _glibc()
    if libc is None:
        return False
    # mallopt(3): M_MMAP_MAX=0 serves large blocks from the heap, M_TRIM_THRESHOLD=-1 never
    # returns its top to the system, M_ARENA_MAX=1 shares one heap between all threads
    ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, -1) == 1
    ok &= libc.mallopt(_M_ARENA_MAX, 1) == 1
    _applied = bool(ok)
    return _applied


def applied() -> bool:
    return _applied
