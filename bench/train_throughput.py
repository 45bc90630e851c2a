"""Steady-state training and evaluation throughput of sot_jax models on one accelerator.

    python bench/train_throughput.py [sot_tiny sot_small:head=cls ...] [--batch 256] [--max-batch] [--json OUT.json]
    python bench/train_throughput.py sot_small --profile /tmp/trace     # where the step's GPU time goes

For each model (each in a fresh process, so that peak memory is its own): the full jitted train step of
`sot_jax.train` (on-device random erasing and Mixup/CutMix, forward, backward, AdamW, EMA) in bfloat16 with float32
parameters, on synthetic uint8 images already on the device; eval images/s of the bf16 forward; peak device
memory; and model-FLOPs utilization: the matmul and convolution FLOPs of the step's jaxpr divided by the step
time and by the dense bf16 matmul rate measured on the same device in the same run.
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import gzip
import json
import re
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sot_jax import xla_defaults

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


def synthetic_batch(batch: int) -> dict[str, np.ndarray]:
    """Random uint8 224² images and ImageNet labels, as the input pipeline delivers them."""
    rng = np.random.default_rng(0)
    return {
        "image": rng.integers(0, 256, size=(batch, 224, 224, 3), dtype=np.uint8),
        "label": rng.integers(0, 1000, size=(batch,), dtype=np.int32),
    }


def matmul_peak_tflops() -> float:
    """The dense bf16 matmul rate of this device (random 8192² operands, as SPEC §8 measured it)."""
    a, b = jax.random.normal(jax.random.key(0), (2, 8192, 8192), jnp.bfloat16)
    matmul = jax.jit(lambda a, b: a @ b)
    return 2 * 8192**3 / timed(lambda: matmul(a, b), 50) / 1e12


def jaxpr_flops(jaxpr) -> float:
    """Matmul and convolution FLOPs of a (closed) jaxpr, recursing into nested jaxprs (jit, custom VJPs, scans).

    Counted from shapes, so it does not depend on a backend's cost model. Fused attention (cuDNN) is a custom
    call that this cannot see: count a step whose model uses attention="xla" (the same math)."""
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
            # An input gradient of a strided convolution dilates its input: the inserted zeros are no work.
            total += 2.0 * np.prod(out.shape) * kernel / np.prod(eqn.params["lhs_dilation"])
        multiplier = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", None)
                if inner is not None and hasattr(inner, "eqns"):
                    total += multiplier * jaxpr_flops(inner)
                elif hasattr(sub, "eqns"):
                    total += multiplier * jaxpr_flops(sub)
    return total


def parse_model(spec: str) -> tuple[str, dict]:
    """'sot_small:head=cls,svpn=svd' -> ('sot_small', {'head': 'cls', 'svpn': 'svd'}) (values parsed as JSON when
    they are JSON)."""
    name, _, rest = spec.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return name, overrides


def bench_one(spec: str, batch: int, steps: int, profile_dir: str | None, batch_augment: bool, evaluate: bool) -> dict:
    from sot_jax import experiment, recipes, train

    name, overrides = parse_model(spec)
    flat_optimizer = overrides.pop("flat_optimizer", False)
    config = recipes.base_config()
    config.model.name = name
    config.model.update(overrides)
    config.batch_size = batch
    if not batch_augment:
        config.aug.random_erasing = config.aug.mixup = config.aug.cutmix = 0.0
    trainer = experiment.build_trainer(config, num_classes=1000, total_steps=10_000)
    model, tx, schedule, state = trainer.model, trainer.tx, trainer.schedule, trainer.initial_state()
    if flat_optimizer:  # AdamW over one flat buffer (decay on every parameter: the same elementwise work)
        o = config.optim
        tx = optax.flatten(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay))
        state = state.replace(opt_state=jax.jit(tx.init)(state.params))
    data = jax.tree.map(jnp.asarray, synthetic_batch(batch))

    def step_of(variant):  # the timed model, or its XLA-attention twin whose jaxpr shows every FLOP
        return functools.partial(train.train_step, model=variant, tx=tx, schedule=schedule, options=trainer.options)

    step = jax.jit(step_of(model), donate_argnums=(0,))
    start = time.perf_counter()
    compiled = step.lower(state, data).compile()
    compile_seconds = time.perf_counter() - start
    flops = jaxpr_flops(jax.make_jaxpr(step_of(model.clone(attention="xla")))(state, data).jaxpr)
    holder = {"state": state}

    def train_call():
        holder["state"], metrics = compiled(holder["state"], data)
        return metrics["loss"]

    step_seconds = timed(train_call, steps)
    memory = jax.devices()[0].memory_stats() or {}
    result = {
        "model": spec,
        "batch": batch,
        "train_img_s": batch / step_seconds,
        "step_ms": 1e3 * step_seconds,
        "step_tflop": flops / 1e12,
        "achieved_tflops": flops / step_seconds / 1e12,
        "peak_gib": memory.get("peak_bytes_in_use", 0) / 2**30,
        "capacity_gib": memory.get("bytes_limit", 0) / 2**30,
        "state_gib": sum(x.nbytes for x in jax.tree.leaves(holder["state"])) / 2**30,
        "compile_s": compile_seconds,
    }
    if evaluate:
        forward = jax.jit(lambda p, b, x: model.apply({"params": p, "batch_stats": b}, x.astype(jnp.float32)))
        eval_images = jnp.asarray(np.random.default_rng(0).normal(size=(batch, 224, 224, 3)), jnp.bfloat16)
        s = holder["state"]
        result["eval_img_s"] = batch / timed(lambda: forward(s.params, s.batch_stats, eval_images), steps)
    if profile_dir:
        with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
            jax.block_until_ready([train_call() for _ in range(3)])
        result["profile"] = kernel_time_by_component(profile_dir, compiled.as_text(), steps=3)
    return result


# Where the time goes: the GPU kernels of a trace, attributed to the model part named in their HLO metadata.
COMPONENTS = [
    ("optimizer+EMA", ("optax", "adam", "ema", "global_norm")),
    ("augment", ("random_erasing", "mixup", "normalize", "random_bits", "threefry")),
    ("head", ("classifier", "representation")),
    ("stem", ("stem", "patch_embed")),
    ("attention", ("attn",)),
    ("mlp", ("mlp",)),
    ("norm", ("norm",)),
]


def gpu_kernels(profile_dir: str) -> dict[str, list[dict]]:
    """The GPU kernel events (name, ts and dur in µs, args.hlo_op) of the newest trace under profile_dir, by device
    name ('/device:GPU:0', ...)."""
    path = sorted(glob.glob(f"{profile_dir}/**/perfetto_trace.json.gz", recursive=True))[-1]
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    devices = {
        e["pid"]: e["args"]["name"] for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name" and "GPU" in e["args"].get("name", "")
    }  # fmt: skip
    kernels = collections.defaultdict(list)
    for event in events:
        if event.get("ph") == "X" and event.get("pid") in devices:
            kernels[devices[event["pid"]]].append(event)
    return dict(sorted(kernels.items()))


def kernel_time_by_component(profile_dir: str, hlo_text: str, steps: int) -> dict:
    """Milliseconds per step of GPU kernel time, by model component and by kernel (the top 15)."""
    op_names = dict(re.findall(r"%([\w.\-]+) = .*?op_name=\"([^\"]*)\"", hlo_text))
    by_component, by_kernel = collections.Counter(), collections.Counter()
    for event in (event for kernels in gpu_kernels(profile_dir).values() for event in kernels):
        hlo_op = event.get("args", {}).get("hlo_op", "")
        op_name = op_names.get(hlo_op, hlo_op).lower()
        component = next((c for c, keys in COMPONENTS if any(k in op_name for k in keys)), "other")
        if component in ("attention", "mlp", "norm", "head", "stem"):
            component += " (backward)" if "transpose" in op_name else " (forward)"
        by_component[component] += event["dur"] / 1e3 / steps
        by_kernel[f"{event['name'][:60]} [{hlo_op[:40]}]"] += event["dur"] / 1e3 / steps
    return {"by_component_ms": dict(by_component.most_common()), "top_kernels_ms": dict(by_kernel.most_common(15))}


def run_child(
    spec: str, args: argparse.Namespace, batch: int, steps: int, profile_dir: str | None, evaluate: bool = True
) -> dict | None:
    command = [sys.executable, __file__, "--one", spec, "--batch", str(batch), "--steps", str(steps)]
    command += [] if evaluate else ["--no-eval"]
    command += ["--profile", profile_dir] if profile_dir else []
    command += ["--no-batch-augment"] if args.no_batch_augment else []
    command += ["--no-xla-defaults"] if args.no_xla_defaults else []
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        errors = [line for line in run.stderr.splitlines() if re.match(r"^[\w.]*(Error|Exception)\b", line)]
        print(f"{spec} at batch {batch}: failed ({(errors or ['?'])[-1][:400]})", flush=True)
        return None
    return json.loads(run.stdout.strip().splitlines()[-1])


def largest_batch(spec: str, args: argparse.Namespace, row: dict) -> int | None:
    """The largest batch (a multiple of 32) that runs, as `bench/torch_reference.py --max-batch` finds PyTorch's.

    First guess: peak memory extrapolated linearly from the measured row to 97% of the memory pool; then up by a
    quarter while batches run, then bisection between the largest that ran and the smallest that failed. Measured
    peaks are no guide past the first guess: near the pool's limit XLA schedules the step to fit (sot_small peaked
    at 98-99 GiB at every batch from 1,088 to 1,472). Each try compiles the step anew: 3-4 minutes for sot_small at
    batches above 1,000, so a direct `--batch N` row is the cheaper check of one batch."""
    per_image = (row["peak_gib"] - row["state_gib"]) / row["batch"]
    guess = int((0.97 * row["capacity_gib"] - row["state_gib"]) / per_image) // 32 * 32
    batch, ran, failed = max(guess, row["batch"] + 32), row["batch"], None
    while failed is None or failed - ran > 32:
        tried = run_child(spec, args, batch, 3, None, evaluate=False)
        if tried is None:
            failed = batch
        else:
            ran = batch
            print(f"{spec} at batch {batch}: ran, {tried['train_img_s']:.0f} img/s, peak {tried['peak_gib']:.1f} GiB")
        batch = ran * 5 // 4 // 32 * 32 if failed is None else (ran + failed) // 64 * 32
    return ran if ran > row["batch"] else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=MODELS, help="names, optionally with create_model overrides: "
                        "sot_small:head=cls or sot_small:svpn=svd,svpn_alpha=0.5; flat_optimizer=true: AdamW "
                        "under optax.flatten")  # fmt: skip
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-batch-augment", action="store_true", help="no erasing/Mixup/CutMix in the step")
    parser.add_argument("--max-batch", action="store_true", help="also find the largest batch that fits")
    parser.add_argument("--profile", help="trace 3 steps per model under this folder and attribute kernel time")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run this one model in this process
    parser.add_argument("--no-eval", action="store_true", help=argparse.SUPPRESS)  # internal: train step only
    parser.add_argument("--peak", action="store_true", help=argparse.SUPPRESS)  # internal: measure the matmul peak
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--no-xla-defaults", action="store_true", help="leave XLA_FLAGS as given, without "
                        "sot_jax.xla_defaults (the 'before' column of BENCHMARKS.md's XLA defaults table)")  # fmt: skip
    args = parser.parse_args()
    if not args.no_xla_defaults:
        xla_defaults.apply()  # as sot_jax.main does; before the first computation, when XLA reads its flags
    if args.one:
        batch_augment, evaluate = not args.no_batch_augment, not args.no_eval
        print(json.dumps(bench_one(args.one, args.batch, args.steps, args.profile, batch_augment, evaluate)))
        return
    if args.peak:
        print(json.dumps({"peak": matmul_peak_tflops(), "device": jax.devices()[0].device_kind}), flush=True)
        return

    # This process never touches the accelerator: JAX would reserve most of its memory for the whole run.
    probe = json.loads(
        subprocess.run([sys.executable, __file__, "--peak"], capture_output=True, text=True, check=True).stdout
    )
    peak, device = probe["peak"], probe["device"]
    print(f"device {device}, jax {jax.__version__}, bf16 matmul peak {peak:.0f} TFLOP/s", flush=True)
    results = []
    for index, spec in enumerate(args.models):
        profile_dir = f"{args.profile}/{index}" if args.profile else None
        row = run_child(spec, args, args.batch, args.steps, profile_dir)
        if row is None:
            continue
        row["mfu"] = row["achieved_tflops"] / peak
        if args.max_batch:
            row["max_batch"] = largest_batch(spec, args, row)
        results.append(row)
        print(
            f"{spec}: train {row['train_img_s']:.0f} img/s ({row['step_ms']:.1f} ms), eval {row['eval_img_s']:.0f} "
            f"img/s, {row['achieved_tflops']:.0f} TFLOP/s = {100 * row['mfu']:.1f}% MFU, peak {row['peak_gib']:.1f} "
            f"GiB, compile {row['compile_s']:.0f} s" + (f", batch {row.get('max_batch')} fits" * args.max_batch),
            flush=True,
        )
        if "profile" in row:
            print(json.dumps(row["profile"], indent=1), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "jax": jax.__version__, "peak_tflops": peak, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
