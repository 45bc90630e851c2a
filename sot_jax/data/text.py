"""Text data: GLUE (and the embedded `brackets`) as sources, and training and evaluation batches of token ids
(tokenized by `tokenization`).

    source = get_text_source("glue/cola", data_dir)
    batches = text_train_batches(source, tokenizer, max_seq_length=128, seed=42, global_batch=32, start_step=0)

Sources are `TextSource`s (a `source_base.Source` whose splits are tokenized once, in Python, and cached): GLUE's
classification tasks from TFDS (`glue/cola`, ...; `python -m sot_jax.prepare glue/cola --data_dir=DIR`) and the
embedded `brackets` corpus (`sot_jax.data.brackets`, prepared on first use). Labels follow TFDS's class order
(`source.label_names`; MNLI: entailment, neutral, contradiction, which differs from HF's GLUE processors).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence

import numpy as np

from sot_jax.data import brackets, pipeline
from sot_jax.data.glue import GLUE_TASKS, TextTask
from sot_jax.data.source_base import Source, TfdsRecords, as_text, tfds_builder
from sot_jax.data.tokenization import Tokenizer, check_unknown_rate, encode
from sot_jax.errors import UserError, check_choice

# --- sources --------------------------------------------------------------------------------------------------


BRACKETS_TASK = TextTask(("sentence",), ("mcc",))  # an acceptability corpus, scored as CoLA


class TextSource(Source):
    """A TFDS text dataset (`text_features` and a `label`: a ClassLabel, or a float score for a regression).
    `encoded` tokenizes a split once and keeps it (per split, tokenizer and length): GLUE's largest task, MNLI,
    is 393k pairs. `use_label_names` puts the labels in a checkpoint's class order."""

    def __init__(self, name: str, data_dir: str | None, task: TextTask, prepare: bool = False):
        builder = tfds_builder(name, data_dir, prepare)
        features = builder.info.features
        missing = [f for f in (*task.text_features, "label") if f not in features]
        if missing:
            raise UserError(f"dataset {name!r} has no feature {', '.join(missing)}; it has {', '.join(features)}")
        self.builder, self.name, self.task = builder, name, task
        self.text_features, self.regression = task.text_features, task.regression
        self.num_classes = 1 if task.regression else features["label"].num_classes
        self.label_names: list[str] = [] if task.regression else list(features["label"].names)
        self.features = frozenset(features) - {"label"}
        self.eval_split = (task.eval_splits or task.test_splits)[0]
        self.model_class: np.ndarray | None = None  # the model's class index of each dataset class
        self._texts: dict[str, tuple[list[str], list[str] | None, np.ndarray, np.ndarray]] = {}
        self._encoded: dict[tuple[str, int], tuple[Tokenizer, dict[str, np.ndarray]]] = {}

    def use_label_names(self, names: Sequence[str]) -> None:
        """Label examples by their class's position in `names` (a checkpoint's classes, e.g. a converted HF
        model's id2label), which must be the dataset's class names in some order (case is ignored)."""
        own = [n.lower() for n in self.label_names]
        wanted = [str(n).lower() for n in names]
        if sorted(own) != sorted(wanted):
            raise UserError(
                f"init_from's classes ({', '.join(map(str, names))}) are not {self.name}'s "
                f"({', '.join(self.label_names)}); fine-tune from a checkpoint without a trained classifier"
            )
        if self._encoded:
            raise RuntimeError("use_label_names must be called before the data is encoded")
        self.model_class = np.array([wanted.index(n) for n in own], np.int64)
        self.label_names = list(names)
        self._texts.clear()

    def dataset_class(self, model_class: np.ndarray) -> np.ndarray:
        """The dataset's class index of model class indices (the inverse of `use_label_names`)."""
        if self.model_class is None:
            return np.asarray(model_class)
        return np.argsort(self.model_class)[np.asarray(model_class)]

    def _check_split(self, split: str) -> None:
        splits = self.builder.info.splits
        if splits and split not in splits:  # (a mocked builder without metadata lists no splits)
            raise UserError(f"dataset {self.name!r} has no split {split!r}; splits: {', '.join(splits)}")

    def num_examples(self, split: str) -> int:
        self._check_split(split)
        if split in self.builder.info.splits:
            return self.builder.info.splits[split].num_examples
        return len(self.texts(split)[2])

    def texts(self, split: str) -> tuple[list[str], list[str] | None, np.ndarray]:
        """The split's first texts, second texts (None for single-text tasks) and labels (int64 in the model's
        class order, or float32 scores; GLUE's test splits hold -1), in stored order."""
        return self._read(split)[:3]

    def indices(self, split: str) -> np.ndarray:
        """The split's `idx` feature (GLUE's example ids, which the submission files list), else 0, 1, ..."""
        return self._read(split)[3]

    def _read(self, split: str) -> tuple[list[str], list[str] | None, np.ndarray, np.ndarray]:
        if split not in self._texts:
            self._check_split(split)
            keys = (*self.text_features, "label")
            records = TfdsRecords(str(self.builder.data_dir), split, ())
            rows = [records[i] for i in range(len(records))]
            columns = {k: [row[k] for row in rows] for k in keys}
            first, *second = ([as_text(t) for t in columns[k]] for k in self.text_features)
            if self.regression:
                labels = np.array(columns["label"], np.float32)
            else:
                labels = np.array(columns["label"], np.int64)
                if self.model_class is not None:
                    labels = np.where(labels >= 0, self.model_class[np.maximum(labels, 0)], labels)
            ids = np.array([row["idx"] for row in rows], np.int64) if "idx" in self.features else np.arange(len(rows))
            self._texts[split] = (first, second[0] if second else None, labels, ids)
        return self._texts[split]

    def labels(self, split: str) -> np.ndarray:
        return self.texts(split)[2]

    def has_labels(self, split: str) -> bool:
        """False for a split whose labels are hidden (GLUE's test splits: every label -1)."""
        return not bool(np.all(self.labels(split) == -1))

    def encoded(self, split: str, tokenizer: Tokenizer, max_seq_length: int) -> dict[str, np.ndarray]:
        """`encode` of the split's texts, with `label` int32 (float32 for a regression)."""
        key = (split, max_seq_length)
        cached = self._encoded.get(key)
        if cached is None or cached[0] is not tokenizer:
            first, second, labels = self.texts(split)
            arrays = encode(tokenizer, first, second, max_seq_length)
            arrays["label"] = labels.astype(np.float32 if self.regression else np.int32)
            cached = self._encoded[key] = (tokenizer, arrays)
        return cached[1]


class GlueSource(TextSource):
    """A GLUE task from TFDS (`glue/<task>`); see `GLUE_TASKS`."""

    def __init__(self, task: str, data_dir: str | None):
        check_choice("GLUE task", task, tuple(GLUE_TASKS))
        super().__init__(f"glue/{task}", data_dir, GLUE_TASKS[task])


def get_text_source(dataset: str, data_dir: str | None, prepare_embedded: bool = True) -> TextSource:
    """`glue/<task>` (prepared with `python -m sot_jax.prepare`) or `brackets` (embedded, prepared on first use)."""
    if dataset.startswith("glue/"):
        return GlueSource(dataset.removeprefix("glue/"), data_dir or None)
    if dataset == brackets.BRACKETS_NAME:
        return TextSource(dataset, data_dir or None, BRACKETS_TASK, prepare=prepare_embedded)
    choices = ", ".join([*(f"glue/{task}" for task in GLUE_TASKS), brackets.BRACKETS_NAME])
    raise UserError(f"unknown text dataset {dataset!r}; choose one of {choices}")


# --- batches --------------------------------------------------------------------------------------------------


def _local_batch(global_batch: int, process_count: int) -> int:
    if global_batch <= 0 or global_batch % process_count:
        raise UserError(f"batch_size {global_batch} must be a positive multiple of the {process_count} processes")
    return global_batch // process_count


def text_train_batches(
    source: TextSource,
    tokenizer: Tokenizer,
    *,
    max_seq_length: int,
    seed: int,
    global_batch: int,
    start_step: int,
    process_index: int = 0,
    process_count: int = 1,
    split: str = "train",
    token_types: bool = True,
) -> pipeline.TrainBatches:
    """Endless training batches from `start_step` on: each epoch a seed-determined permutation of `split` cut into
    whole global batches (the remainder left out, as the image pipeline), each process its contiguous slice; a
    global batch's examples and order do not depend on the number of processes. Dicts of int32 arrays
    `input_ids`, `attention_mask`, `token_type_ids` (local batch, max_seq_length; left out without
    `token_types`) and `label` (local batch,). The split is tokenized once, here, and stops when the vocabulary
    does not fit the text (`tokenization.check_unknown_rate`)."""
    local = _local_batch(global_batch, process_count)
    if not source.has_labels(split):
        raise UserError(f"{source.name}:{split} has no labels (GLUE's test labels are hidden); train on 'train'")
    arrays = dict(source.encoded(split, tokenizer, max_seq_length))
    check_unknown_rate(tokenizer, arrays, f"{source.name}:{split}")
    if not token_types:
        arrays.pop("token_type_ids")
    count = len(arrays["label"])
    if count < global_batch:
        raise UserError(f"batch_size {global_batch} is larger than the {count} examples of {source.name}:{split}")
    make_batch = _TextTrainBatch(arrays, count // global_batch, seed, global_batch, local, process_index)
    return pipeline.TrainBatches(make_batch, start_step, workers=0)


@dataclasses.dataclass
class _TextTrainBatch:
    """Batch `step` of this process from the tokenized split (`text_train_batches`)."""

    arrays: dict[str, np.ndarray]
    epoch_steps: int
    seed: int
    global_batch: int
    local: int
    process_index: int

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        epoch, step_in_epoch = divmod(int(step), self.epoch_steps)
        order = pipeline.epoch_order(self.seed, epoch, len(self.arrays["label"]))
        start = step_in_epoch * self.global_batch + self.process_index * self.local
        index = order[start : start + self.local]
        return {k: v[index] for k, v in self.arrays.items()}


def text_eval_batches(
    source: TextSource,
    split: str,
    tokenizer: Tokenizer,
    *,
    max_seq_length: int,
    global_batch: int,
    process_index: int = 0,
    process_count: int = 1,
    token_types: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Every example of `split` once, in stored order, in whole global batches (each process its contiguous
    slice of each), as `text_train_batches` plus `mask` int32 (0 on padding). Padding rows repeat the split's
    first example (a valid input: a row without any attended token could give NaN logits) with label 0."""
    local = _local_batch(global_batch, process_count)
    arrays = dict(source.encoded(split, tokenizer, max_seq_length))
    if not token_types:
        arrays.pop("token_type_ids")
    count = len(arrays["label"])
    total = math.ceil(count / global_batch) * global_batch
    mask = (np.arange(total) < count).astype(np.int32)
    index = np.where(mask == 1, np.arange(total), 0)
    return _eval_batches(arrays, index, mask, global_batch, local, process_index)


def _eval_batches(
    arrays: dict[str, np.ndarray], index: np.ndarray, mask: np.ndarray, global_batch: int, local: int,
    process_index: int,
) -> Iterator[dict[str, np.ndarray]]:  # fmt: skip
    for start in range(process_index * local, len(index), global_batch):
        rows, keep = index[start : start + local], mask[start : start + local]
        batch = {k: v[rows] for k, v in arrays.items()}
        batch["label"] = batch["label"] * keep
        batch["mask"] = keep
        yield batch
