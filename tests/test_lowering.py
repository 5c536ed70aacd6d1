"""The real sharded train step lowered for CUDA on this CPU machine (`jax.export`, no GPU needed):
8 fake devices as an fsdp mesh, a Qwen-shaped model (GQA, q/k/v biases) of a few scanned layers,
bfloat16 compute, remat full, packed segments. Each attention implementation that can lower here
must: Pallas' Triton kernels are in the module, and every while loop of the step has a trip count
known at compile time (on GPU, XLA runs a loop without one by copying its condition to the host
every iteration)."""

import re

import jax
import jax.numpy as jnp
import pytest

from mixjax.model import ModelConfig
from mixjax.model import attention as A
from mixjax.train.mesh import abstract_arrays, make_mesh
from mixjax.train.step import BATCH_KEYS, StepConfig, Stepper

QWEN_LIKE = ModelConfig(vocab_size=256, dim=64, n_layers=3, n_heads=8, n_kv_heads=2, hidden_dim=128,
                        head_dim=32, arch="qwen2", qkv_bias=True, remat="full", scan_layers=True)
TRITON = "__gpu$xla.gpu.triton"


def export_train_step(impl: str, platform: str = "cuda", seq_len: int = 256):
    """The train step of QWEN_LIKE with attention `impl`, exported for `platform` (StableHLO text)."""
    cfg = QWEN_LIKE.replace(attention=impl)
    st = Stepper(StepConfig(cfg, 8, seq_len, 3, compute_dtype="bfloat16"), make_mesh((1, 8, 1)))
    state = abstract_arrays(st.abstract_state, st.state_shardings)
    batch = {k: jax.ShapeDtypeStruct((8, seq_len), jnp.int32, sharding=st.batch_sharding) for k in BATCH_KEYS}
    scalar, weights = jax.ShapeDtypeStruct((), jnp.float32), jax.ShapeDtypeStruct((3,), jnp.float32)
    checks = [jax.export.DisabledSafetyCheck.custom_call(TRITON)]
    with A.lowering_for("gpu" if platform == "cuda" else platform):
        exported = jax.export.export(st.train_step, platforms=[platform], disabled_checks=checks)(
            state, batch, scalar, weights)
    return exported.mlir_module()


def _functions(module: str) -> list[str]:
    """The text of each func.func of a StableHLO module."""
    starts = [m.start() for m in re.finditer(r"^\s*func\.func ", module, re.M)] + [len(module)]
    return [module[a:b] for a, b in zip(starts, starts[1:])]


def _region(text: str, opening: int) -> str:
    """The text between the brace at `opening` and its match."""
    depth = 0
    for k in range(opening, len(text)):
        depth += {"{": 1, "}": -1}.get(text[k], 0)
        if depth == 0:
            return text[opening + 1:k]
    raise ValueError("unbalanced region")


def _counted(fn: str, at: int, constants: set[str]) -> bool:
    """Whether the stablehlo.while at `at` in function text `fn` is a counted loop, the form XLA
    derives a trip count from: its condition compares one loop variable with a constant, that
    variable starts at a constant and the body adds a constant to it."""
    header = fn[at:fn.index("cond {", at)]
    init = dict(re.findall(r"(%iterArg[\w]*) = ([%\w#.-]+)", header))
    order = list(init)
    cond = _region(fn, fn.index("{", fn.index("cond {", at)))
    body = _region(fn, fn.index("{", fn.index("} do {", at) + 2))
    compares = re.findall(r"stablehlo\.compare\s+\w+,\s*(%[\w#.-]+),\s*(%[\w#.-]+)", cond)
    if len(compares) != 1:
        return False
    counter = [x for x in compares[0] if x in init]
    bound = [x for x in compares[0] if x not in init]
    if len(counter) != 1 or len(bound) != 1 or bound[0] not in constants or init[counter[0]] not in constants:
        return False
    returned = re.findall(r"stablehlo\.return ([^:]*):", body)[-1].split(",")
    step = returned[order.index(counter[0])].strip()
    adds = re.findall(rf"{re.escape(step)} = stablehlo\.add (%[\w#.-]+), (%[\w#.-]+)", body)
    return any(counter[0] in pair and any(x in constants for x in pair) for pair in adds)


def while_loops(module: str) -> list[tuple[str, bool]]:
    """(the start of each stablehlo.while's condition, whether it is a counted loop: `_counted`).

    JAX lowers a loop of static length (scan, fori_loop with Python bounds) to a counted loop; a
    traced bound is a loop-carried value (`%iterArg...`) or something computed, which XLA cannot
    count, and so is a while_loop on a value."""
    out = []
    for fn in _functions(module):
        constants = set(re.findall(r"(%[\w#.-]+) = stablehlo\.constant ", fn))
        for m in re.finditer(r"stablehlo\.while\(", fn):
            cond = fn[fn.index("cond {", m.start()):][6:200].strip()
            out.append((cond.split("\n")[0], _counted(fn, m.start(), constants)))
    return out


def test_loop_criterion_tells_static_from_traced_bounds():
    """The criterion itself, on loops whose bounds are known: a scan and a fori_loop with Python
    bounds are static, a fori_loop to a traced bound and a while_loop on a value are not."""
    def f(x, n):
        a = jax.lax.scan(lambda c, _: (c + 1.0, None), x, None, length=5)[0]
        b = jax.lax.fori_loop(0, 7, lambda i, c: c * 2.0, a)
        c = jax.lax.fori_loop(0, n, lambda i, c: c + 1.0, b)
        return jax.lax.while_loop(lambda c: c < 100.0, lambda c: c * 3.0, c)

    module = jax.export.export(jax.jit(f), platforms=["cuda"])(jnp.float32(1), jnp.int32(3)).mlir_module()
    assert [static for _, static in while_loops(module)] == [True, True, False, False]


@pytest.mark.parametrize("impl, platform", [("plain", "cuda"), ("blockwise", "cuda"), ("pallas", "cuda"),
                                            ("pallas", "tpu")])
def test_train_step_lowers_with_static_loops(impl, platform):
    """CUDA: plain, blockwise and Pallas' Triton kernels. TPU: splash attention lowers here too
    (Mosaic custom calls)."""
    module = export_train_step(impl, platform)
    loops = while_loops(module)
    assert loops, "a scanned model has loops"
    dynamic = [cond for cond, static in loops if not static]
    assert not dynamic, f"{impl}: while loops with a trip count unknown at compile time: {dynamic}"
    kernels = module.count(TRITON if platform == "cuda" else "tpu_custom_call")
    if impl == "pallas":
        # the forward kernel (in the forward scan, and again in the rematerialised backward) and
        # the backward's, under shard_map: each device runs them on its own rows
        assert kernels >= 3, kernels
        assert "sdy.manual_computation" in module or "Manual" in module
    else:
        assert kernels == 0
    assert "mhlo.sharding" in module or "sdy.sharding" in module  # the fsdp shardings are there


def test_cudnn_cannot_lower_here_and_says_so():
    """cuDNN's attention needs cuDNN present to lower; traced for the GPU on this machine the
    choice is refused up front, in one line naming the flag."""
    from mixjax.errors import MixjaxError

    with pytest.raises(MixjaxError, match=r"^attention cudnn is not available on the gpu backend \(no GPU\)"):
        export_train_step("cudnn")
