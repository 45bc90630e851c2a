"""SoT's DenseNet token embedding alone: forward and forward + backward (gradients of the parameters, BatchNorm in
training mode) at batch 256 in bfloat16, as `sot_jax.models.sot.DenseNetStem` computes it ("fused": the first
conv and the max-pool as one space-to-depth convolution) and as the official code writes it ("plain": Conv3x3 →
MaxPool(3, s2) on the 224² activation). Same parameters, same values.

    PYTHONPATH=.:bench python bench/stem.py [--batch 256] [--variants fused] [--profile DIR]

With --profile, three fwd + bwd calls of each are traced and the GPU kernel time is listed by kernel (run with
XLA_FLAGS=--xla_gpu_enable_command_buffer= so that kernels are not hidden inside CUDA graphs).
"""

from __future__ import annotations

import argparse
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
from train_throughput import kernel_time_by_component, timed

from sot_jax.models import sot
from sot_jax.models.layers import conv


class PlainStem(sot.DenseNetStem):
    """The official order of operations: the full-resolution conv output, then the max-pool."""

    def conv_and_pool(self, x: jax.Array) -> jax.Array:
        x = conv(sot.TOKEN_DIM, (3, 3), "stem_0", self.dtype, padding=((1, 1), (1, 1)))(x)
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


STEMS = {"plain": PlainStem, "fused": sot.DenseNetStem}


def measure(stem: type[sot.DenseNetStem], images: jax.Array, embed_dim: int, profile_dir: str | None) -> dict:
    module = stem(embed_dim, jnp.bfloat16)
    variables = module.init({"params": jax.random.key(0)}, images[:2], True)
    # The images are an argument, not a constant that XLA would fold at compile time.
    state = (variables["params"], variables["batch_stats"], images)

    def forward(params, batch_stats, images):
        out, _ = module.apply({"params": params, "batch_stats": batch_stats}, images, True, mutable=["batch_stats"])
        return out

    def loss(params, batch_stats, images):
        return jnp.sum(forward(params, batch_stats, images).astype(jnp.float32) ** 2)

    forward_fn, backward_fn = jax.jit(forward), jax.jit(jax.grad(loss))
    result = {
        "forward_ms": 1e3 * timed(lambda: forward_fn(*state), 10),
        "forward_backward_ms": 1e3 * timed(lambda: backward_fn(*state), 10),
    }
    if profile_dir:
        with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
            jax.block_until_ready([backward_fn(*state) for _ in range(3)])
        hlo = backward_fn.lower(*state).compile().as_text()
        result["top_kernels_ms"] = kernel_time_by_component(profile_dir, hlo, steps=3)["top_kernels_ms"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--embed-dim", type=int, default=384, help="384 is SoT-Small's")
    parser.add_argument("--variants", nargs="+", choices=STEMS, default=list(STEMS))
    parser.add_argument("--profile", help="trace under this folder and list the top kernels")
    args = parser.parse_args()
    images = jax.random.normal(jax.random.key(0), (args.batch, 224, 224, 3), jnp.bfloat16)
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}, batch {args.batch}", flush=True)
    for label in args.variants:
        profile_dir = args.profile and f"{args.profile}/{label}"
        result = measure(STEMS[label], images, args.embed_dim, profile_dir)
        print(f"{label}: " + json.dumps(result, indent=1), flush=True)


if __name__ == "__main__":
    main()
