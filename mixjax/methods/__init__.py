"""Mixture methods behind one interface (see `base.py`); `get(name)` builds one by name."""

from __future__ import annotations

from mixjax.errors import MixjaxError

OFFLINE = ("stratified", "grid", "li2025", "dml", "regmix")
ONLINE = ("aioli",)


def names() -> list[str]:
    return list(OFFLINE + ONLINE)


def get(name: str, num_domains: int | None = None, **options):
    """A method object; `options` are its constructor's keyword arguments."""
    if name == "stratified":
        from mixjax.methods.static import Stratified
        return Stratified()
    if name == "grid":
        from mixjax.methods.static import Grid
        return Grid(**options)
    if name == "li2025":
        from mixjax.methods.offline import Li2025
        return Li2025(**options)
    if name == "dml":
        from mixjax.methods.offline import DataMixingLaws
        return DataMixingLaws(**options)
    if name == "regmix":
        from mixjax.methods.offline import RegMix
        return RegMix(**options)
    if name == "aioli":
        from mixjax.methods.aioli import Aioli, AioliConfig
        return Aioli(AioliConfig.released(num_domains or 3, **options))
    raise MixjaxError(f"--method: unknown method '{name}'; known: {', '.join(names())}")


def is_online(name: str) -> bool:
    return name in ONLINE
