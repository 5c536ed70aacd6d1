"""`mixjax prepare`: source files -> one TFDS (array_record) dataset per domain plus a manifest.

Each domain is tokenised with the chat template, split deterministically into train and validation
by a hash of each record's content (identical records land in the same split, so validation is
never trained on), written into a staging directory, and only swapped into the output once every
domain succeeded. A domain whose inputs and settings are unchanged (and whose files are whole) is
left alone.

Nothing already written is lost or half-overwritten: the new manifest is written into the staging
directory with the domains, so a full disk fails before the output changes; the swap moves old
copies aside and moves them back if any step fails; the manifest is moved in last (the commit).

Leftovers: a run holds an exclusive lock (flock) on the output directory for its whole duration, so
a second run on the same output is refused while one runs. Whoever holds the lock therefore knows
that any `.staging-*` or `.trash-*` folder in the output is left from a killed run, and removes it
at the start (after moving back an old domain copy from a trash folder when the manifest lists the
domain and the output lacks it: a run killed in the middle of its swap). Folders are only removed in
an output that holds a manifest or nothing but such leftovers, never in someone else's directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath

import numpy as np

from mixjax.data.formats import check_format_name, detect_format, to_messages
from mixjax.data.sources import (domain_name_for, file_sha256, first_line, read_records, source_files,
                                 split_key)
from mixjax.data.template import LOSS_ON, render
from mixjax.data.tokenizer import load_tokenizer
from mixjax.errors import MixjaxError
from mixjax.names import check_domain_name
from mixjax.io import disk_full, write_json_atomic

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
MAX_RECORD_BYTES = 16 * 2**20     # default max_record_bytes: memory in prepare is ~100x a record
MAX_DOMAIN_NAME = 100             # characters; a domain name is a folder name
_LEFTOVER_DIR = re.compile(r"\.(staging|trash)-[A-Za-z0-9_]+")
_LEFTOVER_FILE = re.compile(r"\.manifest\.json\.[A-Za-z0-9_]+\.tmp")  # from write_json_atomic


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
    max_record_bytes: int | None = MAX_RECORD_BYTES  # refuse larger records; None: no limit


# Options that only decide whether a run succeeds, not what it writes: not part of a fingerprint,
# so changing them does not rebuild anything.
_UNFINGERPRINTED = ("max_record_bytes",)


def _check_domain_name(name: str, where: str) -> str:
    check_domain_name(name, where)
    if len(name) > MAX_DOMAIN_NAME:
        raise MixjaxError(f"{where}: domain name '{name[:20]}...' is longer than {MAX_DOMAIN_NAME} characters")
    return name


def parse_domain_flag(value: str) -> SourceSpec:
    """NAME=PATH (PATH a file or a directory of .jsonl/.parquet files)."""
    flag = f"--domain {value}"
    if "=" not in value:
        raise MixjaxError(f"{flag}: expected NAME=PATH")
    name, path = value.split("=", 1)
    name = _check_domain_name(name.strip(), flag)
    return SourceSpec(flag=flag, paths=source_files(path, flag), domain=name)


def _short(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _collection_domain(record, spec: SourceSpec, values: dict[str, str], where: str) -> str:
    """The domain a collection record goes to; two split values that clean up to the same name are
    refused (they would be merged silently)."""
    value = split_key(record, spec.split_field, spec.split_prefix_sep, where)
    domain = domain_name_for(value)
    first = values.setdefault(domain, value)
    if first != value:
        raise MixjaxError(f"{where}: `split_field` {spec.split_field} values {_short(first)} and "
                          f"{_short(value)} both become domain name '{domain}'; make them differ in "
                          "letters or digits")
    if len(domain) > MAX_DOMAIN_NAME:
        _check_domain_name(domain, f"{where}: `split_field` {spec.split_field} value {_short(value)}")
    return domain


def _check_text(messages: list[dict], where: str, max_bytes: int | None) -> None:
    """Every text encodes to UTF-8 (a JSON escape like "\\ud800" decodes to a lone surrogate that
    does not) and the record's texts fit in `max_bytes`."""
    size = 0
    for m in messages:
        try:
            size += len(m["content"].encode("utf-8"))
        except UnicodeEncodeError as e:
            raise MixjaxError(f"{where}: text holds a lone surrogate {m['content'][e.start]!r} at "
                              f"character {e.start}, which is not valid Unicode (fix the source's "
                              "\\u escapes)") from None
        if max_bytes and size > max_bytes:
            raise MixjaxError(f"{where}: record text is longer than `max_record_bytes` "
                              f"({max_bytes:,} bytes); raise the limit or split the record")


def _scan(spec: SourceSpec, tokenizer, options: PrepareOptions) -> tuple[dict, dict]:
    """Read, convert and tokenise every record; returns ({domain: examples}, {domain: info})."""
    examples: dict[str, list] = {}
    info: dict[str, dict] = {}
    values: dict[str, str] = {}  # domain -> the split value that named it (collections)
    for path in spec.paths:
        file_format = spec.format
        for where, record in read_records(path, options.max_record_bytes):
            if file_format is None:
                file_format = detect_format(record, where)
            if spec.domain is not None:
                domain = spec.domain
            else:
                domain = _collection_domain(record, spec, values, where)
            messages = to_messages(record, file_format, where)
            _check_text(messages, where, options.max_record_bytes)
            tokens, loss_mask = render(messages, tokenizer, options.loss_on)
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


# Row lengths (--seq-len) for which the manifest counts the examples whose response starts after
# the row: such a response is trained and evaluated cut from its prompt (a row holds no target of it
# with its prompt's start); `late_responses` counts other lengths by reading the examples.
LATE_RESPONSE_ROWS = tuple(2 ** i for i in range(4, 16))


def _counts(split_examples: list) -> dict:
    from mixjax.data.packing import first_target

    starts = np.array([first_target(m) or len(m) for _, m in split_examples], np.int64)
    return {"examples": len(split_examples),
            "tokens": int(sum(len(t) for t, _ in split_examples)),
            "loss_tokens": int(sum(int(m.sum()) for _, m in split_examples)),
            "late_responses": {str(row): int((starts >= row).sum()) for row in LATE_RESPONSE_ROWS}}


def late_responses(data, seq_len: int) -> dict[str, tuple[int, int]]:
    """{domain: (examples whose first loss target lies at or after token `seq_len`, examples)},
    train and validation together, for the domains that have any; from the manifest's counts when
    it has this length, else by reading every example."""
    from mixjax.data.packing import first_target

    out = {}
    for domain in data.domains:
        late = total = 0
        for split in ("train", "validation"):
            counts = data.counts(domain, split)
            known = (counts.get("late_responses") or {}).get(str(seq_len))
            if not _is_count(known):
                source = data.split(domain, split)
                masks = (np.asarray(source[i]["loss_mask"], bool) for i in range(len(source)))
                known = sum((first_target(m) or len(m)) >= seq_len for m in masks)
            late, total = late + int(known), total + int(counts["examples"])
        if late:
            out[domain] = (late, total)
    return out


def late_response_note(late: dict[str, tuple[int, int]], seq_len: int, flag: str = "--seq-len",
                       default: bool = False) -> str | None:
    """One line naming the domains whose responses start after a row of `seq_len` tokens (`default`:
    train's default row), or None."""
    if not late:
        return None
    every = [d for d, (n, total) in late.items() if n == total]
    counts = ", ".join(f"{d} {n:,} of {total:,} examples" for d, (n, total) in late.items())
    return (f"note: {flag} {seq_len}{' (train' + chr(39) + 's default)' if default else ''}: responses start after the first {seq_len} tokens in {counts}; they are "
            "trained and evaluated cut from their prompts" + (f" (no response of {', '.join(every)} fits a row "
                                                              "with its prompt: raise --seq-len)" if every else ""))


def _fingerprint(spec: SourceSpec, tokenizer_spec: dict, options: PrepareOptions) -> str:
    settings = {k: v for k, v in dataclasses.asdict(options).items() if k not in _UNFINGERPRINTED}
    content = {
        "format_version": FORMAT_VERSION,
        "files": [(str(p.resolve()), file_sha256(p)) for p in spec.paths],
        "domain": spec.domain, "split_field": spec.split_field,
        "split_prefix_sep": spec.split_prefix_sep, "format": spec.format,
        "tokenizer": tokenizer_spec, "options": settings,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def read_manifest(out: Path) -> dict | None:
    """The checked manifest of a prepared directory, or None when it has none."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_bytes())
    except OSError as e:
        raise MixjaxError(f"{path}: cannot read the manifest ({e.strerror})") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, too deep
        raise MixjaxError(f"{path}: corrupt manifest ({first_line(e)})") from None
    return check_manifest(manifest, path)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_inside(relative) -> bool:
    """A relative path that stays inside its directory: no root, no '..', no empty part."""
    if not isinstance(relative, str) or not relative or "\\" in relative or "\0" in relative:
        return False
    parts = PurePosixPath(relative).parts
    return not PurePosixPath(relative).is_absolute() and bool(parts) and \
        all(p not in ("..", ".", "") for p in parts)


def check_manifest(manifest, path: Path) -> dict:
    """A manifest read from `path`, checked before any name or path in it is used: domain names
    become folders under output directories, so one like '../x' must never get through."""
    def bad(problem: str) -> MixjaxError:
        return MixjaxError(f"{path}: {problem}")

    if not isinstance(manifest, dict):
        raise bad(f"not a mixjax manifest (a JSON {type(manifest).__name__}, expected an object)")
    missing = [k for k in ("format_version", "domains", "vocab_size") if k not in manifest]
    if missing:
        raise bad(f"not a mixjax manifest (missing {', '.join(map(repr, missing))}); delete it or "
                  "prepare into a new `out`")
    if manifest["format_version"] != FORMAT_VERSION:
        raise bad(f"format_version {manifest['format_version']!r} is not {FORMAT_VERSION}, the one "
                  "this mixjax reads; prepare the data again")
    if not _is_count(manifest["vocab_size"]) or manifest["vocab_size"] < 1:
        raise bad(f"vocab_size {manifest['vocab_size']!r} is not a positive integer")
    domains = manifest["domains"]
    if not isinstance(domains, dict) or not domains:
        raise bad("'domains' must be a non-empty object")
    for name, entry in domains.items():
        _check_domain_name(name, f"{path}: domains")
        if not isinstance(entry, dict):
            raise bad(f"domain '{name}' must be an object")
        if not _is_inside(entry.get("path")):
            raise bad(f"domain '{name}': path {entry.get('path')!r} must be a relative path inside "
                      f"{path.parent} (no '..')")
        for split in ("train", "validation"):
            counts = entry.get(split)
            if not isinstance(counts, dict) or \
                    not all(_is_count(counts.get(k)) for k in ("examples", "tokens", "loss_tokens")):
                raise bad(f"domain '{name}': '{split}' must hold counts examples, tokens, loss_tokens")
    groups = manifest.get("source_groups", [])
    if not isinstance(groups, list):
        raise bad("'source_groups' must be a list")
    for i, group in enumerate(groups):
        if not isinstance(group, dict) or not isinstance(group.get("fingerprint"), str) or \
                not isinstance(group.get("domains"), list):
            raise bad(f"source_groups[{i}] must hold a 'fingerprint' and a list of 'domains'")
        for d in group["domains"]:
            _check_domain_name(d, f"{path}: source_groups[{i}]")
            if d not in domains:
                raise bad(f"source_groups[{i}] lists domain '{d}', which 'domains' lacks")
    return manifest


def prepare(specs: list[SourceSpec], out: str | os.PathLike, options: PrepareOptions | None = None,
            progress: bool = True) -> dict:
    """Prepare every domain of `specs` into `out`; returns the manifest (also written to out)."""
    options = options or PrepareOptions()
    if options.loss_on not in LOSS_ON:
        raise MixjaxError(f"`loss_on`: expected one of {', '.join(LOSS_ON)}, got '{options.loss_on}'")
    if not 0 < options.validation_fraction < 1:
        raise MixjaxError("`validation_fraction`: must be between 0 and 1")
    if options.max_record_bytes is not None and options.max_record_bytes < 1:
        raise MixjaxError("`max_record_bytes`: must be a positive number of bytes")
    for spec in specs:
        if spec.format is not None:
            check_format_name(spec.format)
    if not specs:
        raise MixjaxError("no domains given: pass `domain` NAME=PATH (or `collection`)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MixjaxError(f"`out`: {out} exists and is not a directory")
    tokenizer = load_tokenizer(options.tokenizer)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with _exclusive(out):
            return _prepare_locked(specs, out, options, tokenizer, progress)
    except MixjaxError:
        _remove_if_empty(out, created)
        raise
    except Exception as e:
        _remove_if_empty(out, created)
        full = disk_full(e)
        if full:
            kept = "nothing was left there" if created else "the previous output there is unchanged"
            raise MixjaxError(f"{full}: {out} ({kept})") from None
        raise


def _remove_if_empty(out: Path, created: bool) -> None:
    if created:
        with contextlib.suppress(OSError):
            out.rmdir()  # only if still empty




@contextlib.contextmanager
def _exclusive(out: Path):
    """Hold an exclusive lock on the directory `out` (released by the kernel if the process dies)."""
    import fcntl

    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MixjaxError(f"`out`: {out} is being written by another `mixjax prepare` (it holds "
                              "the directory's lock); wait for it to finish") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_leftovers(out: Path, manifest: dict | None) -> None:
    """Remove the staging and trash folders of killed runs; the caller holds the lock, so no run
    is using them. Done only in a prepared output, or one that holds nothing but leftovers."""
    entries = list(out.iterdir())
    dirs = [p for p in entries if _LEFTOVER_DIR.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    files = [p for p in entries if _LEFTOVER_FILE.fullmatch(p.name) and p.is_file() and not p.is_symlink()]
    if manifest is None and len(dirs) + len(files) != len(entries):
        return  # not (yet) a prepared output: leave someone else's folders alone
    for p in sorted(dirs, key=lambda p: p.name):  # .staging-* before .trash-*
        if p.name.startswith(".trash-") and manifest is not None:
            for d in manifest["domains"]:  # a swap killed half-way: put the old copy back
                if not os.path.lexists(out / d) and (p / d).is_dir():
                    os.replace(p / d, out / d)
        shutil.rmtree(p, ignore_errors=True)
    for p in files:
        with contextlib.suppress(OSError):
            p.unlink()


def _reusable(out: Path, entry: dict) -> bool:
    """A previously written domain whose files are all there and whole."""
    from mixjax.data.tfds_builder import open_domain

    path = out / entry["path"]
    if not path.is_dir():
        return False
    try:
        open_domain(str(path))
    except MixjaxError:
        return False
    return True


def _prepare_locked(specs: list[SourceSpec], out: Path, options: PrepareOptions, tokenizer,
                    progress: bool) -> dict:
    from tqdm.auto import tqdm

    from mixjax.data.tfds_builder import write_domain

    old = read_manifest(out)
    _remove_leftovers(out, old)
    if old is None and any(out.iterdir()):
        raise MixjaxError(f"`out`: {out} is not empty and holds no {MANIFEST}; refusing to write into it")
    tokenizer_spec = tokenizer.spec()
    old_sources = {s["fingerprint"]: s for s in (old or {}).get("source_groups", [])}

    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    domains: dict[str, dict] = {}
    groups, rebuilt, total_tokens = [], [], 0
    try:
        for spec in tqdm(specs, desc="prepare", unit="source", disable=None if progress else True):  # None: off when not a terminal
            fingerprint = _fingerprint(spec, tokenizer_spec, options)
            previous = old_sources.get(fingerprint)
            if previous is not None and all(_reusable(out, old["domains"][d]) for d in previous["domains"]):
                group_domains = previous["domains"]
                for d in group_domains:
                    _add_domain(domains, d, old["domains"][d], spec.flag)
            else:
                examples, info = _scan(spec, tokenizer, options)
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
                    _add_domain(domains, d, None, spec.flag)
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
                    domains[d] = entry
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
            "last_prepare": {"rebuilt": rebuilt, "first_build": old is None, "seconds": round(seconds, 3),
                             "tokens_per_second": round(total_tokens / seconds, 1) if rebuilt else None},
        }
        if old is not None and not rebuilt and _same_layout(old, manifest):
            # nothing changed: leave the directory exactly as it was
            return {**old, "last_prepare": manifest["last_prepare"]}
        write_json_atomic(staging / MANIFEST, manifest)  # a full disk fails here, before any swap
        _swap_in(out, staging, rebuilt, stale=set((old or {}).get("domains", {})) - set(domains))
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _add_domain(domains: dict, name: str, entry: dict | None, flag: str) -> None:
    if name in domains:
        raise MixjaxError(f"{flag}: duplicate domain name '{name}'")
    domains[name] = entry


def _same_layout(old: dict, new: dict) -> bool:
    return list(old.get("domains", {})) == list(new["domains"]) and \
        old.get("source_groups") == new["source_groups"]


def _swap_in(out: Path, staging: Path, rebuilt: list[str], stale: set[str]) -> None:
    """Move rebuilt domains from staging into `out`, then the staged manifest (the commit). Old
    copies wait in a trash folder until the commit; if any move fails, every move is undone."""
    trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=out))
    moved: list[tuple[Path, Path]] = []

    def move(src: Path, dst: Path) -> None:
        os.replace(src, dst)
        moved.append((src, dst))

    try:
        for d in rebuilt:
            if os.path.lexists(out / d):
                move(out / d, trash / d)
            move(staging / d, out / d)
        for d in sorted(stale):
            if os.path.lexists(out / d):
                move(out / d, trash / d)
        os.replace(staging / MANIFEST, out / MANIFEST)
    except BaseException:
        for src, dst in reversed(moved):
            os.replace(dst, src)
        shutil.rmtree(trash, ignore_errors=True)  # empty again; kept (for the next run) if undoing failed
        raise
    shutil.rmtree(trash, ignore_errors=True)
