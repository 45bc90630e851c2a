"""TFDS input pipelines (tf.data on the CPU) for training and evaluation.

Order and resumption: every process reads the same, seed-determined stream of records (files and a shuffle
buffer seeded by (seed, epoch)) and keeps its slice of each global batch, so a global batch holds the same
images in the same order whatever the number of processes, and training resumes at any step by skipping
records before they are decoded. The price is that each host reads (not decodes) every record. Per-image
randomness (crop, flip, RandAugment) is stateless, seeded by (seed, epoch, position in the epoch).

Batches are dicts of numpy arrays: `image` uint8 (B, H, W, 3) (normalized on the accelerator) and `label` int32;
training batches with token label maps add each token's sampled scores (`sample_label_map`), evaluation batches
add `mask` (0 for padding) and, for ImageNet-ReaL, `real` multi-hot labels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
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


def _random_resized_crop(image_bytes: tf.Tensor, seed: tf.Tensor, config: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """Random area (crop_scale) and log-uniform aspect (crop_ratio) crop, resized bicubic to image_size; also the
    crop box (top, left, bottom, right) as fractions of the image.

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
    extent = tf.cast(tf.tile(shape[:2], [2]), tf.float32)
    box = tf.cast(tf.concat([begin[:2], begin[:2] + size[:2]], 0), tf.float32) / extent
    return _resize(crop, (config.image_size, config.image_size)), box


def train_preprocess(image_bytes: tf.Tensor, seed: tf.Tensor, config: Any) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """The training image, and its geometry (what a token label map needs to follow it): `box`, the crop as
    fractions of the original image (top, left, bottom, right); `flipped`; `affine`, RandAugment's output->input
    pixel map (3×3)."""
    crop_seed, flip_seed, augment_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    image, box = _random_resized_crop(image_bytes, crop_seed, config)
    flipped = tf.constant(False)
    if config.hflip:
        flipped = tf.random.stateless_uniform([], flip_seed) < 0.5
        image = tf.cond(flipped, lambda: tf.image.flip_left_right(image), lambda: image)
    affine = tf.eye(3)
    if config.randaugment_layers > 0:
        image, affine = randaugment.randaugment(
            image, augment_seed, config.randaugment_layers, config.randaugment_magnitude, config.randaugment_std
        )
    image = tf.ensure_shape(image, (config.image_size, config.image_size, 3))
    return image, {"box": box, "flipped": flipped, "affine": affine}


class LabelMaps:
    """Token label maps converted by `python -m sot_jax.convert_labels` (names.txt, scores.npy, classes.npy,
    meta.json in one folder), looked up by image file name without extension."""

    FILES = ("meta.json", "names.txt", "scores.npy", "classes.npy")

    def __init__(self, directory: str):
        folder = Path(directory)
        missing = [name for name in self.FILES if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"token label maps {folder}: missing {', '.join(missing)} (make them with python -m "
                f"sot_jax.convert_labels --label-root OFFICIAL_LABEL_ROOT --output {folder})"
            )
        self.directory = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        self.scores = np.load(folder / "scores.npy", mmap_mode="r")
        self.classes = np.load(folder / "classes.npy", mmap_mode="r")
        names = (folder / "names.txt").read_text().splitlines()
        if not len(names) == len(self.scores) == len(self.classes):
            raise ValueError(f"token label maps {folder}: names.txt, scores.npy and classes.npy differ in length")
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(names), tf.range(len(names), dtype=tf.int64)), -1
        )

    def lookup(self, file_name: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(scores float32 (K, h, w), classes int32 (K, h, w)) of one image; fails naming the image if absent."""
        row = self.table.lookup(tf.strings.regex_replace(file_name, r"\.[^.]*$", ""))
        found = tf.debugging.Assert(row >= 0, ["no token label map for image", file_name, "in", str(self.directory)])
        with tf.control_dependencies([found]):
            row = tf.identity(row)
        scores, classes = tf.numpy_function(
            lambda r: (self.scores[r].astype(np.float32), self.classes[r].astype(np.int32)),
            [row], (tf.float32, tf.int32), stateful=False,
        )  # fmt: skip
        shape = self.scores.shape[1:]
        return tf.ensure_shape(scores, shape), tf.ensure_shape(classes, shape)


def sample_label_map(
    scores: tf.Tensor, classes: tf.Tensor, geometry: dict[str, tf.Tensor], grid: tuple[int, int], image_size: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Follow the image's crop, flip and geometric RandAugment ops (`train_preprocess`'s geometry): bilinear samples
    of a top-k score map at the token centres, traced back to the original image (roi-align to the token grid
    with one sample per bin). Points that RandAugment moved outside the image take the nearest border cell.

    scores, classes: (K, h, w), the map over the whole image. Returns per token (row-major, N = rows·cols) the
    (class, weight) pairs (N, 4K) of its four neighbouring map cells: summed per class, they are the token's
    interpolated scores (`token_labels.dense_targets` scatters them).
    """
    rows, cols = grid
    k, h, w = scores.shape
    size = float(image_size)
    # Token centres in the output image's pixel coordinates (pixel i is centred on i), then back through
    # RandAugment's map and the flip to the crop, then to fractions of the original image and map coordinates.
    row, col = tf.meshgrid(tf.range(rows, dtype=tf.float32), tf.range(cols, dtype=tf.float32), indexing="ij")
    points = tf.stack(
        [tf.reshape((col + 0.5) * size / cols - 0.5, [-1]), tf.reshape((row + 0.5) * size / rows - 0.5, [-1])]
    )
    x_out, y_out, _ = tf.unstack(geometry["affine"] @ tf.concat([points, tf.ones([1, rows * cols])], 0))
    x_out = tf.where(geometry["flipped"], size - 1.0 - x_out, x_out)
    top, left, bottom, right = tf.unstack(geometry["box"])
    y = (top + (y_out + 0.5) / size * (bottom - top)) * h - 0.5
    x = (left + (x_out + 0.5) / size * (right - left)) * w - 0.5
    y, x = tf.clip_by_value(y, 0.0, h - 1.0), tf.clip_by_value(x, 0.0, w - 1.0)
    y0, x0 = tf.floor(y), tf.floor(x)
    wy, wx = y - y0, x - x0
    y0, x0 = tf.cast(y0, tf.int32), tf.cast(x0, tf.int32)
    y1, x1 = tf.minimum(y0 + 1, h - 1), tf.minimum(x0 + 1, w - 1)
    scores_hwk, classes_hwk = tf.transpose(scores, (1, 2, 0)), tf.transpose(classes, (1, 2, 0))
    pair_classes, pair_weights = [], []
    for row_index, row_weight in ((y0, 1.0 - wy), (y1, wy)):
        for col_index, col_weight in ((x0, 1.0 - wx), (x1, wx)):
            where = tf.stack([row_index, col_index], axis=-1)  # (N, 2)
            pair_classes.append(tf.gather_nd(classes_hwk, where))
            pair_weights.append((row_weight * col_weight)[:, None] * tf.gather_nd(scores_hwk, where))
    return tf.concat(pair_classes, -1), tf.concat(pair_weights, -1)


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
    token_grid: tuple[int, int] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless training batches from `start_step` on (per-process slices of the global batches).

    With `config.token_label_dir`, each example also carries `token_label_classes` int32 and
    `token_label_weights` float32, (N, 4K) for the model's `token_grid` (see `sample_label_map`)."""
    label_maps = None
    if config.token_label_dir:
        if "file_name" not in builder.info.features:
            raise ValueError(
                f"token_label_dir needs a dataset with file names (e.g. imagenet2012); {builder.name} has none"
            )
        label_maps = LabelMaps(config.token_label_dir)
        num_classes = builder.info.features["label"].num_classes
        if label_maps.meta["num_classes"] != num_classes:
            raise ValueError(
                f"token label maps {config.token_label_dir} were converted for {label_maps.meta['num_classes']} "
                f"classes; {builder.name} has {num_classes}"
            )
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
            image, geometry = train_preprocess(example["image"], seed, config)
            features = {"image": image, "label": tf.cast(example["label"], tf.int32)}
            if label_maps is not None:
                scores, classes = label_maps.lookup(example["file_name"])
                pairs = sample_label_map(scores, classes, geometry, token_grid, config.image_size)
                features["token_label_classes"], features["token_label_weights"] = pairs
            return features

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
    for batch in ds.as_numpy_iterator():
        yield _pad(batch, local)
        produced += 1
    empty = {k: np.zeros((0, *spec.shape[1:]), spec.dtype.as_numpy_dtype) for k, spec in ds.element_spec.items()}
    for _ in range(num_batches - produced):  # this process's slice of the last global batches was empty
        yield _pad(empty, local)


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
