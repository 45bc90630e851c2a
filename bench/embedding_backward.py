"""The backward pass of an embedding lookup with many repeated ids (a GLUE batch padded to 128 is mostly [PAD]):
XLA's scatter-add against the alternatives, in milliseconds (median of 20).

    python bench/embedding_backward.py [--vocab 28996] [--dim 768] [--tokens 32768] [--repeated 0.9]

`--repeated` of the ids are one id (the padding), the rest uniform over the vocabulary.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def scatter_add(ids, grads, vocab):
    return jnp.zeros((vocab, grads.shape[1]), jnp.float32).at[ids].add(grads.astype(jnp.float32))


def sorted_segment_sum(ids, grads, vocab):
    order = jnp.argsort(ids)
    return jax.ops.segment_sum(grads[order].astype(jnp.float32), ids[order], vocab, indices_are_sorted=True)


def one_hot_matmul(ids, grads, vocab):
    return jnp.einsum("nv,nd->vd", jax.nn.one_hot(ids, vocab, dtype=grads.dtype), grads,
                      preferred_element_type=jnp.float32)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=28996)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--repeated", type=float, default=0.9)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    ids = np.where(rng.random(args.tokens) < args.repeated, 0, rng.integers(0, args.vocab, args.tokens))
    ids = jnp.asarray(ids, jnp.int32)
    grads = jnp.asarray(rng.normal(size=(args.tokens, args.dim)), jnp.bfloat16)
    reference = None
    for name, fn in (("scatter_add", scatter_add), ("sorted_segment_sum", sorted_segment_sum),
                     ("one_hot_matmul", one_hot_matmul)):  # fmt: skip
        jitted = jax.jit(fn, static_argnums=2)
        out = jax.block_until_ready(jitted(ids, grads, args.vocab))
        reference = out if reference is None else reference
        times = []
        for _ in range(20):
            start = time.perf_counter()
            jax.block_until_ready(jitted(ids, grads, args.vocab))
            times.append(time.perf_counter() - start)
        error = float(jnp.max(jnp.abs(out - reference)) / jnp.max(jnp.abs(reference)))
        print(f"{name:20s} {1e3 * np.median(times):8.2f} ms   max rel. difference {error:.1e}", flush=True)


if __name__ == "__main__":
    main()
