"""Mixing laws: per-domain loss as a pure JAX function of the tokens each domain got.

Every law here is *separable by target domain*: domain i's loss depends only on domain i's
parameters (and on all token counts), so one domain's parameters can be fitted, started and
selected independently of the others. A law therefore provides, per domain i:

- `domain_loss(params_i, tokens_K, i)`: the loss of domain i (tokens in the law's token unit);
- `unpack(raw_P, K, i)` / `pack(params_i, K, i)`: the map between an unconstrained vector (what
  the least-squares fit moves; exp / sigmoid give positivity and bounds) and the named parameters;
- `random_raw(key, tokens_RxK, losses_R, weights_R, i)`: a data-driven random start for the fit.

Full parameters are a NamedTuple whose fields have a leading domain axis (shape (K,) or (K, K));
`params_i` is the slice of every field at index i.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np

from mixjax.errors import MixjaxError

LAW_MODULES = {
    "li2025": "li2025",
    "li2025-pairwise": "li2025_pairwise",
    "li2025-repeat": "li2025_repeat",
    "loglinear": "loglinear",
    "linear": "linear",
}


@dataclass(frozen=True)
class Law:
    """A mixing law: its per-domain loss, reparametrisation, starts and validity checks."""

    name: str
    params_type: type  # NamedTuple of per-domain arrays
    field_shapes: Callable[[int], dict[str, tuple[int, ...]]]  # K -> field -> shape
    n_free: Callable[[int], int]  # K -> free (fitted) parameters per domain
    domain_loss: Callable[[Any, Any, Any], Any]  # (params_i, tokens_K, i) -> scalar
    unpack: Callable[[Any, int, Any], Any]  # (raw_P, K, i) -> params_i
    pack: Callable[[Any, int, Any], Any]  # (params_i, K, i) -> raw_P
    random_raw: Callable[..., Any]  # (key, tokens_RxK, losses_R, weights_R, i) -> raw_P
    rescale: Callable[[Any, float], Any]  # params for x -> params for r*x (same losses)
    check: Callable[[dict[str, np.ndarray]], str | None]  # bound violations, or None
    uses_proportions: bool  # True: loss depends on tokens / sum(tokens) only (LMO laws)
    # fields the fit does not move (li2025-repeat's unique tokens): `bind(fixed, token_scale)`
    # gives the law the fit uses, its unpack filling them in from `fixed` (tokens / token_scale)
    fixed_fields: tuple[str, ...] = ()
    bind: Callable[[dict, float], "Law"] | None = None


def names() -> list[str]:
    """Names of all registered laws."""
    return list(LAW_MODULES)


def get(name: str) -> Law:
    """The law registered under `name`; a one-line MixjaxError for an unknown name."""
    if name not in LAW_MODULES:
        raise MixjaxError(f"unknown law {name!r}; known laws: {', '.join(LAW_MODULES)}")
    return importlib.import_module(f"mixjax.laws.{LAW_MODULES[name]}").LAW


def domain_params(params, i):
    """The slice of every field of `params` at domain i."""
    return type(params)(*(field[i] for field in params))


def predict(law: Law, params, tokens_K):
    """Per-domain losses (K,) at token counts `tokens_K` (in the law's token unit)."""
    import jax
    import jax.numpy as jnp

    tokens_K = jnp.asarray(tokens_K)
    params = jax.tree.map(jnp.asarray, params)
    K = tokens_K.shape[-1]
    per_domain = jax.vmap(law.domain_loss, in_axes=(0, None, 0))
    return per_domain(params, tokens_K, jnp.arange(K))


def other_indices(K: int, i):
    """Indices 0..K-1 without i, in order; works for a traced i under vmap."""
    import jax.numpy as jnp

    idx = jnp.arange(K - 1)
    return idx + (idx >= i)


@dataclass
class FittedLaw:
    """A law with its domains, token unit, parameters and diagnostics: the law file."""

    law: Law
    domains: list[str]
    token_unit: float
    params: NamedTuple  # fields are numpy arrays
    diagnostics: dict

    def to_json(self) -> dict:
        return {
            "law": self.law.name,
            "domains": list(self.domains),
            "token_unit": _number(self.token_unit),
            "params": {name: np.asarray(v).tolist() for name, v in self.params._asdict().items()},
            "diagnostics": self.diagnostics,
        }

    @classmethod
    def from_json(cls, obj: Any, source: str = "law file") -> "FittedLaw":
        """Validate and load a law file (fitted or hand-written); one-line errors name the field."""
        if not isinstance(obj, dict):
            raise MixjaxError(f"{source}: expected a JSON object")
        for key in ("law", "domains", "params"):
            if key not in obj:
                raise MixjaxError(f"{source}: missing field {key!r}")
        law = get(obj["law"]) if isinstance(obj["law"], str) else None
        if law is None:
            raise MixjaxError(f"{source}: field 'law' must be a string")
        domains = obj["domains"]
        if (
            not isinstance(domains, list)
            or len(domains) < 2
            or not all(isinstance(d, str) and d for d in domains)
            or len(set(domains)) != len(domains)
        ):
            raise MixjaxError(f"{source}: 'domains' must list at least 2 distinct names")
        token_unit = obj.get("token_unit", 1.0)
        if (
            isinstance(token_unit, bool)
            or not isinstance(token_unit, (int, float))
            or not np.isfinite(token_unit)
            or token_unit <= 0
        ):
            raise MixjaxError(f"{source}: 'token_unit' must be a positive number, got {token_unit!r}")
        K = len(domains)
        raw = obj["params"]
        if not isinstance(raw, dict):
            raise MixjaxError(f"{source}: 'params' must be an object")
        fields = {}
        for name, shape in law.field_shapes(K).items():
            if name not in raw:
                raise MixjaxError(f"{source}: params of law {law.name} need field {name!r}")
            try:
                value = np.asarray(raw[name], dtype=np.float64)
            except (TypeError, ValueError):
                raise MixjaxError(f"{source}: params.{name} must be numbers") from None
            if value.shape != shape:
                raise MixjaxError(
                    f"{source}: params.{name} has shape {list(value.shape)}, expected "
                    f"{list(shape)} for {K} domains"
                )
            if not np.all(np.isfinite(value)):
                raise MixjaxError(f"{source}: params.{name} has a non-finite value")
            fields[name] = value
        problem = law.check(fields)
        if problem:
            raise MixjaxError(f"{source}: {problem}")
        return cls(
            law=law,
            domains=list(domains),
            token_unit=float(token_unit),
            params=law.params_type(**fields),
            diagnostics=obj.get("diagnostics", {}) or {},
        )


def load_law_file(path) -> FittedLaw:
    """Read a law file (JSON) with one-line errors for missing or malformed content."""
    import json

    try:
        with open(path) as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise MixjaxError(f"{path}: no such law file") from None
    except json.JSONDecodeError as e:
        raise MixjaxError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    return FittedLaw.from_json(obj, source=str(path))


def save_law_file(fitted: FittedLaw, path) -> None:
    """Write a law file atomically."""
    from mixjax.io import write_json_atomic

    write_json_atomic(path, fitted.to_json())


def _number(x: float):
    return int(x) if float(x).is_integer() else float(x)
