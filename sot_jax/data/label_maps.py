"""Token label maps (LV-ViT's dense targets) in the input pipeline: lookup by image name and sampling at the
token centres of the augmented image (see `token_labels` for the accelerator side)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from sot_jax.errors import UserError


class LabelMaps:
    """Token label maps converted by `python -m sot_jax.convert_labels` (names.txt, scores.npy, classes.npy,
    meta.json in one folder), looked up by image file name without extension."""

    FILES = ("meta.json", "names.txt", "scores.npy", "classes.npy")

    def __init__(self, directory: str):
        folder = Path(directory)
        missing = [name for name in self.FILES if not (folder / name).is_file()]
        if missing:
            raise UserError(
                f"token label maps {folder}: missing {', '.join(missing)} (make them with python -m "
                f"sot_jax.convert_labels --label-root OFFICIAL_LABEL_ROOT --output {folder})"
            )
        self.directory = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        self.scores = np.load(folder / "scores.npy", mmap_mode="r")
        self.classes = np.load(folder / "classes.npy", mmap_mode="r")
        names = (folder / "names.txt").read_text().splitlines()
        if not len(names) == len(self.scores) == len(self.classes):
            raise UserError(f"token label maps {folder}: names.txt, scores.npy and classes.npy differ in length")
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
