"""How much the experiments' base model depends on its initial draw: the tiny preset pre-trained on
the generic text exactly as `mixjax.starter.pretrained_base` does (the experiments' Scale: 600,000
tokens, 16 x 256, lr 3e-3), once per seed; prints each run's validation loss on the text.

    python experiments/base_seeds.py --seeds 0,1,2     # ~1.5 min a seed on 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated initialisation seeds")
    p.add_argument("--work", default=str(common.ROOT / "experiments" / "work" / "base_seeds"))
    args = p.parse_args(argv)
    from mixjax.data.prepare import PrepareOptions, parse_domain_flag, prepare
    from mixjax.data.prepared import PreparedData
    from mixjax.starter import generic_text
    from mixjax.train import TrainConfig, run_training

    scale, work = common.Scale(), Path(args.work)
    data_dir = work / "base_data"
    if not (data_dir / "manifest.json").is_file():
        text = generic_text(work / "sources" / "generic_text.jsonl", int(max(scale.size_mb, 0.2) * 1e6))
        prepare([parse_domain_flag(f"text={text}")], data_dir, PrepareOptions(loss_on="all"), progress=False)
    data = PreparedData(data_dir)
    for seed in (int(s) for s in args.seeds.split(",")):
        config = TrainConfig(model="tiny", batch_size=scale.batch_size, seq_len=scale.seq_len, lr=scale.base_lr,
                             seed=seed, progress=False)
        result = run_training(config, data, {"text": 1.0}, scale.base_tokens)
        print(f"seed {seed}: text validation loss {result['val_loss']['text']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
