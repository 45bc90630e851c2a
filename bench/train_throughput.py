"""Steady-state training and evaluation throughput of sot_jax models on one accelerator.

    python bench/train_throughput.py [--models sot_tiny,sot_small,...] [--batch 256] [--json OUT.json]

For each model (each in a fresh process, so that peak memory is its own): the full jitted train step of
`sot_jax.train` (on-device random erasing and Mixup/CutMix, forward, backward, AdamW, EMA) in bfloat16 with float32
parameters, on synthetic uint8 images already on the device; eval images/s of the bf16 forward; peak device
memory; and model-FLOPs utilization: XLA's FLOP count of the compiled step divided by the step time and by the
dense bf16 matmul rate measured on the same device in the same run.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

MODELS = ["sot_tiny", "sot_small", "sot_base", "deit_small_sot", "deit_small_patch16_224", "hvt_s_1", "lvvit_s"]


def timed(fn, repeats: int) -> float:
    """Seconds per call of fn, after two warm-up calls; fn returns an array, waited on only at the end."""
    jax.block_until_ready(fn())
    jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def matmul_peak_tflops() -> float:
    """The dense bf16 matmul rate of this device (random 8192² operands, as SPEC §8 measured it)."""
    a, b = jax.random.normal(jax.random.key(0), (2, 8192, 8192), jnp.bfloat16)
    matmul = jax.jit(lambda a, b: a @ b)
    return 2 * 8192**3 / timed(lambda: matmul(a, b), 50) / 1e12


def jaxpr_flops(jaxpr) -> float:
    """Matmul and convolution FLOPs of a (closed) jaxpr, recursing into nested jaxprs (jit, custom VJPs, scans).

    Counted from shapes, so it does not depend on a backend's cost model; fused attention kernels (cuDNN) that
    appear as custom calls are not counted (a few percent of a ViT's FLOPs at 197 tokens)."""
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
            lhs, out = eqn.invars[0].aval, eqn.outvars[0].aval
            contracted = np.prod([lhs.shape[d] for d in lhs_contract])
            total += 2.0 * np.prod(out.shape) * contracted
        elif eqn.primitive.name == "conv_general_dilated":
            rhs, out = eqn.invars[1].aval, eqn.outvars[0].aval
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature dim, in feature dim, spatial...)
            kernel = np.prod([rhs.shape[d] for d in spec[1:]])
            total += 2.0 * np.prod(out.shape) * kernel
        multiplier = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", None)
                if inner is not None and hasattr(inner, "eqns"):
                    total += multiplier * jaxpr_flops(inner)
                elif hasattr(sub, "eqns"):
                    total += multiplier * jaxpr_flops(sub)
    return total


def bench_one(name: str, batch: int, steps: int, overrides: dict) -> dict:
    from sot_jax import recipes, train

    config = recipes.base_config()
    config.model.name = name
    config.model.overrides.update(overrides)
    config.batch_size = batch
    model = train.build_model(config, num_classes=1000)
    images = jnp.zeros((1, 224, 224, 3))
    variables = jax.jit(lambda: model.init({"params": jax.random.key(0)}, images))()
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    tx, schedule = train.make_optimizer(config, params, total_steps=10_000)
    copy = functools.partial(jax.tree.map, jnp.copy)  # the EMA needs its own buffers: the step donates both
    state = train.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        ema_params=copy(params),
        ema_batch_stats=copy(batch_stats),
        rng=jax.random.key_data(jax.random.key(1)),
    )
    rng = np.random.default_rng(0)
    data = {
        "image": jnp.asarray(rng.integers(0, 256, size=(batch, 224, 224, 3), dtype=np.uint8)),
        "label": jnp.asarray(rng.integers(0, 1000, size=(batch,), dtype=np.int32)),
    }
    step = jax.jit(
        functools.partial(train.train_step, model=model, tx=tx, schedule=schedule, config=config), donate_argnums=(0,)
    )
    start = time.perf_counter()
    lowered = step.lower(state, data)
    compiled = lowered.compile()
    compile_seconds = time.perf_counter() - start
    try:
        flops = jaxpr_flops(jax.make_jaxpr(step)(state, data).jaxpr)
    except Exception:  # FLOP counting must never cost the measurement
        flops = 0.0
    holder = {"state": state}

    def train_call():
        holder["state"], metrics = compiled(holder["state"], data)
        return metrics["loss"]

    step_seconds = timed(train_call, steps)
    forward = jax.jit(lambda p, b, x: model.apply({"params": p, "batch_stats": b}, x.astype(jnp.float32)))
    eval_images = jnp.asarray(rng.normal(size=(batch, 224, 224, 3)), jnp.bfloat16)
    s = holder["state"]
    eval_seconds = timed(lambda: forward(s.params, s.batch_stats, eval_images), steps)
    memory = jax.devices()[0].memory_stats() or {}
    return {
        "model": name,
        "batch": batch,
        "train_img_s": batch / step_seconds,
        "eval_img_s": batch / eval_seconds,
        "step_ms": 1e3 * step_seconds,
        "step_tflop": flops / 1e12,
        "achieved_tflops": flops / step_seconds / 1e12,
        "peak_gib": memory.get("peak_bytes_in_use", 0) / 2**30,
        "compile_s": compile_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--overrides", default="{}", help='JSON create_model keywords, e.g. \'{"svpn": "gram_eigh"}\'')
    parser.add_argument("--one", action="store_true", help="(internal) run one model in this process")
    parser.add_argument("--peak", action="store_true", help="(internal) measure the matmul peak in this process")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    overrides = json.loads(args.overrides)
    if args.one:
        print(json.dumps(bench_one(args.models, args.batch, args.steps, overrides)), flush=True)
        return
    if args.peak:
        print(json.dumps({"peak": matmul_peak_tflops(), "device": jax.devices()[0].device_kind}), flush=True)
        return

    # This process never touches the accelerator: JAX would reserve most of its memory for the whole run.
    probe = json.loads(
        subprocess.run([sys.executable, __file__, "--peak"], capture_output=True, text=True, check=True).stdout
    )
    peak, device = probe["peak"], probe["device"]
    print(f"device {device}, jax {jax.__version__}, bf16 matmul peak {peak:.0f} TFLOP/s")
    results = []
    for name in args.models.split(","):
        command = [sys.executable, __file__, "--one", "--models", name, "--batch", str(args.batch),
                   "--steps", str(args.steps), "--overrides", args.overrides]  # fmt: skip
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode != 0:
            tail = run.stderr.strip().splitlines()[-1:] or ["?"]
            print(f"{name}: failed ({tail[0][:200]})", flush=True)
            continue
        row = json.loads(run.stdout.strip().splitlines()[-1])
        row["mfu"] = row["achieved_tflops"] / peak
        results.append(row)
        print(
            f"{name}: train {row['train_img_s']:.0f} img/s ({row['step_ms']:.1f} ms), eval {row['eval_img_s']:.0f} "
            f"img/s, {row['achieved_tflops']:.0f} TFLOP/s = {100 * row['mfu']:.1f}% MFU, peak {row['peak_gib']:.1f} "
            f"GiB, compile {row['compile_s']:.0f} s",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "jax": jax.__version__, "peak_tflops": peak,
                       "overrides": overrides, "results": results}, f, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
