"""`dropout.Dropout`: hashed masks with flax.linen.Dropout's interface, the same mask in the backward pass without
storing it, and masks that do not depend on how the array is sharded."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT
from jax.ad_checkpoint import print_saved_residuals

from sot_jax.models.dropout import Dropout, dropout

SEED = jnp.array([0x0BADF00D, 0x5EED5EED], jnp.uint32)


def _assert_fraction(observed: float, expected: float, count: int) -> None:
    sigma = np.sqrt(expected * (1 - expected) / count)
    assert abs(observed - expected) < 4 * sigma, (observed, expected, sigma)


@pytest.mark.parametrize("rate", [0.1, 0.5])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dropout_zeroes_a_fraction_and_rescales_the_rest(rate, dtype):
    x = jax.random.normal(jax.random.key(0), (4, 64, 96), jnp.float32).astype(dtype) + 3
    y = dropout(x, SEED, rate)
    assert y.dtype == dtype and y.shape == x.shape
    kept = np.asarray(y != 0)
    _assert_fraction(kept.mean(), 1 - rate, kept.size)
    np.testing.assert_array_equal(np.asarray(y)[kept], np.asarray((x / (1 - rate)).astype(dtype))[kept])
    # Rows and columns get different patterns (the hash mixes every index), and another seed another mask.
    assert not np.array_equal(kept[0, 0], kept[0, 1]) and not np.array_equal(kept[0, :, 0], kept[0, :, 1])
    other = np.asarray(dropout(x, SEED ^ jnp.uint32(1), rate) != 0)
    _assert_fraction((kept == other).mean(), rate**2 + (1 - rate) ** 2, kept.size)


def test_gradient_uses_the_forward_mask_and_stores_none():
    x = jax.random.normal(jax.random.key(1), (2, 16, 32))
    weights = jnp.arange(1.0, 33.0)
    y = dropout(x, SEED, 0.3)
    grad = jax.grad(lambda x: (dropout(x, SEED, 0.3) * weights).sum())(x)
    np.testing.assert_allclose(grad, np.where(np.asarray(y) != 0, weights / 0.7, 0.0), rtol=1e-6)

    def saved(layer) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            print_saved_residuals(lambda x: layer(x).sum(), x)
        return out.getvalue()

    # flax's dropout keeps its mask (an array of x's shape) for the backward; this one keeps the seed only.
    flax_dropout = nn.Dropout(0.3, deterministic=False)
    assert "bool[2,16,32]" in saved(lambda x: flax_dropout.apply({}, x, rngs={"dropout": jax.random.key(0)}))
    assert "[2,16,32]" not in saved(lambda x: dropout(x, SEED, 0.3))


class _TwoDropouts(nn.Module):
    rate: float

    @nn.compact
    def __call__(self, x, train: bool):
        return Dropout(self.rate, deterministic=not train)(x), Dropout(self.rate, deterministic=not train)(x)


def test_module_draws_a_seed_per_call_from_the_dropout_rng():
    x = jnp.ones((8, 64))
    model = _TwoDropouts(0.5)
    first, second = model.apply({}, x, True, rngs={"dropout": jax.random.key(0)})
    assert not np.array_equal(first, second)
    again, _ = model.apply({}, x, True, rngs={"dropout": jax.random.key(0)})
    np.testing.assert_array_equal(first, again)
    other, _ = model.apply({}, x, True, rngs={"dropout": jax.random.key(1)})
    assert not np.array_equal(first, other)
    # Evaluation and rate 0 return the input and need no rng.
    assert model.apply({}, x, False)[0] is x
    assert _TwoDropouts(0.0).apply({}, x, True)[0] is x
    with pytest.raises(ValueError, match=r"dropout rate 1.0 must be in \[0, 1\)"):
        _TwoDropouts(1.0).apply({}, x, True, rngs={"dropout": jax.random.key(0)})


SHARDED_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from sot_jax.models.dropout import dropout
x = jnp.arange(8 * 16 * 24, dtype=jnp.float32).reshape(8, 16, 24) + 1
seed = jnp.array([7, 11], jnp.uint32)
step = jax.jit(jax.value_and_grad(lambda x: (dropout(x, seed, 0.5) ** 2).sum()))
mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data", None, "model")))
one, many = step(x), step(sharded)
print(len(jax.devices()), len(many[1].sharding.device_set), all(np.array_equal(a, b) for a, b in zip(one, many)))
"""


def test_masks_do_not_depend_on_sharding():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["8", "8", "True"]
