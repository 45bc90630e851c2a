"""Image input pipelines on Grain: PIL transforms (`transforms`) in worker processes, batches as numpy arrays.

Order: each epoch is a seed-determined permutation of the split; with repeated augmentation each image appears
`input.repeated_aug` times in a row, and an epoch covers as many stream entries as the split has images, in whole
global batches (DeiT's RASampler). A global batch is one contiguous block of that stream, dealt to the mixing
groups of `aug.mix_group_size` images in turn (entry k of the block to group k mod groups, as RASampler deals to
the GPUs), so repeated copies of an image land in different groups; each process keeps its contiguous slice of the
global batch. So a global batch holds the same images in the same order whatever the number of processes and
workers, and the randomness of each image (crop, flip, RandAugment) comes from its own generator seeded by
(seed, epoch, position in the epoch's stream).

Batch `step` is a pure function of `step`: Grain's workers each build whole batches (worker w: steps w, w + W, ...)
and hand them back in order, and training resumes at any step without reading what came before. `TrainBatches`
is the iterator that the checkpoint saves (Grain's checkpoint handler) and restores.

Batches are dicts of numpy arrays: `image` uint8 (B, H, W, 3) (normalized on the accelerator) and `label` int32;
training batches with token label maps add the read-out of each image's map (`LABEL_MAP_KEYS`,
`label_maps.sample_label_map`); evaluation batches add `mask` (0 for padding) and, for multi-label sets
(ImageNet-ReaL), `real` multi-hot labels.

An image that does not read or decode stops the run naming its file, or with `input.skip_bad_images` is logged
and replaced by the next readable image of the split (same position, same randomness: the batches stay whole and
resuming stays exact); in evaluation it is masked out.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import grain
import numpy as np
from PIL import Image

from sot_jax.data import transforms
from sot_jax.data.label_maps import LabelMaps, sample_label_map
from sot_jax.data.source_base import Records, Source, as_text
from sot_jax.errors import UserError, check_choice

# A label-map batch's (class, weight) pairs: tokens' (B, N, P), class target's (B, h·w·K).
LABEL_MAP_KEYS = ("token_label_classes", "token_label_weights", "class_label_classes", "class_label_weights")
# What reading or decoding a broken file raises (PIL's UnidentifiedImageError is an OSError; some malformed files
# raise SyntaxError or ValueError).
BAD_IMAGE_ERRORS = (OSError, ValueError, SyntaxError)


def default_workers() -> int:
    """`input.workers` when unset (-1): one worker process per core available to this process."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_workers(workers: int) -> int:
    """`input.workers`, with -1 meaning one per core (`default_workers`)."""
    return workers if workers >= 0 else default_workers()


def steps_per_epoch(source: Source, split: str, global_batch: int) -> int:
    """Whole global batches in one pass over `split` (also with repeated augmentation, as DeiT's RASampler)."""
    count = source.num_examples(split)
    if count < global_batch:
        raise UserError(f"batch_size {global_batch} is larger than the {count} examples of {source.name}:{split}")
    return count // global_batch


def group_positions(global_batch: int, group_size: int) -> np.ndarray:
    """For each position of a global batch, its entry in the batch's block of the stream: groups of `group_size`
    consecutive positions take every groups-th entry (RASampler's `indices[rank::num_replicas]`)."""
    groups = global_batch // group_size if 0 < group_size < global_batch else 1
    position = np.arange(global_batch)
    return (position % (global_batch // groups)) * groups + position // (global_batch // groups)


@functools.lru_cache(maxsize=2)
def epoch_order(seed: int, epoch: int, count: int) -> np.ndarray:
    """The permutation of a split's `count` records that epoch `epoch` of a run seeded `seed` reads."""
    return np.random.default_rng((seed, epoch)).permutation(count)


class _Reader:
    """Reads and decodes record `index` of a split, naming the file when that fails; with `skip`, logs it and
    returns the next record that reads (`replace`) or None."""

    def __init__(self, source: Source, split: str, skip: bool):
        self.records: Records = source.records(split)
        self.describe = functools.partial(source.describe, split)
        self.skip = skip

    def __call__(self, index: int, replace: bool = True) -> tuple[dict[str, Any], Image.Image] | None:
        for attempt in range(len(self.records)):
            position = (index + attempt) % len(self.records)
            try:
                record = self.records[position]
                return record, transforms.decode(record["image"])
            except BAD_IMAGE_ERRORS as error:
                what = self.describe(position)
                if not self.skip:
                    raise UserError(
                        f"cannot read or decode image {what}; fix or remove it, or set input.skip_bad_images=True "
                        "to skip such files"
                    ) from error
                print(f"warning: skipped unreadable image {what}", file=sys.stderr, flush=True)
                if not replace:
                    return None
        raise UserError(f"no image of {self.describe(0)}'s split reads or decodes")


class _TrainBatch:
    """Batch `step` of this process (see the module docstring); picklable, for Grain's workers."""

    def __init__(
        self, source: Source, input_config: Any, image_size: int, seed: int, global_batch: int, process_index: int,
        process_count: int, group_size: int, token_grid: tuple[int, int] | None,
    ):  # fmt: skip
        split = input_config.train_split
        self.reader = _Reader(source, split, input_config.skip_bad_images)
        self.count = source.num_examples(split)
        self.epoch_steps = steps_per_epoch(source, split, global_batch)
        self.input_config, self.image_size, self.seed = input_config, image_size, seed
        self.global_batch, self.repeats = global_batch, max(1, input_config.repeated_aug)
        local = global_batch // process_count
        self.entries = group_positions(global_batch, group_size)[process_index * local :][:local]
        self.token_grid = token_grid
        self.label_maps = label_maps_for(source, input_config)

    def example(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        record, decoded = self.reader(index)
        image, geometry = transforms.train_image(decoded, rng, self.input_config, self.image_size)
        example = {"image": image, "label": np.int32(record["label"])}
        if self.label_maps is not None:
            scores, classes = self.label_maps.lookup(as_text(record["file_name"]))
            config = self.input_config
            pairs = sample_label_map(scores, classes, geometry, self.token_grid, config.token_label_box,
                                     config.token_label_outside, config.token_label_resample)  # fmt: skip
            example.update(zip(LABEL_MAP_KEYS, pairs, strict=True))
        return example

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        epoch, step_in_epoch = divmod(int(step), self.epoch_steps)
        order = epoch_order(self.seed, epoch, self.count)
        examples = []
        for entry in (step_in_epoch * self.global_batch + self.entries).tolist():
            rng = np.random.default_rng((self.seed, epoch, entry))
            examples.append(self.example(int(order[entry // self.repeats]), rng))
        return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


def label_maps_for(source: Source, input_config: Any) -> LabelMaps | None:
    """The token label maps of `input.token_label_dir` (None without), checked against the source."""
    if not input_config.token_label_dir:
        return None
    if "file_name" not in source.features:
        raise UserError(f"token_label_dir needs a dataset with file names (e.g. imagenet2012); {source.name} has none")
    maps = LabelMaps(input_config.token_label_dir)
    if maps.meta["num_classes"] != source.num_classes:
        raise UserError(
            f"token label maps {input_config.token_label_dir} were converted for {maps.meta['num_classes']} "
            f"classes; {source.name} has {source.num_classes}"
        )
    return maps


def _flags_parsed() -> None:
    """Grain reads absl flags; used as a library (tests, notebooks) or in a worker process, nobody parsed them."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _batches(make_batch: Callable[[int], dict], start: int, stop: int, workers: int, threads: int = 1) -> Iterator:
    """Batches make_batch(start), ..., make_batch(stop - 1) in order, built by `workers` processes (0: by
    `threads` threads of this process)."""
    _flags_parsed()
    dataset = grain.MapDataset.range(start, stop).map(make_batch)
    iterable = dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads))
    if workers > 0:
        options = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2)
        iterable = iterable.mp_prefetch(options, worker_init_fn=lambda index, count: _flags_parsed())
    return iter(iterable)


class TrainBatches(grain.DatasetIterator):
    """Endless training batches from a step on; its state (the next step) goes into the checkpoint through Grain's
    checkpoint handler, and restoring it rebuilds the workers at that step."""

    def __init__(self, make_batch: Callable[[int], dict], step: int, workers: int):
        super().__init__()
        self.make_batch, self.step, self.workers = make_batch, step, workers
        self._iterator: Iterator[dict] | None = None

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iterator is None:
            self._iterator = _batches(self.make_batch, self.step, sys.maxsize, self.workers)
        try:
            batch = next(self._iterator)
        except RuntimeError as error:  # Grain's word for a worker process that died (killed, out of memory)
            if "Worker process" not in str(error):
                raise
            raise UserError(
                f"an input worker process died while making batch {self.step} ({str(error).split('.')[0]}); if "
                f"the host ran out of memory, use fewer input.workers (now {self.workers})"
            ) from None
        self.step += 1
        return batch

    def get_state(self) -> dict[str, int]:
        return {"step": self.step}

    def set_state(self, state: dict[str, int]) -> None:
        self.close()
        self.step = int(state["step"])

    def close(self) -> None:
        """Stop the worker processes (a later `next` starts them again at the current step)."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None

    def snapshot(self) -> TrainBatches:
        """A copy that holds the current state (what an asynchronous checkpoint writes later)."""
        return TrainBatches(self.make_batch, self.step, self.workers)


def train_batches(
    source: Source,
    input_config: Any,
    *,
    image_size: int,
    seed: int,
    global_batch: int,
    start_step: int,
    process_index: int = 0,
    process_count: int = 1,
    group_size: int = 0,
    token_grid: tuple[int, int] | None = None,
) -> TrainBatches:
    """Endless training batches from `start_step` on (per-process slices of the global batches), made by
    `input_config.workers` processes (-1: `default_workers()`). `input_config` is the config's `input` group;
    `group_size` the mixing groups' size (`aug.mix_group_size`). With `input_config.token_label_dir`, each example
    also carries `LABEL_MAP_KEYS` (classes int32, weights float32) for the model's `token_grid`."""
    check_choice("input.interpolation", input_config.interpolation, transforms.INTERPOLATIONS)
    make_batch = _TrainBatch(source, input_config, image_size, seed, global_batch, process_index, process_count,
                             group_size, token_grid)  # fmt: skip
    return TrainBatches(make_batch, start_step, resolve_workers(input_config.workers))


class _EvalBatch:
    """Batch `step` of the evaluation of a split: this process's slice of global batch `step`, padded."""

    def __init__(
        self, source: Source, split: str, image_size: int, crop_pct: float, global_batch: int, process_index: int,
        process_count: int, multi_label: bool, skip_bad_images: bool,
    ):  # fmt: skip
        self.reader = _Reader(source, split, skip_bad_images)
        self.count, self.num_classes = source.num_examples(split), source.num_classes
        self.image_size, self.crop_pct, self.multi_label = image_size, crop_pct, multi_label
        local = global_batch // process_count
        self.global_batch, self.offsets = global_batch, process_index * local + np.arange(local)

    def example(self, index: int) -> dict[str, np.ndarray]:
        read = self.reader(index, replace=False)
        if read is None:  # unreadable, with skip_bad_images: left out of the scores
            return self.padding()
        record, decoded = read
        example = {"image": transforms.eval_image(decoded, self.image_size, self.crop_pct), "mask": np.int32(1)}
        if self.multi_label:  # ImageNet-ReaL: a hit is any of its labels
            example["real"] = np.zeros(self.num_classes, np.uint8)
            example["real"][np.asarray(record["real_label"], np.int64)] = 1
            example["label"] = np.int32(record["original_label"])
        else:
            example["label"] = np.int32(record["label"])
        return example

    def padding(self) -> dict[str, np.ndarray]:
        example = {"image": np.zeros((self.image_size, self.image_size, 3), np.uint8), "mask": np.int32(0),
                   "label": np.int32(0)}  # fmt: skip
        if self.multi_label:
            example["real"] = np.zeros(self.num_classes, np.uint8)
        return example

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        indices = (step * self.global_batch + self.offsets).tolist()
        examples = [self.example(i) if i < self.count else self.padding() for i in indices]
        return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


def eval_batches(
    source: Source,
    split: str,
    *,
    image_size: int,
    crop_pct: float,
    global_batch: int,
    multi_label: bool = False,
    skip_bad_images: bool = False,
    threads: int = 1,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Every example of `split` once, padded to whole global batches (`mask` = 0 marks padding), made by
    `threads` threads (PIL's decoding and resizing release the GIL; no worker processes to start for each
    evaluation). `multi_label` reads ImageNet-ReaL's `real_label` (a hit is any of them) and takes
    `original_label` as the label."""
    if multi_label and "real_label" not in source.features:
        raise UserError(f"multi_label evaluation needs ReaL labels (real_label); {source.name} has none")
    make_batch = _EvalBatch(source, split, image_size, crop_pct, global_batch, process_index, process_count,
                            multi_label, skip_bad_images)  # fmt: skip
    return _batches(make_batch, 0, math.ceil(make_batch.count / global_batch), workers=0, threads=threads)


def label_subset(source: Source, split: str) -> np.ndarray:
    """The boolean mask of the classes present in `split` (ImageNet-A holds 200 of ImageNet's 1000)."""
    mask = np.zeros(source.num_classes, bool)
    mask[np.unique(source.labels(split))] = True
    return mask
