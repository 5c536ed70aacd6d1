"""The attention implementations, stated once: their names, where each runs, and what 'auto' picks.

`--attention`'s help, `ModelConfig`'s check, `resolve_attention` and `mixjax plan`'s stand-ins read
this table; the kernels live beside it (`mixjax.kernels.attention` resolves a name for the backend
being traced and dispatches). No JAX here: the command line reads it before JAX starts.
"""

from __future__ import annotations

import dataclasses

from mixjax.errors import MixjaxError


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One value of `attention` and the backends that run it natively (None: every backend;
    empty for 'auto', a choice rather than a kernel)."""

    name: str
    backends: tuple[str, ...] | None


IMPLEMENTATIONS = (
    Implementation("auto", ()),  # the backend's best: `auto_choice`
    # textbook scores per causal query block, row-major custom VJPs on the CPU (plain.py, cpu.py)
    Implementation("plain", None),
    Implementation("blockwise", None),  # flash-attention 2 in pure JAX, O(L) memory (blockwise.py)
    # jax.nn.dot_product_attention's cuDNN flash attention, bfloat16/float16 only (cudnn.py)
    Implementation("cudnn", ("gpu",)),
    # our Triton GQA kernel on GPU (flash_gqa_gpu.py), splash attention on TPU (pallas.py)
    Implementation("pallas", ("gpu", "tpu")),
)
NAMES = tuple(impl.name for impl in IMPLEMENTATIONS)


def check_name(name: str) -> None:
    """A one-line MixjaxError for a name that is not an implementation."""
    if name not in NAMES:
        raise MixjaxError(f"`attention` {name!r}: expected one of {', '.join(NAMES)}")


def auto_choice(backend: str, device_count: int) -> str:
    """What 'auto' runs: cpu -> 'plain'; gpu -> 'pallas'; tpu -> 'pallas' (splash) on one device,
    else 'blockwise' (a Pallas call is not partitioned by XLA; see mixjax.kernels.attention)."""
    if backend == "gpu":
        return "pallas"
    if backend == "tpu":
        return "pallas" if device_count == 1 else "blockwise"
    return "plain"


def native(backend: str) -> tuple[str, ...]:
    """The explicit implementations `backend` runs natively, in the table's order."""
    return tuple(impl.name for impl in IMPLEMENTATIONS if impl.backends is None or backend in impl.backends)


def flag_help() -> str:
    """`--attention`'s help."""
    return (f"{'|'.join(NAMES)} (default auto: the backend's best; blockwise and the fused kernels never keep "
            "sequence x sequence scores)")
