"""What every source shares (`sources`: images; `text`: GLUE and `brackets`): the `Source` interface and its
`Records`, and reading a prepared TFDS dataset (`tfds_builder`, `TfdsRecords`), which images and text both use.

A `Source` gives each split as `Records`: a random-access sequence (len, [index]) in stored order of
{"image": encoded bytes, "label": int, "file_name": str, ...}, picklable, so that Grain's worker processes read
their own records (`pipeline`). Reading needs no TensorFlow; preparing a TFDS dataset does
(`python -m sot_jax.prepare`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sot_jax import prepare
from sot_jax.errors import UserError


class DatasetNotReadyError(UserError):
    """A dataset that exists in TFDS but is not prepared (as ArrayRecord) in the data dir."""


Records = Sequence[dict[str, Any]]


class Source:
    """One dataset: its classes, its splits' sizes and their records (see the module docstring)."""

    name: str
    num_classes: int
    eval_split: str  # the split an evals entry with split="" reads
    features: frozenset[str]  # record keys besides image and label (file_name, real_label, original_label)

    def num_examples(self, split: str) -> int:
        raise NotImplementedError

    def records(self, split: str) -> Records:
        raise NotImplementedError

    def labels(self, split: str) -> np.ndarray:
        """Every label of `split` (int64), without decoding images."""
        raise NotImplementedError

    def describe(self, split: str, index: int) -> str:
        """Where record `index` of `split` comes from, for error messages."""
        return f"{self.name}:{split}[{index}]"


def as_text(value: bytes | str) -> str:
    """A TFDS text feature as read from ArrayRecord (bytes), or a string."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def tfds_builder(name: str, data_dir: str | None, prepare_embedded: bool) -> Any:
    """The prepared TFDS dataset `name` in `data_dir` (read from its directory: no TensorFlow, no builder code),
    prepared first when it is an embedded one; a UserError saying how to prepare or convert it otherwise."""
    directory = prepare.prepared_directory(name, data_dir)
    ready = directory is not None and prepare.has_array_record(directory)
    if not ready and name in prepare.EMBEDDED_DATASETS and prepare_embedded:  # prepared, or converted, in seconds
        prepare.prepare_dataset(name, data_dir)
        directory = prepare.prepared_directory(name, data_dir)
    where = data_dir or prepare.default_data_dir()
    command = prepare.PREPARE_COMMAND.format(name=name, data_dir=where)
    if directory is None:
        if not _tfds_knows(name):
            raise UserError(f"unknown dataset {name!r} (not in TFDS; or 'folder' for image folders)")
        hint = " --manual_dir=DIR_WITH_ILSVRC2012_TARS" if name.startswith("imagenet") else ""
        raise DatasetNotReadyError(f"dataset {name!r} is not prepared in {where}; prepare it with: {command}{hint}")
    if not prepare.has_array_record(directory):
        raise DatasetNotReadyError(
            f"dataset {name!r} in {directory} is prepared as TFRecord only, and training reads ArrayRecord; "
            f"convert it (the TFRecord files stay) with: {command}"
        )
    import tensorflow_datasets as tfds

    return tfds.builder_from_directory(str(directory))


def _tfds_knows(name: str) -> bool:
    """Whether TFDS has a builder of that name (true where TFDS is not installed: it cannot tell)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return True
    return name in prepare.EMBEDDED_DATASETS or name.split(":")[0].split("/")[0] in tfds.list_builders()


class TfdsRecords(Sequence):
    """One split of a prepared TFDS dataset, images left encoded; opened lazily in each process."""

    def __init__(self, directory: str, split: str, skip_decoding: tuple[str, ...]):
        self.directory, self.split, self.skip_decoding = directory, split, skip_decoding
        self._source = None

    def _open(self) -> Any:
        if self._source is None:
            import tensorflow_datasets as tfds

            builder = tfds.builder_from_directory(self.directory)
            decoders = {key: tfds.decode.SkipDecoding() for key in self.skip_decoding}
            self._source = builder.as_data_source(split=self.split, decoders=decoders)
        return self._source

    def __len__(self) -> int:
        return len(self._open())

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._open()[int(index)]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_source": None}
