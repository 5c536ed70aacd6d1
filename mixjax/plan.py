"""Plan a training step's memory before renting the hardware: compile it ahead of time on
abstract inputs and read XLA's memory and cost analyses.

    from mixjax.model import get_config
    from mixjax.plan import parse_bytes, plan_step, plan_with_fit

    cfg = get_config("llama-3.1-8b", remat="full")
    plan = plan_step(cfg, devices=8, mesh_shape=(1, 8, 1), batch_size=8, seq_len=4096,
                     compute_dtype="bfloat16", loss_chunk=512)
    plan["bytes_per_device"]["total"]           # bytes per device
    fit = plan_with_fit(cfg, device_memory=parse_bytes("80GiB"), plan=plan, devices=8,
                        mesh_shape=(1, 8, 1), batch_size=8, seq_len=4096, compute_dtype="bfloat16",
                        loss_chunk=512)
    fit["fits"], fit["max_batch_size"]          # each probe of the search is one more compile

Nothing is allocated: the train state and the batch are `jax.ShapeDtypeStruct`s carrying their
shardings, and `Stepper.train_step.lower(...).compile()` compiles the real step (the one
`mixjax train` runs, donated state included) for `devices` CPU devices. With more devices than the
process has, the CPU backend is given that many (fake) devices, which must happen before JAX starts
its backends (`cpu_devices`).

What the numbers are (`bytes_per_device`, from `Compiled.memory_analysis()`, per device because
the compiled program is the per-device SPMD program):
  arguments   = argument_size_in_bytes: the train state's shards (float32 parameters, Adam mu and nu,
                counters), the batch's shard and the learning rate
  outputs     = output_size_in_bytes: the new state and the metrics
  aliased     = alias_size_in_bytes: outputs written into donated arguments (the state)
  temporaries = temp_size_in_bytes: everything else XLA's buffer assignment keeps live at once
                (activations saved for the backward, gradients, the optimizer's scratch)
  total       = arguments + outputs - aliased + temporaries: the device memory the step needs
  generated_code = generated_code_size_in_bytes (0 on the CPU backend)

It is an estimate of a GPU's memory, not a measurement: the CPU backend's buffer assignment and
scheduling are not the GPU compiler's, the model takes a few CPU-only code paths (a
transposed-weight matmul gradient; the keys-major form of "plain" attention), and GPU-only
attention kernels ("cudnn", "pallas", or "auto", which picks them on a GPU) cannot be compiled for
the CPU, so the plan compiles the O(L)-memory "blockwise" attention in their place
(`attention_compiled`). Real GPU runs also need room for the CUDA context, cuBLAS/cuDNN workspaces
and allocator fragmentation, and JAX's GPU client takes only 75% of the card unless
XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise: a fit is judged against that share of
`device_memory` (`memory_fraction`).
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable

from mixjax.errors import MixjaxError
from mixjax.kernels import registry
from mixjax.train.config import resolve_mesh

MAX_FAKE_DEVICES = 4096
# A plan on the CPU compiles the attention implementations the CPU runs itself; the others (the
# GPU/TPU kernels, and 'auto', which picks one of them there) are stood in for by "blockwise" (also
# O(L) memory).
ATTENTION_STAND_IN = {name: name if name in registry.native("cpu") else "blockwise" for name in registry.NAMES}
STOOD_IN = tuple(name for name, compiled in ATTENTION_STAND_IN.items() if compiled != name)
ESTIMATE_NOTE = (
    "Estimated by XLA's CPU compiler for {n} fake CPU device(s): memory_analysis() of the real "
    "train step on abstract inputs (nothing allocated). An estimate of a GPU's memory, not a "
    "measurement: GPU buffer assignment, scheduling and fusion differ, the model's matmul gradients "
    "(and 'plain' attention) take CPU-only forms, and a GPU process also needs the CUDA context, "
    "library workspaces and allocator slack (JAX's GPU client takes 75% of the card by default, "
    "XLA_PYTHON_CLIENT_MEM_FRACTION). {attention}")
FLOPS_NOTE = (
    "xla_per_device: Compiled.cost_analysis()['flops'] of the per-device program (rematerialised "
    "work included), but XLA counts a loop body once, so with scanned layers, --grad-accum > 1 or "
    "--loss-chunk it undercounts (by about the number of layers under scan). model_global: "
    "ModelConfig.flops_per_token(seq_len) x batch_size x seq_len (6 x matmul parameters + causal "
    "attention, no recomputation): the numerator of MFU; model_per_device = model_global / devices.")
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


# -- input checks (pure Python: run before JAX starts) --------------------------------------------

def parse_bytes(text: str, where: str = "`device_memory`") -> int:
    """'80GB' (10^9), '80GiB' (2^30), '512MB', '1.5TiB', or a plain number of bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise MixjaxError(f"{where}: expected a size like 80GB, 80GiB, 512MB or a number of bytes, got {text!r}")
    value = float(m.group(1)) * _UNITS[unit]
    if value < 1:
        raise MixjaxError(f"{where}: must be at least one byte, got {text!r}")
    return int(value)


def compiled_attention(requested: str, platform: str = "cpu") -> str:
    """The attention implementation a plan compiles: on the CPU the GPU kernels (and "auto") are
    stood in for by "blockwise" (also O(L) memory); on other backends the requested one."""
    registry.check_name(requested)
    return ATTENTION_STAND_IN[requested] if platform == "cpu" else requested


def check_request(model_cfg, *, devices: int, mesh_shape, batch_size: int, seq_len: int,
                  grad_accum: int = 1, loss_chunk: int | None = None, num_domains: int = 3,
                  compute_dtype: str = "bfloat16") -> tuple[int, int, int]:
    """Every check a plan can make without JAX; returns the resolved mesh. MixjaxError on bad input."""
    if not isinstance(devices, int) or devices < 1:
        raise MixjaxError(f"`devices` must be >= 1, got {devices}")
    if devices > MAX_FAKE_DEVICES:
        raise MixjaxError(f"`devices` {devices}: at most {MAX_FAKE_DEVICES} (fake CPU devices)")
    mesh = resolve_mesh(mesh_shape, devices)
    for setting, v in (("batch_size", batch_size), ("seq_len", seq_len), ("grad_accum", grad_accum),
                       ("num_domains", num_domains)):
        if v < 1:
            raise MixjaxError(f"`{setting}` must be >= 1, got {v}")
    unit = mesh[0] * mesh[1] * grad_accum
    if batch_size % unit:
        raise MixjaxError(f"`batch_size` {batch_size} (the global batch) is not a multiple of data x fsdp x "
                          f"grad-accum = {mesh[0]} x {mesh[1]} x {grad_accum} = {unit}")
    if seq_len > model_cfg.max_seq_len:
        raise MixjaxError(f"`seq_len` {seq_len} exceeds the model's max_seq_len {model_cfg.max_seq_len}")
    if loss_chunk is not None and (loss_chunk < 1 or seq_len % loss_chunk):
        raise MixjaxError(f"`loss_chunk` {loss_chunk} must be a positive divisor of `seq_len` {seq_len}")
    if compute_dtype not in ("float32", "bfloat16"):
        raise MixjaxError(f"compute_dtype {compute_dtype!r}: float32 or bfloat16")
    return mesh


# -- devices -----------------------------------------------------------------------------------

def _backends_initialized() -> bool:
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # private API moved: assume started (then only existing devices are used)
        return True


def cpu_devices(n: int, *, cpu_only: bool = False) -> list:
    """The first `n` CPU devices. Before JAX starts its backends, the CPU backend is given `n`
    devices (`jax_num_cpu_devices`, unless already set to more; `cpu_only` also keeps JAX off any
    GPU, as the command does); once it has started, the first `n` of the devices it has are used,
    or MixjaxError if it has fewer."""
    import jax

    if n < 1 or n > MAX_FAKE_DEVICES:
        raise MixjaxError(f"`devices` {n}: expected 1 to {MAX_FAKE_DEVICES}")
    if not _backends_initialized():
        if cpu_only:
            jax.config.update("jax_platforms", "cpu")
        if jax.config.jax_num_cpu_devices < n:  # never fewer than someone asked for before us
            try:
                jax.config.update("jax_num_cpu_devices", n)
            except RuntimeError:  # started in between: use what is there
                pass
    have = jax.devices("cpu")
    if len(have) < n:
        raise MixjaxError(f"`devices` {n}: this process's CPU backend already started with {len(have)} "
                          f"device(s); plan in a fresh process (`mixjax plan` does)")
    return list(have[:n])


# -- the plan ----------------------------------------------------------------------------------

def _flops(cost) -> float | None:
    if isinstance(cost, (list, tuple)):  # older jaxlibs: one dict per program
        cost = cost[0] if cost else None
    if not isinstance(cost, dict) or cost.get("flops") is None or cost["flops"] < 0:
        return None
    return float(cost["flops"])


def _abstract_step_inputs(stepper, mesh, batch_size: int, seq_len: int, num_domains: int) -> tuple:
    """(batch, learning rate, loss weights) of the train step as sharded shapes: nothing allocated."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from mixjax.train.step import BATCH_KEYS

    batch = {k: jax.ShapeDtypeStruct((batch_size, seq_len), jnp.bool_ if k == "loss_mask" else jnp.int32,
                                     sharding=stepper.batch_sharding) for k in BATCH_KEYS}
    replicated = NamedSharding(mesh, P())
    return (batch, jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated),
            jax.ShapeDtypeStruct((num_domains,), jnp.float32, sharding=replicated))


def _attention_note(requested: str, compiled_impl: str, platform: str, compute_dtype: str, micro: int,
                    seq_len: int) -> str:
    """What the plan's attention stands for: the kernel asked for, or what was compiled in its place
    and what the GPU kernel would add (cuDNN's dense mask gradient)."""
    if compiled_impl == requested:
        return f"Attention compiled as requested ({requested!r})."
    note = (f"Attention {requested!r} has no {platform.upper()} kernel: compiled 'blockwise' "
            f"in its place (both keep O(L) memory; the GPU kernel's own scratch is not counted).")
    if requested == "cudnn":
        extra = micro * seq_len * seq_len * 5
        note += (f" On a GPU, cuDNN's packed-segment mask is a "
                 f"[B, 1, L, L] boolean turned into a bias with a dense gradient: about 5 bytes x "
                 f"micro-batch x L^2 = {human_bytes(extra)} per device at a time (one layer), "
                 f"not in these numbers.")
    return note


def plan_step(model_cfg, *, devices, mesh_shape=None, batch_size: int, seq_len: int,
              compute_dtype: str = "bfloat16", loss_chunk: int | None = None, grad_accum: int = 1,
              num_domains: int = 3, model_name: str | None = None, fast_compile: bool = True) -> dict[str, Any]:
    """Compile the train step for this shape on abstract inputs and report its memory and FLOPs.

    `model_cfg`: a ModelConfig; its `remat` and `attention` say how the step computes (`attention`
    is what was asked for; on the CPU a GPU kernel is compiled as "blockwise", see
    `compiled_attention`). `devices`: a number (that many CPU devices, see `cpu_devices`) or a
    list of devices. `batch_size` is the global batch (per-device micro-batch x data x fsdp x
    grad_accum). Returns the dict `mixjax plan` writes (without the fit fields); see the module
    docstring for what the byte counts are.

    `fast_compile` compiles with `xla_backend_optimization_level=0`: LLVM's optimisation of the CPU
    code, which the plan never runs, is skipped; XLA's HLO passes, buffer assignment and so the
    memory analysis are the same (checked: identical bytes for tiny and llama-3.1-8b), in about
    60% of the time."""
    import jax

    from mixjax.train.mesh import abstract_arrays, make_mesh
    from mixjax.train.step import StepConfig, Stepper

    n = devices if isinstance(devices, int) else len(devices)
    mesh_resolved = check_request(model_cfg, devices=n, mesh_shape=mesh_shape, batch_size=batch_size,
                                  seq_len=seq_len, grad_accum=grad_accum, loss_chunk=loss_chunk,
                                  num_domains=num_domains, compute_dtype=compute_dtype)
    devs = cpu_devices(n) if isinstance(devices, int) else list(devices)
    platform = devs[0].platform
    requested = getattr(model_cfg, "attention", "auto")
    compiled_impl = compiled_attention(requested, platform)
    cfg = model_cfg.replace(attention=compiled_impl) if hasattr(model_cfg, "attention") else model_cfg
    mesh = make_mesh(mesh_resolved, devs)
    step_cfg = StepConfig(cfg, batch_size, seq_len, num_domains, grad_accum=grad_accum,
                          compute_dtype=compute_dtype, loss_chunk=loss_chunk)
    t0 = time.perf_counter()
    stepper = Stepper(step_cfg, mesh)
    state = abstract_arrays(stepper.abstract_state, stepper.state_shardings)
    lowered = stepper.train_step.lower(state, *_abstract_step_inputs(stepper, mesh, batch_size, seq_len, num_domains))
    t1 = time.perf_counter()
    options = {"xla_backend_optimization_level": 0} if fast_compile else {}
    compiled = lowered.compile(options) if options else lowered.compile()
    t2 = time.perf_counter()
    mem = compiled.memory_analysis()
    if mem is None:
        raise MixjaxError(f"the {platform} backend gives no memory analysis")
    args, outs = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
    alias, temp = int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes)
    total = args + outs - alias + temp
    xla_flops = _flops(compiled.cost_analysis())
    model_flops = float(model_cfg.flops_per_token(seq_len)) * batch_size * seq_len
    micro = batch_size // (mesh_resolved[0] * mesh_resolved[1] * grad_accum)
    attention_note = _attention_note(requested, compiled_impl, platform, compute_dtype, micro, seq_len)
    return {
        "model": model_name,
        "params": int(model_cfg.num_params()),
        "vocab_size": int(model_cfg.vocab_size),
        "devices": n,
        "mesh": list(mesh_resolved),
        "batch_size": batch_size,
        "micro_batch_per_device": micro,
        "grad_accum": grad_accum,
        "seq_len": seq_len,
        "num_domains": num_domains,
        "compute_dtype": compute_dtype,
        "loss_chunk": loss_chunk,
        "remat": getattr(model_cfg, "remat", "none"),
        "scan_layers": bool(getattr(model_cfg, "scanned", False)),
        "attention": requested,
        "attention_compiled": compiled_impl,
        "bytes_per_device": {"arguments": args, "outputs": outs, "aliased": alias, "temporaries": temp,
                             "total": total, "generated_code": int(mem.generated_code_size_in_bytes)},
        "flops_per_step": {"xla_per_device": xla_flops, "model_global": model_flops,
                           "model_per_device": model_flops / n},
        "flops_note": FLOPS_NOTE,
        "lower_s": round(t1 - t0, 3),
        "compile_s": round(t2 - t1, 3),
        "compile_options": options,
        "backend": platform,
        "jax_version": jax.__version__,
        "estimate_note": ESTIMATE_NOTE.format(n=n, attention=attention_note) if platform == "cpu" else
        f"Compiled for {n} {platform} device(s): XLA's memory_analysis() for this backend. {attention_note}",
    }


# -- the largest batch that fits ----------------------------------------------------------------

def search_max_batch(total_bytes_at: Callable[[int], int], *, unit: int, start: int, device_memory: int,
                     max_probes: int = 8, known: dict[int, int] | None = None) -> dict[str, Any]:
    """The largest global batch (a multiple of `unit` = data x fsdp x grad_accum) whose step needs
    at most `device_memory` bytes per device, assuming memory grows with the batch.

    From `start` (whose bytes may be given in `known`, free), double while it fits (or halve while
    it does not), then bisect between the largest batch that fitted and the smallest that did not.
    Each call of `total_bytes_at(batch)` is one probe (a compile), at most `max_probes` of them.
    Returns {"max_batch_size": largest known to fit (0: not even `unit` fits), "exact": whether
    the next multiple is known not to fit, "probes": probes made, "tried": [{batch_size, total, fits}]}."""
    if start % unit or start < unit:
        raise ValueError(f"start {start} is not a positive multiple of {unit}")
    seen = dict(known or {})
    tried: list[dict] = []
    probes = 0

    def fits(k: int) -> bool | None:
        nonlocal probes
        b = k * unit
        if b not in seen:
            if probes >= max_probes:
                return None
            probes += 1
            seen[b] = int(total_bytes_at(b))
            tried.append({"batch_size": b, "total": seen[b], "fits": seen[b] <= device_memory})
        return seen[b] <= device_memory

    k0 = start // unit
    lo, hi = 0, None  # multiples of unit: lo fits (0 = nothing known), hi does not
    ok = fits(k0)
    if ok is None:
        return {"max_batch_size": None, "exact": False, "probes": probes, "tried": tried}
    if ok:
        lo = k0
        while hi is None:
            r = fits(2 * lo)
            if r is None:
                break
            if r:
                lo *= 2
            else:
                hi = 2 * lo
    else:
        hi = k0
        while hi > 1:
            r = fits(hi // 2)
            if r is None:
                break
            if r:
                lo = hi // 2
                break
            hi //= 2
    while hi is not None and hi - lo > 1:
        mid = (lo + hi) // 2
        r = fits(mid)
        if r is None:
            break
        if r:
            lo = mid
        else:
            hi = mid
    exact = hi is not None and hi - lo == 1
    return {"max_batch_size": lo * unit, "exact": exact, "probes": probes, "tried": tried}


DEFAULT_MEM_FRACTION = 0.75  # JAX's GPU client preallocates this share of the card unless told otherwise


def memory_fraction(environ=None) -> float:
    """The share of a device's memory JAX's GPU client takes: XLA_PYTHON_CLIENT_MEM_FRACTION, or
    0.75 when unset; a value that is not a number in (0, 1] is a one-line error."""
    import os

    text = (os.environ if environ is None else environ).get("XLA_PYTHON_CLIENT_MEM_FRACTION")
    if text is None or text.strip() == "":
        return DEFAULT_MEM_FRACTION
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise MixjaxError(f"XLA_PYTHON_CLIENT_MEM_FRACTION: expected a number in (0, 1], got {text!r}")
    return value


def plan_with_fit(model_cfg, *, device_memory: int | None = None, max_probes: int = 8,
                  plan: dict[str, Any] | None = None, mem_fraction: float | None = None,
                  **kw) -> dict[str, Any]:
    """`plan_step(model_cfg, **kw)` (or `plan`, its result if already computed), and with
    `device_memory` (bytes per device) also whether it fits in the usable memory, `mem_fraction`
    (None: `memory_fraction()`, what JAX's GPU client would take) x `device_memory`, and the
    largest global batch that does (`search_max_batch`; each probe is one more compile). Adds
    "device_memory", "mem_fraction", "usable_memory", "fits", "max_batch_size" and
    "max_batch_search" (its "tried" entries hold each probe's bytes)."""
    plan = dict(plan) if plan is not None else plan_step(model_cfg, **kw)
    plan.update(device_memory=device_memory, mem_fraction=None, usable_memory=None, fits=None,
                max_batch_size=None, max_batch_search=None)
    if device_memory is None:
        return plan
    fraction = memory_fraction() if mem_fraction is None else mem_fraction
    usable = int(device_memory * fraction)
    plan.update(mem_fraction=fraction, usable_memory=usable)
    total = plan["bytes_per_device"]["total"]
    plan["fits"] = total <= usable
    d, f, _ = plan["mesh"]
    unit = d * f * plan["grad_accum"]
    batch = plan["batch_size"]
    probed: dict[int, dict] = {}

    def total_at(b: int) -> int:
        probe = plan_step(model_cfg, **{**kw, "batch_size": b})
        probed[b] = {"bytes_per_device": probe["bytes_per_device"], "compile_s": probe["compile_s"]}
        return probe["bytes_per_device"]["total"]

    search = search_max_batch(total_at, unit=unit, start=batch, device_memory=usable,
                              max_probes=max_probes, known={batch: total})
    search["tried"] = [{**t, **probed.get(t["batch_size"], {})} for t in search["tried"]]
    plan["max_batch_size"] = search["max_batch_size"]
    plan["max_batch_search"] = {**search, "max_probes": max_probes, "unit": unit,
                                "note": "global batch sizes, multiples of data x fsdp x grad_accum; "
                                        "exact = the next multiple was compiled and does not fit; "
                                        "otherwise a lower bound (probe cap reached)"}
    return plan


def human_bytes(n: float) -> str:
    """1.5 GiB, 312.0 MiB, 96.0 KiB."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def summary(plan: dict[str, Any]) -> str:
    """A few human lines; with a device memory the first says whether the step fits."""
    b = plan["bytes_per_device"]
    hb = human_bytes
    lines = []
    if plan.get("device_memory") is not None:
        search = plan.get("max_batch_search") or {}
        largest = plan.get("max_batch_size")
        if largest:
            largest_txt = f"{largest}" if search.get("exact") else f"{largest} or more (probe cap reached)"
        elif largest == 0 and search.get("exact"):
            largest_txt = "none (not even the smallest batch)"
        else:
            largest_txt = "unknown (probe cap reached)"
        verdict, op = ("fits", "<=") if plan["fits"] else ("does not fit", ">")
        usable = plan.get("usable_memory") or plan["device_memory"]
        lines.append(f"{verdict}: {hb(b['total'])} per device {op} {hb(usable)} usable "
                     f"({plan.get('mem_fraction') or 1:g} of {hb(plan['device_memory'])}, "
                     f"XLA_PYTHON_CLIENT_MEM_FRACTION) "
                     f"(arguments {hb(b['arguments'])}, temporaries {hb(b['temporaries'])}); "
                     f"largest batch that fits: {largest_txt}, {search.get('probes', 0)} probe compile(s)")
    mesh = "x".join(str(s) for s in plan["mesh"])
    lines.append(f"{plan.get('model') or 'model'} ({plan['params'] / 1e9:.3g}B params) on {plan['devices']} "
                 f"device(s), mesh {mesh} (data x fsdp x tensor), batch {plan['batch_size']} x {plan['seq_len']}, "
                 f"{plan['compute_dtype']}, remat {plan['remat']}, attention {plan['attention']} "
                 f"(compiled {plan['attention_compiled']})")
    lines.append(f"per device: total {hb(b['total'])} = arguments {hb(b['arguments'])} + outputs "
                 f"{hb(b['outputs'])} - donated {hb(b['aliased'])} + temporaries {hb(b['temporaries'])}")
    fl = plan["flops_per_step"]
    xla = f"{fl['xla_per_device']:.3g}" if fl["xla_per_device"] is not None else "n/a"
    lines.append(f"model FLOPs per step {fl['model_global']:.3g} (per device {fl['model_per_device']:.3g}; "
                 f"XLA's count per device {xla}); compiled in {plan['compile_s']:.1f} s "
                 f"(+{plan['lower_s']:.1f} s tracing)")
    lines.append(f"an estimate by the {plan['backend']} compiler, not a measurement (see estimate_note)")
    return "\n".join(lines)
