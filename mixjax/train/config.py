"""The configuration of a training run: `TrainConfig`, each default stated once.

Each field carries its section (model / optimizer / eval / checkpoint / execution) and the help
the `mixjax` command shows for its flag (`mixjax.commands.flags` makes the flags from the
fields). The config is flat in Python and in a run's result.json ("config"); `sections()` is the
nested view, {section: {field: value}}, and `from_sections` takes it back.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from mixjax.errors import MixjaxError
from mixjax.optimize import DEFAULT_MAX_EPOCHS

SECTIONS = ("model", "optimizer", "eval", "checkpoint", "execution")
SCHEDULES = ("cosine", "linear", "constant")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
FINAL_CHECKPOINT_ONLY = 10**12  # a checkpoint_every no run reaches: the last step is saved, nothing before


def setting(default, section: str, help: str | None = None, **more) -> Any:
    """A TrainConfig field: its default, its section and the help its flag shows (`more`: e.g.
    the `choices` of a setting that takes one of a few values)."""
    assert section in SECTIONS, section
    metadata = {"section": section, "help": help, **more}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check_number(setting: str, value: float, *, minimum: float = 0.0, strict: bool = False) -> None:
    """A one-line error naming `setting` unless value is finite and >= minimum (> minimum when strict)."""
    if not (math.isfinite(value) and (value > minimum if strict else value >= minimum)):
        bound = f"{'>' if strict else '>='} {minimum:g}"
        raise MixjaxError(f"`{setting}` must be a finite number {bound}, got {value}")


def parse_mesh(text: str | Sequence[int] | None, where: str = "`mesh_shape`") -> tuple[int, int, int] | None:
    """'D,F,T' (one of them may be -1: the rest of the devices) -> a tuple; None stays None."""
    if text is None or text == "":
        return None
    try:
        shape = tuple(int(x) for x in (text.split(",") if isinstance(text, str) else text))
        if len(shape) != 3:
            raise ValueError
    except (TypeError, ValueError):
        raise MixjaxError(f"{where}: expected DATA,FSDP,TENSOR (e.g. 1,8,1 or -1,8,1), got {text!r}") from None
    if any(s < 1 and s != -1 for s in shape) or shape.count(-1) > 1:
        raise MixjaxError(f"{where} {text}: sizes must be >= 1, with at most one -1 (the rest)")
    return shape


def resolve_mesh(mesh_shape, devices: int, devices_named: str = "`devices`") -> tuple[int, int, int]:
    """The (data, fsdp, tensor) sizes of `mesh_shape` on `devices` devices, its -1 the rest; default
    all data. The one reading of a mesh shape, for `mixjax plan` and the trainer (no jax import)."""
    shape = list(parse_mesh(mesh_shape) or (-1, 1, 1))
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if devices % known:
            raise MixjaxError(f"`mesh_shape` {_fmt(shape)} does not divide {devices_named} {devices}")
        shape[shape.index(-1)] = devices // known
    if math.prod(shape) != devices:
        raise MixjaxError(f"`mesh_shape` {_fmt(shape)} needs {math.prod(shape)} devices, {devices_named} is {devices}")
    return tuple(shape)


def _fmt(shape) -> str:
    return ",".join(str(s) for s in shape)


@dataclasses.dataclass
class TrainConfig:
    """A training run. `model` is a preset name or a Hugging Face directory (None: the `init`
    checkpoint's model, else "tiny"); `init` a mixjax run/checkpoint directory or a HF directory."""

    model: str | None = setting(
        None, "model", "preset (tiny, small, base, 1b, qwen2.5-0.5b, qwen2.5-1.5b, llama-3.2-3b, "
                       "llama-3.1-8b) or a Hugging Face directory (default: tiny, or --init's model)")
    init: str | None = setting(None, "model", "start from a mixjax run/checkpoint directory or a Hugging Face directory")
    batch_size: int = setting(16, "optimizer")
    seq_len: int = setting(256, "optimizer")
    lr: float = setting(1e-3, "optimizer", "peak learning rate")
    schedule: str = setting("cosine", "optimizer", choices=SCHEDULES)
    warmup: float = setting(0.05, "optimizer", "warm-up: fraction of steps if < 1, else steps")
    final_lr_ratio: float = setting(0.1, "optimizer")
    weight_decay: float = setting(0.0, "optimizer")
    b1: float = setting(0.9, "optimizer")
    b2: float = setting(0.95, "optimizer")
    eps: float = setting(1e-8, "optimizer")
    clip_norm: float | None = setting(1.0, "optimizer", "gradient clipping (0 = off)")  # None: off
    grad_accum: int = setting(1, "optimizer", "micro-batches per step")
    compute_dtype: str = setting("auto", "model", "auto | float32 | bfloat16: the matmuls' dtype, float32 master "
                                                  "weights and optimizer state either way (auto: bfloat16 on "
                                                  "GPU and TPU, float32 on CPU)", choices=COMPUTE_DTYPES)
    loss_chunk: int | None = setting(
        None, "model", "cross-entropy over this many positions at a time, so a big vocabulary's logits "
                       "never exist for the whole sequence (must divide --seq-len)")
    seed: int = setting(0, "optimizer")
    max_epochs: float = setting(
        DEFAULT_MAX_EPOCHS, "optimizer",
        f"most passes over a domain's training tokens; a run that needs more is refused before it starts "
        f"(default {DEFAULT_MAX_EPOCHS:g}, the same in optimize, fit and mix: repeated tokens keep most of their "
        f"value to ~10 passes, Muennighoff et al. 2023; 4 keeps them as good as new)")
    train_subset: float = setting(1.0, "optimizer", "train on this fraction of each domain's training examples "
                                                    "(seeded by --seed; li2025 --target-budget sets it per run)")
    eval_every: int = setting(0, "eval", "steps between evaluations (0: at the end)")
    eval_max_batches: int | None = setting(None, "eval", "validation batches per domain")  # None: the whole split
    keep_best: bool = setting(False, "eval",
                              "keep the checkpoint with the lowest mean validation loss and report its losses")
    select_best: bool = setting(False, "eval", "report the lowest-mean evaluation (no checkpoint; keep_best "
                                               "implies it)")
    select_max_batches: int | None = setting(
        None, "eval", "validation batches per domain of the evaluations that pick the best (select_best, "
                      "keep_best): the same first batches each time; the reported loss is then one evaluation "
                      "of the picked parameters on --eval-max-batches (default: those batches throughout)")
    checkpoint_every: int = setting(0, "checkpoint", "steps between checkpoints (0 = none)")  # or FINAL_CHECKPOINT_ONLY
    resume: bool = setting(True, "checkpoint", "continue from RUN_DIR/checkpoints when present")
    mesh_shape: tuple[int, int, int] | None = setting(None, "execution", "(data, fsdp, tensor); None = all data")
    progress: bool = setting(True, "execution", "show a progress bar")
    model_overrides: dict[str, Any] = setting({}, "model", "ModelConfig fields set for this run (attention, "
                                                           "remat, scan_layers)")

    def __post_init__(self):
        """Refuse a bad value at construction: one line naming the setting (the command line shows
        its flag, e.g. "--lr must be a finite number > 0, got nan")."""
        for name in ("batch_size", "seq_len", "grad_accum"):
            if getattr(self, name) < 1:
                raise MixjaxError(f"`{name}` must be >= 1")
        check_number("lr", self.lr, strict=True)
        check_number("max_epochs", self.max_epochs, strict=True)
        for name in ("warmup", "final_lr_ratio", "weight_decay", "clip_norm"):
            if getattr(self, name) is not None:  # clip_norm None: off
                check_number(name, getattr(self, name))
        if self.eval_every < 0:
            raise MixjaxError("`eval_every` must be >= 0 (0: at the end)")
        if self.checkpoint_every < 0:
            raise MixjaxError("`checkpoint_every` must be >= 0 (0: none)")
        parse_mesh(self.mesh_shape)  # sizes >= 1, at most one -1 (the rest)

    @property
    def batch_tokens(self) -> int:
        """Tokens of one step: batch_size x seq_len."""
        return self.batch_size * self.seq_len

    def steps_for(self, budget_tokens) -> int:
        """The steps a run of `budget_tokens` trains: whole batches, rounded down (0 below one
        batch, which `run_steps` refuses). The one rule from a budget to steps."""
        return int(budget_tokens) // self.batch_tokens

    def run_steps(self, budget_tokens) -> int:
        """`steps_for(budget_tokens)` for a run about to train: a budget under one batch is a one-line error."""
        steps = self.steps_for(budget_tokens)
        if steps < 1:
            raise MixjaxError(f"`budget_tokens` {budget_tokens} is smaller than one batch "
                              f"({self.batch_size} x {self.seq_len} = {self.batch_tokens} tokens)")
        return steps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def sections(self) -> dict[str, dict[str, Any]]:
        """The nested view: {section: {field: value}}, sections in SECTIONS' order."""
        flat = self.to_dict()
        out: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        for f in dataclasses.fields(self):
            out[f.metadata["section"]][f.name] = flat[f.name]
        return out

    @classmethod
    def from_sections(cls, sections: Mapping[str, Mapping[str, Any]]) -> "TrainConfig":
        """The config of a nested view (fields left out take their defaults); a field in another
        section than its own, or an unknown one, is a one-line error."""
        section_of = {f.name: f.metadata["section"] for f in dataclasses.fields(cls)}
        flat = {}
        for section, values in sections.items():
            for name, value in values.items():
                if name not in section_of:
                    raise MixjaxError(f"{section}.{name}: not a training setting")
                if section_of[name] != section:
                    raise MixjaxError(f"{section}.{name}: belongs in section '{section_of[name]}'")
                flat[name] = value
        return cls(**flat)

