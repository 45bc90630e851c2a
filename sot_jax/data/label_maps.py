"""Token label maps (LV-ViT's dense targets) in the input workers, in numpy: lookup by image name and the official
`get_label` read-out of each image's map after its flip, RandAugment and crop (see `token_labels` for the
accelerator side)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
from scipy import ndimage

from sot_jax.errors import UserError, check_choice

# input.token_label_box: "official" reads the crop box mirrored across the map's diagonal (get_label passes
# (top, left, bottom, right) to roi_align as (x1, y1, x2, y2)); "corrected" reads the crop itself.
BOXES = ("official", "corrected")
# input.token_label_outside: map cells that RandAugment moved outside the image score "zero" (the official
# constant fill; their softmax is uniform) or take the "nearest" border cell.
OUTSIDES = ("zero", "nearest")
# input.token_label_resample: "traced" follows each map cell once through the composed ops in the image's pixel
# geometry; "official" resamples the map at each op in its own cell coordinates, as TokenLabeling does.
RESAMPLES = ("traced", "official")
# The geometric RandAugment ops of geometry["ops"] (randaugment.OPS names; the translations are relative).
MAP_OPS = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
_EXTENSION = re.compile(r"\.[^.]*\Z")


class LabelMaps:
    """Token label maps converted by `python -m sot_jax.convert_labels` (names.txt, scores.npy, classes.npy,
    meta.json in one folder), looked up by image file name without extension. Pickles as its folder alone: a
    worker process re-opens the files (memory-mapped) instead of receiving every map."""

    FILES = ("meta.json", "names.txt", "scores.npy", "classes.npy")

    def __init__(self, directory: str | Path):
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
        self.rows = {name: row for row, name in enumerate(names)}

    def lookup(self, file_name: str) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 (K, h, w), classes int32 (K, h, w)) of one image; a UserError naming it if absent."""
        row = self.rows.get(_EXTENSION.sub("", file_name, count=1))
        if row is None:
            raise UserError(f"no token label map for image {file_name} in {self.directory}")
        return self.scores[row].astype(np.float32), self.classes[row].astype(np.int32)

    def __getstate__(self) -> dict:
        return {"directory": str(self.directory)}  # a memmap would pickle as all of its data

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["directory"])


def sample_label_map(
    scores: np.ndarray,
    classes: np.ndarray,
    geometry: dict,
    grid: tuple[int, int],
    box: str = "official",
    outside: str = "zero",
    resample: str = "traced",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The official `get_label` on a top-k score map (K, h, w) that follows the image through the label-map order
    of the training transform (flip, RandAugment on the whole image, random resized crop), described by `geometry`:

    - "box": float32 (4,), the crop's (top, left, bottom, right) as fractions of the whole image;
    - "flipped": bool, whether the image was flipped left-right (before RandAugment);
    - "affine" (`resample` "traced"): float (3, 3), RandAugment's output->input pixel map at the whole image, in
      pixel-index coordinates (x_in, y_in, 1) = affine · (x, y, 1);
    - "size" (`resample` "traced"): float32 (2,), the whole image's (height, width) in pixels;
    - "ops" (`resample` "official"): the geometric ops RandAugment applied, in order, as (name, value) pairs with
      the value the official op receives (timm's level_to_arg, sign included): ("Rotate", degrees counter-clockwise),
      ("ShearX", factor) and ("ShearY", factor) (x_in = x + factor·y and y_in = y + factor·x), ("TranslateX", pct)
      and ("TranslateY", pct) (timm's TranslateXRel/YRel: x_in = x + pct·width, y_in = y + pct·height). Photometric
      ops are left out (the official leaves the map alone for them).

    The map as RandAugment leaves it, `resample`:
    - "traced": each of its h×w cells traces its centre back through `affine` and the flip (in the image's own
      geometry) and takes the nearest original cell; a centre that lands beyond the map's outer cell centres
      (scipy's mode "constant") scores 0 (`outside` "zero") or takes the nearest border cell ("nearest").
      Approximates the official, which rounds to whole cells at each op and moves the square map in its own
      coordinates (about the cell-index origin and the point (h/2, w/2), whatever the image's aspect ratio).
    - "official": TokenLabeling's random_augment_label: the flipped map resampled at each op by
      scipy.ndimage.affine_transform (order 0) with the op's matrix in map coordinates, scores in mode "constant"
      (0 outside; mode "nearest" with `outside` "nearest") and classes in mode "nearest". Exact.

    On that map, torchvision's `roi_align` (aligned=False) over the crop box (`box`: "official" mirrored across the
    diagonal, "corrected" the crop itself), as `get_label` calls it: box fractions × map width − 0.5, the roi at
    least one cell, ceil(bin size) samples per bin and axis, averaged, each bilinear with roi_align's border rule
    (a sample below −1 or beyond the map's size contributes 0, one in [−1, 0] is clamped to 0); the token grid's
    bins for the token targets and one bin over the whole box for the class target. Float32 in roi_align's order
    of operations, so exact up to float rounding.

    Returns, as (class, weight) pairs whose sums per class are the logits (`token_labels.dense_targets` scatters
    them): the tokens' int32 (N, P) and float32 (N, P) (row-major, N = rows·cols) and the class target's int32
    (h·w·K,) and float32 (h·w·K,).
    """
    check_choice("input.token_label_box", box, BOXES)
    check_choice("input.token_label_outside", outside, OUTSIDES)
    check_choice("input.token_label_resample", resample, RESAMPLES)
    rows, cols = grid
    k, h, w = scores.shape
    top, left, bottom, right = np.asarray(geometry["box"], np.float32)
    if box == "official":  # get_label scales both axes by the map width (its maps are square)
        (y_start, y_end, y_extent), (x_start, x_end, x_extent) = (left, right, w), (top, bottom, w)
    else:
        (y_start, y_end, y_extent), (x_start, x_end, x_extent) = (top, bottom, h), (left, right, w)
    y_roi, x_roi = (
        (y_start * y_extent - 0.5, y_end * y_extent - 0.5),
        (x_start * x_extent - 0.5, x_end * x_extent - 0.5),
    )
    if resample == "official":
        source, keep = _official_map_cells(geometry, h, w, outside)
    else:
        source, keep = _augmented_map_cells(geometry, h, w, outside)
    # np.take: several times faster than fancy indexing on arrays this small.
    cell_scores = np.take(np.asarray(scores, np.float32).reshape(k, h * w).T, source, 0) * keep[:, None]
    cell_classes = np.take(np.asarray(classes, np.int32).reshape(k, h * w).T, source, 0)

    # Tokens: every (row sample, column sample) pair of a bin, four map cells each.
    row_cells, row_weights = _roi_align_axis(*y_roi, rows, h, math.ceil(y_extent / rows))
    col_cells, col_weights = _roi_align_axis(*x_roi, cols, w, math.ceil(x_extent / cols))
    cells = (row_cells[:, None, :, None] * w + col_cells[None, :, None, :]).reshape(rows * cols, -1)
    weights = (row_weights[:, None, :, None] * col_weights[None, :, None, :]).reshape(rows * cols, -1)
    token_classes = np.take(cell_classes, cells, 0).reshape(rows * cols, -1)
    token_weights = (weights[..., None] * np.take(cell_scores, cells, 0)).reshape(rows * cols, -1)

    # Class target: one bin over the box; the sample grid is separable, so each cell's weight is a product.
    row_cells, row_weights = _roi_align_axis(*y_roi, 1, h, math.ceil(y_extent))
    col_cells, col_weights = _roi_align_axis(*x_roi, 1, w, math.ceil(x_extent))
    per_row = np.bincount(row_cells.ravel(), row_weights.ravel(), h).astype(np.float32)
    per_col = np.bincount(col_cells.ravel(), col_weights.ravel(), w).astype(np.float32)
    cell_weights = (per_row[:, None] * per_col[None, :]).reshape(h * w, 1)
    return token_classes, token_weights, cell_classes.reshape(-1), (cell_weights * cell_scores).reshape(-1)


def _augmented_map_cells(geometry: dict, h: int, w: int, outside: str) -> tuple[np.ndarray, np.ndarray]:
    """For each cell of the h×w map after the flip and RandAugment ("traced"): the original cell (row-major index)
    it shows and its score factor (0 for a cell moved outside with `outside` "zero", else 1)."""
    height, width = np.asarray(geometry["size"], np.float32)
    x = (np.arange(w, dtype=np.float32) + 0.5) / w * width - 0.5
    y = ((np.arange(h, dtype=np.float32) + 0.5) / h * height - 0.5)[:, None]
    affine = np.asarray(geometry["affine"], np.float32)
    x, y = affine[0, 0] * x + affine[0, 1] * y + affine[0, 2], affine[1, 0] * x + affine[1, 1] * y + affine[1, 2]
    if geometry["flipped"]:
        x = width - 1.0 - x
    col, row = (x + 0.5) / width * w - 0.5, (y + 0.5) / height * h - 0.5
    slack = 1e-3  # of a cell: float rounding must not push an untouched edge cell outside
    inside = (col >= -slack) & (col <= w - 1 + slack) & (row >= -slack) & (row <= h - 1 + slack)
    col = np.clip(np.floor(col + 0.5), 0, w - 1).astype(np.int32)
    row = np.clip(np.floor(row + 0.5), 0, h - 1).astype(np.int32)
    keep = inside.astype(np.float32) if outside == "zero" else np.ones((h, w), np.float32)
    return (row * w + col).reshape(-1), keep.reshape(-1)


def _official_map_cells(geometry: dict, h: int, w: int, outside: str) -> tuple[np.ndarray, np.ndarray]:
    """`_augmented_map_cells` as TokenLabeling moves the map ("official"): the flip, then per op the scipy call the
    official makes on its scores (mode "constant") and classes (mode "nearest"). Order 0 copies the nearest cell
    whatever it holds, so the same calls on the cell indices (mode "nearest") and on a mask of ones (the scores'
    mode) give the cell each map cell shows and the scores' zero fill."""
    # The official label is (2, K, h, w): the flip reverses w, each op is an affine_transform of (K, h, w).
    source = np.arange(h * w, dtype=np.int32).reshape(1, h, w)
    if geometry["flipped"]:
        source = source[..., ::-1]
    keep = np.ones((1, h, w), np.float32)
    for name, value in geometry["ops"]:
        matrix = _official_map_matrix(name, float(value), h, w)
        source = ndimage.affine_transform(source, matrix, order=0, mode="nearest")
        if outside == "zero":
            keep = ndimage.affine_transform(keep, matrix, order=0, mode="constant")
    return source.reshape(-1), keep.reshape(-1)


def _official_map_matrix(name: str, value: float, h: int, w: int) -> list[list[float]]:
    """random_augment_label's `affine_label` matrix of a geometric op on a (K, h, w) map: (k, row, col)_in =
    M · (k, row, col, 1)_out with the op's (a, b, c, d, e, f) as row_in = a·row + b·col + c, col_in = d·row + e·col
    + f. The arithmetic (float64, Python's) is the official's, so the sampled cells are too."""
    check_choice("token label map op", name, MAP_OPS)
    if name == "Rotate":  # rotate_label: about (h/2, w/2) in cell indices, cos and sin rounded to 15 digits
        angle = math.radians(value)
        cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)
        a, b, d, e = cos, sin, round(-math.sin(angle), 15), cos
        centre_row, centre_col = h / 2.0, w / 2.0
        c = a * -centre_row + b * -centre_col + centre_row
        f = d * -centre_row + e * -centre_col + centre_col
    elif name == "ShearX":  # shear_x_label: the image's x_in = x + factor·y
        a, b, c, d, e, f = 1.0, 0.0, 0.0, value, 1.0, 0.0
    elif name == "ShearY":
        a, b, c, d, e, f = 1.0, value, 0.0, 0.0, 1.0, 0.0
    elif name == "TranslateX":  # translate_x_rel_label: pct of the map's width
        a, b, c, d, e, f = 1.0, 0.0, 0.0, 0.0, 1.0, value * w
    else:
        a, b, c, d, e, f = 1.0, 0.0, value * h, 0.0, 1.0, 0.0
    return [[1.0, 0.0, 0.0, 0.0], [0.0, a, b, c], [0.0, d, e, f]]


def _roi_align_axis(
    start: np.float32, end: np.float32, bins: int, length: int, max_samples: int
) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's roi_align (aligned=False, adaptive sampling ratio) along one axis of a map `length` cells
    long: per bin, its samples' two neighbouring cells (bins, 2·max_samples) and their bilinear weights divided
    by the sample count; samples past the count, or beyond the border rule, weigh 0. Float32 in roi_align's
    order of operations."""
    size = np.maximum(end - start, np.float32(1.0))
    bin_size = size / np.float32(bins)
    count = np.ceil(size / np.float32(bins))
    bin_index = np.arange(bins, dtype=np.float32)[:, None]
    sample = np.arange(max_samples, dtype=np.float32)[None, :]
    position = start + bin_index * bin_size + (sample + 0.5) * bin_size / count
    used = (sample < count) & (position >= -1.0) & (position <= length)
    position = np.maximum(position, np.float32(0.0))
    low = np.floor(position)
    last = low >= length - 1  # roi_align's clamp: the last cell alone
    low = np.where(last, np.float32(length - 1), low)
    fraction = np.where(last, np.float32(0.0), position - low)
    high = np.where(last, low, low + 1.0)
    weight = used.astype(np.float32) / count
    cells, weights = np.empty((bins, max_samples, 2), np.int32), np.empty((bins, max_samples, 2), np.float32)
    cells[..., 0], cells[..., 1] = low, high  # faster than np.stack on arrays this small
    weights[..., 0], weights[..., 1] = (1.0 - fraction) * weight, fraction * weight
    return cells.reshape(bins, -1), weights.reshape(bins, -1)
