"""Where examples come from: a prepared TFDS dataset, or ImageNet-style image folders.

A `Source` lists one split's records in a seed-determined order as a tf.data stream of
{"image": encoded bytes or a path, "label": int, "file_name": str, ...}; `load` turns a record into encoded bytes
after the pipeline has kept this process's slice (so a process reads only its own image files).

    source = get_source("imagenet2012", data_dir)        # TFDS, prepared with `tfds build`
    source = get_source("folder", "/data/imagenet")      # /data/imagenet/{train,val}/<class>/<image>
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from sot_jax.errors import UserError

# Prepared on first use (no download): the datasets shipped in sot_jax.data.
EMBEDDED_DATASETS = ("digits", "brackets")
SHUFFLE_BUFFER = 16_384
# torchvision's ImageFolder extensions (compared lower-cased).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DatasetNotReadyError(UserError):
    """A dataset that exists in TFDS but is not prepared in the data dir."""


class Source:
    """One dataset: its classes, its splits' sizes and their records (see the module docstring)."""

    name: str
    num_classes: int
    eval_split: str  # the split an evals entry with split="" reads
    features: frozenset[str]  # record keys besides image and label (file_name, real_label, original_label)

    def num_examples(self, split: str) -> int:
        raise NotImplementedError

    def records(self, split: str, shuffle_seed: int | None) -> tf.data.Dataset:
        """Every record of `split` once: in stored order without a seed, else in a seed-determined shuffle."""
        raise NotImplementedError

    def load(self, record: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return record

    def labels(self, split: str) -> np.ndarray:
        """Every label of `split` (int64), without decoding images."""
        raise NotImplementedError


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


class TfdsSource(Source):
    def __init__(self, name: str, data_dir: str | None, prepare_embedded: bool = True):
        import sot_jax.data.digits  # noqa: F401  registers the embedded dataset

        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError as e:
            first_line = str(e).splitlines()[0]
            raise UserError(f"unknown dataset {name!r}: {first_line} (or 'folder' for image folders)") from None
        if not builder.is_prepared():
            if name in EMBEDDED_DATASETS and prepare_embedded:
                builder.download_and_prepare()
            else:
                where = data_dir or "~/tensorflow_datasets"
                hint = " --manual_dir=DIR_WITH_ILSVRC2012_TARS" if name.startswith("imagenet") else ""
                raise DatasetNotReadyError(
                    f"dataset {name!r} is not prepared in {where}; prepare it with: "
                    f"tfds build {name}{hint} --data_dir={where}"
                )
        self.builder = builder
        self.name = name
        features = builder.info.features
        self.num_classes = features["original_label" if "original_label" in features else "label"].num_classes
        self.features = frozenset(features) - {"image", "label"}
        self.eval_split = "validation" if "validation" in builder.info.splits else "test"

    def num_examples(self, split: str) -> int:
        if split not in self.builder.info.splits:
            splits = ", ".join(self.builder.info.splits)
            raise UserError(f"dataset {self.name!r} has no split {split!r}; splits: {splits}")
        return self.builder.info.splits[split].num_examples

    def records(self, split: str, shuffle_seed: int | None) -> tf.data.Dataset:
        read_config = tfds.ReadConfig(
            shuffle_seed=shuffle_seed, interleave_cycle_length=16, enable_ordering_guard=False
        )
        ds = self.builder.as_dataset(
            split=split, shuffle_files=shuffle_seed is not None, read_config=read_config,
            decoders={"image": tfds.decode.SkipDecoding()},
        )  # fmt: skip
        if shuffle_seed is not None:
            ds = ds.shuffle(SHUFFLE_BUFFER, seed=shuffle_seed, reshuffle_each_iteration=False)
        return ds

    def labels(self, split: str) -> np.ndarray:
        ds = self.builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        return np.fromiter(ds.map(lambda x: x["label"]).as_numpy_iterator(), np.int64)


class FolderSource(Source):
    """torchvision `ImageFolder` layout: `root/<split>/<class>/<image>`, classes in sorted folder-name order (so a
    converted official classifier's outputs line up), images sorted by name within a class.

    A split is listed once, on first use, with `os.scandir` (names and labels in two numpy arrays: tens of MB for
    ImageNet's 1.28M files); records are shuffled by a full seed-determined permutation."""

    name = "folder"
    eval_split = "val"
    features = frozenset({"file_name"})

    def __init__(self, root: str):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"folder dataset {self.root} does not exist")
        self._listings: dict[str, tuple[list[str], np.ndarray, np.ndarray]] = {}
        self.classes = self._list(self._first_split())[0]
        self.num_classes = len(self.classes)

    def _first_split(self) -> str:
        return "train" if (self.root / "train").is_dir() else "val"

    def _list(self, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(class names, file names, labels) of one split."""
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
        listing = (classes, np.array(names, dtype=bytes), np.concatenate(labels))
        self._listings[split] = listing
        return listing

    def num_examples(self, split: str) -> int:
        return len(self._list(split)[1])

    def records(self, split: str, shuffle_seed: int | None) -> tf.data.Dataset:
        classes, names, labels = self._list(split)
        if shuffle_seed is not None:
            order = np.random.default_rng(shuffle_seed).permutation(len(names))
            names, labels = names[order], labels[order]
        folders = tf.constant([f"{self.root / split / name}{os.sep}".encode() for name in classes])
        ds = tf.data.Dataset.from_tensor_slices({"file_name": names, "label": labels})
        return ds.map(lambda r: {**r, "image": tf.strings.join([tf.gather(folders, r["label"]), r["file_name"]])})

    def load(self, record: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {**record, "image": tf.io.read_file(record["image"])}

    def labels(self, split: str) -> np.ndarray:
        return self._list(split)[2]

    def path(self, split: str, shuffle_seed: int | None, position: int) -> Path:
        """The file at `position` of `records(split, shuffle_seed)`."""
        classes, names, labels = self._list(split)
        if shuffle_seed is not None:
            position = np.random.default_rng(shuffle_seed).permutation(len(names))[position]
        index = position
        return self.root / split / classes[labels[index]] / names[index].decode()
