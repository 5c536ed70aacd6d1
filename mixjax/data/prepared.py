"""Reading a prepared data directory: its manifest and each domain's TFDS data sources."""

from __future__ import annotations

import os
from pathlib import Path

from mixjax.data.prepare import MANIFEST, read_manifest
from mixjax.errors import MixjaxError


class PreparedData:
    """The output of `mixjax prepare`: domains in order, vocab size, and random-access splits."""

    def __init__(self, directory: str | os.PathLike, flag: str = "--data"):
        self.directory = Path(directory)
        manifest = read_manifest(self.directory) if self.directory.is_dir() else None
        if manifest is None:
            raise MixjaxError(f"{flag}: {self.directory} is not a prepared data directory "
                              f"(no {MANIFEST}; run `mixjax prepare` first)")
        self.manifest = manifest
        self.domains: list[str] = list(manifest["domains"])
        self.vocab_size: int = int(manifest["vocab_size"])
        self._sources: dict[str, dict] = {}

    def split(self, domain: str, split: str):
        """A random-access source of {'tokens', 'loss_mask'} examples (len() and [i])."""
        from mixjax.data.tfds_builder import open_domain

        if domain not in self.manifest["domains"]:
            raise MixjaxError(f"unknown domain '{domain}'; the data has {', '.join(self.domains)}")
        if domain not in self._sources:
            path = self.directory / self.manifest["domains"][domain]["path"]
            if not path.is_dir():
                raise MixjaxError(f"{path} is missing: the prepared data is incomplete; rerun `mixjax prepare`")
            self._sources[domain] = open_domain(str(path))
        return self._sources[domain][split]

    def counts(self, domain: str, split: str) -> dict:
        return self.manifest["domains"][domain][split]

    def train_tokens(self) -> dict[str, int]:
        return {d: self.counts(d, "train")["tokens"] for d in self.domains}
