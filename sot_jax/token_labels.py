"""Token labeling (LV-ViT, arXiv 2104.10858) on the accelerator: MixToken and dense token targets.

MixToken (official `lvvit.py`): one box per batch on the token grid, side int(rows·√(1−λ)) per axis with
λ ~ Beta(1, 1) and a uniform centre, clipped; inside it every patch embedding comes from the reversed batch. The
model swaps the token outputs inside the box back (`mix_tokens` is its own inverse), so each token's target stays
its own image's, and the class target mixes with λ' = 1 − box area / N.

Dense targets: the input pipeline samples each image's top-k score map at the token centres of its crop (see
`data.label_maps.sample_label_map`) and delivers, per token, (class, weight) pairs whose sum over equal classes is
the token's score vector; `dense_targets` scatters them into logits, softmaxes and smooths them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sot_jax import augment


def mix_token_box(rng: jax.Array, grid: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """A MixToken box (top, left, bottom, right) in token units, and the class-target weight λ' = 1 − area/N."""
    rows, cols = grid
    lam_key, row_key, col_key = jax.random.split(rng, 3)
    lam = jax.random.beta(lam_key, 1.0, 1.0)
    centre = jax.random.randint(row_key, (), 0, rows), jax.random.randint(col_key, (), 0, cols)
    box = augment.cut_box(lam, centre, grid)
    top, left, bottom, right = box
    return box, 1.0 - (bottom - top) * (right - left) / (rows * cols)


def mix_tokens(tokens: jax.Array, box: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """Inside `box`, take each token from the reversed batch; tokens (B, rows·cols, ...) in row-major order.

    Applying it twice gives back the input, which is how the model un-mixes its token outputs."""
    rows, cols = grid
    inside = augment.box_mask(box, grid).reshape((1, rows * cols) + (1,) * (tokens.ndim - 2))
    return jnp.where(inside, tokens[::-1], tokens)


def dense_targets(
    classes: jax.Array, weights: jax.Array, num_classes: int, smoothing: float
) -> tuple[jax.Array, jax.Array]:
    """Targets from sampled label maps: (class target (B, C), token targets (B, N, C)).

    classes, weights: (B, N, P) pairs per token. A token's logits are the sum of its pairs' weights per class
    (classes outside every pair score 0, as in the official dense map); the class target softmaxes the mean of
    the tokens' logits (the whole crop, like the official 1×1 roi-align). Both are smoothed by `augment.smooth`.
    """
    batch, tokens, _ = classes.shape
    logits = jnp.zeros((batch, tokens, num_classes), jnp.float32)
    logits = logits.at[jnp.arange(batch)[:, None, None], jnp.arange(tokens)[None, :, None], classes].add(
        weights.astype(jnp.float32)
    )
    class_target = augment.smooth(jax.nn.softmax(jnp.mean(logits, axis=1), axis=-1), smoothing)
    return class_target, augment.smooth(jax.nn.softmax(logits, axis=-1), smoothing)
