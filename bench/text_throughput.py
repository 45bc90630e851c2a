"""GLUE fine-tuning throughput: sot_jax's BERT-base (SoT text head and HF's pooler head) against HF transformers'
PyTorch `BertForSequenceClassification` (eager and `torch.compile`), in one run on one GPU.

    python bench/text_throughput.py [--batches 32 256] [--steps 20] [--json out.json]
    python bench/text_throughput.py --rows jax:bert_base_sot jax:bert_base_sot:attention_dropout=0 --profile DIR

Each row runs in its own process (its own peak memory): synthetic token ids at sequence length 128, every token
real (no padding), 2 classes, bf16 compute (JAX: `dtype=bfloat16` with float32 parameters; PyTorch: bf16
autocast), AdamW with gradient clipping at 1.0 (the GLUE recipe: configs/sot_glue.py). Reports sequences/s,
median over `--steps` timed steps after warm-up.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

SEQUENCE_LENGTH = 128
ROWS = (("jax", "bert_base_sot"), ("jax", "bert_base"), ("torch", "eager"), ("torch", "compile"))


def synthetic_batch(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "input_ids": rng.integers(1000, 28000, (batch, SEQUENCE_LENGTH)).astype(np.int32),
        "attention_mask": np.ones((batch, SEQUENCE_LENGTH), np.int32),
        "token_type_ids": np.zeros((batch, SEQUENCE_LENGTH), np.int32),
        "label": rng.integers(0, 2, batch).astype(np.int32),
    }


def median_step_seconds(step, steps: int) -> float:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def jax_row(spec: str, batch: int, steps: int, profile_dir: str | None = None) -> dict:
    """`spec` = MODEL[:KEY=VALUE,...] with `config.model` overrides (e.g. bert_base_sot:attention_dropout=0)."""
    import importlib.util

    import jax

    from sot_jax import optim, recipes, sharding, train

    module_spec = importlib.util.spec_from_file_location("sot_glue", "configs/sot_glue.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    model_name, _, options = spec.partition(":")
    config = module.get_config(f"{model_name},cola")
    config.batch_size = batch
    for option in filter(None, options.split(",")):
        key, value = option.split("=")
        config.model[key] = value if key in ("head", "svpn") else (float(value) if "." in value else int(value))
    model = recipes.build_model(config.model, num_classes=2)
    total_steps = 10_000
    abstract = jax.eval_shape(lambda: train.initial_state(model, config, total_steps))
    mesh = sharding.make_mesh()
    shardings = sharding.state_shardings(abstract, mesh, "data")
    state = jax.jit(lambda: train.initial_state(model, config, total_steps), out_shardings=shardings)()
    tx, schedule = optim.make_optimizer(config, abstract.params, total_steps)
    batch_sharding = sharding.batch_sharding(mesh)
    step_fn = train.jit_train_step(model, tx, schedule, config, shardings, batch_sharding)
    data = sharding.global_batch(synthetic_batch(batch), batch_sharding)
    holder = {"state": state}

    def step():
        holder["state"], metrics = step_fn(holder["state"], data)
        jax.block_until_ready(metrics["loss"])

    for _ in range(3):
        step()
    seconds = median_step_seconds(step, steps)
    peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use", 0) / 2**30
    row = {"row": f"jax {spec}", "batch": batch, "seq_per_s": batch / seconds, "peak_GiB": peak}
    if profile_dir:
        row["top_kernels_ms"] = profile(step, step_fn.lower(holder["state"], data).compile().as_text(), profile_dir)
    return row


def profile(step, hlo_text: str, profile_dir: str, steps: int = 3) -> dict:
    """GPU kernel milliseconds per step by the Flax op that emitted them (the top 25), from a trace of `steps`."""
    import collections
    import re

    import jax
    from train_throughput import gpu_kernels

    with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
        for _ in range(steps):
            step()
    op_names = dict(re.findall(r"%([\w.\-]+) = .*?op_name=\"([^\"]*)\"", hlo_text))
    by_op = collections.Counter()
    for event in (event for kernels in gpu_kernels(profile_dir).values() for event in kernels):
        hlo_op = event.get("args", {}).get("hlo_op", "")
        name = re.sub(r"layer_\d+", "layer_*", op_names.get(hlo_op, hlo_op))
        by_op[f"{event['name'][:40]} | {name[-110:]}"] += event["dur"] / 1e3 / steps
    return dict(by_op.most_common(25))


def torch_row(mode: str, batch: int, steps: int) -> dict:
    import torch
    import transformers

    model = transformers.BertForSequenceClassification(transformers.BertConfig(num_labels=2)).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, eps=1e-8, weight_decay=0.0, fused=True)
    data = {k: torch.from_numpy(v.astype(np.int64)).cuda() for k, v in synthetic_batch(batch).items()}
    labels = data.pop("label")

    def forward_backward():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(**data).logits.float(), labels)
        loss.backward()

    forward_backward = torch.compile(forward_backward) if mode == "compile" else forward_backward

    def step():
        forward_backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()

    for _ in range(3):
        step()
    seconds = median_step_seconds(step, steps)
    peak = torch.cuda.max_memory_allocated() / 2**30
    return {"row": f"torch {mode} (HF BertForSequenceClassification)", "batch": batch, "seq_per_s": batch / seconds,
            "peak_GiB": peak}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rows", nargs="+", help="FRAMEWORK:VARIANT rows (default: " + " ".join(
        ":".join(r) for r in ROWS) + ")")
    parser.add_argument("--profile", help="trace the JAX rows under this folder and print their top kernels")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--no-xla-defaults", action="store_true", help="leave XLA_FLAGS as given, without "
                        "sot_jax.xla_defaults (the 'before' column of BENCHMARKS.md's XLA defaults table)")  # fmt: skip
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # internal: framework, variant, batch
    args = parser.parse_args()
    if not args.no_xla_defaults:
        from sot_jax import xla_defaults

        xla_defaults.apply()  # as sot_jax.main does, before JAX starts its backend (PyTorch ignores XLA_FLAGS)
    if args.one:
        framework, variant, batch = args.one
        if framework == "jax":
            row = jax_row(variant, int(batch), args.steps, args.profile and f"{args.profile}/{variant}_{batch}")
        else:
            row = torch_row(variant, int(batch), args.steps)
        print("RESULT " + json.dumps(row), flush=True)
        return
    rows = [tuple(r.split(":", 1)) for r in args.rows] if args.rows else ROWS
    results = []
    for batch in args.batches:
        for framework, variant in rows:
            command = [sys.executable, __file__, "--one", framework, variant, str(batch), "--steps", str(args.steps)]
            command += ["--profile", args.profile] if args.profile else []
            command += ["--no-xla-defaults"] if args.no_xla_defaults else []
            done = subprocess.run(command, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if not lines:
                print(f"{framework} {variant} batch {batch} failed:\n{done.stderr[-3000:]}", flush=True)
                continue
            results.append(json.loads(lines[-1].removeprefix("RESULT ")))
            row = results[-1]
            print(f"batch {batch:4d}  {row['row']:52s} {row['seq_per_s']:9.0f} seq/s  peak {row['peak_GiB']:.1f} GiB",
                  flush=True)  # fmt: skip
            for kernel, ms in row.get("top_kernels_ms", {}).items():
                print(f"    {ms:8.2f} ms  {kernel}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
