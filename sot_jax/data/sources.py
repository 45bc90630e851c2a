"""Where examples come from: every source by the name a config gives (`get_source`), and the image ones, a TFDS
dataset prepared as ArrayRecord or ImageNet-style image folders (the text ones are in `text`; what all share, the
`Source` interface, in `source_base`).

    source = get_source("imagenet2012", data_dir)        # TFDS, prepared with `python -m sot_jax.prepare`
    source = get_source("folder", "/data/imagenet")      # /data/imagenet/{train,val}/<class>/<image>
    source = get_source("glue/cola", data_dir)           # text: `text.get_text_source`
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sot_jax.data import brackets, text
from sot_jax.data.source_base import Records, Source, TfdsRecords, as_text, tfds_builder
from sot_jax.errors import UserError

# torchvision's ImageFolder extensions (compared lower-cased).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def get_source(dataset: str, data_dir: str | None, prepare_embedded: bool = True) -> Source:
    """The source named by a config's `dataset` and `data_dir` ("folder": image folders under data_dir; GLUE's
    `glue/<task>` and the embedded `brackets`: text, see `data.text`)."""
    if dataset.startswith("glue/") or dataset == brackets.BRACKETS_NAME:
        return text.get_text_source(dataset, data_dir, prepare_embedded)
    if dataset == "folder":
        if not data_dir:
            raise UserError("dataset 'folder' needs data_dir=DIR holding DIR/<split>/<class>/<image>")
        return FolderSource(data_dir)
    return TfdsSource(dataset, data_dir or None, prepare_embedded)


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
