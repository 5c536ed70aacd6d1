"""Device mesh (data, fsdp, tensor), parameter and batch shardings, multi-host start-up.

Axes are `Auto`: the train step gets explicit in/out shardings for its state and batch and XLA's
sharding propagation places the intermediate values. (Explicit axes would need an out_sharding on
every einsum of the model; Auto keeps the model free of mesh code.)

Multi-host: under SLURM with more than one task, `jax.distributed.initialize()` finds the job by
itself. Anywhere else set JAX_COORDINATOR_ADDRESS=host:port (process 0's), MIXJAX_NUM_PROCESSES
and MIXJAX_PROCESS_ID in every process (MIXJAX_DISTRIBUTED=0 turns it off). Every process runs the
same command and the mesh spans all processes' devices, its data axis across processes and fsdp and
tensor within each (`hybrid_device_grid`; tested with two CPU processes).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from mixjax.errors import MixjaxError
from mixjax.train.config import resolve_mesh

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


# XLA's GPU flags for training a scanned, FSDP-sharded transformer, from maxtext's H100 (A3) recipes
# (MaxText/configs/a3/llama_2_7b/*.sh; NVIDIA JAX-Toolbox's GPU_performance.md explains each), less
# the flags this jaxlib no longer has (xla_gpu_graph_level, xla_gpu_enable_triton_softmax_fusion:
# an unknown flag is fatal) and the dump flags. What they do:
GPU_XLA_FLAGS = (
    # overlap communication with computation: schedule collectives early, their waits late, on a
    # high-priority stream
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    "--xla_gpu_enable_highest_priority_async_stream=true",
    # FSDP under a scanned layer loop: start layer i+1's weight all-gather (and finish layer i's
    # gradient reduce-scatter) during layer i's compute, not exposed at each iteration's edge
    "--xla_gpu_enable_pipelined_all_gather=true",
    "--xla_gpu_enable_pipelined_reduce_scatter=true",
    "--xla_gpu_enable_pipelined_all_reduce=true",
    "--xla_gpu_enable_while_loop_double_buffering=true",
    # combine small collectives (per-parameter gathers, reductions) into few large ones
    "--xla_gpu_all_reduce_combine_threshold_bytes=536870912",
    "--xla_gpu_all_gather_combine_threshold_bytes=134217728",
    "--xla_gpu_reduce_scatter_combine_threshold_bytes=67108864",
    "--xla_gpu_enable_all_gather_combine_by_dim=false",
    "--xla_gpu_enable_reduce_scatter_combine_by_dim=false",
    # cuBLAS for matmuls (no Triton GEMM autotuning: faster compiles, as fast at these shapes)
    "--xla_gpu_enable_triton_gemm=false",
    # the model's own remat policy decides what is recomputed; XLA's pass would add more under
    # memory pressure instead of failing visibly
    "--xla_disable_hlo_passes=rematerialization",
)


def _flag_name(flag: str) -> str:
    return flag.split("=", 1)[0]


def merge_xla_flags(user: str, defaults=GPU_XLA_FLAGS) -> str:
    """The user's XLA_FLAGS as they are, then each default whose flag the user did not set (by
    name, whatever its value): XLA takes the last of repeated flags, so a user's never loses."""
    user_flags = user.split()
    given = {_flag_name(f) for f in user_flags}
    return " ".join(user_flags + [f for f in defaults if _flag_name(f) not in given])


def gpu_expected(environ=os.environ) -> bool:
    """Whether JAX will start a CUDA backend: a CUDA plugin is installed and JAX_PLATFORMS (when
    set) names cuda or gpu. Known without starting a backend."""
    import importlib.util
    import pkgutil

    platforms = environ.get("JAX_PLATFORMS", "").lower()
    if platforms and not any(p in platforms for p in ("cuda", "gpu")):
        return False
    try:
        plugins = importlib.util.find_spec("jax_plugins")
        names = [m.name for m in pkgutil.iter_modules(plugins.submodule_search_locations)] if plugins else []
    except (ImportError, ValueError):
        names = []
    return any("cuda" in n for n in names)


def apply_gpu_xla_flags(environ=os.environ) -> str | None:
    """On a GPU machine, before JAX starts its backend: XLA_FLAGS becomes `merge_xla_flags` of the
    user's and GPU_XLA_FLAGS (MIXJAX_XLA_DEFAULTS=0 leaves it alone). Returns the XLA_FLAGS in
    force on GPU (None elsewhere), for the run's settings.json."""
    if not gpu_expected(environ):
        return None
    if environ.get("MIXJAX_XLA_DEFAULTS", "1").lower() not in ("0", "false", "no"):
        from jax._src import xla_bridge  # no public way to ask whether a backend has started

        if not xla_bridge.backends_are_initialized():
            environ["XLA_FLAGS"] = merge_xla_flags(environ.get("XLA_FLAGS", ""))
    return environ.get("XLA_FLAGS", "")


def make_mesh(shape: tuple[int, int, int] | None = None, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh. `shape` may hold one -1 (the rest); default: all data."""
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_mesh(shape, len(devices), "the device count")
    grid = hybrid_device_grid(shape, devices)
    if grid is not None:
        return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * 3)
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def hybrid_device_grid(shape: tuple[int, int, int], devices) -> np.ndarray | None:
    """With devices of several processes (nodes): the (data, fsdp, tensor) grid whose data axis
    spans the processes and whose fsdp and tensor axes stay within each one's devices
    (`mesh_utils.create_hybrid_device_mesh`): FSDP's all-gathers and reduce-scatters every layer
    then run over the node's fast links, and only the data axis's one gradient all-reduce per step
    crosses the network. None with one process, or when the data axis does not split evenly over
    the processes (each must hold data/processes x fsdp x tensor devices): then JAX's default
    layout."""
    from jax.experimental import mesh_utils

    processes = len({d.process_index for d in devices})
    data, fsdp, tensor = shape
    if processes <= 1 or data % processes or len(devices) // processes != (data // processes) * fsdp * tensor:
        return None
    return mesh_utils.create_hybrid_device_mesh((data // processes, fsdp, tensor), (processes, 1, 1), devices,
                                                process_is_granule=True)


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
