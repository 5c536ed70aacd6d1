"""`--config FILE` for `train`, `sweep` and `mix`: the command's settings from a YAML or JSON file,
flags on the command line overriding it; and the resolved settings every run writes (settings.json
in its output folder), which `--config` takes back to rerun it as is.

The file is one object, flat or in sections (a key is a flag's name, with - or _):

    data: {data: prepared/, weights: {dialogue: 0.5, math: 0.3, code: 0.2}, budget_tokens: 5M}
    model: {model: qwen2.5-0.5b, bf16: true, remat: full}
    optimizer: {lr: 2.0e-5, batch_size: 8, seq_len: 4096, warmup: 0.03}
    eval: {eval_every: 200}
    checkpoint: {out: runs/a, checkpoint_every: 500}

Sections only group; a key must be a flag of the command (a key in the wrong section, or one the
command does not take, is a one-line error naming the file and the key).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mixjax.commands.flags import flag_sections
from mixjax.errors import MixjaxError
from mixjax.train.config import SECTIONS as TRAIN_SECTIONS

# The settings of train, sweep and mix that are not TrainConfig's, by section; TrainConfig's flags
# are in their fields' sections (flag_sections).
OTHER_SECTIONS = {
    "data": ("data", "weights", "budget_tokens"),
    "eval": ("online_eval_batches",),
    "checkpoint": ("out", "export_hf"),
    "execution": ("shard",),
    "method": ("method", "run_list"),  # and every method option (mixjax/commands/method_options.py)
}


def _sections() -> dict[str, tuple[str, ...]]:
    sections = {s: [] for s in ("data", *TRAIN_SECTIONS, "method")}
    for dest, section in flag_sections().items():
        sections[section].append(dest)
    for section, dests in OTHER_SECTIONS.items():
        sections[section] += dests
    return {section: tuple(dests) for section, dests in sections.items()}


SECTIONS = _sections()  # section -> the flags' dests in it
NOT_SETTINGS = {"func", "command", "config", "help"}
FILE_NAME = "settings.json"  # not config.json: a folder with one reads as a Hugging Face model
RECORDED = "recorded"  # settings.json's record of the automatic choices (backend, dtype, XLA flags): not settings


def add_config_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="settings from a YAML or JSON file (flat, or in sections data/model/optimizer/eval/"
                        "checkpoint/execution/method); flags given here override it. A run folder's "
                        f"{FILE_NAME} reruns that run as is")


def _section_of(dest: str) -> str:
    for section, dests in SECTIONS.items():
        if dest in dests:
            return section
    return "method"


def _read(path: Path) -> dict:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise MixjaxError(f"--config {path}: unreadable ({e})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            obj = yaml.safe_load(text)
        else:
            obj = json.loads(text)
    except Exception as e:  # yaml.YAMLError, json.JSONDecodeError
        where = " ".join(str(e).split())
        raise MixjaxError(f"--config {path}: not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'} "
                          f"({where})") from None
    if not isinstance(obj, dict):
        raise MixjaxError(f"--config {path}: expected an object of settings, got {type(obj).__name__}")
    return obj


def _flatten(obj: dict, path: Path) -> dict:
    flat = {}
    for key, value in obj.items():
        name = str(key).replace("-", "_")
        if name in SECTIONS and isinstance(value, dict):
            for inner, v in value.items():
                dest = str(inner).replace("-", "_")
                if dest in flat:
                    raise MixjaxError(f"--config {path}: '{inner}' is set twice")
                flat[dest] = (v, f"{key}.{inner}")
        else:
            if name in flat:
                raise MixjaxError(f"--config {path}: '{key}' is set twice")
            flat[name] = (value, str(key))
    return flat


def _is_switch(action: argparse.Action) -> bool:
    """A flag without a value (store_true, store_const, --x/--no-x)."""
    return isinstance(action, (argparse._StoreConstAction, argparse.BooleanOptionalAction))


def _convert(action: argparse.Action, value, where: str):
    """The file's value as the flag would give it, or a one-line error naming the key."""
    if _is_switch(action):
        if value is None and isinstance(action, argparse.BooleanOptionalAction) and action.default is None:
            return None  # --x / --no-x left to its automatic choice
        if not isinstance(value, bool):
            raise MixjaxError(f"{where}: expected true or false, got {value!r}")
        if isinstance(action, argparse.BooleanOptionalAction):
            return value
        return action.const if value else action.default  # true: as if the flag were given
    if value is None:
        return None
    if isinstance(value, dict):  # weights as a mapping: the flag's NAME=W,... form
        if action.dest != "weights":
            raise MixjaxError(f"{where}: expected a single value, got an object")
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    text = value if isinstance(value, str) else (repr(value) if isinstance(value, float) else str(value))
    if action.type is None:
        result = text
    else:
        try:
            result = action.type(text)
        except argparse.ArgumentTypeError as e:
            raise MixjaxError(f"{where}: {e}") from None
        except (TypeError, ValueError):
            raise MixjaxError(f"{where}: expected {getattr(action.type, '__name__', 'a valid value')}, "
                              f"got {value!r}") from None
    if action.choices is not None and result not in action.choices:
        raise MixjaxError(f"{where}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return result


def apply_config(parser: argparse.ArgumentParser, path: str) -> None:
    """Make the file's settings the parser's defaults (flags still override them); options the file
    sets are no longer required on the command line."""
    path = Path(path)
    actions = {a.dest: a for a in parser._actions if a.dest not in NOT_SETTINGS and a.option_strings}
    defaults = {}
    obj = _read(path)
    obj.pop(RECORDED, None)
    for dest, (value, key) in _flatten(obj, path).items():
        where = f"--config {path}: {key}"
        action = actions.get(dest)
        if action is None:
            known = ", ".join(sorted(actions))
            raise MixjaxError(f"{where}: not a setting of this command (it takes {known})")
        section = key.split(".")[0].replace("-", "_") if "." in key else None
        if section is not None and dest not in SECTIONS.get(section, ()) and not (
                section == "method" and _section_of(dest) == "method"):
            raise MixjaxError(f"{where}: belongs in section '{_section_of(dest)}', not '{section}'")
        defaults[dest] = _convert(action, value, where)
        action.required = False
    parser.set_defaults(**defaults)


def config_path(argv: list[str]) -> str | None:
    """The value of --config in a command's arguments (either form), or None."""
    for i, tok in enumerate(argv):
        if tok == "--":
            break
        if tok == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if tok.startswith("--config="):
            return tok.split("=", 1)[1]
    return None


def resolved(args, parser: argparse.ArgumentParser) -> dict:
    """The command's settings as given (file and flags), in sections: what `--config` reads back.
    Flags left at their default are written too, so the file says everything the run used."""
    actions = {a.dest: a for a in parser._actions if a.dest not in NOT_SETTINGS and a.option_strings}
    out: dict[str, dict] = {}
    for dest, action in actions.items():
        value = getattr(args, dest, None)
        if _is_switch(action) and not isinstance(action, argparse.BooleanOptionalAction):
            value = value is not None and value == action.const and value != action.default  # flag given?
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, tuple):
            value = list(value)
        out.setdefault(_section_of(dest), {})[dest] = value
    return out


def write_resolved(args, folder) -> None:
    """FOLDER/settings.json: the settings this command ran with (written atomically)."""
    from mixjax.io import write_json_atomic

    parser = getattr(args, "_parser", None)
    if parser is None:
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    doc = resolved(args, parser)
    if getattr(args, "_recorded", None) is not None:  # what 'auto' became here (not read back)
        doc[RECORDED] = args._recorded()
    write_json_atomic(folder / FILE_NAME, json.loads(json.dumps(doc, default=str)))
