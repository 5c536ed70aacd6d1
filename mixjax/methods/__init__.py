"""Mixture methods, each a class of `base.py`'s OfflineMethod or OnlineMethod; `get(name)` builds
one by name."""

from __future__ import annotations

import importlib

from mixjax.errors import MixjaxError

# name -> "module:Class" in mixjax.methods, imported when the method is first asked for; the class's
# constructor takes the method's options (`Method.option_specs`), `Method.create` builds it.
METHOD_CLASSES = {
    "stratified": "static:Stratified",
    "grid": "static:Grid",
    "li2025": "offline:Li2025",
    "dml": "offline:DataMixingLaws",
    "regmix": "offline:RegMix",
    "aioli": "aioli:Aioli",
    "doremi": "doremi:DoReMi",
    "doge": "doge:DoGE",
    "skillit": "skillit:SkillIt",
}
ONLINE = ("aioli", "doremi", "doge", "skillit")  # set the weights while a run trains
OFFLINE = tuple(name for name in METHOD_CLASSES if name not in ONLINE)


def names() -> list[str]:
    return list(OFFLINE + ONLINE)


def method_class(name: str):
    """The class registered under `name`; a one-line error for an unknown name."""
    if name not in METHOD_CLASSES:
        raise MixjaxError(f"`method`: unknown method '{name}'; known: {', '.join(names())}")
    module, attribute = METHOD_CLASSES[name].split(":")
    return getattr(importlib.import_module(f"mixjax.methods.{module}"), attribute)


def get(name: str, num_domains: int | None = None, **options):
    """A method object; `options` are its constructor's keyword arguments (an unknown one is a
    one-line error)."""
    cls = method_class(name)
    known = cls.option_specs()
    if options and not known:
        raise MixjaxError(f"`method` {name}: takes no options (got {', '.join(options)})")
    unknown = [option for option in options if option not in known]
    if unknown:
        raise MixjaxError(f"`method` {name}: unknown option '{unknown[0]}'")
    return cls.create(num_domains, **options)


def is_online(name: str) -> bool:
    return name in ONLINE
