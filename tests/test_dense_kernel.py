"""The fused dense-layer Pallas kernels (bench/dense_kernel_pallas.py, an experiment outside the package) against
the XLA convolutions.

On CPU the kernels run in Pallas interpret mode (float32, odd sizes, several tiles so the halo crosses tile
boundaries); on a GPU the compiled Triton kernels are also checked in bf16.
"""

from __future__ import annotations

import importlib.util
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, relative_error, value_and_vjp

_spec = importlib.util.spec_from_file_location("dense_kernel_pallas", ROOT / "bench" / "dense_kernel_pallas.py")
dk = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))  # dataclasses look it up there
_spec.loader.exec_module(dk)


def _inputs(shape: tuple[int, int, int, int], dtype, seed: int = 0, layers: int = 1):
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    x = jnp.asarray(rng.standard_normal(shape), dtype)
    w1s = [
        jnp.asarray(rng.standard_normal((channels + 16 * i, 32)) / np.sqrt(channels + 16 * i), dtype)
        for i in range(layers)
    ]
    w2s = [jnp.asarray(rng.standard_normal((3, 3, 32, 16)) / np.sqrt(288), dtype) for _ in range(layers)]
    return x, w1s, w2s


def _assert_close(got, want, tol: float) -> None:
    names = ("y", "dx", "dw1", "dw2", "dw1s", "dw2s")
    for name, a, b in zip(names, jax.tree.leaves(got), jax.tree.leaves(want), strict=False):
        assert a.shape == b.shape, name
        assert relative_error(a, b) < tol, (name, relative_error(a, b))


# C_in = 64 + 16k: stage 1's second layer (80 = 64 + 16 channels per load) and a wide stage-2/3 layer
# (176 = 64 + 64 + 32 + 16).
@pytest.mark.parametrize(
    "channels, kwargs",
    [
        (80, dict(block_pixels=16, backward_block_pixels=16)),  # 3 tiles of 16 pixels: halos cross tiles
        (176, dict()),  # default tiles
    ],
)
def test_dense_layer_matches_reference_float32(channels, kwargs):
    x, (w1,), (w2,) = _inputs((2, 5, 7, channels), jnp.float32)
    got = value_and_vjp(lambda *a: dk.dense_layer(*a, interpret=True, **kwargs), x, w1, w2)
    want = value_and_vjp(dk.dense_layer_reference, x, w1, w2)
    _assert_close(got, want, 1e-5)


def test_dense_block_matches_reference_float32():
    # Two layers (not six) keep the interpret-mode compile short; the concatenation is the same for any count.
    x, w1s, w2s = _inputs((2, 5, 7, 64), jnp.float32, seed=2, layers=2)
    kwargs = dict(block_pixels=16, backward_block_pixels=32)
    got = value_and_vjp(lambda *a: dk.dense_block(*a, impl="pallas", interpret=True, **kwargs), x, w1s, w2s)
    want = value_and_vjp(lambda *a: dk.dense_block(*a, impl="xla"), x, w1s, w2s)
    assert got[0].shape == (2, 5, 7, 64 + 2 * 16)
    _assert_close(got, want, 1e-5)


def test_dense_layer_rejects_bad_tiles():
    x, (w1,), (w2,) = _inputs((1, 5, 7, 64), jnp.float32)
    with pytest.raises(ValueError, match="multiple"):
        dk.dense_layer(x, w1, w2, interpret=True, block_pixels=24)


@pytest.mark.parametrize("shape", [(2, 28, 28, 128), (2, 56, 56, 80), (1, 13, 19, 144)])
def test_dense_layer_gpu_bf16(shape):
    """bf16 kernel vs bf16 XLA: max |Δ| / max |reference| < 2e-2 (bf16 rounding is 4e-3; the two may round
    intermediate gradients at different points). Float32 to 1e-4 with the reference at full float32 precision."""
    if jax.default_backend() != "gpu":  # checked here, not at import: collecting must not start a backend
        pytest.skip("compiled Triton kernels need a GPU")
    x, (w1,), (w2,) = _inputs(shape, jnp.bfloat16, seed=3)
    got = value_and_vjp(dk.dense_layer, x, w1, w2)
    want = value_and_vjp(dk.dense_layer_reference, x, w1, w2)
    _assert_close(got, want, 2e-2)
    x, w1, w2 = (a.astype(jnp.float32) for a in (x, w1, w2))
    got = value_and_vjp(dk.dense_layer, x, w1, w2)
    with jax.default_matmul_precision("highest"):
        want = value_and_vjp(dk.dense_layer_reference, x, w1, w2)
    _assert_close(got, want, 1e-4)
