"""The TFDS builder that writes one prepared domain as array_record (readable without TensorFlow)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import tensorflow_datasets as tfds

DATASET_NAME = "mixjax_domain"
DATASET_VERSION = "1.0.0"


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
    """Random-access data sources {split: source} of a written domain."""
    return tfds.builder_from_directory(dataset_dir).as_data_source()
