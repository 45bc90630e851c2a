"""Where examples come from: a TFDS dataset prepared as ArrayRecord, or ImageNet-style image folders.

A `Source` gives each split as `Records`: a random-access sequence (len, [index]) in stored order of
{"image": encoded bytes, "label": int, "file_name": str, ...}, picklable, so that Grain's worker processes read
their own records (`pipeline`). Reading needs no TensorFlow; preparing a TFDS dataset does
(`python -m sot_jax.prepare`).

    source = get_source("imagenet2012", data_dir)        # TFDS, prepared with `python -m sot_jax.prepare`
    source = get_source("folder", "/data/imagenet")      # /data/imagenet/{train,val}/<class>/<image>
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sot_jax import prepare
from sot_jax.errors import UserError

EMBEDDED_DATASETS = prepare.EMBEDDED_DATASETS  # prepared on first use (no download)
# torchvision's ImageFolder extensions (compared lower-cased).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


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


def get_source(dataset: str, data_dir: str | None, prepare_embedded: bool = True) -> Source:
    """The source named by a config's `dataset` and `data_dir` ("folder": image folders under data_dir; GLUE's
    `glue/<task>` and the embedded `brackets`: text, see `data.text`)."""
    from sot_jax.data import brackets, text

    if dataset.startswith("glue/") or dataset == brackets.BRACKETS_NAME:
        return text.get_text_source(dataset, data_dir, prepare_embedded)
    if dataset == "folder":
        if not data_dir:
            raise UserError("dataset 'folder' needs data_dir=DIR holding DIR/<split>/<class>/<image>")
        return FolderSource(data_dir)
    return TfdsSource(dataset, data_dir or None, prepare_embedded)


def tfds_builder(name: str, data_dir: str | None, prepare_embedded: bool) -> Any:
    """The prepared TFDS dataset `name` in `data_dir` (read from its directory: no TensorFlow, no builder code),
    prepared first when it is an embedded one; a UserError saying how to prepare or convert it otherwise."""
    directory = prepare.prepared_directory(name, data_dir)
    ready = directory is not None and prepare.has_array_record(directory)
    if not ready and name in EMBEDDED_DATASETS and prepare_embedded:  # prepared, or converted, in seconds
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
    return name in EMBEDDED_DATASETS or name.split(":")[0].split("/")[0] in tfds.list_builders()


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


class TfdsSource(Source):
    def __init__(self, name: str, data_dir: str | None, prepare_embedded: bool = True):
        self.builder = tfds_builder(name, data_dir, prepare_embedded)
        self.name = name
        features = self.builder.info.features
        self.num_classes = features["original_label" if "original_label" in features else "label"].num_classes
        self.features = frozenset(features) - {"image", "label"}
        self.eval_split = "validation" if "validation" in self.builder.info.splits else "test"

    def num_examples(self, split: str) -> int:
        if split not in self.builder.info.splits:
            splits = ", ".join(self.builder.info.splits)
            raise UserError(f"dataset {self.name!r} has no split {split!r}; splits: {splits}")
        return self.builder.info.splits[split].num_examples

    def records(self, split: str) -> Records:
        self.num_examples(split)  # checks the split
        return TfdsRecords(str(self.builder.data_dir), split, ("image",))

    def labels(self, split: str) -> np.ndarray:
        records = self.records(split)
        return np.array([records[i]["label"] for i in range(len(records))], np.int64)

    def describe(self, split: str, index: int) -> str:
        if "file_name" not in self.features:
            return f"{self.name}:{split}[{index}]"
        return f"{self.name}:{split}[{index}] ({as_text(self.records(split)[index]['file_name'])})"


class FolderRecords(Sequence):
    """One split of an image folder: the file's bytes, its label and name."""

    def __init__(self, directory: Path, classes: list[str], names: np.ndarray, labels: np.ndarray):
        self.directory, self.classes, self.names, self.labels = directory, classes, names, labels

    def path(self, index: int) -> Path:
        return self.directory / self.classes[self.labels[index]] / self.names[index].decode()

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.path(index).read_bytes(), "label": int(self.labels[index]),
                "file_name": self.names[index].decode()}  # fmt: skip


class FolderSource(Source):
    """torchvision `ImageFolder` layout: `root/<split>/<class>/<image>`, classes in sorted folder-name order (so a
    converted official classifier's outputs line up), images sorted by name within a class.

    A split is listed once, on first use, with `os.scandir` (names and labels in two numpy arrays: tens of MB for
    ImageNet's 1.28M files)."""

    name = "folder"
    eval_split = "val"
    features = frozenset({"file_name"})

    def __init__(self, root: str):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"folder dataset {self.root} does not exist")
        self._listings: dict[str, FolderRecords] = {}
        self.classes = self._list(self._first_split()).classes
        self.num_classes = len(self.classes)

    def _first_split(self) -> str:
        return "train" if (self.root / "train").is_dir() else "val"

    def _list(self, split: str) -> FolderRecords:
        if split in self._listings:
            return self._listings[split]
        directory = self.root / split
        if not directory.is_dir():
            present = sorted(p.name for p in self.root.iterdir() if p.is_dir())
            raise UserError(
                f"folder dataset: {directory} does not exist (expected {self.root}/<split>/<class>/<image>; "
                f"folders there: {', '.join(present) or 'none'})"
            )
        classes = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
        if not classes:
            raise UserError(f"folder dataset: {directory} has no class folders (expected {directory}/<class>/<image>)")
        names, labels = [], []
        for label, name in enumerate(classes):
            files = sorted(
                entry.name for entry in os.scandir(directory / name)
                if entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file()
            )  # fmt: skip
            if not files:
                raise UserError(
                    f"folder dataset: class folder {directory / name} holds no images "
                    f"({', '.join(IMAGE_EXTENSIONS)})"
                )
            names.extend(files)
            labels.append(np.full(len(files), label, np.int64))
        if hasattr(self, "classes") and classes != self.classes:
            missing, extra = sorted(set(self.classes) - set(classes)), sorted(set(classes) - set(self.classes))
            raise UserError(
                f"folder dataset: the classes of {directory} differ from {self.root / self._first_split()}'s "
                f"(missing: {', '.join(missing[:5]) or 'none'}; extra: {', '.join(extra[:5]) or 'none'})"
            )
        listing = FolderRecords(directory, classes, np.array(names, dtype=bytes), np.concatenate(labels))
        self._listings[split] = listing
        return listing

    def num_examples(self, split: str) -> int:
        return len(self._list(split))

    def records(self, split: str) -> Records:
        return self._list(split)

    def labels(self, split: str) -> np.ndarray:
        return self._list(split).labels

    def describe(self, split: str, index: int) -> str:
        return str(self._list(split).path(index))
