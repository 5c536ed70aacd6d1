"""Mixture methods behind one interface (see `base.py`); `get(name)` builds one by name."""

from __future__ import annotations

import inspect

from mixjax.errors import MixjaxError

OFFLINE = ("stratified", "grid", "li2025", "dml", "regmix")
ONLINE = ("aioli", "doremi", "doge", "skillit")


def names() -> list[str]:
    return list(OFFLINE + ONLINE)


def _factory(name: str, num_domains: int | None):
    if name == "stratified":
        from mixjax.methods.static import Stratified
        return Stratified
    if name == "grid":
        from mixjax.methods.static import Grid
        return Grid
    if name == "li2025":
        from mixjax.methods.offline import Li2025
        return Li2025
    if name == "dml":
        from mixjax.methods.offline import DataMixingLaws
        return DataMixingLaws
    if name == "regmix":
        from mixjax.methods.offline import RegMix
        return RegMix
    if name == "aioli":
        from mixjax.methods.aioli import Aioli, AioliConfig
        build = lambda **options: Aioli(AioliConfig.released(num_domains or 3, **options))  # noqa: E731
        build.options_from = AioliConfig  # its options are the config's fields
        return build
    if name == "doremi":
        from mixjax.methods.doremi import DoReMi
        return DoReMi
    if name == "doge":
        from mixjax.methods.doge import DoGE
        return DoGE
    if name == "skillit":
        from mixjax.methods.skillit import SkillIt
        return SkillIt
    raise MixjaxError(f"--method: unknown method '{name}'; known: {', '.join(names())}")


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
    factory = _factory(name, num_domains)
    known = option_names(factory)
    if options and not known:
        raise MixjaxError(f"--method {name}: takes no options (got {', '.join(options)})")
    unknown = [option for option in options if option not in known]
    if unknown:
        raise MixjaxError(f"--method {name}: unknown option '{unknown[0]}'")
    return factory(**options)


def is_online(name: str) -> bool:
    return name in ONLINE
