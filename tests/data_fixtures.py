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


def prepared_letters(root: Path, n: int) -> Path:
    """Domains a, b, c of `n` letter records each (of three length patterns), prepared with
    `mixjax prepare` into ROOT/data."""
    from mixjax.cli import main

    root.mkdir(parents=True, exist_ok=True)
    letter_domain(root / "a.jsonl", "a", n)
    letter_domain(root / "b.jsonl", "b", n, length=lambda i: 20 + i % 30)
    letter_domain(root / "c.jsonl", "c", n, length=lambda i: 10 + i % 13)
    args = ["prepare", "--out", str(root / "data"), "--quiet"]
    for d in "abc":
        args += ["--domain", f"{d}={root / (d + '.jsonl')}"]
    assert main(args) == 0
    return root / "data"


def prepared_domains(root: Path, letters: str, n: int = 40) -> Path:
    """One letter domain of `n` records per letter, prepared (library call, no CLI) into ROOT/data."""
    from mixjax.data.prepare import PrepareOptions, parse_domain_flag, prepare

    specs = [parse_domain_flag(f"{c}={letter_domain(root / f'{c}.jsonl', c, n)}") for c in letters]
    prepare(specs, root / "data", PrepareOptions(), progress=False)
    return root / "data"
