"""The one exception type the command line turns into a one-line message."""

from __future__ import annotations

import contextlib
import re
from typing import Callable, Iterator

SETTING = re.compile(r"`([a-z][a-z0-9_]*)`")  # a setting named in a message: `init`, `batch_size`


class MixjaxError(Exception):
    """Bad input or an impossible request; its message names the file, line or setting.

    Library code names a setting (a `TrainConfig` field or a function's argument) by its Python
    name in backquotes: MixjaxError(f"`init`: {path} does not exist"). str(error) shows the name
    plainly ("init: ... does not exist"); the `mixjax` command shows the flag that sets it
    ("--init: ... does not exist", `render` with the command line's names)."""

    @property
    def settings(self) -> list[str]:
        """The settings the message names, in order."""
        return SETTING.findall(str(self.args[0])) if self.args else []

    @property
    def setting(self) -> str | None:
        """The (first) setting the error is about, or None."""
        return next(iter(self.settings), None)

    def render(self, name: Callable[[str], str] = str) -> str:
        """The message with each setting shown as name(setting)."""
        if not self.args:
            return ""
        return SETTING.sub(lambda m: name(m.group(1)), str(self.args[0]))

    def __str__(self) -> str:
        return self.render()


@contextlib.contextmanager
def about(setting: str) -> Iterator[None]:
    """A MixjaxError raised inside names `setting` first ("`setting`: <message>"), e.g. reading a
    checkpoint for the `init` setting."""
    try:
        yield
    except MixjaxError as e:
        raise MixjaxError(f"`{setting}`: {e.args[0] if e.args else ''}") from None
