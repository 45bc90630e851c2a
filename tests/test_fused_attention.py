"""The fused attention-with-dropout kernels (sot_jax/models/fused_attention.py) against `reference_attention`, and
the dropout mask's statistics.

On CPU the kernels run in Pallas interpret mode, in float32, with small blocks so that every loop runs several
times; bench/attention_dropout.py checks the compiled Triton kernels in bf16 on a GPU.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import relative_error, value_and_vjp
from jax.test_util import check_grads

from sot_jax.models import fused_attention as fa
from sot_jax.models import text_layers
from sot_jax.models.dropout import keep_mask

SEED = np.array([0x12345678, 0x9ABCDEF0], np.uint32)


def _inputs(length: int, batch: int = 2, heads: int = 2, head_dim: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal((batch, length, heads, head_dim)), jnp.float32) for _ in range(3))
    return q, k, v


def _key_mask(length: int, holes: dict[int, list[int]] | None = None) -> jnp.ndarray:
    """(2, length) all True, with the listed key positions of each example set to False."""
    mask = np.ones((2, length), bool)
    for b, positions in (holes or {}).items():
        mask[b, positions] = False
    return jnp.asarray(mask)


def _kernel(mask, causal, rate, **blocks):
    return lambda q, k, v: fa.attention(q, k, v, mask, causal, rate, SEED, interpret=True, **blocks)


def _reference(mask, causal, rate):
    return lambda q, k, v: fa.reference_attention(q, k, v, mask, causal, rate, SEED)


# (length, key mask holes, causal, rate, blocks): each case names the paths it covers.
CASES = {
    # One block everywhere (default blocks clamped to L = 32); the dK/dV kernel also writes dQ.
    "no_dropout_no_padding": (32, None, False, 0.0, {}),
    # Padding at the end of example 0 and a hole in example 1; 3 blocks of 16 on both sides, separate dQ kernel.
    "dropout_key_mask": (
        48,
        {0: list(range(40, 48)), 1: [5, 6, 7, 20]},
        False,
        0.1,
        dict(block_q=16, block_k=16, backward_block=16, backward_step=16),
    ),
    # Causal forward over 4 query blocks of 16 and key blocks of 32 (loop bounds at the diagonal), a fused
    # backward of 16-query steps; key 0 of example 1 masked, so its query 0 sees no key at all.
    "causal_dropout": (
        64,
        {0: [60, 61, 62, 63], 1: [0, 9]},
        True,
        0.2,
        dict(block_q=16, block_k=32, backward_block=64, backward_step=16),
    ),
    # L = 40 is padded to 48: padded keys masked, padded queries dropped.
    "length_not_multiple": (
        40,
        {1: [3, 39]},
        False,
        0.1,
        dict(block_q=16, block_k=16, backward_block=16, backward_step=16),
    ),
    # Padded to 64; causal bounds when the owning and stepping blocks differ in both backward kernels.
    "causal_length_not_multiple": (
        40,
        {0: [30, 31]},
        True,
        0.1,
        dict(block_q=32, block_k=16, backward_block=16, backward_step=32),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_kernels_match_reference_float32(case):
    length, holes, causal, rate, blocks = CASES[case]
    q, k, v = _inputs(length)
    mask = _key_mask(length, holes)
    got = value_and_vjp(_kernel(mask, causal, rate, **blocks), q, k, v)
    want = value_and_vjp(_reference(mask, causal, rate), q, k, v)
    for name, a, b in zip(("out", "dq", "dk", "dv"), jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.shape == b.shape, name
        assert relative_error(a, b) < 1e-5, (name, relative_error(a, b))
    if case == "causal_dropout":  # query 0 of example 1 sees no key: zero output, as the reference defines it
        assert np.all(np.asarray(got[0])[1, 0] == 0)


def test_mask_does_not_depend_on_block_sizes():
    length, rate = 64, 0.3
    q, k, v = _inputs(length, seed=1)
    mask = _key_mask(length, {0: [1, 2, 3]})
    outputs = [
        jax.jit(_kernel(mask, False, rate, block_q=size, block_k=size))(q, k, v) for size in (16, 32)
    ]
    assert relative_error(outputs[0], outputs[1]) < 1e-6
    # ... and dropout is in effect: far from the output without it
    undropped = jax.jit(_kernel(mask, False, 0.0))(q, k, v)
    assert relative_error(outputs[0], undropped) > 0.1


def _mask_grid(seed, rate: float, batch_heads: int = 16, length: int = 256) -> np.ndarray:
    """The keep mask over a (batch_heads, length, length) index grid: 2²⁰ entries with the defaults."""
    index = jnp.arange(length)
    batch_head = jnp.arange(batch_heads)[:, None, None]
    return np.asarray(keep_mask(jnp.asarray(seed), batch_head, index[:, None], index[None, :], rate))


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_keep_mask_statistics(rate):
    keep = _mask_grid(SEED, rate)
    n = keep.size

    def assert_near(observed: float, expected: float, count: int, what: str) -> None:
        sigma = np.sqrt(expected * (1 - expected) / count)
        assert abs(observed - expected) < 4 * sigma, (what, observed, expected, sigma)

    assert_near(keep.mean(), 1 - rate, n, "kept fraction")
    # Another seed (each word changed on its own) agrees only at the chance rate.
    chance = rate**2 + (1 - rate) ** 2
    for other in (SEED ^ np.array([1, 0], np.uint32), SEED ^ np.array([0, 1], np.uint32)):
        assert_near((keep == _mask_grid(other, rate)).mean(), chance, n, f"agreement with seed {other}")
    # Neighbouring keys, queries and batch·heads: joint keeps at the independent rate.
    x = keep.astype(np.float64)
    for axis, what in ((2, "keys"), (1, "queries"), (0, "batch·heads")):
        a, b = np.moveaxis(x, axis, 0)[:-1], np.moveaxis(x, axis, 0)[1:]
        assert_near((a * b).mean(), (1 - rate) ** 2, a.size, f"neighbouring {what}")


def test_rate_zero_keeps_everything():
    assert _mask_grid(SEED, 0.0, batch_heads=4, length=64).all()
    # No seed is needed without dropout, and the result is the same as with one.
    q, k, v = _inputs(32)
    mask = _key_mask(32, {0: [4]})
    with_seed = jax.jit(_kernel(mask, True, 0.0))(q, k, v)
    without = jax.jit(lambda q, k, v: fa.attention(q, k, v, mask, True, 0.0, None, interpret=True))(q, k, v)
    np.testing.assert_array_equal(with_seed, without)


def test_reference_without_dropout_is_attend():
    """At rate 0 the reference is `text_layers.attend` (its XLA path) on queries that see some key."""
    q, k, v = _inputs(24)
    mask = _key_mask(24, {0: [20, 21, 22, 23], 1: [2, 3]})
    for causal in (False, True):
        ours = fa.reference_attention(q, k, v, mask, causal, 0.0, None)
        theirs = text_layers.attend(None, q, k, v, mask, causal, 0.0, train=False)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_reference_gradient_against_finite_differences():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        q, k, v = (jnp.asarray(rng.standard_normal((1, 6, 2, 4))) for _ in range(3))
        mask = jnp.asarray([[True, True, False, True, True, True]])
        check_grads(
            lambda q, k, v: fa.reference_attention(q, k, v, mask, True, 0.3, SEED), (q, k, v), order=1, modes=("rev",)
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dropout_rate=1.0), "dropout_rate"),
        (dict(block_q=24), "power of two"),
        (dict(head_dim=48), "head_dim"),
        (dict(dropout_rate=0.1, seed=None), "seed"),
    ],
)
def test_attention_rejects_bad_arguments(kwargs, message):
    q, k, v = _inputs(16, head_dim=kwargs.pop("head_dim", 32))
    args = dict(causal=False, dropout_rate=0.0, seed=SEED, interpret=True) | kwargs
    with pytest.raises(ValueError, match=message):
        fa.attention(q, k, v, _key_mask(16), **args)


def test_attend_trains_with_the_kernel_or_the_reference_dropping_the_same_entries(monkeypatch):
    """`text_layers.attend` in training: the kernels where `kernel_runs` (here forced, in interpret mode) and the
    reference elsewhere (this CPU) draw one seed from the module's dropout rng and give the same output and
    gradients, i.e. drop the same entries."""
    import flax.linen as nn

    class Attend(nn.Module):
        @nn.compact
        def __call__(self, q, k, v, mask):
            return text_layers.attend(self, q, k, v, mask, True, 0.2, train=True)

    q, k, v = _inputs(32, head_dim=16)
    mask = _key_mask(32, {1: [30, 31]})

    def run(q, k, v):
        return Attend().apply({}, q, k, v, mask, rngs={"dropout": jax.random.key(3)})

    assert not fa.kernel_runs(q.shape)  # this CPU takes the reference path
    reference = value_and_vjp(run, q, k, v)
    without_dropout = fa.reference_attention(q, k, v, mask, True, 0.0, None)
    assert not np.allclose(reference[0], without_dropout, atol=1e-3)  # dropout is in effect

    interpreted = fa.attention
    monkeypatch.setattr(fa, "kernel_runs", lambda shape: True)
    monkeypatch.setattr(fa, "attention", lambda *args: interpreted(*args, interpret=True, block_q=16, block_k=16))
    kernel = value_and_vjp(run, q, k, v)
    for ours, theirs in zip(jax.tree.leaves(kernel), jax.tree.leaves(reference), strict=True):
        assert relative_error(ours, theirs) < 1e-5


def test_kernels_run_on_one_gpu_or_on_gpus_that_split_the_batch(monkeypatch):
    shape = (8, 32, 2, 16)
    assert not fa.kernel_runs(shape)  # this CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert fa.kernel_runs(shape)
    assert not fa.kernel_runs((8, 32, 2, 24))  # a head_dim the kernels do not take
    monkeypatch.setattr(jax, "device_count", lambda: 4)
    assert not fa.kernel_runs(shape)  # several devices and no mesh to split over: XLA's attention
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((4,), ("data",))):
        assert fa.kernel_runs(shape)
        assert not fa.kernel_runs((6, 32, 2, 16))  # 6 examples do not split over 4 devices


# The kernels (interpret mode) under a mesh of 4 devices, each on 2 of the 8 examples, against the reference on the
# whole batch: the masks match only if each part hashes its examples' indices in the whole batch.
SPLIT_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from sot_jax.models import fused_attention as fa
seed = jnp.asarray([0x12345678, 0x9ABCDEF0], jnp.uint32)
rng = np.random.default_rng(0)
q, k, v = (jnp.asarray(rng.standard_normal((8, 32, 2, 16)), jnp.float32) for _ in range(3))
mask = jnp.asarray(rng.random((8, 32)) > 0.2)
weights = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)
mesh = Mesh(np.array(jax.devices()), ("data",))
def loss(attention, q, k, v):
    return jnp.sum(attention(q, k, v, mask, False, 0.3, seed) * weights)
def kernels(*args):
    return fa.attention(*args, interpret=True, block_q=16, block_k=16)
def split(q, k, v):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        return jax.value_and_grad(lambda *x: loss(kernels, *x), argnums=(0, 1, 2))(q, k, v)
sharded = [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in (q, k, v)]
ours = jax.jit(split)(*sharded)
theirs = jax.value_and_grad(lambda *x: loss(fa.reference_attention, *x), argnums=(0, 1, 2))(q, k, v)
jaxpr = str(jax.make_jaxpr(split)(*sharded))
print("shard_map" in jaxpr and "f32[2,32,2,16]" in jaxpr)
pairs = zip(jax.tree.leaves(ours), jax.tree.leaves(theirs))
print(max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in pairs))
"""


def test_kernels_split_over_a_mesh_drop_what_the_whole_batch_drops():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", SPLIT_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    split, error = result.stdout.split()[-2:]
    assert split == "True"  # each device's kernels got its 2 examples
    assert float(error) < 1e-5


def test_kernels_lower_to_triton_for_a_gpu():
    """Pallas's Triton lowering (what a GPU compiles) runs here too, for CUDA: every kernel of a bf16 training step
    lowers, which interpret mode does not check (Triton takes only arrays of power-of-two sizes, for one)."""
    q = jax.ShapeDtypeStruct((4, 128, 12, 64), jnp.bfloat16)
    mask, seed = jax.ShapeDtypeStruct((4, 128), jnp.bool_), jax.ShapeDtypeStruct((2,), jnp.uint32)

    def loss(q, k, v, mask, seed):  # causal, and backward blocks that need the separate dQ kernel
        return jnp.sum(fa.attention(q, k, v, mask, True, 0.1, seed, backward_block=32).astype(jnp.float32))

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    text = step.trace(q, q, q, mask, seed).lower(lowering_platforms=("cuda",)).as_text()
    kernels = re.findall(r'name = "(attention_dropout_\w+)"', text)
    assert sorted(kernels) == ["attention_dropout_dkdv", "attention_dropout_dq", "attention_dropout_fwd"]
