"""GPU check and timing of the fused attention-with-dropout kernels (sot_jax/models/fused_attention.py) against XLA.

Shapes: BERT-base (B = 256, L = 128, 12 heads of 64, bidirectional) and GPT-2 (B = 32 and 256, L = 128, 12 heads
of 64, causal), bf16, dropout 0.1.

1. Check, per shape: the kernel's output and dq, dk, dv against `reference_attention` (the same mask, bf16) as the
   max |Δ|, with the error of each against the float32 reference (inputs upcast) as the yardstick, on a key mask
   with right padding and a hole; and the keep fraction of the dropout mask over the whole (B·heads, L, L) grid.
2. Milliseconds per forward + backward (jitted value_and_grad of sum(out · cotangent) in q, k, v; median and min of
   `--repeats` runs, each waited on), every token real (as bench/text_throughput.py's synthetic batches), of
     kernel     `fused_attention.attention`, dropout 0.1
     reference  `fused_attention.reference_attention`: XLA with the hash mask, dropout 0.1
     xla_threefry  attention in XLA with a threefry Bernoulli mask (`text_layers.attend` before the kernels),
                dropout 0.1
     cudnn      `jax.nn.dot_product_attention(implementation="cudnn")` without dropout: a bound

    PYTHONPATH=. python3 bench/attention_dropout.py [--block-q 64] [--block-k 64] [--backward-block 128]
        [--backward-step 32] [--num-warps 4] [--backward-num-warps 8] [--num-stages 2] [--repeats 20]
    PYTHONPATH=. python bench/attention_dropout.py --interpret --small   # a tiny CPU smoke run (interpret mode)

Each row prints one line "RESULT {json}"; a failure (a Triton compile error, say) is printed as its row's "error"
and the run goes on. XLA gets sot_jax's default flags (sot_jax.xla_defaults), as the trainer does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from sot_jax import xla_defaults
from sot_jax.models import fused_attention as fa
from sot_jax.models.dropout import keep_mask

# (name, batch, length, heads, head_dim, causal)
SHAPES = (
    ("bert", 256, 128, 12, 64, False),
    ("gpt2_b32", 32, 128, 12, 64, True),
    ("gpt2_b256", 256, 128, 12, 64, True),
)
SMALL_SHAPES = (("bert_small", 2, 32, 2, 32, False), ("gpt2_small", 2, 32, 2, 32, True))


def xla_threefry(q, k, v, key_mask, causal: bool, rate: float, key):
    """Attention as `text_layers.attend` trained before the kernels: XLA ops with a threefry Bernoulli mask."""
    length = q.shape[1]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    mask = key_mask[:, None, None, :]
    if causal:
        mask = mask & jnp.tril(jnp.ones((length, length), bool))
    probs = jax.nn.softmax(jnp.where(mask, logits, jnp.finfo(jnp.float32).min), axis=-1)
    keep = jax.random.bernoulli(key, 1.0 - rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - rate), 0.0).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def implementations(causal: bool, rate: float, kernel_options: dict) -> dict:
    """name -> fn(q, k, v, key_mask, rng key) -> out."""

    def seed(key):
        return jax.random.bits(key, (2,), jnp.uint32)

    def cudnn(q, k, v, key_mask, key):
        # Right padding only (the timed masks are all real): cuDNN takes lengths, not a mask.
        lengths = jnp.sum(key_mask, axis=1, dtype=jnp.int32)
        return jax.nn.dot_product_attention(
            q, k, v, key_value_seq_lengths=lengths, is_causal=causal, implementation="cudnn"
        )

    return {
        "kernel": lambda q, k, v, m, key: fa.attention(q, k, v, m, causal, rate, seed(key), **kernel_options),
        "reference": lambda q, k, v, m, key: fa.reference_attention(q, k, v, m, causal, rate, seed(key)),
        "xla_threefry": lambda q, k, v, m, key: xla_threefry(q, k, v, m, causal, rate, key),
        "cudnn": cudnn,
    }


def value_and_grads(fn):
    """Jitted (q, k, v, key_mask, key, cotangent) -> (sum(out · cotangent), (dq, dk, dv))."""

    def loss(q, k, v, key_mask, key, cotangent):
        return jnp.sum(fn(q, k, v, key_mask, key).astype(jnp.float32) * cotangent)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def out_and_grads(fn):
    """Jitted (q, k, v, key_mask, key, cotangent) -> (out, (dq, dk, dv)) for the check."""

    def run(q, k, v, key_mask, key, cotangent):
        out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, key_mask, key), q, k, v)
        return out, vjp(cotangent.astype(out.dtype))

    return jax.jit(run)


def make_inputs(batch: int, length: int, heads: int, head_dim: int, dtype):
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v = (jax.random.normal(key, (batch, length, heads, head_dim), jnp.float32).astype(dtype) for key in keys[:3])
    cotangent = jax.random.normal(keys[3], q.shape, jnp.float32)
    return q, k, v, cotangent


def check_mask(batch: int, length: int) -> jax.Array:
    """Right padding to random lengths in [L/2, L], and key 3 of every example masked (an arbitrary hole)."""
    lengths = np.random.default_rng(0).integers(length // 2, length + 1, size=batch)
    mask = np.arange(length)[None, :] < lengths[:, None]
    mask[:, 3] = False
    return jnp.asarray(mask)


def max_abs(a, b) -> float:
    return float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))


def check(shape, rate: float, dtype, kernel_options: dict) -> dict:
    _, batch, length, heads, head_dim, causal = shape
    q, k, v, cotangent = make_inputs(batch, length, heads, head_dim, dtype)
    mask, key = check_mask(batch, length), jax.random.key(1)
    impls = implementations(causal, rate, kernel_options)
    kernel = out_and_grads(impls["kernel"])(q, k, v, mask, key, cotangent)
    reference = out_and_grads(impls["reference"])(q, k, v, mask, key, cotangent)
    upcast = (x.astype(jnp.float32) for x in (q, k, v))
    exact = out_and_grads(impls["reference"])(*upcast, mask, key, cotangent)
    names = ("out", "dq", "dk", "dv")
    leaves = [jax.tree.leaves(x) for x in (kernel, reference, exact)]
    index = jnp.arange(length)
    batch_head = jnp.arange(batch * heads)[:, None, None]
    seed = jax.random.bits(key, (2,), jnp.uint32)
    keep = jax.jit(lambda s: jnp.mean(keep_mask(s, batch_head, index[:, None], index[None, :], rate)))(seed)
    return {
        "kernel_vs_reference": {n: max_abs(a, b) for n, a, b in zip(names, leaves[0], leaves[1], strict=True)},
        "kernel_vs_float32": {n: max_abs(a, b) for n, a, b in zip(names, leaves[0], leaves[2], strict=True)},
        "reference_vs_float32": {n: max_abs(a, b) for n, a, b in zip(names, leaves[1], leaves[2], strict=True)},
        "keep_fraction": float(keep),
        "expected_keep_fraction": 1 - rate,
    }


def time_ms(fn, args, repeats: int) -> dict:
    """Median and min milliseconds of `repeats` calls after two warm-up calls, each call waited on."""
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(1e3 * (time.perf_counter() - start))
    return {"ms": statistics.median(times), "min_ms": min(times)}


def report(row: dict) -> None:
    print("RESULT " + json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--block-q", type=int, default=64)
    parser.add_argument("--block-k", type=int, default=64)
    parser.add_argument("--backward-block", type=int, default=128)
    parser.add_argument("--backward-step", type=int, default=32)
    parser.add_argument("--num-warps", type=int, default=4)
    parser.add_argument("--backward-num-warps", type=int, default=8)
    parser.add_argument("--num-stages", type=int, default=2)
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--interpret", action="store_true", help="run the kernels in Pallas interpret mode (CPU)")
    parser.add_argument("--small", action="store_true", help="tiny shapes, for a smoke run")
    args = parser.parse_args()
    xla_defaults.apply()  # before JAX starts its backend, as sot_jax.main does

    kernel_options = dict(
        block_q=args.block_q,
        block_k=args.block_k,
        backward_block=args.backward_block,
        backward_step=args.backward_step,
        num_warps=args.num_warps,
        backward_num_warps=args.backward_num_warps,
        num_stages=args.num_stages,
        interpret=args.interpret,
    )
    print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}, kernel {kernel_options}", flush=True)
    dtype = jnp.bfloat16
    for shape in SMALL_SHAPES if args.small else SHAPES:
        name, batch, length, heads, head_dim, causal = shape
        base = dict(shape=name, batch=batch, length=length, heads=heads, head_dim=head_dim, causal=causal)
        try:
            report(base | {"variant": "check", "dropout": args.rate} | check(shape, args.rate, dtype, kernel_options))
        except Exception:  # noqa: BLE001 - report the failure on its row and go on
            report(base | {"variant": "check", "error": traceback.format_exc(limit=3)[-2000:]})
        q, k, v, cotangent = make_inputs(batch, length, heads, head_dim, dtype)
        inputs = (q, k, v, jnp.ones((batch, length), bool), jax.random.key(1), cotangent)
        for variant, fn in implementations(causal, args.rate, kernel_options).items():
            row = base | {"variant": variant, "dropout": 0.0 if variant == "cudnn" else args.rate}
            if variant == "kernel":
                row["options"] = kernel_options
            if variant == "cudnn" and jax.default_backend() != "gpu":
                report(row | {"skipped": "cuDNN needs a GPU"})
                continue
            try:
                report(row | time_ms(value_and_grads(fn), inputs, args.repeats))
            except Exception:  # noqa: BLE001
                report(row | {"error": traceback.format_exc(limit=3)[-2000:]})


if __name__ == "__main__":
    main()
