"""TFDS input pipelines (tf.data on the CPU) for training and evaluation.

Order and resumption: every process reads the same, seed-determined stream of records (files and a shuffle
buffer seeded by (seed, epoch)) and keeps its slice of each global batch, so a global batch holds the same
images in the same order whatever the number of processes, and training resumes at any step by skipping
records before they are decoded. The price is that each host reads (not decodes) every record. Per-image
randomness (crop, flip, RandAugment) is stateless, seeded by (seed, epoch, position in the epoch).

Batches are dicts of numpy arrays: `image` uint8 (B, H, W, 3) (normalized on the accelerator) and `label` int32;
evaluation batches add `mask` (0 for padding) and, for ImageNet-ReaL, `real` multi-hot labels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from sot_jax import randaugment

# Prepared on first use (no download): the datasets shipped in sot_jax.data.
EMBEDDED_DATASETS = ("digits",)
# Extra ImageNet evaluation sets, used when prepared in the data dir: name -> split.
EXTRA_EVAL_SETS = {"imagenet_a": "test", "imagenet_v2": "test", "imagenet2012_real": "validation"}
SHUFFLE_BUFFER = 16_384

tf.config.set_visible_devices([], "GPU")  # TensorFlow never takes accelerator memory


class DatasetNotReadyError(ValueError):
    """A dataset that exists in TFDS but is not prepared in the data dir."""


def get_builder(name: str, data_dir: str | None, prepare_embedded: bool = True) -> tfds.core.DatasetBuilder:
    """The TFDS builder of a prepared dataset (the embedded ones are prepared here on first use)."""
    import sot_jax.data  # noqa: F401  registers the embedded datasets

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(f"unknown dataset {name!r}: {str(e).splitlines()[0]}") from None
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
    return builder


def _decode(image_bytes: tf.Tensor) -> tf.Tensor:
    return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)


def _resize(image: tf.Tensor, size: tuple[int, int] | tf.Tensor) -> tf.Tensor:
    resized = tf.image.resize(image, size, method="bicubic")
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def _random_resized_crop(image_bytes: tf.Tensor, seed: tf.Tensor, config: Any) -> tf.Tensor:
    """Random area (crop_scale) and log-uniform aspect (crop_ratio) crop, resized bicubic to image_size.

    JPEGs are decoded only inside the crop window."""
    is_jpeg = tf.io.is_jpeg(image_bytes)
    shape = tf.cond(is_jpeg, lambda: tf.image.extract_jpeg_shape(image_bytes), lambda: tf.shape(_decode(image_bytes)))
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, tf.zeros([1, 0, 4]), seed=seed, min_object_covered=0.0, aspect_ratio_range=tuple(config.crop_ratio),
        area_range=tuple(config.crop_scale), max_attempts=10, use_image_if_no_bounding_boxes=True,
    )  # fmt: skip
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    crop = tf.cond(
        is_jpeg,
        lambda: tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3),
        lambda: tf.slice(_decode(image_bytes), [begin[0], begin[1], 0], [size[0], size[1], 3]),
    )
    return _resize(crop, (config.image_size, config.image_size))


def train_preprocess(image_bytes: tf.Tensor, seed: tf.Tensor, config: Any) -> tf.Tensor:
    crop_seed, flip_seed, augment_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    image = _random_resized_crop(image_bytes, crop_seed, config)
    if config.hflip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    if config.randaugment_layers > 0:
        image = randaugment.randaugment(
            image, augment_seed, config.randaugment_layers, config.randaugment_magnitude, config.randaugment_std
        )
    return tf.ensure_shape(image, (config.image_size, config.image_size, 3))


def eval_preprocess(image_bytes: tf.Tensor, config: Any) -> tf.Tensor:
    """Resize the shorter side to image_size / eval_crop_pct (bicubic), then centre-crop image_size."""
    image = _decode(image_bytes)
    resize = int(math.floor(config.image_size / config.eval_crop_pct))
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize / tf.reduce_min(shape)
    new_shape = tf.cast(tf.round(shape * scale), tf.int32)
    image = _resize(image, new_shape)
    top = (new_shape[0] - config.image_size) // 2
    left = (new_shape[1] - config.image_size) // 2
    image = tf.slice(image, [top, left, 0], [config.image_size, config.image_size, 3])
    return tf.ensure_shape(image, (config.image_size, config.image_size, 3))


def _records(builder: tfds.core.DatasetBuilder, split: str, shuffle_seed: int | None) -> tf.data.Dataset:
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, interleave_cycle_length=16, enable_ordering_guard=False)
    return builder.as_dataset(
        split=split,
        shuffle_files=shuffle_seed is not None,
        read_config=read_config,
        decoders={"image": tfds.decode.SkipDecoding()},
    )


def _process_slice(ds: tf.data.Dataset, global_batch: int, process_index: int, process_count: int) -> tf.data.Dataset:
    """Keep this process's contiguous slice of every global batch (before anything is decoded)."""
    if process_count == 1:
        return ds
    local = global_batch // process_count
    return (
        ds.batch(global_batch)
        .map(lambda *x: tf.nest.map_structure(lambda t: t[process_index * local :][:local], x))
        .unbatch()
    )


def steps_per_epoch(builder: tfds.core.DatasetBuilder, split: str, global_batch: int) -> int:
    count = builder.info.splits[split].num_examples
    if count < global_batch:
        raise ValueError(f"batch_size {global_batch} is larger than the {count} examples of {builder.name}:{split}")
    return count // global_batch


def train_batches(
    builder: tfds.core.DatasetBuilder,
    config: Any,
    *,
    global_batch: int,
    start_step: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless training batches from `start_step` on (per-process slices of the global batches)."""
    split = config.train_split
    epoch_steps = steps_per_epoch(builder, split, global_batch)
    epoch, offset = divmod(start_step, epoch_steps)
    local = global_batch // process_count
    while True:
        epoch_seed = config.seed * 1_000_003 + epoch
        ds = _records(builder, split, shuffle_seed=epoch_seed)
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=epoch_seed, reshuffle_each_iteration=False)
        if config.repeated_aug > 1:  # each image several times per epoch, with different augmentations
            ds = ds.flat_map(lambda x: tf.data.Dataset.from_tensors(x).repeat(config.repeated_aug))
        ds = ds.take(epoch_steps * global_batch).enumerate()
        ds = ds.skip(offset * global_batch)
        ds = _process_slice(ds, global_batch, process_index, process_count)

        def preprocess(index, example, epoch_seed=epoch_seed):
            seed = tf.stack([tf.constant(epoch_seed, tf.int64), index])
            return {
                "image": train_preprocess(example["image"], seed, config),
                "label": tf.cast(example["label"], tf.int32),
            }

        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        yield from ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
        epoch, offset = epoch + 1, 0


def eval_batches(
    builder: tfds.core.DatasetBuilder,
    split: str,
    config: Any,
    *,
    global_batch: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Every example of `split` once, padded to whole global batches (`mask` = 0 marks padding)."""
    count = builder.info.splits[split].num_examples
    num_batches = math.ceil(count / global_batch)
    local = global_batch // process_count
    real = "real_label" in builder.info.features
    num_classes = builder.info.features["original_label" if real else "label"].num_classes

    def preprocess(example):
        out = {"image": eval_preprocess(example["image"], config), "mask": tf.constant(1, tf.int32)}
        if real:
            labels = tf.cast(example["real_label"], tf.int32)
            out["real"] = tf.reduce_max(tf.one_hot(labels, num_classes, dtype=tf.uint8), axis=0)
            out["label"] = tf.cast(example["original_label"], tf.int32)
        else:
            out["label"] = tf.cast(example["label"], tf.int32)
        return out

    ds = _process_slice(_records(builder, split, shuffle_seed=None), global_batch, process_index, process_count)
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE).batch(local).prefetch(tf.data.AUTOTUNE)
    produced = 0
    template = None
    for batch in ds.as_numpy_iterator():
        template = batch
        yield _pad(batch, local)
        produced += 1
    for _ in range(num_batches - produced):  # this process's slice of the last global batch was empty
        yield _pad({k: v[:0] for k, v in template.items()}, local)


def _pad(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    missing = size - len(batch["mask"])
    return {
        k: np.concatenate([v, np.zeros((missing, *v.shape[1:]), v.dtype)]) if missing else v for k, v in batch.items()
    }


def label_subset(builder: tfds.core.DatasetBuilder, split: str) -> np.ndarray | None:
    """For ImageNet-A (200 of the 1000 classes), the boolean mask of classes present; None otherwise."""
    if builder.name != "imagenet_a":
        return None
    labels = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()}).map(lambda x: x["label"])
    mask = np.zeros(builder.info.features["label"].num_classes, bool)
    mask[list(set(labels.as_numpy_iterator()))] = True
    return mask
