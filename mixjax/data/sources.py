"""Reading domain source files (JSONL or Parquet) record by record, with file and line for errors."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

from mixjax.errors import MixjaxError

SOURCE_SUFFIXES = (".jsonl", ".json", ".parquet")


def source_files(path: str | os.PathLike, flag: str) -> list[Path]:
    """A file, or the JSONL/Parquet files directly inside a directory, sorted by name."""
    p = Path(path)
    if p.is_file():
        if p.suffix not in SOURCE_SUFFIXES:
            raise MixjaxError(f"{flag}: {p} is not a .jsonl or .parquet file")
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in SOURCE_SUFFIXES)
        if not files:
            raise MixjaxError(f"{flag}: directory {p} holds no .jsonl or .parquet files")
        return files
    raise MixjaxError(f"{flag}: {p} does not exist")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_records(path: Path, max_record_bytes: int | None = None) -> Iterator[tuple[str, dict]]:
    """Yield (where, record) with where = 'file:line' (JSONL) or 'file:row N' (Parquet).

    A JSONL line longer than `max_record_bytes` is refused before it is read whole, so memory stays
    bounded by the limit; errors name the file and line (or row)."""
    if path.suffix == ".parquet":
        yield from _parquet_records(path)
        return
    with open(path, "rb") as f:
        line_no = 0
        while True:
            raw = f.readline(max_record_bytes + 1) if max_record_bytes else f.readline()
            if not raw:
                return
            line_no += 1
            if max_record_bytes and len(raw) > max_record_bytes and not raw.endswith(b"\n"):
                raise MixjaxError(f"{path}:{line_no}: record is longer than `max_record_bytes` "
                                  f"({max_record_bytes:,} bytes); raise the limit or split the record")
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, too deep
                raise MixjaxError(f"{path}:{line_no}: malformed JSON ({e.__class__.__name__}: "
                                  f"{first_line(e)})") from None
            yield f"{path}:{line_no}", record


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its class name when the message is empty)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else e.__class__.__name__


def _parquet_records(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise MixjaxError(f"{path}: not a readable Parquet file ({first_line(e)})") from None
    batches = table.iter_batches(batch_size=4096)
    row = 0
    while True:
        try:  # a corrupt page surfaces only when its batch is decoded (OSError, ArrowException)
            batch = next(batches, None)
            records = None if batch is None else batch.to_pylist()
        except Exception as e:
            raise MixjaxError(f"{path}: corrupt Parquet data after row {row} "
                              f"({e.__class__.__name__}: {first_line(e)})") from None
        if records is None:
            return
        for record in records:
            row += 1
            yield f"{path}:row {row}", record


def split_key(record: dict, field: str, prefix_sep: str | None, where: str) -> str:
    """The value a collection is split on: a field (Tulu3 'source') or its prefix (OpenOrca 'id')."""
    if field not in record:
        raise MixjaxError(f"{where}: missing split field '{field}'")
    value = str(record[field])
    if prefix_sep:
        value = value.split(prefix_sep, 1)[0]
    return value


def domain_name_for(value: str) -> str:
    """A split value made safe to use as a domain and directory name: ASCII letters, digits, '-'
    and '_' kept, anything else '_' (so distinct values can meet: callers refuse that)."""
    safe = "".join(c if (c.isascii() and c.isalnum()) or c in "-_" else "_" for c in value.strip()).strip("_")
    return safe or "unnamed"
