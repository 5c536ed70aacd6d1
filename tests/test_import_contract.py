"""The import contract of `mixjax/`: layers only look down (issue #17).

A module may import modules of its own layer or of lower ones, never of a higher one; imports inside
functions (lazy imports) count as much as those at the top of a file. Layers, lowest first:

    0  errors, io, names, progress, host_memory, token_counts, mixture (and the package's __init__;
       mixture: domains and normalised weights, weights files)
    1  laws, observations, testing     the law functions; the table of runs; runs simulated from a
                                       law (for tests, benchmarks and experiments)
    2  fit, optimize, report,          fit a law; weights from a law; tables and plots of weights;
       validation                      a law's predictions against held-out runs
    3  data, kernels                   sources, preparation, the mixture sampler; accelerator
                                       kernels (Pallas), apart from the layers that call them
    4  model                           the decoder, HF import/export
    5  train                           the train step, checkpoints, the loop
    6  methods                         mixture methods, the rules: the runs they propose, the weights
                                       they set as a run trains
    7  runners                         training the runs a method asks for (sweeps, prerequisite
                                       runs, `run_mix` end to end): runners above rules
    8  plan, starter, demo             programs built on the library (memory plans, the demo)
    9  commands, cli                   the `mixjax` command (a command module imports no other)

A module's layer is that of its first name under `mixjax` (`mixjax.train.step` is `train`). A new
top-level module or package needs a row here. A module also never imports another module's
private (`_name`) names.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mixjax"

LAYERS = [
    {"", "errors", "io", "names", "progress", "host_memory", "token_counts", "mixture"},
    {"laws", "observations", "testing"},
    {"fit", "optimize", "report", "validation"},
    {"data", "kernels"},
    {"model"},
    {"train"},
    {"methods"},
    {"runners"},
    {"plan", "starter", "demo"},
    {"commands", "cli"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}

# Imports that break the contract, allowed until a change removes them (issue #17): (importer, imported).
ALLOWED: set[tuple[str, str]] = set()
# Private names used across modules, allowed likewise (issue #17): (importer, module.name).
ALLOWED_PRIVATE: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("mixjax",) + path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path):
    """(imported module, imported names) for every `import mixjax...` / `from mixjax... import`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub, []) if sub in MODULES else (base, [alias.name])


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    assert top in LAYER, f"mixjax.{top} has no layer: add it to LAYERS in {__file__}"
    return LAYER[top]


def test_every_module_has_a_layer():
    for name in MODULES:
        _layer(name)


def test_layers_only_look_down():
    broken = set()
    for name, path in MODULES.items():
        for imported, _ in _imports(name, path):
            if imported.split(".")[0] != "mixjax" or (name, imported) in ALLOWED:
                continue
            if _layer(imported) > _layer(name):
                broken.add(f"{name} (layer {_layer(name)}) imports {imported} (layer {_layer(imported)})")
    assert not broken, "imports that look up:\n" + "\n".join(sorted(broken))


def test_no_private_names_imported_from_another_module():
    broken = [f"{name} imports {imported}.{n}"
              for name, path in MODULES.items()
              for imported, names in _imports(name, path)
              if imported.split(".")[0] == "mixjax" and imported != name
              for n in names if n.startswith("_") and (name, f"{imported}.{n}") not in ALLOWED_PRIVATE]
    assert not broken, "private names used across modules:\n" + "\n".join(broken)


def test_no_command_module_imports_another():
    """What two commands share lives below them (the library, or commands/flags.py for flags), so a
    command module is read on its own; only the CLI dispatch (cli.py) reaches every command."""
    from mixjax.commands import COMMAND_MODULES

    commands = {f"mixjax.commands.{name}" for name in COMMAND_MODULES}
    assert commands <= set(MODULES), "a command of COMMAND_MODULES has no module"
    broken = sorted(f"{name} imports {imported}" for name in commands
                    for imported, _ in _imports(name, MODULES[name]) if imported in commands - {name})
    assert not broken, "command modules importing each other:\n" + "\n".join(broken)
