"""Dropout whose mask is a counter-based hash of (seed, element index), regenerated in the backward pass.

Why: `flax.linen.Dropout` draws threefry bits in their own fusion and keeps the boolean mask in HBM from the
forward to the backward pass, so every dropped activation costs a mask write and two reads on top of the multiply.
A hash of the element's index is a few integer ops, cheap enough for XLA to compute inside the fusions that apply
it (the residual add and LayerNorm in the forward, the gradient's elementwise ops in the backward), so no mask is
stored and there is no separate pass.

`keep_mask` is the one mask definition: `Dropout` calls it on an array's indices and the fused attention kernels
(`fused_attention.py`) on each block's (batch·head, query, key) indices. Each call draws its own two seed words
with `draw_seed`, so masks of different calls are independent. The hash reads absolute indices, so sharding the
array over devices (XLA partitions the index iotas) leaves the mask unchanged.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Odd multipliers (bijections of uint32) that spread the first two indices over all 32 bits before mixing: the
# golden ratio's and one of murmur3's constants.
_FIRST_MULTIPLIER = np.uint32(0x9E3779B9)
_SECOND_MULTIPLIER = np.uint32(0x85EBCA77)
# murmur3's fmix32.
_FMIX_MULTIPLIERS = (np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35))
_FMIX_SHIFTS = (np.uint32(16), np.uint32(13), np.uint32(16))


def _fmix32(x: jax.Array) -> jax.Array:
    """murmur3's 32-bit finalizer: a bijection whose output bits each depend on all input bits."""
    x = x ^ lax.shift_right_logical(x, _FMIX_SHIFTS[0])
    x = x * _FMIX_MULTIPLIERS[0]
    x = x ^ lax.shift_right_logical(x, _FMIX_SHIFTS[1])
    x = x * _FMIX_MULTIPLIERS[1]
    return x ^ lax.shift_right_logical(x, _FMIX_SHIFTS[2])


def _uint32(x) -> jax.Array:
    return jnp.asarray(x).astype(jnp.uint32)


def _threshold(rate: float) -> np.uint32:
    # bits ≥ round(rate·2³²) holds with probability 1 - rate for uniform bits; rate 0 gives 0, which every
    # uint32 passes.
    return np.uint32(min(round(rate * 2**32), 2**32 - 1))


def keep_mask(seed, first: jax.Array, second: jax.Array, third: jax.Array, rate: float) -> jax.Array:
    """Whether dropout at `rate` keeps the element at index (first, second, third): THE mask definition.

    seed: (2,) uint32, or the pair of its words (as a Pallas kernel loads them: a kernel cannot index a vector).
    first, second, third: integer index arrays (any integer dtype, values below 2³¹), broadcast against each other;
    the result has their broadcast shape. Three rounds of murmur3's fmix32 over the absolute indices, compared
    with a threshold; uint32 products wrap, as the hash wants.
    """
    x = _fmix32((_uint32(first) * _FIRST_MULTIPLIER) ^ _uint32(seed[0]))
    # The (first, second) part has the broadcast shape of those two: a kernel that holds `third` as a block's
    # columns hashes each row once and only the last round per element.
    x = _fmix32(x ^ (_uint32(second) * _SECOND_MULTIPLIER) ^ _uint32(seed[1]))
    return _fmix32(x ^ _uint32(third)) >= _threshold(rate)


def draw_seed(module: nn.Module) -> jax.Array:
    """Two uint32 seed words for one dropout call, from `module`'s 'dropout' rng stream."""
    return jax.random.bits(module.make_rng("dropout"), (2,), jnp.uint32)


def _array_keep_mask(seed: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
    """`keep_mask` over an array's indices, viewed as (leading dimensions flattened, second-last, last)."""
    grid = (math.prod(shape[:-2]), shape[-2] if len(shape) > 1 else 1, shape[-1] if shape else 1)
    indices = [lax.broadcasted_iota(jnp.int32, grid, axis) for axis in range(3)]
    return keep_mask(seed, *indices, rate).reshape(shape)


def _scaled(x: jax.Array, seed: jax.Array, rate: float) -> jax.Array:
    return jnp.where(_array_keep_mask(seed, x.shape, rate), x / (1.0 - rate), 0).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dropout(x: jax.Array, seed: jax.Array, rate: float) -> jax.Array:
    """x with each element zeroed with probability `rate` (its `keep_mask` under `seed`) and the rest divided by
    1 - rate. The gradient regenerates the mask from the seed: nothing but the seed is saved."""
    return _scaled(x, seed, rate)


def _dropout_forward(x, seed, rate):
    return _scaled(x, seed, rate), seed


def _dropout_backward(rate, seed, grad):
    # The barrier keeps XLA from merging this mask with the forward's into one stored array (common-subexpression
    # elimination sees two identical computations).
    return _scaled(grad, lax.optimization_barrier(seed), rate), None


dropout.defvjp(_dropout_forward, _dropout_backward)


class Dropout(nn.Module):
    """`flax.linen.Dropout`'s interface (rate, deterministic; rng 'dropout') with `dropout`'s hashed masks."""

    rate: float
    deterministic: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"dropout rate {self.rate} must be in [0, 1)")
        if self.deterministic or self.rate == 0.0:
            return x
        return dropout(x, draw_seed(self), self.rate)
