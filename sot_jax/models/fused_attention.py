"""Softmax attention with dropout on the attention probabilities, fused into Pallas kernels (Triton lowering), and
the same function in plain XLA ops.

Why: attention in XLA ops materializes the (B, heads, L, L) float32 logits and probabilities and the dropout mask
in HBM, while PyTorch's SDPA runs attention and its dropout in one kernel. cuDNN's fused attention in JAX cannot
stand in: its dropout seed is a compile-time constant, so every step would drop the same entries.
`text_layers.attend` trains with these kernels on GPUs (`kernel_runs`: one, or several that split the batch
under the step's mesh) and with `reference_attention` elsewhere.

Dropout mask. `dropout.keep_mask` (the mask of every dropout in sot_jax) hashes (seed, batch·heads index, query,
key). The kernels call it on each block's index arrays and `reference_attention` on the whole (B·heads, L, L)
grid, so both drop the same entries, the mask depends only on absolute indices (not on block sizes), and nothing
is stored for the backward: it regenerates the mask. The caller draws the two seed words per call
(`dropout.draw_seed`).

Layout. q, k, v stay (B, L, heads, head_dim), as the models produce them: a kernel program addresses one head's
strided (L, head_dim) slice, so there is no transpose in HBM. The grid is (row blocks, B, heads) with the row
block fastest, so programs that read the same head's K and V run side by side and share them in L2 (B and heads
are CUDA's grid y and z: at most 65535 each).

Forward (`_forward_kernel`): FlashAttention. A program owns `block_q` queries of one head and walks the keys
`block_k` at a time with an online softmax in base 2 (logits pre-multiplied by log2 e, so each exponential is one
exp2). The softmax denominator sums all probabilities; only the kept ones, unnormalized and cast to v's dtype, are
multiplied with V; the output is the accumulator over (denominator · (1 - rate)). Saved for the backward: q, k, v,
the output, and each query's base-2 logsumexp in float32 (B, heads, L).

Backward (FlashAttention-2). Δ = rowsum(dO ∘ O) is one XLA reduction. `_dkdv_kernel`: a program owns
`backward_block` keys and walks the queries `backward_step` at a time, recomputing P = exp2(S - lse) and the keep
mask Z, and accumulates dV += (P∘Z/(1-rate))ᵀ dO and dK += dSᵀ Q with dS = P ∘ (dO Vᵀ ∘ Z/(1-rate) - Δ). When
one key block covers the (padded) sequence, every query step there has seen all keys, so the same program writes
dQ = dS K too and no second kernel runs (BERT and GPT-2 at L = 128 with the default blocks). Otherwise
`_dq_kernel` owns `backward_block` queries and walks the keys `backward_step` at a time.

Masking. `key_mask` (True = real token, any pattern) is loaded per key block; masked logits are -inf, and the
running maximum starts finite so that a block with no visible key gives exp2(-inf) = 0, never NaN. A query that
sees no key at all (its example is all padding, or causal with its earlier keys masked) outputs zeros and passes
no gradient; `attend` gives a uniform average of all values there instead (arbitrary in both: compare real
positions only). `reference_attention` follows the kernels.

Numerics as `attend`: logits and softmax in float32, probabilities dropped and rescaled, cast to v's dtype before
the PV matmul, every matmul accumulating in float32; the output has q's dtype.

Lengths. Blocks are powers of two ≥ 16 (Triton's tensor shapes), clamped to L rounded up to a power of two. L not
a multiple of the largest block is zero-padded in HBM (padded keys masked, padded query rows sliced off; their
cotangents are zero, so they add no gradient); lengths that are multiples of the blocks are not copied.

Backend: Pallas's Triton lowering, selected by passing `plt.CompilerParams` (since jax 0.10 a plain
`pl.pallas_call` on GPU lowers to Mosaic GPU). The kernels use generic Pallas only (ref slices, `jnp.dot`,
`fori_loop`), so `interpret=True` runs them on CPU for the tests.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt
from jax.sharding import PartitionSpec as P

from sot_jax.models.dropout import keep_mask

# The kernels' running maximum before any visible key: finite, so exp2(m_old - m_new) is 1 or 0, never
# exp2(-inf - -inf) = NaN; masked logits themselves are -inf, so exp2 gives exactly 0 for them.
_NO_MAXIMUM = float(np.finfo(np.float32).min)
_ROWS = (((0,), (0,)), ((), ()))  # dot_general dimension numbers of aᵀ @ b
_COLUMNS = (((1,), (1,)), ((), ()))  # a @ bᵀ


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static shape and tiling; hashable, so it can be a custom_vjp nondiff argument."""

    heads: int
    head_dim: int
    length: int  # padded L, a multiple of every block
    causal: bool
    rate: float
    block_q: int
    block_k: int
    backward_block: int
    backward_step: int
    num_warps: int
    backward_num_warps: int
    num_stages: int
    interpret: bool

    @property
    def scale(self) -> float:
        return self.head_dim**-0.5

    @property
    def logit_scale(self) -> float:
        """scale · log2(e): logits in base 2, for exp2."""
        return self.scale * float(np.log2(np.e))

    @property
    def keep_scale(self) -> float:
        return 1.0 / (1.0 - self.rate)

    @property
    def fused_dq(self) -> bool:
        """One key block covers the sequence: the dK/dV kernel writes dQ as well."""
        return self.backward_block == self.length


def _is_block_size(n: int) -> bool:
    """A power of two ≥ 16: a Triton tensor dimension the kernels' dots take."""
    return n >= 16 and not n & (n - 1)


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _make_config(
    shape: tuple[int, ...],
    causal: bool,
    rate: float,
    blocks: dict[str, int],
    warps: tuple[int, int],
    num_stages: int,
    interpret: bool,
) -> _Config:
    _, length, heads, head_dim = shape
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout_rate={rate} must be in [0, 1)")
    if not _is_block_size(head_dim):
        raise ValueError(f"head_dim={head_dim} must be a power of two ≥ 16 (the kernels' tensor shapes)")
    for name, size in blocks.items():
        if not _is_block_size(size):
            raise ValueError(f"{name}={size} must be a power of two ≥ 16")
    # Blocks past the length would only compute padding.
    longest = max(16, _next_power_of_two(length))
    blocks = {name: min(size, longest) for name, size in blocks.items()}
    padded = -(-length // max(blocks.values())) * max(blocks.values())
    return _Config(
        heads, head_dim, padded, causal, float(rate), **blocks, num_warps=warps[0], backward_num_warps=warps[1],
        num_stages=num_stages, interpret=interpret,
    )


def _logits(q: jax.Array, k: jax.Array, q_index: jax.Array, k_index: jax.Array, key_ok, cfg: _Config) -> jax.Array:
    """Base-2 logits (log2 e · scale · q·k, float32) of a (queries, keys) block; -inf where the key is masked or,
    causal, after the query."""
    s = lax.dot_general(q, k, _COLUMNS, preferred_element_type=jnp.float32) * cfg.logit_scale
    visible = (key_ok != 0)[None, :]
    if cfg.causal:
        visible = visible & (q_index[:, None] >= k_index[None, :])
    return jnp.where(visible, s, -jnp.inf)


def _keep(seed, batch_head, q_index: jax.Array, k_index: jax.Array, cfg: _Config) -> jax.Array | None:
    """The block's keep mask, or None without dropout (the kernels then skip the hash)."""
    if not cfg.rate:
        return None
    return keep_mask(seed, batch_head, q_index[:, None], k_index[None, :], cfg.rate)


def _program(seed_ref, cfg: _Config) -> tuple[jax.Array, tuple[jax.Array, jax.Array], jax.Array]:
    """(row block, seed words, batch·heads index in the whole batch) of this program; the grid is (row blocks, B,
    heads) and the seed operand's third word is the index of this call's first example in the whole batch."""
    example = seed_ref[2] + pl.program_id(1).astype(jnp.uint32)
    return pl.program_id(0), (seed_ref[0], seed_ref[1]), example * cfg.heads + pl.program_id(2).astype(jnp.uint32)


def _forward_kernel(seed_ref, q_ref, k_ref, v_ref, mask_ref, o_ref, lse_ref, *, cfg: _Config):
    block, seed, batch_head = _program(seed_ref, cfg)
    bq, bk = cfg.block_q, cfg.block_k
    q = q_ref[...]
    q_index = block * bq + jnp.arange(bq)

    def body(j, carry):
        acc, maximum, total = carry
        k_index = j * bk + jnp.arange(bk)
        keys = pl.ds(j * bk, bk)
        s = _logits(q, k_ref[keys, :], q_index, k_index, mask_ref[keys], cfg)
        new_maximum = jnp.maximum(maximum, jnp.max(s, axis=1))
        correction = jnp.exp2(maximum - new_maximum)
        p = jnp.exp2(s - new_maximum[:, None])
        # The denominator sums every probability; dropout removes terms from the numerator only.
        total = total * correction + jnp.sum(p, axis=1)
        keep = _keep(seed, batch_head, q_index, k_index, cfg)
        if keep is not None:
            p = jnp.where(keep, p, 0.0)
        v = v_ref[keys, :]
        acc = acc * correction[:, None] + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        return acc, new_maximum, total

    if cfg.causal:  # key blocks up to the diagonal (lax.div: the bound is a traced int32)
        stop = lax.div((block + 1) * bq + bk - 1, bk)
    else:
        stop = cfg.length // bk
    init = (
        jnp.zeros((bq, cfg.head_dim), jnp.float32),
        jnp.full((bq,), _NO_MAXIMUM, jnp.float32),
        jnp.zeros((bq,), jnp.float32),
    )
    acc, maximum, total = lax.fori_loop(0, stop, body, init)
    # A query with no visible key has total 0: output 0, and lse = +inf makes its recomputed P 0 in the backward.
    seen = total > 0
    o_ref[...] = (acc * jnp.where(seen, cfg.keep_scale / total, 0.0)[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(seen, maximum + jnp.log2(total), jnp.inf)


def _score_grads(q, k, v, do, lse, delta, q_index, k_index, key_ok, seed, batch_head, cfg: _Config):
    """Recomputed (queries, keys) block: the dropped, rescaled probabilities P∘Z/(1-rate) (V's gradient is their
    transpose times dO) and dS, the gradient of the natural-log logits, both float32."""
    p = jnp.exp2(_logits(q, k, q_index, k_index, key_ok, cfg) - lse[:, None])
    dp = lax.dot_general(do, v, _COLUMNS, preferred_element_type=jnp.float32)
    keep = _keep(seed, batch_head, q_index, k_index, cfg)
    if keep is None:
        return p, p * (dp - delta[:, None])
    dropped = jnp.where(keep, p * cfg.keep_scale, 0.0)
    dp = jnp.where(keep, dp * cfg.keep_scale, 0.0)
    return dropped, p * (dp - delta[:, None])


def _dkdv_kernel(
    seed_ref, q_ref, k_ref, v_ref, mask_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *dq_ref, cfg: _Config
):
    # dq_ref: (dq,) when cfg.fused_dq, else empty.
    block, seed, batch_head = _program(seed_ref, cfg)
    bk, bq = cfg.backward_block, cfg.backward_step
    k, v = k_ref[...], v_ref[...]
    k_index = block * bk + jnp.arange(bk)
    key_ok = mask_ref[pl.ds(block * bk, bk)]

    def body(i, carry):
        dk, dv = carry
        queries = pl.ds(i * bq, bq)
        q, do = q_ref[queries, :], do_ref[queries, :]
        q_index = i * bq + jnp.arange(bq)
        stats = lse_ref[queries], delta_ref[queries]
        dropped, ds = _score_grads(q, k, v, do, *stats, q_index, k_index, key_ok, seed, batch_head, cfg)
        dv += lax.dot_general(dropped.astype(do.dtype), do, _ROWS, preferred_element_type=jnp.float32)
        ds = ds.astype(q.dtype)
        dk += lax.dot_general(ds, q, _ROWS, preferred_element_type=jnp.float32)
        if dq_ref:  # this program holds every key: the query step's dQ is complete
            dq = jnp.dot(ds, k, preferred_element_type=jnp.float32) * cfg.scale
            dq_ref[0][queries, :] = dq.astype(dq_ref[0].dtype)
        return dk, dv

    # Causal: queries before this key block see none of its keys.
    start = lax.div(block * bk, bq) if cfg.causal else 0
    zeros = jnp.zeros((bk, cfg.head_dim), jnp.float32)
    dk, dv = lax.fori_loop(start, cfg.length // bq, body, (zeros, zeros))
    dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(seed_ref, q_ref, k_ref, v_ref, mask_ref, do_ref, lse_ref, delta_ref, dq_ref, *, cfg: _Config):
    block, seed, batch_head = _program(seed_ref, cfg)
    bq, bk = cfg.backward_block, cfg.backward_step
    q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
    q_index = block * bq + jnp.arange(bq)

    def body(j, dq):
        keys = pl.ds(j * bk, bk)
        k, v, k_index = k_ref[keys, :], v_ref[keys, :], j * bk + jnp.arange(bk)
        _, ds = _score_grads(q, k, v, do, lse, delta, q_index, k_index, mask_ref[keys], seed, batch_head, cfg)
        return dq + jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

    stop = lax.div((block + 1) * bq + bk - 1, bk) if cfg.causal else cfg.length // bk
    dq = lax.fori_loop(0, stop, body, jnp.zeros((bq, cfg.head_dim), jnp.float32))
    dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)


# BlockSpecs over the grid (row block i, batch b, head h).
def _rows_spec(rows: int, head_dim: int) -> pl.BlockSpec:
    """`rows` consecutive positions of one head of a (B, L, heads, head_dim) array: block i."""
    return pl.BlockSpec((None, rows, None, head_dim), lambda i, b, h: (b, i, h, 0))


def _head_spec(cfg: _Config) -> pl.BlockSpec:
    """All positions of one head of a (B, L, heads, head_dim) array."""
    return pl.BlockSpec((None, cfg.length, None, cfg.head_dim), lambda i, b, h: (b, 0, h, 0))


def _stat_spec(rows: int) -> pl.BlockSpec:
    """Block i of one head's per-query float32 statistics (B, heads, L)."""
    return pl.BlockSpec((None, None, rows), lambda i, b, h: (b, h, i))


def _common_specs(cfg: _Config) -> list[pl.BlockSpec]:
    """Specs of (seed words, key_mask), the kernels' first and fifth operands."""
    return [pl.BlockSpec((3,), lambda i, b, h: (0,)), pl.BlockSpec((None, cfg.length), lambda i, b, h: (b, 0))]


def _pallas_call(kernel, cfg: _Config, rows: int, in_specs, out_specs, out_shape, name: str, num_warps: int):
    batch = out_shape[0].shape[0]
    return pl.pallas_call(
        functools.partial(kernel, cfg=cfg),
        grid=(cfg.length // rows, batch, cfg.heads),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        # Explicit Triton params select the Triton lowering (the default GPU lowering is Mosaic GPU since jax 0.10).
        compiler_params=plt.CompilerParams(num_warps=num_warps, num_stages=cfg.num_stages),
        interpret=cfg.interpret,
        name=name,
    )


def _forward(q, k, v, key_mask, seed, cfg: _Config) -> tuple[jax.Array, jax.Array]:
    batch = q.shape[0]
    seed_spec, mask_spec = _common_specs(cfg)
    return _pallas_call(
        _forward_kernel,
        cfg,
        cfg.block_q,
        in_specs=[seed_spec, _rows_spec(cfg.block_q, cfg.head_dim), _head_spec(cfg), _head_spec(cfg), mask_spec],
        out_specs=[_rows_spec(cfg.block_q, cfg.head_dim), _stat_spec(cfg.block_q)],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((batch, cfg.heads, cfg.length), jnp.float32),
        ],
        name="attention_dropout_fwd",
        num_warps=cfg.num_warps,
    )(seed, q, k, v, key_mask)


def _backward(q, k, v, key_mask, seed, out, lse, d_out, cfg: _Config) -> tuple[jax.Array, jax.Array, jax.Array]:
    d_out = d_out.astype(q.dtype)
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1).transpose(0, 2, 1)
    operands = (seed, q, k, v, key_mask, d_out, lse, delta)
    seed_spec, mask_spec = _common_specs(cfg)
    head, stats = _head_spec(cfg), pl.BlockSpec((None, None, cfg.length), lambda i, b, h: (b, h, 0))
    owned, owned_stats = _rows_spec(cfg.backward_block, cfg.head_dim), _stat_spec(cfg.backward_block)
    like = jax.ShapeDtypeStruct(q.shape, q.dtype)
    dkdv = _pallas_call(
        _dkdv_kernel,
        cfg,
        cfg.backward_block,
        in_specs=[seed_spec, head, owned, owned, mask_spec, head, stats, stats],
        out_specs=[owned, owned] + ([head] if cfg.fused_dq else []),
        out_shape=[like] * (3 if cfg.fused_dq else 2),
        name="attention_dropout_dkdv",
        num_warps=cfg.backward_num_warps,
    )(*operands)
    if cfg.fused_dq:
        dk, dv, dq = dkdv
    else:
        dk, dv = dkdv
        (dq,) = _pallas_call(
            _dq_kernel,
            cfg,
            cfg.backward_block,
            in_specs=[seed_spec, owned, head, head, mask_spec, owned, owned_stats, owned_stats],
            out_specs=[owned],
            out_shape=[like],
            name="attention_dropout_dq",
            num_warps=cfg.backward_num_warps,
        )(*operands)
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q, k, v, key_mask, seed, cfg: _Config) -> jax.Array:
    return _forward(q, k, v, key_mask, seed, cfg)[0]


def _attention_fwd(q, k, v, key_mask, seed, cfg: _Config):
    out, lse = _forward(q, k, v, key_mask, seed, cfg)
    return out, (q, k, v, key_mask, seed, out, lse)


def _attention_bwd(cfg: _Config, residuals, d_out):
    return *_backward(*residuals, d_out, cfg), None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_mask: jax.Array,
    causal: bool,
    dropout_rate: float,
    seed: jax.Array | None,
    *,
    interpret: bool = False,
    block_q: int = 64,
    block_k: int = 64,
    backward_block: int = 128,
    backward_step: int = 32,
    num_warps: int = 4,
    backward_num_warps: int = 8,
    num_stages: int = 2,
) -> jax.Array:
    """Softmax attention with dropout on the probabilities, in Pallas kernels; equals `reference_attention`.

    q, k, v: (B, L, heads, head_dim), one dtype, head_dim a power of two ≥ 16; key_mask: (B, L) bool, True on real
    tokens; scale head_dim^-0.5. seed: (2,) uint32 words of this call's dropout randomness (see `keep_mask`); may be
    None when dropout_rate is 0. Differentiable in q, k, v. Returns (B, L, heads, head_dim) in q's dtype.

    Tiling (powers of two ≥ 16): forward programs own `block_q` queries and walk the keys `block_k` at a time;
    backward programs own `backward_block` keys (dK, dV) or queries (dQ) and walk the other side `backward_step`
    at a time. num_warps (forward) and backward_num_warps are Triton's, num_stages for every kernel; the backward
    holds two float32 (backward_block, head_dim) accumulators, which spill from 4 warps' registers at 128 × 64.
    `interpret=True` runs on CPU.

    Under a context mesh of several devices (`jax.sharding.use_abstract_mesh`; `train.jit_train_step` traces the
    step under its mesh) the batch is split over all the mesh's devices and each runs the kernels on its part
    (`jax.shard_map`: a pallas_call has no partitioning rule, and XLA would gather its operands onto every device).
    Each part hashes its examples' indices in the whole batch, so the masks are the unsplit call's.
    """
    if not (q.shape == k.shape == v.shape and q.dtype == k.dtype == v.dtype):
        shapes = ", ".join(f"{x.shape} {x.dtype}" for x in (q, k, v))
        raise ValueError(f"q, k, v must share shape and dtype, got {shapes}")
    if key_mask.shape != q.shape[:2]:
        raise ValueError(f"key_mask has shape {key_mask.shape}, expected {q.shape[:2]}")
    blocks = dict(block_q=block_q, block_k=block_k, backward_block=backward_block, backward_step=backward_step)
    cfg = _make_config(q.shape, causal, dropout_rate, blocks, (num_warps, backward_num_warps), num_stages, interpret)
    if seed is None:
        if dropout_rate:
            raise ValueError("dropout needs a seed")
        seed = jnp.zeros((2,), jnp.uint32)
    if jnp.shape(seed) != (2,):
        raise ValueError(f"seed must be two uint32 words, got shape {jnp.shape(seed)}")
    seed = jnp.asarray(seed, jnp.uint32)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return _attention_of_examples(q, k, v, key_mask, seed, 0, cfg)
    if q.shape[0] % mesh.size:
        raise ValueError(f"batch {q.shape[0]} must be a multiple of the context mesh's {mesh.size} devices")
    batch = P(mesh.axis_names)

    def part(q, k, v, key_mask, seed):
        first = lax.axis_index(mesh.axis_names) * q.shape[0]
        return _attention_of_examples(q, k, v, key_mask, seed, first, cfg)

    # check_vma=False: pallas_call states no replication rule (the outputs vary over the batch axis, as declared).
    return jax.shard_map(part, mesh=mesh, in_specs=(batch,) * 4 + (P(),), out_specs=batch, check_vma=False)(
        q, k, v, key_mask, seed
    )


def _attention_of_examples(q, k, v, key_mask, seed, first, cfg: _Config) -> jax.Array:
    """`attention` on examples first, first + 1, ... of a batch (their indices in the dropout mask's hash)."""
    length = q.shape[1]
    pad = cfg.length - length
    if pad:
        q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
        key_mask = jnp.pad(key_mask, ((0, 0), (0, pad)))  # padded keys are masked
    words = jnp.concatenate([seed, jnp.asarray([first], jnp.uint32)])
    # int32, not bool: the kernels load it as a plain integer vector.
    out = _attention(q, k, v, key_mask.astype(jnp.int32), words, cfg)
    return out[:, :length] if pad else out


def kernel_runs(shape: tuple[int, ...]) -> bool:
    """Whether `attend` trains q, k, v of this (B, L, heads, head_dim) shape with the kernels: on GPUs, for a
    head_dim the kernels take, on one device or under a context mesh whose devices split the batch evenly
    (`attention`). Several devices without a context mesh keep the XLA path, which XLA partitions as any other op."""
    if jax.default_backend() != "gpu" or not _is_block_size(shape[-1]):
        return False
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return jax.device_count() == 1
    return shape[0] % mesh.size == 0


def reference_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_mask: jax.Array,
    causal: bool,
    dropout_rate: float,
    seed: jax.Array | None,
) -> jax.Array:
    """`attention` in plain XLA ops (any head_dim and length): `attend`'s training path where the kernels do not
    run, and their oracle.

    `attend`'s computation with `keep_mask` for the dropout mask, except that queries with no visible key output
    zeros (see the module docstring)."""
    batch, length, heads, head_dim = q.shape
    # float32 logits and softmax, as attend; float64 for float64 inputs (the gradient tests' finite differences).
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=dtype) * head_dim**-0.5
    visible = key_mask[:, None, None, :]
    if causal:
        visible = visible & jnp.tril(jnp.ones((length, length), bool))
    # Zero where masked: exact already where a row sees some key, and the rows that see none.
    probs = jnp.where(visible, jax.nn.softmax(jnp.where(visible, logits, jnp.finfo(dtype).min), axis=-1), 0.0)
    if dropout_rate:
        index = jnp.arange(length)
        batch_head = jnp.arange(batch * heads).reshape(batch, heads, 1, 1)
        keep = keep_mask(seed, batch_head, index[:, None], index[None, :], dropout_rate)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v).astype(q.dtype)
