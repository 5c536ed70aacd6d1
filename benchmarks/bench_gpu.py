"""Train-step throughput, MFU and peak memory of real model shapes on the local GPU(s), in one
8-minute call.

    python benchmarks/bench_gpu.py [--deadline 480] [--models qwen2.5-0.5b,qwen2.5-1.5b,llama-3.2-3b]
        [--seq-len 4096] [--batch-size N (per device)] [--remat full|dots|none]
        [--attention auto|blockwise|cudnn|pallas|plain] [--loss-chunk 512] [--steps 10] [--warmup 3]
        [--mesh D,F,T] [--peak-tflops 989] [--out PATH]
    python benchmarks/bench_gpu.py --smoke      # the same code on 2 CPU devices: tiny, seq 128, 2 steps

Everything runs within --deadline seconds (default 480, so a 10-minute device call keeps two
minutes for start-up and copying results back): children are given only the time left, and a
model that cannot start in time is recorded as "skipped". In order:

1. Attention microbenchmarks (one child, --micro-seconds each): forward + backward of every
   attention implementation the backend has (plain, blockwise, pallas, cudnn) at each model's
   shape (per-device batch x seq-len, its heads, kv heads and head dim), bf16: compile seconds,
   milliseconds per call and TFLOP/s (7 B H L^2 E / 2 FLOPs, causal). Seconds, not minutes, and it
   says which attention 'auto' should pick on this GPU.
2. Each model's train step with the configuration `mixjax plan` recommends for one 80 GB device
   at 4096 tokens (RECOMMENDED: remat full, cross-entropy in 512-token chunks, the per-device
   batch below), compute dtype 'auto' (bf16 here), float32 master weights and AdamW (the `mixjax
   train` step), random weights and tokens, all local devices (default mesh: all fsdp).

Each child starts XLA with mixjax's GPU flags (`mixjax.train.mesh.GPU_XLA_FLAGS`, after any
XLA_FLAGS you set) and JAX's compilation cache on (MIXJAX_JAX_CACHE, default
~/.cache/mixjax/jax). Each model runs in its own child process, so its peak memory
(`peak_bytes_in_use`, which JAX never resets) is its own, and an out-of-memory error, a crash or a
timeout is recorded for that model and the next one still runs. Results are written (atomically)
to benchmarks/results/gpu.json (--smoke: gpu_smoke.json) after the microbenchmarks and after
every model, so a cut-off keeps what ran; with the versions of jax, jaxlib, CUDA, cuDNN and the
driver (`jax.print_environment_info`) and the XLA flags in force. A model that fails other than by
running out of memory is run again with --fallback-attention (blockwise) if time is left. Exit
status 1 when any run was not "ok".

MFU = model FLOPs per token (`ModelConfig.flops_per_token`: 6 x matmul parameters + causal
attention, no recomputation) x tokens/s / (devices x the chip's dense bf16 peak): 989 TFLOP/s for
H100 SXM and H200, 756 for H100 PCIe, 312 for A100 (from `device_kind`; --peak-tflops overrides).
Each result also holds the GPU compiler's own `memory_analysis()` of the step, to compare with
`mixjax plan`'s CPU estimate.

Unless XLA_PYTHON_CLIENT_MEM_FRACTION is set, the children run with 0.92 (JAX's default lets a
process use 75% of the card).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mixjax.io import write_json_atomic  # noqa: E402

MODELS = ("qwen2.5-0.5b", "qwen2.5-1.5b", "llama-3.2-3b")
# What `mixjax plan` recommends per model for one 80 GB device at 4096 tokens, bf16, --loss-chunk
# 512, remat full: `XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 mixjax plan --model M --devices 1
# --batch-size B --seq-len 4096 --bf16 --remat full --loss-chunk 512 --device-memory 80GB` gives
# 13.4 GiB (0.5b, 4 sequences), 31.0 GiB (1.5b, 2) and 60.7 GiB (3b, 1) of the 68.5 GiB usable.
RECOMMENDED = {"qwen2.5-0.5b": {"batch_per_device": 4, "remat": "full"},
               "qwen2.5-1.5b": {"batch_per_device": 2, "remat": "full"},
               "llama-3.2-3b": {"batch_per_device": 1, "remat": "full"},
               "llama-3.1-8b": {"batch_per_device": 1, "remat": "full"},
               "tiny": {"batch_per_device": 2, "remat": "dots"}}
# The registry's implementations but 'auto' (mixjax.kernels.registry), in the order they are timed
# and recorded: the CPU's two, then auto's GPU pick before cudnn.
ATTENTION_IMPLS = ("plain", "blockwise", "pallas", "cudnn")
MIN_CHILD_S = 20  # a child given less than this is not started (recorded as skipped)
# dense bf16 FLOP/s per chip, matched against jax.devices()[0].device_kind (first match wins)
PEAKS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("A100", 312e12))
RESULTS = ROOT / "benchmarks" / "results"


def peak_flops(device_kind: str) -> float | None:
    for name, peak in PEAKS:
        if name.lower() in device_kind.lower():
            return peak
    return None


def is_oom(err: BaseException | str) -> bool:
    text = str(err)
    return any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM"))


def random_batch(b: int, l: int, vocab: int, num_domains: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random tokens; every row two packed documents (so the segment masking is exercised)."""
    rng = np.random.default_rng(seed)
    half = l // 2
    seg = np.where(np.arange(l) < half, 1, 2).astype(np.int32)
    pos = np.concatenate([np.arange(half), np.arange(l - half)]).astype(np.int32)
    return {"tokens": rng.integers(0, vocab, (b, l)).astype(np.int32),
            "segment_ids": np.broadcast_to(seg, (b, l)).copy(),
            "positions": np.broadcast_to(pos, (b, l)).copy(),
            "loss_mask": np.ones((b, l), bool),
            "domain_ids": np.repeat(rng.integers(0, num_domains, (b, 1)), l, axis=1).astype(np.int32)}


def _mem_bytes(compiled) -> dict | None:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    if m is None:
        return None
    a, o, al, t = (int(getattr(m, f)) for f in ("argument_size_in_bytes", "output_size_in_bytes",
                                                 "alias_size_in_bytes", "temp_size_in_bytes"))
    return {"arguments": a, "outputs": o, "aliased": al, "temporaries": t, "total": a + o - al + t}


def _peak_memory(devices) -> dict:
    peaks, limits = [], []
    for d in devices:
        try:
            stats = d.memory_stats() or {}
        except Exception:  # noqa: BLE001
            stats = {}
        if "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
        if "bytes_limit" in stats:
            limits.append(int(stats["bytes_limit"]))
    return {"peak_bytes_in_use": max(peaks) if peaks else None, "bytes_limit": min(limits) if limits else None}


def start_runtime(args) -> None:
    """In a child, before JAX starts its backend: mixjax's GPU flags after the user's XLA_FLAGS,
    the compilation cache, and (--smoke) two CPU devices."""
    from mixjax.train.mesh import apply_gpu_xla_flags

    apply_gpu_xla_flags()
    import jax

    if args.smoke:  # two CPU devices, so the fsdp mesh and its shardings are exercised
        jax.config.update("jax_num_cpu_devices", 2)
    cache = os.environ.get("MIXJAX_JAX_CACHE", os.path.expanduser("~/.cache/mixjax/jax"))
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def environment() -> dict:
    """Versions (jax, jaxlib, CUDA, cuDNN, driver: `jax.print_environment_info`, which also runs
    nvidia-smi), the XLA flags and memory fraction in force, and the devices."""
    import jax

    out = {"jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS"),
           "mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
           "backend": jax.default_backend(), "devices": [d.device_kind for d in jax.devices()]}
    try:
        out["environment_info"] = jax.print_environment_info(return_string=True).splitlines()
    except Exception as e:  # noqa: BLE001  (nvidia-smi missing, ...)
        out["environment_info"] = [f"unavailable: {e}"]
    try:
        from jax._src.lib import cuda_versions  # no public API for these
        if cuda_versions is not None:
            out["cudnn"] = cuda_versions.cudnn_get_version()
            out["cuda_runtime"] = cuda_versions.cuda_runtime_get_version()
            out["cuda_driver"] = cuda_versions.cuda_driver_get_version()
    except Exception:  # noqa: BLE001
        pass
    return out


def _time_calls(fn, args_, seconds: float) -> tuple[float, list[float]]:
    """(compile seconds, per-call seconds) of a jitted `fn`, calls repeated for about `seconds`."""
    import jax

    t = time.perf_counter()
    compiled = fn.lower(*args_).compile()
    compile_s = time.perf_counter() - t
    jax.block_until_ready(compiled(*args_))  # warm-up
    times, start = [], time.perf_counter()
    while not times or (time.perf_counter() - start < seconds and len(times) < 50):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args_))
        times.append(time.perf_counter() - t)
    return compile_s, times


def attention_micro(model: str, args) -> list[dict]:
    """Forward + backward of each attention implementation at `model`'s shape; never raises."""
    import jax
    import jax.numpy as jnp

    from mixjax.kernels import attention as A
    from mixjax.model.config import get_config

    cfg = get_config(model, args.vocab_size if model in ("tiny", "small", "base", "1b") else None)
    b, l = args.batch_size or RECOMMENDED.get(model, {}).get("batch_per_device", 1), args.seq_len
    h, kv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    dtype = jnp.float32 if args.smoke else jnp.bfloat16
    keys = jax.random.split(jax.random.key(0), 4)
    q, w = (jax.random.normal(k, (b, l, h, hd), dtype) for k in keys[:2])
    k_, v = (jax.random.normal(k, (b, l, kv, hd), dtype) for k in keys[2:])
    seg = jnp.asarray(random_batch(b, l, 2, 1)["segment_ids"])
    flops = 7 * b * h * l * l * hd / 2  # forward 2 B H L^2 E (causal half) + backward 2.5x
    out = []
    for impl in ATTENTION_IMPLS:
        row = {"model": model, "impl": impl, "shape": [b, l, h, kv, hd], "dtype": jnp.dtype(dtype).name}
        try:
            A.resolve_attention(impl)
            run = "reference" if impl == "plain" else impl  # the textbook form a GPU's 'plain' runs

            def loss(q, k_, v, run=run):
                return jnp.sum(A.packed_attention(q, k_, v, seg, impl=run).astype(jnp.float32) * w)

            fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
            compile_s, times = _time_calls(fn, (q, k_, v), args.micro_seconds)
            ms = 1e3 * float(np.median(times))
            row.update(status="ok", compile_s=round(compile_s, 3), ms=round(ms, 3), calls=len(times),
                       tflops=round(flops / (ms / 1e3) / 1e12, 2))
        except Exception as e:  # noqa: BLE001  (unavailable here, out of memory, kernel limits)
            unavailable = type(e).__name__ == "MixjaxError"
            row.update(status="unavailable" if unavailable else "oom" if is_oom(e) else "error",
                       error=(str(e).strip().splitlines() or [type(e).__name__])[0][:300])
        print(f"[attention {model}] {impl}: {row.get('ms', row.get('error'))}", flush=True)
        out.append(row)
    return out


def run_one(model: str, args) -> dict:
    """Build, compile and time one model's train step in this process; never raises."""
    out: dict = {"model": model, "status": "error"}
    t_start = time.perf_counter()
    try:
        import jax

        from mixjax.model.config import get_config
        from mixjax.train.mesh import make_mesh
        from mixjax.train.step import StepConfig, Stepper

        devices = jax.devices()
        n = len(devices)
        kind = devices[0].device_kind
        from mixjax.train.step import resolve_compute_dtype

        recommended = RECOMMENDED.get(model, {"batch_per_device": 1, "remat": "full"})
        overrides = {"remat": args.remat or recommended["remat"], **({"attention": args.attention} if args.attention else {})}
        cfg = get_config(model, args.vocab_size if model in ("tiny", "small", "base", "1b") else None, **overrides)
        mesh_shape = tuple(int(x) for x in args.mesh.split(",")) if args.mesh else (1, -1, 1)
        mesh = make_mesh(mesh_shape, devices)
        per_device = args.batch_size or recommended["batch_per_device"]
        dtype = resolve_compute_dtype("auto")
        div = mesh.shape["data"] * mesh.shape["fsdp"]
        b, l = per_device * div, args.seq_len
        chunk = args.loss_chunk if args.loss_chunk and args.loss_chunk < l else None
        try:
            from mixjax.kernels.attention import resolve_attention
            attention_resolved = resolve_attention(cfg.attention, dtype=dtype)
        except Exception as e:  # noqa: BLE001  (older tree, or an implementation this backend lacks)
            attention_resolved = f"unresolved: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(kind)
        out.update(jax_version=jax.__version__, params=cfg.num_params(), devices=n, device_kind=kind,
                   platform=devices[0].platform,
                   mesh=[int(s) for s in mesh.devices.shape], batch_size_per_device=per_device, batch_size=b,
                   seq_len=l, compute_dtype=dtype, loss_chunk=chunk,
                   remat=getattr(cfg, "remat", None), attention=getattr(cfg, "attention", None),
                   attention_resolved=attention_resolved, scan_layers=getattr(cfg, "scanned", None),
                   peak_flops_per_device=peak)
        print(f"[{model}] {n} x {kind}, mesh {out['mesh']}, batch {b} x {l}, remat {out['remat']}, "
              f"attention {out['attention']} -> {attention_resolved}", flush=True)

        stepper = Stepper(StepConfig(cfg, b, l, 3, compute_dtype=dtype, loss_chunk=chunk), mesh)
        t = time.perf_counter()
        state = stepper.init_state(stepper.init_params(args.seed))
        jax.block_until_ready(state)
        out["init_s"] = round(time.perf_counter() - t, 3)
        batch = stepper.put_batch(random_batch(b, l, cfg.vocab_size, 3, args.seed))
        lr, loss_weights = np.float32(1e-4), stepper.no_loss_weights()
        t = time.perf_counter()
        compiled = stepper.train_step.lower(state, batch, lr, loss_weights).compile()
        out["compile_s"] = round(time.perf_counter() - t, 3)
        out["xla_memory_analysis"] = _mem_bytes(compiled)
        print(f"[{model}] compiled in {out['compile_s']:.1f} s, init {out['init_s']:.1f} s", flush=True)

        losses, times = [], []
        for i in range(args.warmup + args.steps):
            t = time.perf_counter()
            state, metrics = compiled(state, batch, lr, loss_weights)
            loss = float(jax.device_get(metrics["loss"]))  # waits for the step
            dt = time.perf_counter() - t
            losses.append(loss)
            if i >= args.warmup:
                times.append(dt)
        step_s = float(np.median(times)) if times else None
        tokens = b * l
        flops_token = float(cfg.flops_per_token(l))
        out.update(
            step_s_median=step_s, step_s=[round(x, 5) for x in times],
            tokens_per_s=tokens / step_s if step_s else None,
            tokens_per_s_per_device=tokens / step_s / n if step_s else None,
            model_flops_per_token=flops_token,
            mfu=(flops_token * tokens / step_s) / (peak * n) if (step_s and peak) else None,
            loss_first=losses[0] if losses else None, loss_last=losses[-1] if losses else None,
            losses_finite=bool(np.all(np.isfinite(losses))),
            **_peak_memory(devices))
        out["status"] = "ok" if out["losses_finite"] else "nonfinite_loss"
    except BaseException as e:  # noqa: BLE001  (record and go on: OOM, unsupported kernel, ...)
        if isinstance(e, KeyboardInterrupt):
            raise
        out["status"] = "oom" if is_oom(e) else "error"
        out["error"] = (str(e).strip().splitlines() or [type(e).__name__])[0][:500]
        out["traceback_tail"] = traceback.format_exc().strip().splitlines()[-6:]
        try:
            import jax
            out.update(_peak_memory(jax.devices()))
        except Exception:  # noqa: BLE001
            pass
    out["wall_s"] = round(time.perf_counter() - t_start, 3)
    return out


def run_child(model: str, args, argv: list[str], timeout: float, extra: tuple[str, ...] = ()) -> dict:
    """`run_one` (or, with extra ("--micro",), `attention_micro`) in a fresh process (own peak
    memory, survives crashes), killed after `timeout` seconds."""
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
    if args.smoke:
        env.setdefault("JAX_PLATFORMS", "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        result_path, err_path = Path(tmp) / "result.json", Path(tmp) / "stderr.txt"
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--models", model,
               "--child-out", str(result_path), *extra]
        t = time.perf_counter()
        with open(err_path, "w") as err:
            try:
                rc = subprocess.run(cmd, env=env, stderr=err, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                rc = None
        tail = err_path.read_text(errors="replace").strip().splitlines()[-8:]
        if result_path.exists():
            return json.loads(result_path.read_text())
        status = "timeout" if rc is None else ("oom" if any(is_oom(x) for x in tail) else "crashed")
        return {"model": model, "status": status, "returncode": rc, "stderr_tail": tail,
                "wall_s": round(time.perf_counter() - t, 3), "timeout_s": round(timeout, 1)}


def table(results: list[dict]) -> str:
    head = f"{'model':<14}{'status':>8}{'batch':>7}{'tok/s':>11}{'tok/s/dev':>11}{'MFU':>7}{'peak GiB':>10}" \
           f"{'XLA GiB':>9}{'compile s':>11}{'step s':>9}"
    lines = [head]
    for r in results:
        f = lambda k, fmt: (format(r[k], fmt) if r.get(k) is not None else "-")  # noqa: E731
        peak = r.get("peak_bytes_in_use")
        xla = (r.get("xla_memory_analysis") or {}).get("total")
        lines.append(f"{r['model']:<14}{r['status']:>8}{f('batch_size', 'd'):>7}{f('tokens_per_s', ',.0f'):>11}"
                     f"{f('tokens_per_s_per_device', ',.0f'):>11}"
                     f"{(format(r['mfu'], '.1%') if r.get('mfu') is not None else '-'):>7}"
                     f"{(format(peak / 2**30, '.1f') if peak else '-'):>10}"
                     f"{(format(xla / 2**30, '.1f') if xla else '-'):>9}"
                     f"{f('compile_s', '.1f'):>11}{f('step_s_median', '.3f'):>9}")
        if r.get("error"):
            lines.append(f"    {r['error'][:150]}")
    return "\n".join(lines)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None, help=f"comma-separated presets (default {','.join(MODELS)})")
    ap.add_argument("--seq-len", type=int, default=None, help="default 4096 (--smoke: 128)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="per device (default: RECOMMENDED's: 4 for 0.5b, 2 for 1.5b, 1 for 3b and 8b)")
    ap.add_argument("--remat", default=None, help="none, dots or full (default: RECOMMENDED's, full)")
    ap.add_argument("--attention", default="auto", help="auto, blockwise, cudnn, pallas or plain (default auto)")
    ap.add_argument("--loss-chunk", type=int, default=512, help="cross-entropy positions per chunk (0: off)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10; --smoke 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps after compiling (default 3; --smoke 1)")
    ap.add_argument("--mesh", default=None, metavar="D,F,T", help="default 1,-1,1 (all fsdp)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="dense bf16 TFLOP/s per chip (default: by device kind)")
    ap.add_argument("--vocab-size", type=int, default=256, help="for presets without a vocabulary (tiny)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fallback-attention", default="blockwise",
                    help="when a model fails (not out of memory) with another attention, run it again with "
                         "this one (default blockwise; none: off)")
    ap.add_argument("--deadline", type=float, default=480,
                    help="seconds for everything (default 480); children get only what is left")
    ap.add_argument("--micro-seconds", type=float, default=None,
                    help="timed seconds per attention microbenchmark (default 1; --smoke 0.2)")
    ap.add_argument("--micro", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--in-process", action="store_true", help="run every model in this process (no children)")
    ap.add_argument("--smoke", action="store_true", help="CPU check of this script: tiny, seq 128, 2 steps")
    ap.add_argument("--out", default=None, help="default benchmarks/results/gpu.json (--smoke: gpu_smoke.json)")
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    smoke = args.smoke
    args.models = args.models or ("tiny" if smoke else ",".join(MODELS))
    args.seq_len = args.seq_len or (128 if smoke else 4096)
    args.steps = args.steps if args.steps is not None else (2 if smoke else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if smoke else 3)
    args.micro_seconds = args.micro_seconds if args.micro_seconds is not None else (0.2 if smoke else 1.0)
    if smoke and args.loss_chunk == 512:
        args.loss_chunk = 64
    args.out = args.out or str(RESULTS / ("gpu_smoke.json" if smoke else "gpu.json"))
    if args.mesh:
        args.mesh = args.mesh.replace(" ", "")
    return args


def drop_option(argv: list[str], name: str) -> list[str]:
    """argv without `name VALUE` and `name=VALUE`."""
    out, skip = [], False
    for tok in argv:
        if skip:
            skip = False
        elif tok == name:
            skip = True
        elif not tok.startswith(name + "="):
            out.append(tok)
    return out


def run_models(models: list[str], args, child_argv: list[str], doc: dict, left) -> None:
    """Each model in turn (a child each, given the time `left()`), written after every one; a
    model failing other than by running out of memory runs again with the fallback attention."""
    for model in models:
        print(f"== {model} ({left():.0f} s left)", flush=True)
        if left() < MIN_CHILD_S:
            doc["results"].append({"model": model, "status": "skipped", "error": "deadline reached"})
            write_json_atomic(args.out, doc)
            continue
        result = run_one(model, args) if args.in_process else run_child(model, args, child_argv, left())
        if result.get("status") != "ok":
            print(f"[{model}] {result.get('status')}: {result.get('error') or result.get('stderr_tail')}", flush=True)
        fallback = args.fallback_attention
        built = "params" in result or result.get("status") == "crashed"  # not e.g. an unknown preset
        if result.get("status") in ("error", "crashed") and built and fallback != "none" \
                and args.attention != fallback and left() >= MIN_CHILD_S:
            # e.g. cuDNN missing or too old for 'cudnn': measure the model with the fallback too
            doc["results"].append(result)
            print(f"[{model}] again with --attention {fallback}", flush=True)
            retry = argparse.Namespace(**{**vars(args), "attention": fallback})
            result = run_one(model, retry) if args.in_process else run_child(
                model, retry, [*drop_option(child_argv, "--attention"), f"--attention={fallback}"], left())
            result["fallback_for"] = args.attention
        doc["results"].append(result)
        write_json_atomic(args.out, doc)  # after every model: a lost lease keeps what was measured


def child_main(models: list[str], args) -> int:
    import mixjax  # noqa: F401  (host malloc settings before JAX starts)

    if args.smoke:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    start_runtime(args)
    if args.micro:
        result = {"environment": environment(), "attention": [r for m in models for r in attention_micro(m, args)]}
    else:
        result = run_one(models[0], args)
    write_json_atomic(args.child_out, result)
    return 0


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    # "--mesh -1,8,1": argparse takes a value starting with '-' for an option
    for i, tok in enumerate(argv[:-1]):
        if tok == "--mesh" and argv[i + 1].startswith("-"):
            argv[i:i + 2] = [f"--mesh={argv[i + 1]}"]
            break
    args = parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.child_out:  # one model (or the microbenchmarks), in this (child) process
        return child_main(models, args)
    if args.in_process and args.smoke:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    left = lambda: args.deadline - (time.perf_counter() - t0)  # noqa: E731
    child_argv = drop_option(argv, "--models")  # each child gets its model(s)
    doc = {"benchmark": "bench_gpu", "argv": argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "host": platform.node(), "python": platform.python_version(),
           "settings": {k: getattr(args, k) for k in ("seq_len", "batch_size", "remat", "attention", "loss_chunk",
                                                      "steps", "warmup", "mesh", "peak_tflops", "smoke", "deadline")},
           "recommended": RECOMMENDED, "environment": None, "attention": [], "results": []}
    known = [m for m in models if m in RECOMMENDED]
    if known and not args.in_process:
        print(f"== attention microbenchmarks ({', '.join(known)})", flush=True)
        # seconds, not minutes, on a GPU; a loaded CPU (--smoke) may take longer
        budget = left() / 2 if args.smoke else min(left(), 30 + 25 * len(known))
        micro = run_child(",".join(known), args, child_argv, budget, ("--micro",))
        doc["environment"], doc["attention"] = micro.get("environment"), micro.get("attention", [micro])
        write_json_atomic(args.out, doc)
    run_models(models, args, child_argv, doc, left)
    doc["wall_s"] = round(time.perf_counter() - t0, 1)
    write_json_atomic(args.out, doc)
    print(table(doc["results"]))
    print(f"wrote {args.out} ({doc['wall_s']:.0f} s)")
    return 0 if all(r.get("status") == "ok" for r in doc["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
