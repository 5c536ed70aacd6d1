"""Atomic file writes: a reader never sees a half-written file, a failure never clobbers the old one;
an output path checked before any work; a full disk recognised."""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from pathlib import Path

from mixjax.errors import MixjaxError


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def check_output_path(path: str | os.PathLike, flag: str, folder: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written: a file path that is an existing
    folder (or a folder path that is a file), or one under something that is not a folder."""
    p = Path(path)
    if not folder and p.is_dir():
        raise MixjaxError(f"{flag}: {path} is a folder; give the path of a file to write")
    if folder and p.exists() and not p.is_dir():
        raise MixjaxError(f"{flag}: {path} is a file; give the path of a folder")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise MixjaxError(f"{flag}: {parent} (in {path}) is not a folder")
            break

# ---- a full disk: how every writer (prepare, train's checkpoints) recognises one -----------------
DISK_FULL_TEXT = re.compile(r"No space left on device|os_error_code='?%d'?\b" % errno.ENOSPC)
_QUOTA_TEXT = "Disk quota exceeded"


def exception_chain(e: BaseException | None):
    """e, its causes and contexts, and the members of exception groups (each once)."""
    seen, todo = set(), [e]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]


def disk_full(e: BaseException | None) -> str | None:
    """"no space left on device" (or "disk quota exceeded") when `e` or an exception it came from
    says so: an OSError, or a library's error whose text does (array_record's RuntimeError, orbax's
    ValueError "RESOURCE_EXHAUSTED ... os_error_code=28"); else None."""
    for x in exception_chain(e):
        code = x.errno if isinstance(x, OSError) else None
        if code == errno.ENOSPC or DISK_FULL_TEXT.search(str(x)):
            return "no space left on device"
        if code == errno.EDQUOT or _QUOTA_TEXT in str(x):
            return "disk quota exceeded"
    return None
