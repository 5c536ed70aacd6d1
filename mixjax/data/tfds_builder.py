"""The TFDS builder that writes one prepared domain as array_record (readable without TensorFlow)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import tensorflow_datasets as tfds

from mixjax.data.sources import first_line
from mixjax.errors import MixjaxError

DATASET_NAME = "mixjax_domain"
DATASET_VERSION = "1.0.0"
REBUILD_HINT = "rerun `mixjax prepare` to rebuild it"  # prepare checks files so before reusing a domain


class MixjaxDomain(tfds.core.GeneratorBasedBuilder):
    """One domain's tokenised examples: `tokens` (int32) and `loss_mask` (bool), train/validation."""

    name = DATASET_NAME
    VERSION = tfds.core.Version(DATASET_VERSION)

    def __init__(self, *, examples_by_split: dict[str, list], **kwargs):
        self._examples_by_split = examples_by_split
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="A mixjax domain: chat-templated, tokenised SFT examples with loss masks.",
            features=tfds.features.FeaturesDict({
                "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "loss_mask": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
            }),
        )

    def _log_download_bytes(self) -> None:  # TFDS prints these to stdout; mixjax reports itself
        pass

    def _log_download_done(self) -> None:
        pass

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in self._examples_by_split}

    def _generate_examples(self, split):
        for key, (tokens, loss_mask) in enumerate(self._examples_by_split[split]):
            yield key, {"tokens": tokens, "loss_mask": loss_mask}


def write_domain(data_dir: str, examples_by_split: dict[str, list]) -> str:
    """Write the splits under `data_dir`; returns the dataset directory to read back."""
    import absl.logging

    tfds.disable_progress_bar()  # mixjax shows its own progress
    absl.logging.set_verbosity(absl.logging.WARNING)
    builder = MixjaxDomain(examples_by_split=examples_by_split, data_dir=data_dir,
                           file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    shutil.rmtree(os.path.join(data_dir, "downloads"), ignore_errors=True)  # empty TFDS scaffolding
    return str(builder.data_dir)


def open_domain(dataset_dir: str) -> dict:
    """Random-access data sources {split: source} of a written domain.

    Every array_record file is checked first (cheaply: its footer, not its records): a missing,
    truncated or corrupt file is a one-line error naming it, before any training starts. A record
    that fails to read later (a damaged chunk inside a whole file) names its file too."""
    try:
        builder = tfds.builder_from_directory(dataset_dir)
        splits = {name: (list(map(str, info.filepaths)), list(info.shard_lengths))
                  for name, info in builder.info.splits.items()}
    except Exception as e:  # missing or damaged dataset_info.json / features.json
        raise MixjaxError(f"{dataset_dir}: not a readable TFDS dataset ({first_line(e)}); "
                          f"{REBUILD_HINT}") from None
    for files, lengths in splits.values():
        for path, expected in zip(files, lengths):
            _check_file(path, expected)
    return {name: CheckedSource(builder.as_data_source(split=name), files, lengths)
            for name, (files, lengths) in splits.items()}


def _check_file(path: str, expected: int) -> None:
    """An array_record file whose footer reads and counts the records dataset_info.json gives."""
    from array_record.python.array_record_module import ArrayRecordReader

    if not os.path.isfile(path):
        raise MixjaxError(f"{path}: missing; the prepared data is incomplete: {REBUILD_HINT}")
    try:
        reader = ArrayRecordReader(path, "readahead_buffer_size:0")
        ok, found = reader.ok(), reader.num_records()
    except Exception as e:
        raise MixjaxError(f"{path}: unreadable array_record file ({first_line(e)}); {REBUILD_HINT}") from None
    try:
        reader.close()
    except Exception:  # closing a reader that found a damaged file raises the same damage again
        pass
    if not ok or found != expected:
        raise MixjaxError(f"{path}: truncated or corrupt array_record file ({found} of {expected} "
                          f"records readable); {REBUILD_HINT}")


class CheckedSource:
    """A split's random-access source (len() and [i]) whose read errors name the file."""

    def __init__(self, source, files: list[str], shard_lengths: list[int]):
        self._source, self._files = source, files
        self._ends = np.cumsum(shard_lengths)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index):
        try:
            return self._source[index]
        except (IndexError, KeyError, TypeError):
            raise
        except Exception as e:  # RuntimeError from array_record, decode errors from TFDS
            shard = min(int(np.searchsorted(self._ends, int(index), side="right")), len(self._files) - 1)
            domain_dir = os.path.dirname(os.path.dirname(os.path.dirname(self._files[shard])))
            raise MixjaxError(f"{self._files[shard]}: cannot read record {int(index)} ({first_line(e)}); "
                              f"delete {domain_dir} and rerun `mixjax prepare`") from None
