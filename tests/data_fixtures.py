"""Small SFT domains for the data tests: each domain writes only its own letter, so a token's
origin can be checked from its value."""

from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def letter_domain(path: Path, letter: str, n: int, length=lambda i: 5 + (i * 7) % 40) -> Path:
    """n chat examples whose user and assistant texts use only `letter` (prompt in upper case)."""
    return write_jsonl(path, [
        {"messages": [{"role": "user", "content": letter.upper() * (3 + i % 5)},
                      {"role": "assistant", "content": letter * length(i) + str(i % 10)}]}
        for i in range(n)])
