"""Reading a prepared data directory: its manifest and each domain's TFDS data sources."""

from __future__ import annotations

import os
from pathlib import Path

from mixjax.data.prepare import MANIFEST, read_manifest
from mixjax.errors import MixjaxError


class PreparedData:
    """The output of `mixjax prepare`: domains in order, vocab size, and random-access splits."""

    def __init__(self, directory: str | os.PathLike, where: str = "`data`"):
        self.directory = Path(directory)
        manifest = read_manifest(self.directory) if self.directory.is_dir() else None
        if manifest is None:
            raise MixjaxError(f"{where}: {self.directory} is not a prepared data directory "
                              f"(no {MANIFEST}; run `mixjax prepare` first)")
        self.manifest = manifest  # read_manifest checked its names, paths and counts
        self.domains: list[str] = list(manifest["domains"])
        self.vocab_size: int = int(manifest["vocab_size"])
        self._sources: dict[str, dict] = {domain: self._open(domain) for domain in self.domains}

    def _open(self, domain: str) -> dict:
        """Open (and check: every file there and whole) one domain's splits, before any training."""
        from mixjax.data.tfds_builder import open_domain

        path = self.directory / self.manifest["domains"][domain]["path"]
        if not path.is_dir():
            raise MixjaxError(f"{path} is missing: the prepared data is incomplete; rerun `mixjax prepare`")
        return open_domain(str(path))

    def split(self, domain: str, split: str):
        """A random-access source of {'tokens', 'loss_mask'} examples (len() and [i])."""
        if domain not in self.manifest["domains"]:
            raise MixjaxError(f"unknown domain '{domain}'; the data has {', '.join(self.domains)}")
        return self._sources[domain][split]

    def counts(self, domain: str, split: str) -> dict:
        return self.manifest["domains"][domain][split]

    def train_tokens(self) -> dict[str, int]:
        return {d: self.counts(d, "train")["tokens"] for d in self.domains}
