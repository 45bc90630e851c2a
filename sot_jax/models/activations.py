"""GELU, exact (erf) and tanh-approximated, whose backward pass recomputes its derivative from the input alone.

Why: autodiff of `jax.nn.gelu` keeps the activation's intermediates for the backward pass (erfc and exp for the
exact GELU; tanh and its polynomial for the approximation), and XLA does not recompute transcendental ops in the
backward's fusions, so every MLP activation wrote three or four extra tensors of the MLP's width in the forward and
read them back in the backward. Here the VJP keeps only the input and recomputes the derivative inside the
backward's elementwise fusion, as PyTorch's fused GELU kernels do. The math runs in float32 (float64 for float64
inputs) and rounds once to the input's dtype, as PyTorch computes a bfloat16 GELU.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

# Python floats, so that they take the compute dtype (weak types) instead of promoting it.
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_TANH_SCALE = math.sqrt(2 / math.pi)  # tanh(√(2/π)·(x + 0.044715·x³)), Hendrycks & Gimpel's approximation
_TANH_CUBIC = 0.044715


def _compute_dtype(x: jax.Array) -> jnp.dtype:
    return jnp.promote_types(x.dtype, jnp.float32)


def _value_and_slope(x: jax.Array, approximate: bool) -> tuple[jax.Array, jax.Array]:
    """GELU(x) and GELU'(x) in the compute dtype (XLA drops whichever the caller does not use)."""
    x = x.astype(_compute_dtype(x))
    if approximate:
        u = _TANH_SCALE * (x + _TANH_CUBIC * x**3)
        cdf = jax.nn.sigmoid(2 * u)  # 0.5·(1 + tanh u), without the cancellation where tanh u → -1
        value = x * cdf
        slope = cdf + 2 * x * cdf * jax.nn.sigmoid(-2 * u) * _TANH_SCALE * (1 + 3 * _TANH_CUBIC * x * x)
    else:
        cdf = 0.5 * lax.erfc(-_SQRT_HALF * x)
        value = x * cdf
        slope = cdf + x * _INV_SQRT_2PI * jnp.exp(-0.5 * x * x)
    return value, slope


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def gelu(x: jax.Array, approximate: bool = False) -> jax.Array:
    """x·Φ(x) (`approximate=False`, PyTorch's and HF's "gelu") or its tanh approximation (`approximate=True`, HF's
    "gelu_new", PyTorch's approximate="tanh"), in x's dtype."""
    return _value_and_slope(x, approximate)[0].astype(x.dtype)


def _gelu_forward(x: jax.Array, approximate: bool) -> tuple[jax.Array, jax.Array]:
    return gelu(x, approximate), x


def _gelu_backward(approximate: bool, x: jax.Array, cotangent: jax.Array) -> tuple[jax.Array]:
    # The barrier keeps XLA from merging this recomputation with the forward's (common-subexpression elimination),
    # which would keep the forward's float32 intermediates alive until here: what the custom VJP is to avoid.
    slope = _value_and_slope(lax.optimization_barrier(x), approximate)[1]
    return ((cotangent.astype(slope.dtype) * slope).astype(x.dtype),)


gelu.defvjp(_gelu_forward, _gelu_backward)
