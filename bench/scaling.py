"""Multi-GPU scaling of the train step: images/s per device on 1, 2, 4, … devices of one host, data-parallel
(replicated parameters) and FSDP (parameters and optimizer state sharded), per-device batch fixed.

    python bench/scaling.py [--models sot_small deit_small_patch16_224] [--devices 1,2,4] [--shardings data,fsdp]
        [--batch-per-device 256] [--steps 20] [--json OUT.json]

The step is `sot_jax.train.jit_train_step`, exactly what `sot_jax.main` runs (the same shardings, donation and
bf16), on synthetic images already on the devices.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from train_throughput import synthetic_batch, timed

from sot_jax import recipes, train


def images_per_second(name: str, num_devices: int, sharding: str, batch_per_device: int, steps: int) -> float:
    config = recipes.base_config()
    config.model.name = name
    config.sharding = sharding
    config.batch_size = batch_per_device * num_devices
    mesh = Mesh(jax.devices()[:num_devices], ("data",))
    model = train.build_model(config, num_classes=1000)
    init = functools.partial(train.initial_state, model, config, 10_000)
    shardings = train.state_shardings(jax.eval_shape(init), mesh, sharding)
    state = jax.jit(init, out_shardings=shardings)()
    tx, schedule = train.make_optimizer(config, state.params, total_steps=10_000)
    batch_sharding = NamedSharding(mesh, P("data"))
    data = jax.device_put(synthetic_batch(config.batch_size), batch_sharding)
    step = train.jit_train_step(model, tx, schedule, config, shardings, batch_sharding)
    holder = {"state": state}

    def call():
        holder["state"], metrics = step(holder["state"], data)
        return metrics["loss"]

    return config.batch_size / timed(call, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sot_small"])
    parser.add_argument("--devices", default="1,2,4", help="device counts, each at most jax.device_count()")
    parser.add_argument("--shardings", default="data,fsdp")
    parser.add_argument("--batch-per-device", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    counts = [int(n) for n in args.devices.split(",")]
    if max(counts) > jax.device_count():
        parser.error(f"--devices asks for {max(counts)} devices; this host has {jax.device_count()}")
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}", flush=True)
    results = []
    for model, sharding, n in itertools.product(args.models, args.shardings.split(","), counts):
        rate = images_per_second(model, n, sharding, args.batch_per_device, args.steps)
        single = next(
            (r["img_s"] for r in results if (r["model"], r["sharding"], r["devices"]) == (model, sharding, 1)), None
        )
        row = {"model": model, "sharding": sharding, "devices": n, "img_s": rate, "img_s_per_device": rate / n}
        row["efficiency"] = rate / (n * single) if single else None
        results.append(row)
        efficiency = f", scaling efficiency {100 * row['efficiency']:.1f}%" if single else ""
        print(f"{model} {sharding} x{n}: {rate:.0f} img/s, {rate / n:.0f} per device{efficiency}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
