"""One module per `mixjax` sub-command, each with `register(subparsers)`.

A module's `register` adds its parser and sets `func` to a function taking the parsed args and
returning an exit code. Heavy imports (jax, tfds) stay inside those functions so `--help` is fast.
"""

COMMAND_MODULES = ["prepare", "data", "fit", "optimize", "train", "sweep", "mix", "demo", "plan", "next", "export"]
