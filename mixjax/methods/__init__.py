"""Mixture methods behind one interface (see `base.py`); `get(name)` builds one by name."""

from __future__ import annotations

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
        return lambda **options: Aioli(AioliConfig.released(num_domains or 3, **options))
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


def get(name: str, num_domains: int | None = None, **options):
    """A method object; `options` are its constructor's keyword arguments (an unknown one is a
    one-line error)."""
    factory = _factory(name, num_domains)
    try:
        return factory(**options)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            unknown = str(e).rsplit("argument", 1)[-1].strip()
            raise MixjaxError(f"--method {name}: unknown option {unknown}") from None
        if "takes no arguments" in str(e):
            raise MixjaxError(f"--method {name}: takes no options (got {', '.join(options)})") from None
        raise


def is_online(name: str) -> bool:
    return name in ONLINE
