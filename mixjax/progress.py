"""Progress display: a tqdm bar on a terminal; in a log file (stderr not a terminal: SLURM, nohup,
a pipe) a plain line at the first update and each 5% instead of thousands of carriage returns.

    bar = ProgressBar(total, desc="train", unit="step")   # enabled=False: a no-op
    bar.update(1, loss="2.31")                            # keyword values are shown beside the count
    bar.close()

    for spec in track(specs, desc="prepare", unit="source"):   # the same over an iterable
        ...
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class ProgressBar:
    def __init__(self, total: int | None, *, initial: int = 0, desc: str = "", unit: str = "it",
                 enabled: bool = True, file: TextIO | None = None, every: float = 0.05):
        self.total, self.done, self.desc, self.unit = total, initial, desc, unit
        self.file = file if file is not None else sys.stderr
        self._bar = None
        self._plain = False
        if not enabled:
            return
        isatty = getattr(self.file, "isatty", None)
        if callable(isatty) and isatty():
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                             file=self.file)
        else:
            self._plain = True
            self._start, self._initial = time.perf_counter(), initial
            self._step = max(1, round(total * every)) if total else None
            self._next = initial + 1  # the first update prints (after a compile, it shows the run is alive)
            self._printed = None

    def update(self, n: int = 1, **postfix) -> None:
        self.done += n
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(refresh=False, **postfix)
            self._bar.update(n)
        elif self._plain:
            self._postfix = postfix
            if self.done >= self._next or (self.total and self.done >= self.total):
                self._print()
                if self._step:
                    self._next = (self.done // self._step + 1) * self._step
                else:  # no total: every power of two
                    self._next = 2 * max(self.done, 1)

    def _print(self) -> None:
        elapsed = time.perf_counter() - self._start
        if self.total:
            text = f"{self.desc}: {self.done}/{self.total} {self.unit}s ({100 * self.done / self.total:.0f}%)"
        else:
            text = f"{self.desc}: {self.done} {self.unit}s"
        shown = "".join(f", {k}={v}" for k, v in getattr(self, "_postfix", {}).items())
        text += f"{shown}, {_clock(elapsed)} elapsed"
        done_here = self.done - self._initial
        if self.total and 0 < done_here and self.done < self.total:
            text += f", ~{_clock(elapsed / done_here * (self.total - self.done))} left"
        print(text, file=self.file, flush=True)
        self._printed = self.done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._plain:
            if self._printed != self.done and self.done > self._initial:
                self._print()
            self._plain = False


def track(iterable: Iterable[T], total: int | None = None, *, desc: str = "", unit: str = "it",
          enabled: bool = True, file: TextIO | None = None) -> Iterator[T]:
    """Iterate, showing progress (see ProgressBar)."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    bar = ProgressBar(total, desc=desc, unit=unit, enabled=enabled, file=file)
    try:
        for item in iterable:
            yield item
            bar.update(1)
    finally:
        bar.close()
