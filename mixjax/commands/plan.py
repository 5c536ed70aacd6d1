"""`mixjax plan`: a train step's memory per device, compiled ahead of time on fake CPU devices."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

from mixjax.kernels import registry
from mixjax.plan import STOOD_IN

DESCRIPTION = f"""Compile the train step that `mixjax train` would run (same model, mesh, batch,
precision, rematerialisation and attention) ahead of time on abstract inputs, on N fake CPU devices,
without allocating the model, and report XLA's memory analysis per device (arguments, outputs,
donated, temporaries, total), FLOPs and compile time. Writes --out (JSON) and prints a summary.
The numbers are the CPU compiler's estimate of a GPU's memory, not a measurement; GPU-only
attention kernels ({', '.join(STOOD_IN)}) are compiled as 'blockwise' in their place.
With --device-memory it also says whether the step fits and searches the largest global batch
that does (doubling, then bisection; each probe is one more compile).
Exit status: 0 = planned (and fits, when --device-memory is given); 1 = does not fit (one line on
stderr, the JSON is written anyway); 2 = bad input (one line on stderr)."""


def _library_defaults() -> dict:
    """The defaults of the plan functions' keyword arguments (stated there, in mixjax.plan)."""
    from mixjax.plan import plan_step, plan_with_fit

    return {name: param.default for function in (plan_step, plan_with_fit)
            for name, param in inspect.signature(function).parameters.items()
            if param.default is not inspect.Parameter.empty}


def register(subparsers) -> None:
    default = _library_defaults()
    p = subparsers.add_parser("plan", help="a train step's memory per device, compiled ahead of time",
                              description=DESCRIPTION)
    p.add_argument("--model", required=True, metavar="PRESET",
                   help="preset (tiny, small, base, 1b, qwen2.5-0.5b, qwen2.5-1.5b, llama-3.2-3b, llama-3.1-8b)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="vocabulary for presets without one (tiny, small, base, 1b); default 259 (bytes)")
    p.add_argument("--devices", type=int, required=True, metavar="N", help="devices to plan for (fake CPU devices)")
    p.add_argument("--mesh", default=None, metavar="D,F,T",
                   help="mesh (data, fsdp, tensor), one may be -1 (the rest); default all data, as `mixjax train`")
    p.add_argument("--batch-size", type=int, required=True,
                   help="GLOBAL batch: micro-batch per device x data x fsdp (x grad-accum)")
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--grad-accum", type=int, default=default["grad_accum"],
                   help=f"micro-batches per step (default {default['grad_accum']})")
    p.add_argument("--num-domains", type=int, default=default["num_domains"],
                   help=f"domains in the batch (default {default['num_domains']})")
    p.add_argument("--bf16", action="store_true", help="bfloat16 compute (float32 master weights)")
    p.add_argument("--remat", default=None, metavar="POLICY",
                   help="none, dots or full: what the backward recomputes (default: the model's, none)")
    p.add_argument("--attention", default=None, metavar="IMPL",
                   help=f"{', '.join(registry.NAMES[:-1])} or {registry.NAMES[-1]} (default auto); "
                        f"{', '.join(STOOD_IN[:-1])} and {STOOD_IN[-1]} are compiled as blockwise on the CPU "
                        "(recorded as attention_compiled)")
    p.add_argument("--loss-chunk", type=int, default=None, metavar="N",
                   help="cross-entropy N positions at a time (must divide --seq-len)")
    p.add_argument("--device-memory", default=None, metavar="SIZE",
                   help="memory per device, e.g. 80GB (10^9 bytes), 80GiB (2^30), 512MB, or bytes: "
                        "say whether the step fits in the usable share of it (XLA_PYTHON_CLIENT_MEM_FRACTION, "
                        "0.75 when unset, as JAX's GPU client) and search the largest batch that does")
    p.add_argument("--max-probes", type=int, default=default["max_probes"],
                   help=f"most extra compiles for the largest-batch search (default {default['max_probes']})")
    p.add_argument("--out", required=True, metavar="JSON", help="plan file to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from mixjax.errors import MixjaxError
    from mixjax.io import check_output_path, write_json_atomic
    from mixjax.model.config import get_config
    from mixjax.plan import check_request, cpu_devices, memory_fraction, parse_bytes, plan_with_fit, summary
    from mixjax.train.config import parse_mesh

    # Everything that can be checked is checked before JAX starts (and before minutes of compiling).
    device_memory = parse_bytes(args.device_memory) if args.device_memory is not None else None
    mem_fraction = memory_fraction()  # checked now, before any compile
    mesh = parse_mesh(args.mesh)
    overrides = {k: v for k, v in (("remat", args.remat), ("attention", args.attention)) if v is not None}
    vocab = args.vocab_size
    if vocab is not None and vocab < 2:
        raise MixjaxError(f"--vocab-size must be >= 2, got {vocab}")
    try:
        cfg = get_config(args.model, vocab, **overrides)
    except MixjaxError as e:
        if "needs a vocab_size" not in str(e):
            raise
        cfg = get_config(args.model, 259, **overrides)  # byte tokenizer's vocabulary
    if args.max_probes < 0:
        raise MixjaxError(f"--max-probes must be >= 0, got {args.max_probes}")
    compute_dtype = "bfloat16" if args.bf16 else "float32"
    kw = dict(mesh_shape=mesh, batch_size=args.batch_size, seq_len=args.seq_len, grad_accum=args.grad_accum,
              loss_chunk=args.loss_chunk, num_domains=args.num_domains, compute_dtype=compute_dtype)
    check_request(cfg, devices=args.devices, **kw)
    check_output_path(args.out, "--out")
    out = Path(args.out)

    devices = cpu_devices(args.devices, cpu_only=True)
    plan = plan_with_fit(cfg, devices=devices, model_name=args.model, device_memory=device_memory,
                         max_probes=args.max_probes, mem_fraction=mem_fraction, **kw)
    write_json_atomic(out, plan)
    text = summary(plan)
    if plan["fits"] is False:
        print(f"{text.splitlines()[0]}; plan in {out}", file=sys.stderr)
        return 1
    print(text)
    print(f"wrote {out}")
    return 0
