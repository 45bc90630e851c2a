"""GPU check and timing of the fused dense-layer Pallas kernels (bench/dense_kernel_pallas.py) against XLA.

1. Values and gradients (dx, dw1, dw2) of `dense_layer` vs `dense_layer_reference` for each stage's first and last
   layer widths, in bf16 and float32 (max |Δ| / max |reference|), plus a 6-layer `dense_block` in bf16. bf16 rows
   also give each implementation's error against the float32 reference, which is the fair yardstick.
2. Forward and forward + backward time (jitted, bf16, batch 256) of one dense layer (first and last of a stage)
   and of a whole 6-layer block, for XLA, the Pallas pair, and the Pallas forward with the XLA backward.

    PYTHONPATH=.:bench python bench/dense_kernel.py [--batch 256] [--check-batch 4] [--repeats 20] [--skip-check]

A failure (e.g. a Triton compile error) is printed on its row and the run goes on.
"""

from __future__ import annotations

import argparse
import functools
import traceback

import dense_kernel_pallas as dk
import jax
import jax.numpy as jnp
import numpy as np
from train_throughput import timed

# (name, H = W, input channels) of SoT's three dense stages at 224²: after the stem's max-pool (112², 64 channels)
# and after each transition (128 channels, half the resolution).
STAGES = (("stage1", 112, 64), ("stage2", 56, 128), ("stage3", 28, 128))
LAYERS = 6
IMPLS = {
    "xla": dict(impl="xla"),
    "pallas": dict(impl="pallas"),
    "pallas+xla_bwd": dict(impl="pallas", backward="xla"),
}


def make_inputs(batch: int, size: int, channels: int, layers: int, dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, size, size, channels), np.float32), dtype)
    w1s = [
        jnp.asarray(rng.standard_normal((channels + 16 * i, 32), np.float32) / np.sqrt(channels + 16 * i), dtype)
        for i in range(layers)
    ]
    w2s = [jnp.asarray(rng.standard_normal((3, 3, 32, 16), np.float32) / np.sqrt(288), dtype) for _ in range(layers)]
    return x, w1s, w2s


def value_and_vjp(fn):
    """Jitted (x, w1s, w2s) -> (y, grads) with a fixed random cotangent."""

    def run(x, w1s, w2s):
        y, vjp = jax.vjp(fn, x, w1s, w2s)
        dy = jax.random.normal(jax.random.key(1), y.shape, jnp.float32).astype(y.dtype)
        return y, vjp(dy)

    return jax.jit(run)


def layer_fn(impl: str, **kwargs):
    if impl == "xla":
        return lambda x, w1s, w2s: dk.dense_layer_reference(x, w1s[0], w2s[0])
    return lambda x, w1s, w2s: dk.dense_layer(x, w1s[0], w2s[0], **kwargs)


def block_fn(impl: str, **kwargs):
    return lambda x, w1s, w2s: dk.dense_block(x, w1s, w2s, impl=impl, **kwargs)


def relative_errors(got, want) -> list[float]:
    return [
        float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))) / jnp.max(jnp.abs(b.astype(jnp.float32))))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    ]


def format_errors(errors: list[float], block: bool) -> str:
    if block:  # y, dx, then all dw1s and all dw2s: report the worst of each kind
        n = (len(errors) - 2) // 2
        errors = [errors[0], errors[1], max(errors[2 : 2 + n]), max(errors[2 + n :])]
    return "  ".join(f"{name}={e:.1e}" for name, e in zip(("y", "dx", "dw1", "dw2"), errors, strict=True))


def check(batch: int) -> None:
    print(f"\n== values and gradients: max|Δ|/max|ref| (batch {batch}) ==")
    cases = [(name, size, c0 + 16 * i, 1) for name, size, c0 in STAGES for i in (0, LAYERS - 1)]
    cases.append((*STAGES[-1], LAYERS))
    for name, size, channels, layers in cases:
        what = f"{name} {size}x{size} C={channels}" + (f" block x{layers}" if layers > 1 else "")
        make = block_fn if layers > 1 else layer_fn
        try:
            x, w1s, w2s = make_inputs(batch, size, channels, layers, jnp.float32)
            with jax.default_matmul_precision("highest"):
                truth = value_and_vjp(make("xla"))(x, w1s, w2s)
            got32 = value_and_vjp(make("pallas"))(x, w1s, w2s)
            print(f"{what:32s} f32  pallas vs xla(highest): {format_errors(relative_errors(got32, truth), layers > 1)}")
            args16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), (x, w1s, w2s))
            xla16 = value_and_vjp(make("xla"))(*args16)
            got16 = value_and_vjp(make("pallas"))(*args16)
            print(f"{what:32s} bf16 pallas vs xla bf16:   {format_errors(relative_errors(got16, xla16), layers > 1)}")
            print(f"{what:32s} bf16 pallas vs f32 truth:  {format_errors(relative_errors(got16, truth), layers > 1)}")
            print(f"{what:32s} bf16 xla    vs f32 truth:  {format_errors(relative_errors(xla16, truth), layers > 1)}")
        except Exception:  # report and go on to the next shape
            print(f"{what:32s} FAILED\n{traceback.format_exc(limit=3)}")


def bench(batch: int, repeats: int) -> None:
    print(f"\n== time per call, ms (bf16, batch {batch}, {repeats} repeats) ==")
    print(f"{'what':34s} {'impl':16s} {'fwd':>8s} {'fwd+bwd':>8s}")
    for name, size, c0 in STAGES:
        rows = [(f"{name} {size}x{size} layer C={c}", layer_fn, c, 1) for c in (c0, c0 + 16 * (LAYERS - 1))]
        rows.append((f"{name} {size}x{size} block C={c0}->{c0 + 16 * LAYERS}", block_fn, c0, LAYERS))
        for what, make, channels, layers in rows:
            x, w1s, w2s = make_inputs(batch, size, channels, layers, jnp.bfloat16)
            base = None
            for impl_name, kwargs in IMPLS.items():
                kwargs = dict(kwargs)
                impl = kwargs.pop("impl")
                fn = make(impl, **kwargs)
                try:
                    forward = jax.jit(fn)
                    both = value_and_vjp(fn)
                    fwd_ms = 1e3 * timed(functools.partial(forward, x, w1s, w2s), repeats)
                    both_ms = 1e3 * timed(functools.partial(both, x, w1s, w2s), repeats)
                except Exception as error:  # report and go on
                    print(f"{what:34s} {impl_name:16s} FAILED: {type(error).__name__}: {str(error)[:300]}")
                    continue
                base = base or (fwd_ms, both_ms)
                speedup = f"  ({base[0] / fwd_ms:.2f}x, {base[1] / both_ms:.2f}x vs xla)" if impl != "xla" else ""
                print(f"{what:34s} {impl_name:16s} {fwd_ms:8.3f} {both_ms:8.3f}{speedup}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--check-batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip-check", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}")
    if not args.skip_check:
        check(args.check_batch)
    if not args.skip_bench:
        bench(args.batch, args.repeats)


if __name__ == "__main__":
    main()
