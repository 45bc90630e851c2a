"""Token label maps (LV-ViT's dense targets) in the input pipeline: lookup by image name and the official
`get_label` read-out of each image's map after its flip, RandAugment and crop (see `token_labels` for the
accelerator side)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import tensorflow as tf

from sot_jax.errors import UserError, check_choice

# input.token_label_box: "official" reads the crop box mirrored across the map's diagonal (get_label passes
# (top, left, bottom, right) to roi_align as (x1, y1, x2, y2)); "corrected" reads the crop itself.
BOXES = ("official", "corrected")
# input.token_label_outside: map cells that RandAugment moved outside the image score "zero" (the official
# constant fill; their softmax is uniform) or take the "nearest" border cell.
OUTSIDES = ("zero", "nearest")


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
    scores: tf.Tensor,
    classes: tf.Tensor,
    geometry: dict[str, tf.Tensor],
    grid: tuple[int, int],
    box: str = "official",
    outside: str = "zero",
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """The official `get_label` on a top-k score map (K, h, w) that follows the image through the label-map order
    of `pipeline.train_preprocess` (flip, RandAugment on the whole image, random resized crop; `geometry`).

    The map as RandAugment leaves it: each of its h×w cells traces its centre back through RandAugment's pixel map
    and the flip (in the image's own geometry) and takes the nearest original cell; a centre that lands beyond
    the map's outer cell centres (scipy's mode "constant") scores 0 (`outside` "zero") or takes the nearest border
    cell ("nearest"). On that map, torchvision's `roi_align` (aligned=False) over the crop box (`box`: "official"
    mirrored across the diagonal, "corrected" the crop itself), as `get_label` calls it: box fractions × map
    width − 0.5, the roi at least one cell, ceil(bin size) samples per bin and axis, averaged, each bilinear with
    roi_align's border rule (a sample below −1 or beyond the map's size contributes 0, one in [−1, 0] is clamped
    to 0); the token grid's bins for the token targets and one bin over the whole box for the class target.

    Exact (up to float rounding): the flip, the box, roi_align's sampling and border rule, and the class target's
    1×1 read-out; exactly the official read-out when RandAugment made no geometric op. Approximated: the official
    resamples the square map itself at each geometric op (nearest neighbour in map coordinates, each op rounding
    in turn); here the composed ops are traced once, in the image's pixel geometry.

    Returns, as (class, weight) pairs whose sums per class are the logits (`token_labels.dense_targets` scatters
    them): the tokens' (N, P) and (N, P) (row-major, N = rows·cols) and the class target's (h·w·K,) and (h·w·K,).
    """
    check_choice("input.token_label_box", box, BOXES)
    check_choice("input.token_label_outside", outside, OUTSIDES)
    rows, cols = grid
    k, h, w = scores.shape
    top, left, bottom, right = tf.unstack(geometry["box"])
    if box == "official":  # get_label scales both axes by the map width (its maps are square)
        (y_start, y_end, y_extent), (x_start, x_end, x_extent) = (left, right, w), (top, bottom, w)
    else:
        (y_start, y_end, y_extent), (x_start, x_end, x_extent) = (top, bottom, h), (left, right, w)
    y_roi, x_roi = (
        (y_start * y_extent - 0.5, y_end * y_extent - 0.5),
        (x_start * x_extent - 0.5, x_end * x_extent - 0.5),
    )
    source, keep = _augmented_map_cells(geometry, h, w, outside)
    cell_scores = tf.gather(tf.reshape(tf.transpose(scores, (1, 2, 0)), (h * w, k)), source) * keep[:, None]
    cell_classes = tf.gather(tf.reshape(tf.transpose(classes, (1, 2, 0)), (h * w, k)), source)

    # Tokens: every (row sample, column sample) pair of a bin, four map cells each.
    row_cells, row_weights = _roi_align_axis(*y_roi, rows, h, math.ceil(y_extent / rows))
    col_cells, col_weights = _roi_align_axis(*x_roi, cols, w, math.ceil(x_extent / cols))
    cells = tf.reshape(row_cells[:, None, :, None] * w + col_cells[None, :, None, :], (rows * cols, -1))
    weights = tf.reshape(row_weights[:, None, :, None] * col_weights[None, :, None, :], (rows * cols, -1))
    token_classes = tf.reshape(tf.gather(cell_classes, cells), (rows * cols, -1))
    token_weights = tf.reshape(weights[..., None] * tf.gather(cell_scores, cells), (rows * cols, -1))

    # Class target: one bin over the box; the sample grid is separable, so each cell's weight is a product.
    row_cells, row_weights = _roi_align_axis(*y_roi, 1, h, math.ceil(y_extent))
    col_cells, col_weights = _roi_align_axis(*x_roi, 1, w, math.ceil(x_extent))
    per_row = tf.math.unsorted_segment_sum(tf.reshape(row_weights, [-1]), tf.reshape(row_cells, [-1]), h)
    per_col = tf.math.unsorted_segment_sum(tf.reshape(col_weights, [-1]), tf.reshape(col_cells, [-1]), w)
    cell_weights = tf.reshape(per_row[:, None] * per_col[None, :], (h * w, 1))
    return token_classes, token_weights, tf.reshape(cell_classes, [-1]), tf.reshape(cell_weights * cell_scores, [-1])


def _augmented_map_cells(geometry: dict[str, tf.Tensor], h: int, w: int, outside: str) -> tuple[tf.Tensor, tf.Tensor]:
    """For each cell of the h×w map after the flip and RandAugment: the original cell (row-major index) it
    shows and its score factor (0 for a cell moved outside with `outside` "zero", else 1)."""
    height, width = tf.unstack(geometry["size"])
    row, col = tf.meshgrid(tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32), indexing="ij")
    x, y = tf.reshape((col + 0.5) / w * width - 0.5, [-1]), tf.reshape((row + 0.5) / h * height - 0.5, [-1])
    x, y, _ = tf.unstack(geometry["affine"] @ tf.stack([x, y, tf.ones_like(x)]))  # RandAugment: output -> input
    x = tf.where(geometry["flipped"], width - 1.0 - x, x)
    col, row = (x + 0.5) / width * w - 0.5, (y + 0.5) / height * h - 0.5
    slack = 1e-3  # of a cell: float rounding must not push an untouched edge cell outside
    inside = (col >= -slack) & (col <= w - 1 + slack) & (row >= -slack) & (row <= h - 1 + slack)
    col = tf.clip_by_value(tf.floor(col + 0.5), 0.0, w - 1.0)
    row = tf.clip_by_value(tf.floor(row + 0.5), 0.0, h - 1.0)
    keep = tf.cast(inside, tf.float32) if outside == "zero" else tf.ones_like(x)
    return tf.cast(row, tf.int32) * w + tf.cast(col, tf.int32), keep


def _roi_align_axis(
    start: tf.Tensor, end: tf.Tensor, bins: int, length: int, max_samples: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """torchvision's roi_align (aligned=False, adaptive sampling ratio) along one axis of a map `length` cells
    long: per bin, its samples' two neighbouring cells (bins, 2·max_samples) and their bilinear weights divided
    by the sample count; samples past the count, or beyond the border rule, weigh 0. Float32 in roi_align's
    order of operations."""
    size = tf.maximum(end - start, 1.0)
    bin_size = size / bins
    count = tf.math.ceil(size / bins)
    bin_index = tf.range(bins, dtype=tf.float32)[:, None]
    sample = tf.range(max_samples, dtype=tf.float32)[None, :]
    position = start + bin_index * bin_size + (sample + 0.5) * bin_size / count
    used = (sample < count) & (position >= -1.0) & (position <= length)
    position = tf.maximum(position, 0.0)
    low = tf.floor(position)
    last = low >= length - 1  # roi_align's clamp: the last cell alone
    low = tf.where(last, length - 1.0, low)
    fraction = tf.where(last, 0.0, position - low)
    high = tf.where(last, low, low + 1.0)
    weight = tf.cast(used, tf.float32) / count
    cells = tf.cast(tf.stack([low, high], -1), tf.int32)
    weights = tf.stack([(1.0 - fraction) * weight, fraction * weight], -1)
    return tf.reshape(cells, (bins, -1)), tf.reshape(weights, (bins, -1))
