"""The attention implementations, stated once: their names, where each runs, and what 'auto' picks.

`--attention`'s help, `ModelConfig`'s check and `mixjax plan`'s stand-ins read this table; the
kernels themselves live beside it (`mixjax.kernels.attention` resolves a name for the backend being
traced and dispatches). No JAX here: the command line reads it before JAX starts.
"""

from __future__ import annotations

import dataclasses

from mixjax.errors import MixjaxError


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One value of `attention`: the backends that run it natively (None: every backend; empty
    for 'auto', a choice rather than a kernel) and where its code is."""

    name: str
    backends: tuple[str, ...] | None
    where: str


IMPLEMENTATIONS = (
    Implementation("auto", (), "the backend's best, `auto_choice`"),
    Implementation("plain", None, "textbook scores per causal query block, "
                   "row-major custom VJPs on the CPU (mixjax.kernels.plain)"),
    Implementation("blockwise", None, "flash-attention 2 in pure JAX, O(L) memory "
                   "(mixjax.kernels.blockwise)"),
    Implementation("cudnn", ("gpu",), "jax.nn.dot_product_attention's cuDNN flash attention, "
                   "bfloat16/float16 (mixjax.kernels.cudnn)"),
    Implementation("pallas", ("gpu", "tpu"), "our Triton GQA kernel on GPU, splash attention on TPU "
                   "(mixjax.kernels.pallas)"),
)
NAMES = tuple(impl.name for impl in IMPLEMENTATIONS)
BY_NAME = {impl.name: impl for impl in IMPLEMENTATIONS}


def check_name(name: str) -> None:
    """A one-line MixjaxError for a name that is not an implementation."""
    if name not in BY_NAME:
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
