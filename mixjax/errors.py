"""The one exception type the command line turns into a one-line message."""


class MixjaxError(Exception):
    """Bad input or an impossible request; its message names the file, line or flag."""
