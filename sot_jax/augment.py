"""Batch-level augmentation on the accelerator, inside the jitted train step (timm's semantics).

Images arrive as uint8 NHWC; `normalize` maps them to ImageNet-normalized float32. Random erasing (timm's
`RandomErasing(mode='pixel')`) works per image, Mixup/CutMix per batch (or per group of images, as each GPU of the
official runs mixed its own) with the batch reversed as partner.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sot_jax.errors import group_count

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def normalize(images: jax.Array) -> jax.Array:
    return (images.astype(jnp.float32) - IMAGENET_MEAN) / IMAGENET_STD


def smooth(probabilities: jax.Array, smoothing: float) -> jax.Array:
    """timm's label smoothing of a target distribution over the last axis: (1 − smoothing) · p + smoothing / C."""
    return (1.0 - smoothing) * probabilities + smoothing / probabilities.shape[-1]


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
    """Smoothed one-hot targets: off-value smoothing/C, on-value 1 - smoothing + smoothing/C."""
    return smooth(jax.nn.one_hot(labels, num_classes), smoothing)


def cut_box(lam: jax.Array, centre: tuple[jax.Array, jax.Array], grid: tuple[int, int]) -> jax.Array:
    """timm's and LV-ViT's `rand_bbox`: sides int(side · √(1 − λ)) around `centre`, clipped to the grid; returns
    (top, left, bottom, right)."""
    rows, cols = grid
    ratio = jnp.sqrt(1.0 - lam)
    cut_rows, cut_cols = (rows * ratio).astype(jnp.int32), (cols * ratio).astype(jnp.int32)
    top, bottom = jnp.clip(centre[0] - cut_rows // 2, 0, rows), jnp.clip(centre[0] + cut_rows // 2, 0, rows)
    left, right = jnp.clip(centre[1] - cut_cols // 2, 0, cols), jnp.clip(centre[1] + cut_cols // 2, 0, cols)
    return jnp.stack([top, left, bottom, right])


def box_mask(box: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """(rows, cols) boolean mask of the cells inside `box` (top, left, bottom, right)."""
    top, left, bottom, right = box
    row, col = jnp.arange(grid[0])[:, None], jnp.arange(grid[1])[None, :]
    return (row >= top) & (row < bottom) & (col >= left) & (col < right)


def random_erasing(
    rng: jax.Array,
    images: jax.Array,
    probability: float,
    min_area: float = 0.02,
    max_area: float = 1 / 3,
    min_aspect: float = 0.3,
    attempts: int = 10,
) -> jax.Array:
    """Erase one random rectangle per image with probability `probability`, filled with N(0, 1) pixels.

    Like timm: target area uniform in [min_area, max_area] of the image, log-uniform aspect ratio in
    [min_aspect, 1/min_aspect]; the first of `attempts` draws that fits is used (none fits: unchanged).
    """
    if probability <= 0:
        return images
    batch, height, width, channels = images.shape

    def erase(key, image):
        apply_key, area_key, aspect_key, top_key, left_key, noise_key = jax.random.split(key, 6)
        area = jax.random.uniform(area_key, (attempts,), minval=min_area, maxval=max_area) * height * width
        log_aspect = jax.random.uniform(
            aspect_key, (attempts,), minval=jnp.log(min_aspect), maxval=-jnp.log(min_aspect)
        )
        h = jnp.round(jnp.sqrt(area * jnp.exp(log_aspect))).astype(jnp.int32)
        w = jnp.round(jnp.sqrt(area / jnp.exp(log_aspect))).astype(jnp.int32)
        fits = (h < height) & (w < width)
        first = jnp.argmax(fits)
        h, w = h[first], w[first]
        top = jax.random.randint(top_key, (), 0, height - h + 1)  # timm's randint(0, H - h): both ends included
        left = jax.random.randint(left_key, (), 0, width - w + 1)
        rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
        inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
        apply = (jax.random.uniform(apply_key) < probability) & jnp.any(fits)
        noise = jax.random.normal(noise_key, image.shape, image.dtype)
        return jnp.where(apply & inside[..., None], noise, image)

    return jax.vmap(erase)(jax.random.split(rng, batch), images)


def mixup_cutmix(
    rng: jax.Array,
    images: jax.Array,
    targets: jax.Array,
    mixup_alpha: float,
    cutmix_alpha: float,
    switch_prob: float = 0.5,
    prob: float = 1.0,
    group_size: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """timm's Mixup in 'batch' mode: with probability `prob` mix the batch with its reverse, by CutMix with
    probability `switch_prob` (when both are on) else Mixup; targets mix with the (area-corrected) lambda.

    `group_size` > 0: every run of that many images (one GPU's batch in the official runs, where each process
    mixes its own) draws its own lambda, mode and box and mixes with its own reverse; a smaller batch is one group.
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, targets
    mix = functools.partial(
        _mix_batch, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, switch_prob=switch_prob, prob=prob
    )
    batch = images.shape[0]
    groups = group_count(batch, group_size, "aug.mix_group_size")
    if groups == 1:
        return mix(rng, images, targets)
    grouped = lambda x: x.reshape(groups, group_size, *x.shape[1:])  # noqa: E731
    images, targets = jax.vmap(mix)(jax.random.split(rng, groups), grouped(images), grouped(targets))
    return images.reshape(batch, *images.shape[2:]), targets.reshape(batch, *targets.shape[2:])


def _mix_batch(
    rng: jax.Array,
    images: jax.Array,
    targets: jax.Array,
    *,
    mixup_alpha: float,
    cutmix_alpha: float,
    switch_prob: float,
    prob: float,
) -> tuple[jax.Array, jax.Array]:
    """One Mixup/CutMix draw for the whole of `images`, partnered with their reverse."""
    apply_key, switch_key, mix_key, cut_key, box_key = jax.random.split(rng, 5)
    _, height, width, _ = images.shape
    if cutmix_alpha > 0 and mixup_alpha > 0:
        use_cutmix = jax.random.uniform(switch_key) < switch_prob
    else:
        use_cutmix = jnp.asarray(cutmix_alpha > 0)
    lam_mix = jax.random.beta(mix_key, max(mixup_alpha, 1e-6), max(mixup_alpha, 1e-6))
    lam_cut = jax.random.beta(cut_key, max(cutmix_alpha, 1e-6), max(cutmix_alpha, 1e-6))

    # CutMix box: side sqrt(1 - lambda) of each dimension, uniform centre, clipped; lambda corrected by its area.
    cy_key, cx_key = jax.random.split(box_key)
    centre = jax.random.randint(cy_key, (), 0, height), jax.random.randint(cx_key, (), 0, width)
    top, left, bottom, right = cut = cut_box(lam_cut, centre, (height, width))
    box = box_mask(cut, (height, width))
    lam_cut = 1.0 - (bottom - top) * (right - left) / (height * width)

    apply = jax.random.uniform(apply_key) < prob
    lam = jnp.where(apply, jnp.where(use_cutmix, lam_cut, lam_mix), 1.0)
    partner = images[::-1]
    mixed = jnp.where(use_cutmix, jnp.where(box[None, :, :, None], partner, images), lam * images + (1 - lam) * partner)
    images = jnp.where(apply, mixed, images)
    return images, lam * targets + (1 - lam) * targets[::-1]
