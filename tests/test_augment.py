"""On-device batch augmentation: label smoothing, random erasing, Mixup/CutMix."""

import jax
import jax.numpy as jnp
import numpy as np

from sot_jax import augment


def test_label_smoothing_matches_timm():
    targets = augment.smooth_one_hot(jnp.array([2, 0]), 4, 0.1)
    np.testing.assert_allclose(targets[0], [0.025, 0.025, 0.925, 0.025], rtol=1e-6)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)


def test_random_erasing_erases_one_box_within_the_area_bounds():
    images = jnp.full((64, 40, 40, 3), 7.0)
    erased = augment.random_erasing(jax.random.key(0), images, probability=1.0)
    changed = np.asarray(jnp.any(erased != 7.0, axis=-1))
    fractions = changed.reshape(64, -1).mean(axis=1)
    # Area in [0.02, 1/3] of the image, up to the rounding of height and width to whole pixels (as timm).
    assert np.all(fractions > 0.015) and np.all(fractions < 0.36)
    for mask in changed:  # one axis-aligned rectangle: its bounding box is fully changed
        rows, cols = np.nonzero(mask)
        assert mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    np.testing.assert_array_equal(augment.random_erasing(jax.random.key(0), images, probability=0.0), images)
    half = augment.random_erasing(jax.random.key(1), images, probability=0.5)
    assert 0.25 < np.mean(np.any(np.asarray(half != 7.0), axis=(1, 2, 3))) < 0.75


def test_cutmix_target_weight_is_the_pasted_area():
    batch = 6
    images = jnp.arange(batch, dtype=jnp.float32)[:, None, None, None] * jnp.ones((batch, 16, 16, 3))
    targets = jax.nn.one_hot(jnp.arange(batch), batch)
    for seed in range(5):
        mixed, mixed_targets = augment.mixup_cutmix(jax.random.key(seed), images, targets, 0.0, 1.0)
        pasted = np.mean(np.asarray(mixed[0, ..., 0]) == batch - 1)  # pixels from the partner (batch reversed)
        np.testing.assert_allclose(mixed_targets[0, batch - 1], pasted, atol=1e-6)
        np.testing.assert_allclose(mixed_targets.sum(axis=1), 1.0, rtol=1e-6)


def test_mixup_blends_images_and_targets_with_the_same_lambda():
    images = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    targets = jax.nn.one_hot(jnp.arange(4), 4)
    mixed, mixed_targets = augment.mixup_cutmix(jax.random.key(1), images, targets, 0.8, 0.0)
    lam = mixed_targets[0, 0]
    np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[::-1], rtol=1e-5, atol=1e-6)
    assert 0.0 < lam < 1.0
