"""Metrics to JSONL (and TensorBoard when `tensorboardX` is installed), and the progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mixjax.errors import MixjaxError
from mixjax.io import write_text_atomic
from mixjax.progress import ProgressBar


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _records(path: Path) -> list[tuple[str, dict]]:
    """(line, record) for each line of a metrics file. A last line that does not parse is what a
    kill or a full disk leaves in the middle of a write: it is dropped. Any other is an error."""
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    numbered = [(i, line) for i, line in enumerate(lines, start=1) if line.strip()]
    out = []
    for i, line in numbered:
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if i == numbered[-1][0]:
                break
            raise MixjaxError(f"{path}:{i}: not a metrics record ({e}); delete that line (or the run "
                              f"directory) to resume") from None
        out.append((line, record))
    return out


class MetricsWriter:
    """Appends one JSON object a line. On resume, records after the restored step are dropped, so a
    resumed run's file equals an uninterrupted run's (a torn last line is dropped too)."""

    def __init__(self, path: str | Path | None, resume_step: int | None = None, tensorboard: bool = True):
        self.path = Path(path) if path else None
        self._fh = None
        self._tb = None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            keep = [line for line, record in _records(self.path) if record.get("step", 0) <= resume_step]
            write_text_atomic(self.path, "".join(line + "\n" for line in keep))
        elif self.path.exists():
            self.path.unlink()
        self._fh = open(self.path, "a")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter  # optional
                self._tb = SummaryWriter(str(self.path.parent / "tb"))
            except ImportError:
                pass

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            return
        self._fh.write(json.dumps(_clean(record), sort_keys=True) + "\n")
        self._fh.flush()
        if self._tb is not None:
            step = record.get("step", 0)
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, step)
                elif isinstance(v, dict):
                    for d, x in v.items():
                        if isinstance(x, (int, float)) and math.isfinite(x):
                            self._tb.add_scalar(f"{k}/{d}", x, step)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class Progress:
    """The training progress (loss and tokens/s): a tqdm bar on a terminal, a plain line every 5%
    of the steps in a log file (mixjax.progress); a no-op when disabled."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train"):
        self.bar = ProgressBar(total, initial=initial, desc=desc, unit="step", enabled=enabled)

    def update(self, loss: float, tokens_per_s: float) -> None:
        self.bar.update(1, loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}")

    def close(self) -> None:
        self.bar.close()
