"""`mixjax prepare`: source files -> one TFDS (array_record) dataset per domain plus a manifest.

Each domain is tokenised with the chat template, split deterministically into train and validation
by a hash of each record's content (identical records land in the same split, so validation is
never trained on), written into a staging directory, and only swapped into the output once every
domain succeeded. A domain whose inputs and settings are unchanged is left alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from mixjax.data.formats import check_format_name, detect_format, to_messages
from mixjax.data.sources import domain_name_for, file_sha256, read_records, source_files, split_key
from mixjax.data.template import LOSS_ON, render
from mixjax.data.tokenizer import load_tokenizer
from mixjax.errors import MixjaxError
from mixjax.names import check_domain_name
from mixjax.io import write_json_atomic

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclasses.dataclass
class SourceSpec:
    """Files feeding one domain, or a collection split into domains by a field."""

    flag: str                          # how the user named it, for error messages
    paths: list[Path]
    domain: str | None = None          # a single domain ...
    split_field: str | None = None     # ... or domains from this field of each record
    split_prefix_sep: str | None = None
    format: str | None = None          # None: detect per file


@dataclasses.dataclass
class PrepareOptions:
    tokenizer: str | None = None       # "byte" or a directory with tokenizer.json
    loss_on: str = "assistant"
    validation_fraction: float = 0.05
    min_validation: int = 1
    max_validation: int = 1000


def _check_domain_name(name: str, flag: str) -> str:
    return check_domain_name(name, flag)


def parse_domain_flag(value: str) -> SourceSpec:
    """NAME=PATH (PATH a file or a directory of .jsonl/.parquet files)."""
    flag = f"--domain {value}"
    if "=" not in value:
        raise MixjaxError(f"{flag}: expected NAME=PATH")
    name, path = value.split("=", 1)
    name = _check_domain_name(name.strip(), flag)
    return SourceSpec(flag=flag, paths=source_files(path, flag), domain=name)


def _scan(spec: SourceSpec, tokenizer, loss_on: str) -> tuple[dict, dict]:
    """Read, convert and tokenise every record; returns ({domain: examples}, {domain: info})."""
    examples: dict[str, list] = {}
    info: dict[str, dict] = {}
    for path in spec.paths:
        file_format = spec.format
        for where, record in read_records(path):
            if file_format is None:
                file_format = detect_format(record, where)
            if spec.domain is not None:
                domain = spec.domain
            else:
                domain = domain_name_for(split_key(record, spec.split_field, spec.split_prefix_sep, where))
            messages = to_messages(record, file_format, where)
            tokens, loss_mask = render(messages, tokenizer, loss_on)
            d_info = info.setdefault(domain, {"sources": {}, "dropped_no_loss_tokens": 0})
            d_info["sources"][str(path)] = file_format
            if not loss_mask.any():
                d_info["dropped_no_loss_tokens"] += 1
                continue
            content_hash = hashlib.sha1(json.dumps(record, sort_keys=True, default=str).encode()).digest()
            examples.setdefault(domain, []).append((content_hash, tokens, loss_mask))
        if spec.domain is not None and file_format is None:
            raise MixjaxError(f"{spec.flag}: {path} holds no records (empty domain)")
    return examples, info


def _split(examples: list, options: PrepareOptions) -> dict[str, list]:
    """Validation = the records with the smallest content hashes (duplicates stay together)."""
    n = len(examples)
    n_val = int(round(options.validation_fraction * n))
    n_val = max(options.min_validation, min(options.max_validation, n_val))
    hashes = sorted(h for h, _, _ in examples)
    threshold = hashes[n_val - 1]
    train = [(t, m) for h, t, m in examples if h > threshold]
    validation = [(t, m) for h, t, m in examples if h <= threshold]
    return {"train": train, "validation": validation}


def _counts(split_examples: list) -> dict:
    return {"examples": len(split_examples),
            "tokens": int(sum(len(t) for t, _ in split_examples)),
            "loss_tokens": int(sum(int(m.sum()) for _, m in split_examples))}


def _fingerprint(spec: SourceSpec, tokenizer_spec: dict, options: PrepareOptions) -> str:
    content = {
        "format_version": FORMAT_VERSION,
        "files": [(str(p.resolve()), file_sha256(p)) for p in spec.paths],
        "domain": spec.domain, "split_field": spec.split_field,
        "split_prefix_sep": spec.split_prefix_sep, "format": spec.format,
        "tokenizer": tokenizer_spec, "options": dataclasses.asdict(options),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MixjaxError(f"{path}: corrupt manifest ({e})") from None


def prepare(specs: list[SourceSpec], out: str | os.PathLike, options: PrepareOptions | None = None,
            progress: bool = True) -> dict:
    """Prepare every domain of `specs` into `out`; returns the manifest (also written to out)."""
    from tqdm.auto import tqdm

    from mixjax.data.tfds_builder import write_domain

    options = options or PrepareOptions()
    if options.loss_on not in LOSS_ON:
        raise MixjaxError(f"--loss-on: expected one of {', '.join(LOSS_ON)}, got '{options.loss_on}'")
    if not 0 < options.validation_fraction < 1:
        raise MixjaxError("--validation-fraction: must be between 0 and 1")
    for spec in specs:
        if spec.format is not None:
            check_format_name(spec.format)
    if not specs:
        raise MixjaxError("no domains given: pass --domain NAME=PATH (or --collection)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MixjaxError(f"--out: {out} exists and is not a directory")
    old = read_manifest(out) if out.is_dir() else None
    if out.is_dir() and old is None and any(out.iterdir()):
        raise MixjaxError(f"--out: {out} is not empty and holds no {MANIFEST}; refusing to write into it")
    tokenizer = load_tokenizer(options.tokenizer)
    tokenizer_spec = tokenizer.spec()
    old_sources = {s["fingerprint"]: s for s in (old or {}).get("source_groups", [])}

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    domains: dict[str, dict] = {}
    groups, rebuilt, total_tokens = [], [], 0
    try:
        for spec in tqdm(specs, desc="prepare", unit="source", disable=None if progress else True):  # None: off when not a terminal
            fingerprint = _fingerprint(spec, tokenizer_spec, options)
            previous = old_sources.get(fingerprint)
            if previous is not None and all((out / d).is_dir() for d in previous["domains"]):
                group_domains = previous["domains"]
                for d in group_domains:
                    _add_domain(domains, d, old["domains"][d], spec.flag)
            else:
                examples, info = _scan(spec, tokenizer, options.loss_on)
                group_domains = sorted(examples) if spec.domain is None else [spec.domain]
                for d in sorted(set(info) - set(examples)):
                    raise MixjaxError(f"{spec.flag}: domain '{d}' has no example with loss tokens "
                                      f"(empty domain; {info[d]['dropped_no_loss_tokens']} dropped)")
                if not group_domains:
                    raise MixjaxError(f"{spec.flag}: no records (empty domain)")
                for d in group_domains:
                    if len(examples[d]) < 2:
                        raise MixjaxError(f"{spec.flag}: domain '{d}' has {len(examples[d])} example; "
                                          "need at least 2 (one goes to validation)")
                    splits = _split(examples[d], options)
                    dataset_dir = write_domain(str(staging / d), splits)
                    entry = {
                        "path": os.path.relpath(dataset_dir, staging),
                        "sources": info[d]["sources"],
                        "dropped_no_loss_tokens": info[d]["dropped_no_loss_tokens"],
                        "train": _counts(splits["train"]),
                        "validation": _counts(splits["validation"]),
                    }
                    total_tokens += entry["train"]["tokens"] + entry["validation"]["tokens"]
                    _add_domain(domains, d, entry, spec.flag)
                    rebuilt.append(d)
            groups.append({"flag": spec.flag, "fingerprint": fingerprint, "domains": group_domains})
        seconds = time.perf_counter() - started
        manifest = {
            "format_version": FORMAT_VERSION,
            "tokenizer": tokenizer_spec,
            "vocab_size": tokenizer.vocab_size,
            "loss_on": options.loss_on,
            "options": dataclasses.asdict(options),
            "domains": domains,
            "source_groups": groups,
            "last_prepare": {"rebuilt": rebuilt, "seconds": round(seconds, 3),
                             "tokens_per_second": round(total_tokens / seconds, 1) if rebuilt else None},
        }
        if old is not None and not rebuilt and _same_layout(old, manifest):
            # nothing changed: leave the directory exactly as it was
            return {**old, "last_prepare": manifest["last_prepare"]}
        _swap_in(out, staging, rebuilt, stale=set((old or {}).get("domains", {})) - set(domains))
        write_json_atomic(out / MANIFEST, manifest)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _add_domain(domains: dict, name: str, entry: dict, flag: str) -> None:
    if name in domains:
        raise MixjaxError(f"{flag}: duplicate domain name '{name}'")
    domains[name] = entry


def _same_layout(old: dict, new: dict) -> bool:
    return list(old.get("domains", {})) == list(new["domains"]) and \
        old.get("source_groups") == new["source_groups"]


def _swap_in(out: Path, staging: Path, rebuilt: list[str], stale: set[str]) -> None:
    """Move rebuilt domains from staging into `out`; old copies go only once the new are in place."""
    trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=out))
    try:
        for d in rebuilt:
            if (out / d).exists():
                os.replace(out / d, trash / d)
            os.replace(staging / d, out / d)
        for d in stale:
            if (out / d).exists():
                os.replace(out / d, trash / d)
    finally:
        shutil.rmtree(trash, ignore_errors=True)
