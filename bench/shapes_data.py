"""A small deterministic 10-class image task made in memory with numpy: coloured geometric shapes on noisy
backgrounds, for training comparisons that need no dataset on disk (`bench/same_recipe.py`).

Class = shape kind (circle, triangle, square, plus, star) × style (filled, outline): 10 classes, balanced. Each
image draws the shape at a random position, size (radius 9–26% of the side), rotation, outline thickness and
colour, over a random two-colour gradient background with per-pixel noise and a few small distractor discs of
other colours (so that "round" or "has a coloured blob" is not the answer). Images are uint8 NHWC. The same
(seed, split, size) always gives the same arrays; chunks are drawn in threads (numpy releases the GIL), each
from its own seed, so the result does not depend on the thread count.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator

import numpy as np

SHAPES = ("circle", "triangle", "square", "plus", "star")
STYLES = ("filled", "outline")
NUM_CLASSES = len(SHAPES) * len(STYLES)
CLASS_NAMES = tuple(f"{shape}/{style}" for shape in SHAPES for style in STYLES)
SPLITS = {"train": 0, "val": 1}
CHUNK = 32  # images drawn together (a few 32×224² float32 planes per thread)


def _gauge(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A degree-1 homogeneous 'radius' of the shape (its Minkowski gauge, scaled so that gauge ≤ r is the shape
    of circumradius about r): the shape is {gauge ≤ r}, its outline {r·(1 − t) ≤ gauge ≤ r}."""
    if SHAPES[kind] == "circle":
        return np.sqrt(u * u + v * v)
    if SHAPES[kind] == "square":
        return np.maximum(np.abs(u), np.abs(v)) * np.float32(np.sqrt(2))
    if SHAPES[kind] == "triangle":  # equilateral: the largest projection on its three edge normals, inradius r/2
        projections = [u * np.cos(a) + v * np.sin(a) for a in np.pi / 2 + 2 * np.pi / 3 * np.arange(3)]
        return 2 * np.maximum(np.maximum(projections[0], projections[1]), projections[2])
    if SHAPES[kind] == "plus":  # two bars of width 2r/3
        au, av = np.abs(u), np.abs(v)
        return np.minimum(np.maximum(3 * au, av), np.maximum(3 * av, au))
    if SHAPES[kind] == "star":  # five rounded points
        radius = np.sqrt(u * u + v * v)
        return radius / (0.6 + 0.4 * np.cos(5 * np.arctan2(v, u)))
    raise ValueError(kind)


def _draw_chunk(labels: np.ndarray, size: int, seed: tuple[int, ...]) -> np.ndarray:
    """uint8 images (len(labels), size, size, 3) of the given classes, from their own seed."""
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    n = len(labels)
    kinds, outline = labels // len(STYLES), labels % len(STYLES) == 1
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size  # pixel centres in [0, 1]
    y, x = grid[None, :, None], grid[None, None, :]

    # Background: a linear blend of two random colours along a random direction.
    colours = rng.uniform(0, 255, size=(n, 2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi, size=(n, 1, 1)).astype(np.float32)
    ramp = np.clip(0.5 + (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle), 0, 1)[..., None]
    images = colours[:, None, None, 0] * (1 - ramp) + colours[:, None, None, 1] * ramp

    # Distractors: 3 small discs (radius 2–5% of the side) in random colours.
    for _ in range(3):
        cy, cx = (rng.uniform(0.05, 0.95, size=(2, n, 1, 1))).astype(np.float32)
        radius = rng.uniform(0.02, 0.05, size=(n, 1, 1)).astype(np.float32)
        disc = (y - cy) ** 2 + (x - cx) ** 2 <= radius**2
        images = np.where(disc[..., None], rng.uniform(0, 255, size=(n, 1, 1, 3)).astype(np.float32), images)

    # The shape: random radius, centre (fully inside), rotation, outline thickness; a colour far from the
    # background's mean (flipped to its complement when too close).
    radius = rng.uniform(0.09, 0.26, size=n).astype(np.float32)
    cy, cx = (rng.uniform(radius, 1 - radius, size=(2, n))).astype(np.float32)
    rotation = rng.uniform(0, 2 * np.pi, size=n).astype(np.float32)
    thickness = rng.uniform(0.25, 0.45, size=n).astype(np.float32)
    colour = rng.uniform(0, 255, size=(n, 3)).astype(np.float32)
    close = np.abs(colour - colours.mean(axis=1)).sum(axis=1) < 150
    colour[close] = 255 - colour[close]
    mask = np.zeros((n, size, size), bool)
    for kind in range(len(SHAPES)):
        index = np.flatnonzero(kinds == kind)
        if not len(index):
            continue
        c, s = np.cos(rotation[index])[:, None, None], np.sin(rotation[index])[:, None, None]
        dy, dx = y - cy[index, None, None], x - cx[index, None, None]
        gauge = _gauge(kind, c * dx + s * dy, c * dy - s * dx)
        r = radius[index, None, None]
        inner = np.where(outline[index, None, None], r * (1 - thickness[index, None, None]), -1.0)
        mask[index] = (gauge <= r) & (gauge >= inner)
    images = np.where(mask[..., None], colour[:, None, None, :], images)

    images += rng.normal(0, 20, size=images.shape).astype(np.float32)  # sensor noise
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def make_split(split: str, count: int, size: int = 224, seed: int = 0, threads: int | None = None) -> dict:
    """{"image": uint8 (count, size, size, 3), "label": int32 (count,)}: balanced classes in a random order."""
    rng = np.random.default_rng(np.random.SeedSequence((seed, SPLITS[split])))
    labels = rng.permutation(np.arange(count) % NUM_CLASSES).astype(np.int32)
    images = np.empty((count, size, size, 3), np.uint8)
    starts = range(0, count, CHUNK)

    def fill(start: int) -> None:
        images[start : start + CHUNK] = _draw_chunk(labels[start : start + CHUNK], size, (seed, SPLITS[split], start))

    with concurrent.futures.ThreadPoolExecutor(threads or min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(fill, starts))
    return {"image": images, "label": labels}


def train_batches(data: dict, batch: int, steps: int, seed: int = 0, hflip: bool = True) -> Iterator[dict]:
    """`steps` batches {"image": uint8 (batch, H, W, 3), "label": int32 (batch,)}: epochs of a fresh random
    order (the last partial batch of an epoch dropped), each image mirrored left-right with probability ½. The
    same (data, batch, steps, seed) always gives the same stream."""
    rng = np.random.default_rng(np.random.SeedSequence((seed, 2)))
    count = len(data["label"])
    if batch > count:
        raise ValueError(f"batch {batch} is larger than the training set ({count})")
    order = np.empty(0, np.int64)
    for _ in range(steps):
        if len(order) < batch:
            order = rng.permutation(count)
        index, order = order[:batch], order[batch:]
        images, labels = data["image"][index], data["label"][index]
        if hflip:
            flip = rng.random(batch) < 0.5
            images[flip] = images[flip, :, ::-1]
        yield {"image": images, "label": labels}


def eval_batches(data: dict, batch: int) -> Iterator[dict]:
    """The whole split in order, in batches of `batch` (the last one zero-padded), with a 0/1 `mask` of the real
    examples: {"image", "label", "mask"}."""
    count = len(data["label"])
    for start in range(0, count, batch):
        images, labels = data["image"][start : start + batch], data["label"][start : start + batch]
        real = len(labels)
        if real < batch:
            images = np.concatenate([images, np.zeros((batch - real, *images.shape[1:]), images.dtype)])
            labels = np.concatenate([labels, np.zeros(batch - real, labels.dtype)])
        yield {"image": images, "label": labels, "mask": (np.arange(batch) < real).astype(np.int32)}
