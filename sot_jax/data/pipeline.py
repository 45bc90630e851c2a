"""tf.data input pipelines (on the CPU) for training and evaluation, over any `sources.Source`.

Order and resumption: every process reads the same, seed-determined stream of records and keeps its slice of
each global batch, so a global batch holds the same images in the same order whatever the number of processes,
and training resumes at any step by skipping records before they are loaded or decoded. Per-image randomness
(crop, flip, RandAugment) is stateless, seeded by (seed, epoch, position in the epoch).

Batches are dicts of numpy arrays: `image` uint8 (B, H, W, 3) (normalized on the accelerator) and `label` int32;
training batches with token label maps add the tokens' and the class target's read-out of the map
(`LABEL_MAP_KEYS`, `label_maps.sample_label_map`), evaluation batches add `mask` (0 for padding) and, for
multi-label sets (ImageNet-ReaL), `real` multi-hot labels.

An image that does not decode stops the run naming its file, or with `skip_bad_images` is skipped and logged;
a skip shifts the rest of that epoch's batches by one image, so resuming inside such an epoch is not exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from sot_jax.data import randaugment
from sot_jax.data.label_maps import LabelMaps, sample_label_map
from sot_jax.data.sources import FolderSource, Source
from sot_jax.errors import UserError, check_choice


def _decode(image_bytes: tf.Tensor) -> tf.Tensor:
    return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)


INTERPOLATIONS = ("bicubic", "bilinear", "random")
# A label-map batch's (class, weight) pairs: tokens' (B, N, P), class target's (B, h·w·K).
LABEL_MAP_KEYS = ("token_label_classes", "token_label_weights", "class_label_classes", "class_label_weights")


def _resize(image: tf.Tensor, size: tuple[int, int] | tf.Tensor, method: str = "bicubic") -> tf.Tensor:
    """Resize like PIL (what torchvision and timm call): antialiased, so downscaling widens the kernel."""
    resized = tf.image.resize(image, size, method=method, antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def crop_window(shape: tf.Tensor, seed: tf.Tensor, scale: tuple[float, float], ratio: tuple[float, float]) -> tf.Tensor:
    """timm's `RandomResizedCropAndInterpolation.get_params` (timm 0.3.x/0.4.x), stateless: of 10 draws of an area
    uniform in `scale` × the image area and a log-uniform aspect ratio w/h in `ratio`, the first that fits, at
    offsets uniform in [0, H − h] × [0, W − w]; none fits: the centre crop of the aspect clamped to `ratio`.
    `shape` is (H, W, ...); returns int32 (top, left, height, width)."""
    height, width = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    area_seed, ratio_seed, top_seed, left_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    area = tf.random.stateless_uniform([10], area_seed, scale[0], scale[1], tf.float64) * height * width
    log_ratio = tf.random.stateless_uniform([10], ratio_seed, math.log(ratio[0]), math.log(ratio[1]), tf.float64)
    # tf.round rounds half to even, as Python's round does.
    w, h = tf.round(tf.sqrt(area * tf.exp(log_ratio))), tf.round(tf.sqrt(area / tf.exp(log_ratio)))
    fits = (w <= width) & (h <= height) & (w > 0) & (h > 0)  # > 0: only tiny images can round to nothing
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    low, high = min(ratio), max(ratio)
    aspect = width / height
    fallback_w = tf.where(aspect > high, tf.round(height * high), width)
    fallback_h = tf.where(aspect < low, tf.round(width / low), height)
    found = tf.reduce_any(fits)
    h = tf.cast(tf.where(found, h[first], fallback_h), tf.int32)
    w = tf.cast(tf.where(found, w[first], fallback_w), tf.int32)
    rows, cols = tf.cast(shape[0], tf.int32), tf.cast(shape[1], tf.int32)
    top = tf.where(found, tf.random.stateless_uniform([], top_seed, 0, rows - h + 1, tf.int32), (rows - h) // 2)
    left = tf.where(found, tf.random.stateless_uniform([], left_seed, 0, cols - w + 1, tf.int32), (cols - w) // 2)
    return tf.stack([top, left, h, w])


def _resize_crop(crop: tf.Tensor, seed: tf.Tensor, interpolation: str, image_size: int) -> tf.Tensor:
    """The crop resized to image_size² with `interpolation` ("random": bilinear or bicubic, a coin flip per image,
    as timm's)."""
    size = (image_size, image_size)
    if interpolation == "random":
        bicubic = tf.random.stateless_uniform([], seed) < 0.5
        return tf.cond(bicubic, lambda: _resize(crop, size, "bicubic"), lambda: _resize(crop, size, "bilinear"))
    return _resize(crop, size, interpolation)


def _random_resized_crop(image_bytes: tf.Tensor, seed: tf.Tensor, input_config: Any, image_size: int) -> tf.Tensor:
    """timm's random resized crop (`crop_window`) of the decoded image, resized to image_size with
    `input_config.interpolation`. JPEGs are decoded only inside the crop window."""
    window_seed, method_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    is_jpeg = tf.io.is_jpeg(image_bytes)
    shape = tf.cond(is_jpeg, lambda: tf.image.extract_jpeg_shape(image_bytes), lambda: tf.shape(_decode(image_bytes)))
    window = crop_window(shape, window_seed, tuple(input_config.crop_scale), tuple(input_config.crop_ratio))
    crop = tf.cond(
        is_jpeg,
        lambda: tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3),
        lambda: tf.slice(_decode(image_bytes), [window[0], window[1], 0], [window[2], window[3], 3]),
    )
    return _resize_crop(crop, method_seed, input_config.interpolation, image_size)


def _flip(image: tf.Tensor, seed: tf.Tensor, input_config: Any) -> tuple[tf.Tensor, tf.Tensor]:
    if not input_config.hflip:
        return image, tf.constant(False)
    flipped = tf.random.stateless_uniform([], seed) < 0.5
    return tf.cond(flipped, lambda: tf.image.flip_left_right(image), lambda: image), flipped


def _randaugment(image: tf.Tensor, seed: tf.Tensor, input_config: Any) -> tuple[tf.Tensor, tf.Tensor]:
    if input_config.randaugment_layers <= 0:
        return image, tf.eye(3)
    return randaugment.randaugment(
        image, seed, input_config.randaugment_layers, input_config.randaugment_magnitude,
        input_config.randaugment_std, input_config.interpolation,
    )  # fmt: skip


def train_preprocess(
    image_bytes: tf.Tensor, seed: tf.Tensor, input_config: Any, image_size: int
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """The training image (uint8, image_size²) and, with `input_config.token_label_dir`, its geometry.

    Without label maps, timm's order: random resized crop, flip, RandAugment on the crop; the geometry is empty.
    With them, the official token-labeling order (TokenLabeling's `transforms_imagenet_train`): flip, RandAugment
    on the whole image, the random resized crop last; the geometry is what a label map needs to follow the image
    (`label_maps.sample_label_map`): `flipped`; `affine`, RandAugment's output->input pixel map (3×3) at the
    whole image's `size` (height, width); `box`, the crop (top, left, bottom, right) as fractions of the image,
    in float32 as the official stores them (top + height, left + width)."""
    check_choice("input.interpolation", input_config.interpolation, INTERPOLATIONS)
    crop_seed, flip_seed, augment_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    if not input_config.token_label_dir:
        image = _random_resized_crop(image_bytes, crop_seed, input_config, image_size)
        image, _ = _flip(image, flip_seed, input_config)
        image, _ = _randaugment(image, augment_seed, input_config)
        return tf.ensure_shape(image, (image_size, image_size, 3)), {}
    image, flipped = _flip(_decode(image_bytes), flip_seed, input_config)
    image, affine = _randaugment(image, augment_seed, input_config)
    window_seed, method_seed = tf.unstack(tf.random.experimental.stateless_split(crop_seed, 2))
    shape = tf.shape(image)
    window = crop_window(shape, window_seed, tuple(input_config.crop_scale), tuple(input_config.crop_ratio))
    crop = tf.slice(image, [window[0], window[1], 0], [window[2], window[3], 3])
    image = _resize_crop(crop, method_seed, input_config.interpolation, image_size)
    size = tf.cast(shape[:2], tf.float32)
    fractions = tf.cast(tf.cast(window, tf.float64) / tf.cast(tf.tile(shape[:2], [2]), tf.float64), tf.float32)
    box = tf.concat([fractions[:2], fractions[:2] + fractions[2:]], 0)
    geometry = {"box": box, "flipped": flipped, "affine": affine, "size": size}
    return tf.ensure_shape(image, (image_size, image_size, 3)), geometry


def eval_preprocess(image_bytes: tf.Tensor, image_size: int, crop_pct: float) -> tf.Tensor:
    """timm's eval transform (torchvision 0.8 `Resize(floor(image_size / crop_pct))` bicubic, `CenterCrop`): the
    shorter side to image_size / crop_pct, the longer one truncated as torchvision does, then the centre crop at
    offsets rounded half to even (Python's round)."""
    image = _decode(image_bytes)
    resize = math.floor(image_size / crop_pct)
    shape = tf.cast(tf.shape(image)[:2], tf.float64)
    new_shape = tf.cast(tf.floor(resize * shape / tf.reduce_min(shape)), tf.int32)
    image = _resize(image, new_shape)
    top, left = tf.unstack(tf.cast(tf.round(tf.cast(new_shape - image_size, tf.float64) / 2), tf.int32))
    image = tf.slice(image, [top, left, 0], [image_size, image_size, 3])
    return tf.ensure_shape(image, (image_size, image_size, 3))


def _process_slice(ds: tf.data.Dataset, global_batch: int, process_index: int, process_count: int) -> tf.data.Dataset:
    """Keep this process's contiguous slice of every global batch (before anything is loaded or decoded)."""
    if process_count == 1:
        return ds
    local = global_batch // process_count
    return (
        ds.batch(global_batch)
        .map(lambda *x: tf.nest.map_structure(lambda t: t[process_index * local :][:local], x))
        .unbatch()
    )


class BadImages:
    """Finds the records that failed to load or decode (the pipeline drops them with `ignore_errors` and batches
    carry each record's stream position), then stops naming the file, or with `skip` logs and counts it."""

    def __init__(self, source: Source, split: str, skip: bool, global_batch: int, process_index: int, count: int):
        self.source, self.split, self.skip = source, split, skip
        self.global_batch, self.process_index, self.local = global_batch, process_index, global_batch // count
        self.skipped = 0

    def _mine(self, position: int) -> bool:
        return (position % self.global_batch) // self.local == self.process_index

    def check(self, positions: np.ndarray, expected: int, shuffle_seed: int | None, repeats: int = 1) -> int:
        """Report this process's positions in [expected, each seen position) that are absent (the last one given
        may be the end of the stream); returns the next expected position. `repeats`: records per stream entry."""
        for seen in positions.tolist():
            for missing in range(expected, seen):
                if self._mine(missing):
                    self.report(missing // repeats, shuffle_seed)
            expected = seen + 1
        return expected

    def report(self, record: int, shuffle_seed: int | None) -> None:
        if isinstance(self.source, FolderSource):
            what = str(self.source.path(self.split, shuffle_seed, record))
        else:
            what = f"record {record} of {self.source.name}:{self.split} (shuffle seed {shuffle_seed})"
        if not self.skip:
            raise UserError(
                f"cannot read or decode image {what}; fix or remove it, or set skip_bad_images=True to skip such files"
            )
        self.skipped += 1
        print(f"warning: skipped unreadable image {what} ({self.skipped} skipped so far)", flush=True)


def steps_per_epoch(source: Source, split: str, global_batch: int) -> int:
    """Whole global batches in one pass over `split` (also with repeated augmentation, as DeiT's RASampler)."""
    count = source.num_examples(split)
    if count < global_batch:
        raise UserError(f"batch_size {global_batch} is larger than the {count} examples of {source.name}:{split}")
    return count // global_batch


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
    token_grid: tuple[int, int] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless training batches from `start_step` on (per-process slices of the global batches).

    `input_config` is the config's `input` group. With `input_config.token_label_dir`, each example also carries
    `LABEL_MAP_KEYS` (classes int32, weights float32) for the model's `token_grid`."""
    label_maps = None
    if input_config.token_label_dir:
        if "file_name" not in source.features:
            raise UserError(
                f"token_label_dir needs a dataset with file names (e.g. imagenet2012); {source.name} has none"
            )
        label_maps = LabelMaps(input_config.token_label_dir)
        if label_maps.meta["num_classes"] != source.num_classes:
            raise UserError(
                f"token label maps {input_config.token_label_dir} were converted for "
                f"{label_maps.meta['num_classes']} classes; {source.name} has {source.num_classes}"
            )
    split, repeats = input_config.train_split, input_config.repeated_aug
    epoch_steps = steps_per_epoch(source, split, global_batch)
    epoch, offset = divmod(start_step, epoch_steps)
    local = global_batch // process_count
    bad = BadImages(source, split, input_config.skip_bad_images, global_batch, process_index, process_count)
    while True:
        epoch_seed = seed * 1_000_003 + epoch
        ds = source.records(split, shuffle_seed=epoch_seed)
        if repeats > 1:  # each image several times per epoch, with different augmentations
            ds = ds.flat_map(lambda x: tf.data.Dataset.from_tensors(x).repeat(repeats))
        ds = ds.take(epoch_steps * global_batch).enumerate()
        ds = ds.skip(offset * global_batch)
        ds = _process_slice(ds, global_batch, process_index, process_count)

        def preprocess(position, record, epoch_seed=epoch_seed):
            record = source.load(record)
            seed = tf.stack([tf.constant(epoch_seed, tf.int64), position])
            image, geometry = train_preprocess(record["image"], seed, input_config, image_size)
            features = {"image": image, "label": tf.cast(record["label"], tf.int32), "position": position}
            if label_maps is not None:
                features["geometry"], features["file_name"] = geometry, record["file_name"]
            return features

        def sample_labels(features):
            scores, classes = label_maps.lookup(features.pop("file_name"))
            box, outside = input_config.token_label_box, input_config.token_label_outside
            pairs = sample_label_map(scores, classes, features.pop("geometry"), token_grid, box, outside)
            features.update(zip(LABEL_MAP_KEYS, pairs, strict=True))
            return features

        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
        if label_maps is not None:  # after ignore_errors: a missing label map must stop the run, not skip an image
            ds = ds.map(sample_labels, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        expected = offset * global_batch
        # Not drop_remainder: a skipped image leaves a last partial batch, whose positions are checked, not used.
        for batch in ds.batch(local).prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
            expected = bad.check(batch.pop("position"), expected, epoch_seed, repeats)
            if len(batch["label"]) == local:
                yield batch
        bad.check(np.array([epoch_steps * global_batch]), expected, epoch_seed, repeats)
        epoch, offset = epoch + 1, 0


def eval_batches(
    source: Source,
    split: str,
    *,
    image_size: int,
    crop_pct: float,
    global_batch: int,
    multi_label: bool = False,
    skip_bad_images: bool = False,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Every example of `split` once, padded to whole global batches (`mask` = 0 marks padding). `multi_label`
    reads ImageNet-ReaL's `real_label` (a hit is any of them) and takes `original_label` as the label."""
    count = source.num_examples(split)
    num_batches = math.ceil(count / global_batch)
    local = global_batch // process_count
    if multi_label and "real_label" not in source.features:
        raise UserError(f"multi_label evaluation needs ReaL labels (real_label); {source.name} has none")

    def preprocess(position, record):
        record = source.load(record)
        out = {"image": eval_preprocess(record["image"], image_size, crop_pct), "mask": tf.constant(1, tf.int32)}
        out["position"] = position
        if multi_label:
            labels = tf.cast(record["real_label"], tf.int32)
            out["real"] = tf.reduce_max(tf.one_hot(labels, source.num_classes, dtype=tf.uint8), axis=0)
            out["label"] = tf.cast(record["original_label"], tf.int32)
        else:
            out["label"] = tf.cast(record["label"], tf.int32)
        return out

    ds = source.records(split, shuffle_seed=None).enumerate()
    ds = _process_slice(ds, global_batch, process_index, process_count)
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    ds = ds.batch(local).prefetch(tf.data.AUTOTUNE)
    bad = BadImages(source, split, skip_bad_images, global_batch, process_index, process_count)
    produced, expected = 0, 0
    for batch in ds.as_numpy_iterator():
        expected = bad.check(batch.pop("position"), expected, None)
        yield _pad(batch, local)
        produced += 1
    bad.check(np.array([count]), expected, None)
    empty = {k: np.zeros((0, *spec.shape[1:]), spec.dtype.as_numpy_dtype) for k, spec in ds.element_spec.items()}
    empty.pop("position")
    for _ in range(num_batches - produced):  # this process's slice of the last global batches was empty
        yield _pad(empty, local)


def _pad(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    missing = size - len(batch["mask"])
    return {
        k: np.concatenate([v, np.zeros((missing, *v.shape[1:]), v.dtype)]) if missing else v for k, v in batch.items()
    }


def label_subset(source: Source, split: str) -> np.ndarray:
    """The boolean mask of the classes present in `split` (ImageNet-A holds 200 of ImageNet's 1000)."""
    mask = np.zeros(source.num_classes, bool)
    mask[np.unique(source.labels(split))] = True
    return mask
