"""Token labeling (LV-ViT, arXiv 2104.10858) on the accelerator: MixToken and dense token targets.

MixToken (official `lvvit.py`): one box per group of images (`aug.mix_group_size`, the official per-GPU batch;
0: the whole batch), side int(rows·√(1−λ)) per axis with λ ~ Beta(1, 1) and a uniform centre, clipped; inside it
every patch embedding comes from the group's reversed images. The model swaps the token outputs inside the box
back (`mix_tokens` is its own inverse), so each token's target stays its own image's, and the class target mixes
within the group with λ' = 1 − box area / N.

Dense targets: the input pipeline reads each image's top-k score map as the official `get_label` does (see
`data.label_maps.sample_label_map`) and delivers (class, weight) pairs whose sum over equal classes is a token's
or the class target's logits; `dense_targets` scatters them, softmaxes and smooths them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sot_jax import augment
from sot_jax.errors import check_choice, group_count

# aug.token_label_smoothing of label-map targets: "official" softmax · (1 − s + s/C) + s/C (get_labelmaps_with_coords'
# on and off values; sums to 1 + s/C), "corrected" (1 − s) · softmax + s/C.
SMOOTHINGS = ("official", "corrected")


def mix_token_box(rng: jax.Array, grid: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """A MixToken box (top, left, bottom, right) in token units, and the class-target weight λ' = 1 − area/N."""
    rows, cols = grid
    lam_key, row_key, col_key = jax.random.split(rng, 3)
    lam = jax.random.beta(lam_key, 1.0, 1.0)
    centre = jax.random.randint(row_key, (), 0, rows), jax.random.randint(col_key, (), 0, cols)
    box = augment.cut_box(lam, centre, grid)
    top, left, bottom, right = box
    return box, 1.0 - (bottom - top) * (right - left) / (rows * cols)


def mix_token_boxes(rng: jax.Array, grid: tuple[int, int], batch: int, group_size: int) -> tuple[jax.Array, jax.Array]:
    """One independent `mix_token_box` per group of `group_size` consecutive images (0, or not smaller than the
    batch: one group): boxes (G, 4) and λ' (G,)."""
    groups = group_count(batch, group_size, "aug.mix_group_size")
    return jax.vmap(lambda key: mix_token_box(key, grid))(jax.random.split(rng, groups))


def mix_tokens(tokens: jax.Array, box: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """Inside `box`, take each token from the reversed batch; tokens (B, rows·cols, ...) in row-major order.
    `box` (4,) spans the batch; (G, 4) gives each of G groups of B/G consecutive images its own box and partners
    within the group.

    Applying it twice gives back the input, which is how the model un-mixes its token outputs."""
    rows, cols = grid
    boxes = box.reshape(-1, 4)
    groups = boxes.shape[0]
    grouped = tokens.reshape(groups, tokens.shape[0] // groups, *tokens.shape[1:])
    inside = jax.vmap(lambda b: augment.box_mask(b, grid))(boxes)
    inside = inside.reshape((groups, 1, rows * cols) + (1,) * (tokens.ndim - 2))
    return jnp.where(inside, grouped[:, ::-1], grouped).reshape(tokens.shape)


def mix_targets(targets: jax.Array, lam: jax.Array) -> jax.Array:
    """Class targets (B, C) mixed within each of the G groups of `lam` (G,) with the group's reverse."""
    grouped = targets.reshape(lam.shape[0], -1, targets.shape[-1])
    lam = lam[:, None, None]
    return (lam * grouped + (1 - lam) * grouped[:, ::-1]).reshape(targets.shape)


def _scatter(classes: jax.Array, weights: jax.Array, num_classes: int) -> jax.Array:
    """Logits (..., C): each row's pair weights summed per class (classes outside every pair score 0, as in the
    official dense map)."""
    rows = classes.reshape(-1, classes.shape[-1])
    logits = jnp.zeros((rows.shape[0], num_classes), jnp.float32)
    logits = logits.at[jnp.arange(rows.shape[0])[:, None], rows].add(weights.reshape(rows.shape).astype(jnp.float32))
    return logits.reshape(*classes.shape[:-1], num_classes)


def dense_targets(
    token_classes: jax.Array,
    token_weights: jax.Array,
    class_classes: jax.Array,
    class_weights: jax.Array,
    num_classes: int,
    smoothing: float,
    smoothing_mode: str = "official",
) -> tuple[jax.Array, jax.Array]:
    """Targets from label-map read-outs (`pipeline.LABEL_MAP_KEYS`): (class target (B, C), token targets
    (B, N, C)), each the softmax of its pairs' logits smoothed by `smoothing_mode` (`SMOOTHINGS`).

    token_classes, token_weights: (B, N, P); class_classes, class_weights: (B, Q)."""
    check_choice("aug.token_label_smoothing", smoothing_mode, SMOOTHINGS)

    def target(classes, weights):
        probabilities = jax.nn.softmax(_scatter(classes, weights, num_classes), axis=-1)
        if smoothing_mode == "corrected":
            return augment.smooth(probabilities, smoothing)
        off = smoothing / num_classes
        return probabilities * (1.0 - smoothing + off) + off

    return target(class_classes, class_weights), target(token_classes, token_weights)
