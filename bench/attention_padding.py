"""Which token counts cuDNN's fused attention accepts (forward + backward), and its time at each, on one GPU.

    python bench/attention_padding.py [--batch 256] [--heads 6] [--head-dim 64] [--tokens 197]

`layers._cudnn_attention` pads the token axis (padding masked as keys) because cuDNN's backward refuses some
lengths. This tries the true length and paddings to multiples of 8, 16, 32 and 64, in bf16, and prints for each
whether forward + backward compile and run, and the milliseconds per call.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp


def attention_loss(q: jax.Array, k: jax.Array, v: jax.Array, tokens: int) -> jax.Array:
    lengths = jnp.full((q.shape[0],), tokens, jnp.int32)
    out = jax.nn.dot_product_attention(
        q, k, v, query_seq_lengths=lengths, key_value_seq_lengths=lengths, implementation="cudnn"
    )
    return jnp.sum(out[:, :tokens].astype(jnp.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=197)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}")
    step = jax.jit(jax.value_and_grad(attention_loss, argnums=(0, 1, 2)), static_argnums=3)
    for multiple in (1, 8, 16, 32, 64):
        padded = -(-args.tokens // multiple) * multiple
        shape = (args.batch, padded, args.heads, args.head_dim)
        q, k, v = jax.random.normal(jax.random.key(0), (3, *shape), jnp.bfloat16)
        try:
            jax.block_until_ready(step(q, k, v, args.tokens))
        except Exception as error:  # noqa: BLE001 - report cuDNN's refusal and go on
            print(f"{args.tokens} tokens padded to {padded}: refused ({str(error).splitlines()[0][:160]})")
            continue
        start = time.perf_counter()
        for _ in range(args.repeats):
            out = step(q, k, v, args.tokens)
        jax.block_until_ready(out)
        milliseconds = 1e3 * (time.perf_counter() - start) / args.repeats
        print(f"{args.tokens} tokens padded to {padded}: {milliseconds:.3f} ms forward + backward")


if __name__ == "__main__":
    main()
