"""The starting point the demo, the experiments and the notebook share: the bundled domains
prepared as datasets, and a small base model pre-trained on generic text (SFT starts from a
pretrained model). Both are cached in a working directory, so reruns skip them."""

from __future__ import annotations

import json
from pathlib import Path

from mixjax.io import write_text_atomic


def generic_text(out: Path, size_bytes: int) -> Path:
    """Plain-text records of the Python documentation topics shipped with the standard library."""
    from pydoc_data.topics import topics

    lines, size = [], 0
    for name in sorted(topics):
        line = json.dumps({"text": topics[name].strip()})
        lines.append(line)
        size += len(line)
        if size >= size_bytes:
            break
    write_text_atomic(out, "\n".join(lines) + "\n")
    return out


def prepare_bundled(out: str | Path, size_mb: float = 2.0, domains=None, progress: bool = True, log=print,
                    data_dir: str | Path | None = None):
    """The bundled domains (dialogue, math, code, or a subset) written to OUT/sources and prepared
    into `data_dir` (default OUT/data); returns the PreparedData. Preparation is skipped when
    nothing changed."""
    from mixjax.data.bundled import BUILDERS, write_bundled
    from mixjax.data.prepare import PrepareOptions, parse_domain_flag, prepare
    from mixjax.data.prepared import PreparedData
    from mixjax.report import format_manifest

    out = Path(out)
    names = list(domains or BUILDERS)
    sources = out / "sources"
    missing = [d for d in names if not (sources / f"{d}.jsonl").is_file()]
    if missing:
        log(f"writing the bundled domains {', '.join(missing)} to {sources}")
        write_bundled(sources, int(size_mb * 1e6), domains=missing)
    specs = [parse_domain_flag(f"{d}={sources / (d + '.jsonl')}") for d in names]
    data_dir = Path(data_dir) if data_dir is not None else out / "data"
    manifest = prepare(specs, data_dir, PrepareOptions(), progress=progress)
    if progress:
        log(format_manifest(manifest))
    return PreparedData(data_dir)


def pretrained_base(out: str | Path, tokens: int, batch_size: int = 16, seq_len: int = 256, lr: float = 3e-3,
                    model: str = "tiny", text_mb: float = 2.0, progress: bool = True, log=print) -> Path:
    """OUT/base: `model` pre-trained on `tokens` tokens of generic text (cached); pass it as
    `TrainConfig(init=...)`."""
    from mixjax.data.prepare import PrepareOptions, parse_domain_flag, prepare
    from mixjax.data.prepared import PreparedData
    from mixjax.train import FINAL_CHECKPOINT_ONLY, TrainConfig, run_training

    out = Path(out)
    base = out / "base"
    if (base / "result.json").is_file():
        log(f"base model cached in {base}")
        return base
    log(f"pre-training the {model} base model on generic text ({tokens:,} tokens)")
    text = generic_text(out / "sources" / "generic_text.jsonl", int(max(text_mb, 0.2) * 1e6))
    prepare([parse_domain_flag(f"text={text}")], out / "base_data", PrepareOptions(loss_on="all"), progress=False)
    config = TrainConfig(model=model, batch_size=batch_size, seq_len=seq_len, lr=lr,
                         checkpoint_every=FINAL_CHECKPOINT_ONLY,
                         progress=progress)
    run_training(config, PreparedData(out / "base_data"), {"text": 1.0}, tokens, out_dir=base)
    return base


def cached_run(config, data, weights: dict, budget: int, out_dir: Path) -> dict:
    """A finished run at the same weights, budget and seed is reused; otherwise (re)trained."""
    from mixjax.train import run_training

    result_path = Path(out_dir) / "result.json"
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        if (result.get("budget_tokens") == int(budget) and result["config"].get("seed") == config.seed
                and all(abs(result["weights"].get(d, 0.0) - w) < 1e-9 for d, w in weights.items())):
            return result
    return run_training(config, data, weights, budget, out_dir=out_dir)
