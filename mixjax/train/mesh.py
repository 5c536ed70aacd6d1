"""Device mesh (data, fsdp, tensor), parameter and batch shardings, multi-host start-up.

Axes are `Auto`: the train step gets explicit in/out shardings for its state and batch and XLA's
sharding propagation places the intermediate values. (Explicit axes would need an out_sharding on
every einsum of the model; Auto keeps the model free of mesh code.)

Multi-host: under SLURM with more than one task, `jax.distributed.initialize()` finds the job by
itself. Anywhere else set JAX_COORDINATOR_ADDRESS=host:port (process 0's), MIXJAX_NUM_PROCESSES
and MIXJAX_PROCESS_ID in every process (MIXJAX_DISTRIBUTED=0 turns it off). Every process runs the
same command and the mesh spans all processes' devices (tested with two CPU processes).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from mixjax.errors import MixjaxError

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

_distributed_done = False


def maybe_initialize_distributed() -> bool:
    """Call `jax.distributed.initialize()` once when launched as a multi-process job."""
    global _distributed_done
    if _distributed_done:
        return True
    env = os.environ
    want = env.get("MIXJAX_DISTRIBUTED", "").lower() in ("1", "true", "yes") \
        or int(env.get("SLURM_NTASKS", "1") or 1) > 1 or "JAX_COORDINATOR_ADDRESS" in env
    if want and env.get("MIXJAX_DISTRIBUTED", "").lower() not in ("0", "false", "no"):
        explicit = {}
        for key, name in (("num_processes", "MIXJAX_NUM_PROCESSES"), ("process_id", "MIXJAX_PROCESS_ID")):
            if env.get(name):
                try:
                    explicit[key] = int(env[name])
                except ValueError:
                    raise MixjaxError(f"{name}: expected an integer, got {env[name]!r}") from None
        jax.distributed.initialize(**explicit)
        _distributed_done = True
    return _distributed_done


def make_mesh(shape: tuple[int, int, int] | None = None, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh. `shape` may hold one -1 (the rest); default: all data."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    shape = list(shape or (-1, 1, 1))
    if shape.count(-1) > 1:
        raise MixjaxError(f"mesh shape {tuple(shape)}: at most one -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if n % known:
            raise MixjaxError(f"mesh shape {tuple(shape)} does not divide {n} devices")
        shape[shape.index(-1)] = n // known
    if int(np.prod(shape)) != n:
        raise MixjaxError(f"mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices, have {n}")
    return jax.make_mesh(tuple(shape), AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def fit_spec(shape, spec: P, mesh: Mesh) -> P:
    """Drop mesh axes that do not divide their dimension (e.g. 2 kv heads over 4-way tensor)."""
    out = []
    for dim, ax in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (ax,) if isinstance(ax, str) else tuple(ax or ())
        size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
        out.append(ax if names and dim % size == 0 else None)
    return P(*out)


def shardings_for(abstract_tree, spec_tree, mesh: Mesh):
    return jax.tree.map(lambda a, s: NamedSharding(mesh, fit_spec(a.shape, s, mesh)),
                        abstract_tree, spec_tree, is_leaf=lambda x: isinstance(x, P))


def abstract_arrays(tree, shardings):
    """`tree`'s arrays (or shape/dtype structs) as ShapeDtypeStructs carrying `shardings`: what
    a restore or an ahead-of-time compile needs, with nothing allocated."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES, None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_divisor(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]
