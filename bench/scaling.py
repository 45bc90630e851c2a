"""Multi-GPU scaling of the train step: images/s per device on 1, 2, 4, … devices of one host, data-parallel
(replicated parameters) and FSDP (parameters and optimizer state sharded), per-device batch fixed.

    python bench/scaling.py [--models sot_small deit_small_patch16_224] [--devices 1,2,4] [--shardings data,fsdp]
        [--batch-per-device 256] [--steps 20] [--profile DIR] [--json OUT.json]

The step is `sot_jax.train.jit_train_step`, exactly what `sot_jax.main` runs (the same shardings, donation and
bf16), on synthetic images already on the devices. `--profile DIR` also traces three steps at the largest device
count and says, for the first device, how much of the step its compute kernels and its collectives take, and how
much collective time no compute kernel hides (run with `XLA_FLAGS=--xla_gpu_enable_command_buffer=` so that
kernels are not hidden inside CUDA graphs).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import re

import jax
from jax.sharding import Mesh
from train_throughput import gpu_kernels, synthetic_batch, timed

from sot_jax import experiment, recipes


def images_per_second(
    name: str, num_devices: int, sharding: str, batch_per_device: int, steps: int, profile_dir: str | None = None
) -> tuple[float, dict | None]:
    """Images/s of the whole mesh, and the communication profile of its first device if profile_dir is given."""
    config = recipes.base_config()
    config.model.name = name
    config.sharding = sharding
    config.batch_size = batch_per_device * num_devices
    mesh = Mesh(jax.devices()[:num_devices], ("data",))
    trainer = experiment.build_trainer(config, num_classes=1000, total_steps=10_000, mesh=mesh)
    data = jax.device_put(synthetic_batch(config.batch_size), trainer.batch_sharding)
    step = trainer.jit_step()
    holder = {"state": trainer.initial_state()}

    def call():
        holder["state"], metrics = step(holder["state"], data)
        return metrics["loss"]

    rate = config.batch_size / timed(call, steps)
    if not profile_dir:
        return rate, None
    with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
        jax.block_until_ready([call() for _ in range(3)])
    device, kernels = next(iter(gpu_kernels(profile_dir).items()))
    return rate, {"device": device, **communication_profile(kernels, steps=3)}


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _length(intervals: list[tuple[float, float]]) -> float:
    return sum(end - start for start, end in intervals)


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Total length of the intersection of two sorted, disjoint interval lists."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def communication_profile(kernels: list[dict], steps: int) -> dict:
    """Milliseconds per step on one device: the traced span, time with no kernel running, compute and collective
    (NCCL) kernel time, the collective time that no compute kernel overlaps, and collective time by kind."""
    collectives, computes = [], []
    for kernel in kernels:
        (collectives if "nccl" in kernel["name"].lower() else computes).append(kernel)
    collective, compute = (_union([(k["ts"], k["ts"] + k["dur"]) for k in ks]) for ks in (collectives, computes))
    busy = _union(compute + collective)
    by_kind = collections.Counter()
    for kernel in collectives:
        kind = re.search(r"AllGather|ReduceScatter|AllReduce|SendRecv|Broadcast", kernel["name"])
        by_kind[kind.group(0) if kind else kernel["name"][:40]] += kernel["dur"] / 1e3 / steps
    ms = 1e-3 / steps
    return {
        "span_ms": (busy[-1][1] - busy[0][0]) * ms,
        "idle_ms": (busy[-1][1] - busy[0][0] - _length(busy)) * ms,
        "compute_ms": _length(compute) * ms,
        "collective_ms": _length(collective) * ms,
        "exposed_collective_ms": (_length(collective) - _overlap(collective, compute)) * ms,
        "collective_by_kind_ms": dict(by_kind.most_common()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sot_small"])
    parser.add_argument("--devices", default="1,2,4", help="device counts, each at most jax.device_count()")
    parser.add_argument("--shardings", default="data,fsdp")
    parser.add_argument("--batch-per-device", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--profile", help="trace the largest device count under this folder (communication profile)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    counts = [int(n) for n in args.devices.split(",")]
    if max(counts) > jax.device_count():
        parser.error(f"--devices asks for {max(counts)} devices; this host has {jax.device_count()}")
    if args.profile and jax.default_backend() != "gpu":
        parser.error(f"--profile reads GPU kernel traces; this host's devices are {jax.default_backend()}")
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}", flush=True)
    results = []
    for model, sharding, n in itertools.product(args.models, args.shardings.split(","), counts):
        profile_dir = f"{args.profile}/{model}_{sharding}_{n}" if args.profile and n == max(counts) else None
        rate, profile = images_per_second(model, n, sharding, args.batch_per_device, args.steps, profile_dir)
        single = next(
            (r["img_s"] for r in results if (r["model"], r["sharding"], r["devices"]) == (model, sharding, 1)), None
        )
        row = {"model": model, "sharding": sharding, "devices": n, "img_s": rate, "img_s_per_device": rate / n}
        row["efficiency"] = rate / (n * single) if single else None
        results.append(row)
        efficiency = f", scaling efficiency {100 * row['efficiency']:.1f}%" if single else ""
        print(f"{model} {sharding} x{n}: {rate:.0f} img/s, {rate / n:.0f} per device{efficiency}", flush=True)
        if profile:
            row["profile"] = profile
            print(json.dumps(profile, indent=1), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
