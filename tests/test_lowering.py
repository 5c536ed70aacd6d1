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
from mixjax.kernels.platform import lowering_for
from mixjax.train.mesh import abstract_arrays, make_mesh
from mixjax.train.step import BATCH_KEYS, StepConfig, Stepper

QWEN_LIKE = ModelConfig(vocab_size=256, dim=64, n_layers=3, n_heads=8, n_kv_heads=2, hidden_dim=128,
                        head_dim=32, arch="qwen2", qkv_bias=True, remat="full", scan_layers=True)
TRITON = "__gpu$xla.gpu.triton"


def export_train_step(impl: str, platform: str = "cuda", seq_len: int = 256):
    """The train step of QWEN_LIKE with attention `impl` and the default compute dtype ('auto'),
    exported for `platform`: its StableHLO text."""
    with lowering_for("gpu" if platform == "cuda" else platform):
        st = Stepper(StepConfig(QWEN_LIKE.replace(attention=impl), 8, seq_len, 3), make_mesh((1, 8, 1)))
        assert st.compute_dtype == "bfloat16"  # 'auto' on an accelerator
        state = abstract_arrays(st.abstract_state, st.state_shardings)
        batch = {k: jax.ShapeDtypeStruct((8, seq_len), jnp.int32, sharding=st.batch_sharding) for k in BATCH_KEYS}
        scalar, weights = jax.ShapeDtypeStruct((), jnp.float32), jax.ShapeDtypeStruct((3,), jnp.float32)
        checks = [jax.export.DisabledSafetyCheck.custom_call(TRITON)]
        exported = jax.export.export(st.train_step, platforms=[platform], disabled_checks=checks)(
            state, batch, scalar, weights)
    # float32 master weights and optimizer state in and out, whatever the compute dtype
    n_state = len(jax.tree.leaves(state))
    floats = [a.dtype for a in exported.in_avals[:n_state] + exported.out_avals[:n_state] if a.ndim > 0]
    assert floats and all(d == jnp.float32 for d in floats if jnp.issubdtype(d, jnp.floating))
    module = exported.mlir_module()
    assert "bf16" in module
    return module


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


def triton_calls(module: str) -> list[tuple[str, list[tuple[int, ...]], list[tuple[int, ...]]]]:
    """(kernel name, operand shapes, result shapes) of each Triton custom call of a module."""
    out = []
    for line in module.splitlines():
        if TRITON not in line:
            continue
        name = re.search(r'name = "(\w+)"', line).group(1)
        operands, results = re.search(r"\} : \((.*)\) -> \(?(.*?)\)? loc\(", line).groups()
        shapes = [[tuple(int(d) for d in t.split("x")[:-1]) for t in re.findall(r"tensor<([^>]*)>", part)]
                  for part in (operands, results)]
        out.append((name, *shapes))
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
        if platform == "cuda":
            _assert_kv_heads_never_repeated(module)
    else:
        assert kernels == 0
    assert "mhlo.sharding" in module or "sdy.sharding" in module  # the fsdp shardings are there


def _assert_kv_heads_never_repeated(module: str):
    """GQA through the kernels' index maps: every Triton kernel takes K and V (operands 2 and 3)
    with the model's kv heads, not one per query head, and the dK/dV kernel returns kv-headed
    gradients (the group's query heads summed inside it). Shapes are each device's share: one
    of the 8 rows, all 256 positions."""
    c = QWEN_LIKE
    q_shape, kv_shape = (1, 256, c.n_heads, c.head_dim), (1, 256, c.n_kv_heads, c.head_dim)
    calls = triton_calls(module)
    assert {name for name, _, _ in calls} == {"flash_gqa_forward", "flash_gqa_backward_dkv", "flash_gqa_backward_dq"}
    for name, operands, results in calls:
        assert operands[0] == q_shape and operands[1] == operands[2] == kv_shape, (name, operands)
        assert results[0] == (kv_shape if name == "flash_gqa_backward_dkv" else q_shape), (name, results)


def test_cudnn_cannot_lower_here_and_says_so():
    """cuDNN's attention needs cuDNN present to lower; traced for the GPU on this machine the
    choice is refused up front, in one line naming the flag."""
    from mixjax.errors import MixjaxError

    with pytest.raises(MixjaxError, match=r"^attention cudnn is not available on the gpu backend \(no GPU\)"):
        export_train_step("cudnn")


def test_compute_dtype_auto_is_bfloat16_on_accelerators_only():
    from mixjax.errors import MixjaxError
    from mixjax.train.step import resolve_compute_dtype

    assert [resolve_compute_dtype("auto", b) for b in ("cpu", "gpu", "tpu")] == ["float32", "bfloat16", "bfloat16"]
    assert resolve_compute_dtype("float32", "gpu") == "float32" and resolve_compute_dtype("bfloat16", "cpu") == "bfloat16"
    assert resolve_compute_dtype("auto") == "float32"  # this machine
    with pytest.raises(MixjaxError, match="^compute_dtype 'fp8': expected auto, float32, bfloat16$"):
        resolve_compute_dtype("fp8")


def test_gpu_xla_flags_follow_the_users_and_never_override_them(monkeypatch):
    from jax._src import xla_bridge

    from mixjax.train import mesh

    defaults = mesh.GPU_XLA_FLAGS
    assert mesh.merge_xla_flags("") == " ".join(defaults)
    user = "--xla_gpu_enable_latency_hiding_scheduler=false --xla_dump_to=/tmp/d --xla_disable_hlo_passes"
    merged = mesh.merge_xla_flags(user).split()
    assert merged[:3] == user.split()  # the user's first, as given
    assert merged[3:] == [f for f in defaults if not f.startswith(("--xla_gpu_enable_latency_hiding_scheduler=",
                                                                   "--xla_disable_hlo_passes="))]
    assert mesh.merge_xla_flags(" ".join(merged)) == " ".join(merged)  # applying twice changes nothing
    # only where JAX will start a CUDA backend, and only before it starts
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": user}
    assert mesh.apply_gpu_xla_flags(env) is None and env["XLA_FLAGS"] == user
    monkeypatch.setattr(mesh, "gpu_expected", lambda environ: True)
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    env = {"XLA_FLAGS": user}
    assert mesh.apply_gpu_xla_flags(env) == env["XLA_FLAGS"] == " ".join(merged)
    env = {"XLA_FLAGS": user, "MIXJAX_XLA_DEFAULTS": "0"}
    assert mesh.apply_gpu_xla_flags(env) == user


def test_every_default_gpu_flag_is_known_to_this_jaxlib():
    """XLA parses its GPU flags on any backend and aborts on an unknown one (flags are renamed and
    removed between releases): start the CPU backend with all of them."""
    import os
    import subprocess
    import sys

    from mixjax.train.mesh import GPU_XLA_FLAGS

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": " ".join(GPU_XLA_FLAGS)}
    done = subprocess.run([sys.executable, "-c", "import jax; print(jax.devices()[0].platform)"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "cpu", done.stderr[-1000:]
