"""Train-step throughput, MFU and peak memory of real model shapes on the local GPU(s).

One command for a GPU session (about 15 minutes of device time, so each model compiles once and
runs ~3 warm-up + ~10 timed steps):

    python benchmarks/bench_gpu.py [--models qwen2.5-0.5b,qwen2.5-1.5b,llama-3.2-3b] [--seq-len 4096]
        [--batch-size N (per device)] [--remat dots|full|none] [--attention auto|blockwise|cudnn|pallas|plain]
        [--loss-chunk 512] [--steps 10] [--warmup 3] [--mesh D,F,T] [--peak-tflops 989] [--out PATH]
    python benchmarks/bench_gpu.py --smoke      # the same code on 2 CPU devices: tiny, seq 128, 2 steps

Random weights (`Stepper.init_params`) and random tokens, bf16 compute with float32 master
weights and AdamW (the `mixjax train` step), on all local devices (default mesh: all fsdp).
Each model runs in its own child process, so its peak memory (`peak_bytes_in_use`, which JAX
never resets) is its own, and an out-of-memory error, a crash or a timeout (--timeout) is recorded
for that model and the next one still runs. Results are written after every model (atomically)
to benchmarks/results/gpu.json (--smoke: gpu_smoke.json), and a table is printed. A model that
fails other than by running out of memory (say cuDNN is unusable for --attention auto) is run
again with --fallback-attention (blockwise). Exit status 1 when any run was not "ok".

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
BATCH_PER_DEVICE = {"qwen2.5-0.5b": 4, "qwen2.5-1.5b": 2, "llama-3.2-3b": 1, "llama-3.1-8b": 1, "tiny": 2}
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
        overrides = {k: v for k, v in (("remat", args.remat), ("attention", args.attention)) if v}
        cfg = get_config(model, args.vocab_size if model in ("tiny", "small", "base", "1b") else None, **overrides)
        mesh_shape = tuple(int(x) for x in args.mesh.split(",")) if args.mesh else (1, -1, 1)
        mesh = make_mesh(mesh_shape, devices)
        per_device = args.batch_size or BATCH_PER_DEVICE.get(model, 1)
        div = mesh.shape["data"] * mesh.shape["fsdp"]
        b, l = per_device * div, args.seq_len
        chunk = args.loss_chunk if args.loss_chunk and args.loss_chunk < l else None
        try:
            from mixjax.model.attention import resolve_attention
            attention_resolved = resolve_attention(cfg.attention, dtype=jax.numpy.bfloat16)
        except Exception as e:  # noqa: BLE001  (older tree, or an implementation this backend lacks)
            attention_resolved = f"unresolved: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(kind)
        out.update(jax_version=jax.__version__, params=cfg.num_params(), devices=n, device_kind=kind,
                   platform=devices[0].platform,
                   mesh=[int(s) for s in mesh.devices.shape], batch_size_per_device=per_device, batch_size=b,
                   seq_len=l, compute_dtype="bfloat16", loss_chunk=chunk,
                   remat=getattr(cfg, "remat", None), attention=getattr(cfg, "attention", None),
                   attention_resolved=attention_resolved, scan_layers=getattr(cfg, "scanned", None),
                   peak_flops_per_device=peak)
        print(f"[{model}] {n} x {kind}, mesh {out['mesh']}, batch {b} x {l}, remat {out['remat']}, "
              f"attention {out['attention']} -> {attention_resolved}", flush=True)

        stepper = Stepper(StepConfig(cfg, b, l, 3, compute_dtype="bfloat16", loss_chunk=chunk), mesh)
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


def run_child(model: str, args, argv: list[str]) -> dict:
    """`run_one` in a fresh process (own peak memory, survives crashes), with a timeout."""
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
    if args.smoke:
        env.setdefault("JAX_PLATFORMS", "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        result_path, err_path = Path(tmp) / "result.json", Path(tmp) / "stderr.txt"
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--models", model,
               "--child-out", str(result_path)]
        t = time.perf_counter()
        with open(err_path, "w") as err:
            try:
                rc = subprocess.run(cmd, env=env, stderr=err, timeout=args.timeout).returncode
            except subprocess.TimeoutExpired:
                rc = None
        tail = err_path.read_text(errors="replace").strip().splitlines()[-8:]
        if result_path.exists():
            return json.loads(result_path.read_text())
        status = "timeout" if rc is None else ("oom" if any(is_oom(x) for x in tail) else "crashed")
        return {"model": model, "status": status, "returncode": rc, "stderr_tail": tail,
                "wall_s": round(time.perf_counter() - t, 3)}


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
                    help="per device (default: 4 for 0.5b, 2 for 1.5b, 1 for 3b and 8b)")
    ap.add_argument("--remat", default="dots", help="none, dots or full (default dots)")
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
    ap.add_argument("--timeout", type=float, default=420, help="seconds per model (child process)")
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # "--mesh -1,8,1": argparse takes a value starting with '-' for an option
    for i, tok in enumerate(argv[:-1]):
        if tok == "--mesh" and argv[i + 1].startswith("-"):
            argv[i:i + 2] = [f"--mesh={argv[i + 1]}"]
            break
    args = parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.child_out:  # one model, in this (child) process
        import mixjax  # noqa: F401  (host malloc settings before JAX starts)
        if args.smoke:  # two CPU devices, so the fsdp mesh and its shardings are exercised
            os.environ.setdefault("JAX_PLATFORMS", "cpu")
            import jax
            jax.config.update("jax_num_cpu_devices", 2)
        write_json_atomic(args.child_out, run_one(models[0], args))
        return 0
    child_argv = drop_option(argv, "--models")  # each child gets its one model
    doc = {"benchmark": "bench_gpu", "argv": argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "host": platform.node(), "python": platform.python_version(),
           "settings": {k: getattr(args, k) for k in ("seq_len", "batch_size", "remat", "attention", "loss_chunk",
                                                      "steps", "warmup", "mesh", "peak_tflops", "smoke")},
           "results": []}
    for model in models:
        print(f"== {model}", flush=True)
        if args.in_process:
            if args.smoke:
                os.environ.setdefault("JAX_PLATFORMS", "cpu")
            result = run_one(model, args)
        else:
            result = run_child(model, args, child_argv)
        if result.get("status") != "ok":
            print(f"[{model}] {result.get('status')}: {result.get('error') or result.get('stderr_tail')}", flush=True)
        fallback = args.fallback_attention
        built = "params" in result or result.get("status") == "crashed"  # not e.g. an unknown preset
        if result.get("status") in ("error", "crashed") and built and fallback != "none" \
                and args.attention != fallback:
            # e.g. cuDNN missing or too old for 'auto'/'cudnn': measure the model with the fallback too
            doc["results"].append(result)
            print(f"[{model}] again with --attention {fallback}", flush=True)
            retry = argparse.Namespace(**{**vars(args), "attention": fallback})
            result = run_one(model, retry) if args.in_process else run_child(
                model, retry, [*drop_option(child_argv, "--attention"), f"--attention={fallback}"])
            result["fallback_for"] = args.attention
        doc["results"].append(result)
        write_json_atomic(args.out, doc)  # after every model: a lost lease keeps what was measured
    print(table(doc["results"]))
    print(f"wrote {args.out}")
    return 0 if all(r.get("status") == "ok" for r in doc["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
