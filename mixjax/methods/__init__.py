"""Mixture methods behind one interface (see `base.py`); `get(name)` builds one by name."""

from __future__ import annotations

import importlib
import inspect

from mixjax.errors import MixjaxError

# name -> "module:attribute" in mixjax.methods, imported when the method is first asked for: a class
# whose constructor takes the method's options, or a factory function taking the number of domains
# and the options, whose `options_from` names the class whose fields those options are.
METHOD_FACTORIES = {
    "stratified": "static:Stratified",
    "grid": "static:Grid",
    "li2025": "offline:Li2025",
    "dml": "offline:DataMixingLaws",
    "regmix": "offline:RegMix",
    "aioli": "aioli:released",
    "doremi": "doremi:DoReMi",
    "doge": "doge:DoGE",
    "skillit": "skillit:SkillIt",
}
ONLINE = ("aioli", "doremi", "doge", "skillit")  # set the weights while a run trains
OFFLINE = tuple(name for name in METHOD_FACTORIES if name not in ONLINE)


def names() -> list[str]:
    return list(OFFLINE + ONLINE)


def _factory(name: str):
    """The class or factory function registered under `name`; a one-line error for an unknown name."""
    if name not in METHOD_FACTORIES:
        raise MixjaxError(f"`method`: unknown method '{name}'; known: {', '.join(names())}")
    module, attribute = METHOD_FACTORIES[name].split(":")
    return getattr(importlib.import_module(f"mixjax.methods.{module}"), attribute)


def option_names(factory) -> set[str]:
    """The keyword options a method's constructor takes, following `**kwargs` up to the base
    classes' constructors (or, for a factory function, those of its `options_from` class)."""
    cls = getattr(factory, "options_from", factory)
    accepted = set()
    for klass in inspect.getmro(cls)[:-1]:  # not object
        if "__init__" not in vars(klass):
            continue
        params = list(inspect.signature(klass.__init__).parameters.values())[1:]  # not self
        accepted |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return accepted


def get(name: str, num_domains: int | None = None, **options):
    """A method object; `options` are its constructor's keyword arguments (an unknown one is a
    one-line error)."""
    factory = _factory(name)
    known = option_names(factory)
    if options and not known:
        raise MixjaxError(f"`method` {name}: takes no options (got {', '.join(options)})")
    unknown = [option for option in options if option not in known]
    if unknown:
        raise MixjaxError(f"`method` {name}: unknown option '{unknown[0]}'")
    if hasattr(factory, "options_from"):  # a factory function: it takes the number of domains
        return factory(num_domains, **options)
    return factory(**options)


def is_online(name: str) -> bool:
    return name in ONLINE
