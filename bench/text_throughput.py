"""GLUE fine-tuning throughput: sot_jax's BERT-base (SoT text head and HF's pooler head) and GPT-2 (SoT text head)
against HF transformers' PyTorch `BertForSequenceClassification` and `GPT2ForSequenceClassification` (eager and
`torch.compile`), in one run on one GPU.

    python bench/text_throughput.py [--batches 32 256] [--steps 20] [--json out.json]
    python bench/text_throughput.py --rows jax:bert_base_sot jax:bert_base_sot:attention_dropout=0 --profile DIR
    python bench/text_throughput.py --batches 32 --rows jax:gpt2_sot torch:gpt2:eager torch:gpt2:compile

Rows are FRAMEWORK:VARIANT. JAX: MODEL[:KEY=VALUE,...], a text model of `configs/sot_glue.py` (its CoLA recipe) with
`config.model` overrides (and `bound=cudnn`: cuDNN's fused attention without attention dropout, a bound).
PyTorch: [gpt2:]MODE, MODE eager or compile (BERT without the prefix).

Each row runs in its own process (its own peak memory): synthetic token ids at sequence length 128, every token
real (no padding), 2 classes, bf16 compute (JAX: `dtype=bfloat16` with float32 parameters; PyTorch: bf16
autocast), AdamW with gradient clipping at 1.0 and the recipe's dropout (the GLUE recipe: configs/sot_glue.py). GPT
rows get no `token_type_ids` (as sot_jax's data pipeline gives GPT; HF would embed them with the token embedding);
HF's GPT-2 classifies the last token (`pad_token_id` 50256, never in the synthetic ids), as sot_jax's GPT heads do.
Reports sequences/s, median over `--steps` timed steps after warm-up.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

SEQUENCE_LENGTH = 128
ROWS = (
    ("jax", "bert_base_sot"), ("jax", "bert_base"), ("torch", "eager"), ("torch", "compile"),
    ("jax", "gpt2_sot"), ("torch", "gpt2:eager"), ("torch", "gpt2:compile"),
)  # fmt: skip
GPT2_PAD_TOKEN = 50256  # GPT-2's <|endoftext|>: HF's sequence classifier needs a pad id to find the last token


def synthetic_batch(batch: int, gpt: bool = False) -> dict[str, np.ndarray]:
    """Token ids in [1000, 28000) (in both vocabularies, never a pad id), no padding, binary labels; GPT batches have
    no token_type_ids."""
    rng = np.random.default_rng(0)
    arrays = {
        "input_ids": rng.integers(1000, 28000, (batch, SEQUENCE_LENGTH)).astype(np.int32),
        "attention_mask": np.ones((batch, SEQUENCE_LENGTH), np.int32),
        "token_type_ids": np.zeros((batch, SEQUENCE_LENGTH), np.int32),
        "label": rng.integers(0, 2, batch).astype(np.int32),
    }
    if gpt:
        arrays.pop("token_type_ids")
    return arrays


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

    from sot_jax import experiment, sharding

    module_spec = importlib.util.spec_from_file_location("sot_glue", "configs/sot_glue.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    model_name, _, options = spec.partition(":")
    config = module.get_config(f"{model_name},cola")
    config.batch_size = batch
    for option in filter(None, options.split(",")):
        key, value = option.split("=")
        if key == "bound":
            if value != "cudnn":
                raise SystemExit(f"bound={value}: the only bound is bound=cudnn")
            use_cudnn_attention_without_dropout()
            continue
        config.model[key] = value if key in ("head", "svpn") else (float(value) if "." in value else int(value))
    trainer = experiment.build_trainer(config, num_classes=2, total_steps=10_000)
    step_fn = trainer.jit_step()
    data = sharding.global_batch(synthetic_batch(batch, gpt=model_name.startswith("gpt")), trainer.batch_sharding)
    holder = {"state": trainer.initial_state()}

    def step():
        holder["state"], metrics = step_fn(holder["state"], data)
        jax.block_until_ready(metrics["loss"])

    for _ in range(3):
        step()
    seconds = median_step_seconds(step, steps)
    peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use", 0) / 2**30
    row = {"row": f"jax {spec}", "batch": batch, "seq_per_s": batch / seconds, "peak_GiB": peak,
           "jax": jax.__version__, "device": jax.devices()[0].device_kind}  # fmt: skip
    if profile_dir:
        row["profile"] = profile(step, step_fn.lower(holder["state"], data).compile().as_text(), profile_dir)
    return row


KERNEL_CLASSES = (  # by kernel name, for both frameworks' profiles
    ("attention (fused)", ("fmha", "sdpa", "flash", "attention")),
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "sm90_")),
)


def kernel_class(name: str) -> str:
    name = name.lower()
    return next((c for c, keys in KERNEL_CLASSES if any(k in name for k in keys)), "other (elementwise, reductions)")


def use_cudnn_attention_without_dropout() -> None:
    """The `bound=cudnn` row option: BERT's and GPT's attention becomes cuDNN's fused kernel, without attention
    dropout and without the key mask (every synthetic token is real). Not a model: it bounds what a fused
    attention-with-dropout kernel could save."""
    import jax

    from sot_jax.models import bert, gpt

    def attend(module, q, k, v, key_mask, causal, dropout_rate, train):
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")

    bert.attend = gpt.attend = attend


def profile(step, hlo_text: str, profile_dir: str, steps: int = 3) -> dict:
    """GPU kernel milliseconds per step by the Flax op that emitted them (the top 40) and by kernel class, from a
    trace of `steps` (run with command buffers off, so each kernel names its HLO op)."""
    import collections
    import re

    import jax
    from train_throughput import gpu_kernels

    with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
        for _ in range(steps):
            step()
    op_names = dict(re.findall(r"%([\w.\-]+) = .*?op_name=\"([^\"]*)\"", hlo_text))
    by_op, by_class = collections.Counter(), collections.Counter()
    for event in (event for kernels in gpu_kernels(profile_dir).values() for event in kernels):
        hlo_op = event.get("args", {}).get("hlo_op", "")
        name = re.sub(r"layer_\d+", "layer_*", op_names.get(hlo_op, hlo_op))
        by_op[f"{event['name'][:40]} | {name[-110:]}"] += event["dur"] / 1e3 / steps
        by_class[kernel_class(event["name"])] += event["dur"] / 1e3 / steps
    return {"by_class_ms": dict(by_class.most_common()), "top_ms": dict(by_op.most_common(40))}


def torch_profile(step, steps: int = 3) -> dict:
    """GPU kernel milliseconds per step by kernel name (the top 40) and by kernel class, from torch.profiler."""
    import collections

    import torch

    gpu = torch.cuda.is_available()  # else CPU op times: a quick check that the profile runs
    activity = torch.profiler.ProfilerActivity
    with torch.profiler.profile(activities=[activity.CUDA if gpu else activity.CPU]) as prof:
        for _ in range(steps):
            step()
    by_kernel, by_class = collections.Counter(), collections.Counter()
    for event in prof.key_averages():
        # On the GPU only kernels have device time (the CUDA runtime calls the trace also holds have none).
        ms = (event.self_device_time_total if gpu else event.self_cpu_time_total) / 1e3 / steps
        if ms > 0:
            by_kernel[event.key[:90]] += ms
            by_class[kernel_class(event.key)] += ms
    return {"by_class_ms": dict(by_class.most_common()), "top_ms": dict(by_kernel.most_common(40))}


def torch_row(variant: str, batch: int, steps: int, profile: bool = False) -> dict:
    """`variant` = [gpt2:]MODE: HF's BERT-base (default) or GPT-2 sequence classifier, MODE eager or compile."""
    import torch
    import transformers

    family, _, mode = variant.rpartition(":")
    if mode not in ("eager", "compile") or family not in ("", "gpt2"):
        raise ValueError(f"PyTorch row {variant!r}: [gpt2:]eager or [gpt2:]compile")
    device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a quick check that the row runs
    if family == "gpt2":  # dropout 0.1 on embeddings, attention and residuals, as configs/sot_glue.py's gpt2
        config = transformers.GPT2Config(num_labels=2, pad_token_id=GPT2_PAD_TOKEN)
        model = transformers.GPT2ForSequenceClassification(config)
    else:
        model = transformers.BertForSequenceClassification(transformers.BertConfig(num_labels=2))
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, eps=1e-8, weight_decay=0.0, fused=device == "cuda")
    arrays = synthetic_batch(batch, gpt=family == "gpt2")
    data = {k: torch.from_numpy(v.astype(np.int64)).to(device) for k, v in arrays.items()}
    labels = data.pop("label")

    def forward_backward():
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(**data).logits.float(), labels)
        loss.backward()

    forward_backward = torch.compile(forward_backward) if mode == "compile" else forward_backward

    def step():
        forward_backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    seconds = median_step_seconds(step, steps)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    row = {"row": f"torch {mode} (HF {type(model).__name__})", "batch": batch, "seq_per_s": batch / seconds,
           "peak_GiB": peak, "torch": torch.__version__, "transformers": transformers.__version__}  # fmt: skip
    if profile:
        row["profile"] = torch_profile(step)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rows", nargs="+", help="FRAMEWORK:VARIANT rows (default: " + " ".join(
        ":".join(r) for r in ROWS) + ")")
    parser.add_argument("--profile", help="trace the rows (the JAX ones under this folder, with command buffers off "
                        "so each kernel names its op) and print their top kernels")  # fmt: skip
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--no-xla-defaults", action="store_true", help="leave XLA_FLAGS as given, without "
                        "sot_jax.xla_defaults (the 'before' column of BENCHMARKS.md's XLA defaults table)")  # fmt: skip
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # internal: framework, variant, batch
    args = parser.parse_args()
    from sot_jax import xla_defaults  # (imports no JAX) flags set before JAX starts its backend

    if args.profile:  # a user's own value of the flag wins
        xla_defaults.apply(("--xla_gpu_enable_command_buffer=",))
    if not args.no_xla_defaults:
        xla_defaults.apply()  # as sot_jax.main does, before JAX starts its backend (PyTorch ignores XLA_FLAGS)
    if args.one:
        framework, variant, batch = args.one
        if framework == "jax":
            row = jax_row(variant, int(batch), args.steps, args.profile and f"{args.profile}/{variant}_{batch}")
        else:
            row = torch_row(variant, int(batch), args.steps, profile=bool(args.profile))
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
            for table in row.get("profile", {}).values():
                for kernel, ms in table.items():
                    print(f"    {ms:8.2f} ms  {kernel}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
