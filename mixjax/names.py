"""The names that become paths: domain names and run names are folder and file names under an
output directory, so a name read from any file (a manifest, a sweep record, an observations CSV)
is checked with the same rule as a flag before anything is written under it."""

from __future__ import annotations

import re

from mixjax.errors import MixjaxError

_DOMAIN = re.compile(r"[A-Za-z0-9_-]+")
_RUN = re.compile(r"[A-Za-z0-9_+=-][A-Za-z0-9_.+=-]*")


def check_domain_name(name, where: str) -> str:
    """`name` if it uses only letters, digits, '-' and '_'; else a one-line error naming `where`
    (a flag, or a file and line)."""
    if not isinstance(name, str) or not _DOMAIN.fullmatch(name):
        raise MixjaxError(f"{where}: domain name {name!r} must use letters, digits, '-' or '_'")
    return name


def check_run_name(name, where: str) -> str:
    """`name` if it is one safe path component (letters, digits, '_', '-', '+', '=', and '.' not
    first), so a run folder named after it stays inside its sweep; else a one-line error."""
    if not isinstance(name, str) or not _RUN.fullmatch(name):
        raise MixjaxError(f"{where}: run name {name!r} must be letters, digits, '_', '-', '+', '=' or "
                          "'.' (not first), so that it is a folder inside the output directory")
    return name
