"""What the code being traced targets: the backend (this machine's, or another's under
`lowering_for`) and the mesh. Kernels and layers that take a backend-specific form ask here."""

from __future__ import annotations

import contextlib
import math

import jax

# The platform being traced for when it is not the one running (`lowering_for`).
_TARGET_PLATFORM: str | None = None


def target_backend() -> str:
    """The backend the code being traced will run on: `jax.default_backend()`, or the platform
    of an enclosing `lowering_for`. Code that takes a backend-specific form asks this."""
    return _TARGET_PLATFORM or jax.default_backend()


@contextlib.contextmanager
def lowering_for(platform: str):
    """Trace for `platform` ("gpu" or "tpu") on this machine, for `jax.export.export(...,
    platforms=["cuda"|"tpu"])`: the model takes that backend's forms and Pallas kernels lower
    for it (not interpreted). A jitted function traced before, for this backend, keeps its
    cached trace: export a fresh one."""
    global _TARGET_PLATFORM
    if platform not in ("gpu", "tpu", "cpu"):
        raise ValueError(f"lowering_for: platform {platform!r} (gpu, tpu or cpu)")
    previous, _TARGET_PLATFORM = _TARGET_PLATFORM, platform
    try:
        yield
    finally:
        _TARGET_PLATFORM = previous


def traced_mesh_batch_axes(n_rows: int):
    """(the mesh sizes by axis name, the batch axes ("data", "fsdp") of size > 1 that split
    `n_rows` rows) for the mesh the caller traces under; (None, ()) with no mesh or one device.
    The batch axes are () when they do not divide `n_rows`."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return None, ()
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    axes = tuple(a for a in ("data", "fsdp") if sizes.get(a, 1) > 1)
    return sizes, (axes if n_rows % math.prod(sizes[a] for a in axes) == 0 else ())
