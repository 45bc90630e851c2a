"""GLUE fine-tuning throughput: sot_jax's BERT-base (SoT text head and HF's pooler head) and GPT-2 (SoT text head)
against HF transformers' PyTorch `BertForSequenceClassification` and `GPT2ForSequenceClassification`, and against
HF's encoders with the official SoT text head (eager and `torch.compile`), in one run on one GPU.

    python bench/text_throughput.py [--batches 32 256] [--steps 20] [--json out.json] [--official-repo PATH]
    python bench/text_throughput.py --rows jax:bert_base_sot jax:bert_base_sot:attention_dropout=0 --profile DIR
    python bench/text_throughput.py --batches 32 --rows jax:gpt2_sot torch:gpt2:eager torch:gpt2:compile

Rows are FRAMEWORK:VARIANT. JAX: MODEL[:KEY=VALUE,...], a text model of `configs/sot_glue.py` (its CoLA recipe) with
`config.model` overrides (and `bound=cudnn`: cuDNN's fused attention without attention dropout, a bound).
PyTorch: [FAMILY:]MODE, MODE eager or compile; FAMILY gpt2 (BERT without it), or bert_sot / gpt2_sot: HF's
`BertModel` / `GPT2Model` with the official SoT text head in place of the pooler, as the official code builds it
(`cokezrr/transformers` at 794889f, imported from `--official-repo PATH`, a checkout outside this repository, never
copied here), with the head sot_jax's row has (the CoLA recipe's q, k and dropout); GPT-2's class token is its last
real token, moved to the front as sot_jax does. `--official-repo` adds these rows to the default ones.

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
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import ml_collections
    import torch

SEQUENCE_LENGTH = 128
ROWS = (
    ("jax", "bert_base_sot"), ("jax", "bert_base"), ("torch", "eager"), ("torch", "compile"),
    ("jax", "gpt2_sot"), ("torch", "gpt2:eager"), ("torch", "gpt2:compile"),
)  # fmt: skip
OFFICIAL_HEAD_ROWS = (("torch", "bert_sot:eager"), ("torch", "bert_sot:compile"), ("torch", "gpt2_sot:eager"),
                      ("torch", "gpt2_sot:compile"))  # fmt: skip
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


def recipe_config(model_name: str) -> ml_collections.ConfigDict:
    """`configs/sot_glue.py`'s config of MODEL on CoLA, the recipe every row trains with."""
    import importlib.util

    module_spec = importlib.util.spec_from_file_location("sot_glue", "configs/sot_glue.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(f"{model_name},cola")


def jax_row(spec: str, batch: int, steps: int, profile_dir: str | None = None) -> dict:
    """`spec` = MODEL[:KEY=VALUE,...] with `config.model` overrides (e.g. bert_base_sot:attention_dropout=0)."""
    import jax

    from sot_jax import experiment, sharding

    model_name, _, options = spec.partition(":")
    config = recipe_config(model_name)
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


def official_sot_model(family: str, official_repo: str | None) -> torch.nn.Module:
    """HF's BERT-base or GPT-2 encoder under the official SoT text head (`torch_row`'s bert_sot and gpt2_sot)."""
    import torch
    import transformers

    if not official_repo:
        raise SystemExit(f"PyTorch row {family}: needs --official-repo PATH (a checkout of cokezrr/transformers)")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures"))
    from make_text_fixtures import official_classifier

    gpt = family == "gpt2_sot"
    model = recipe_config("gpt2_sot" if gpt else "bert_base_sot").model
    encoder = transformers.GPT2Model(transformers.GPT2Config()) if gpt else transformers.BertModel(
        transformers.BertConfig(), add_pooling_layer=False)  # fmt: skip
    head = official_classifier(official_repo, encoder.config.hidden_size, model.head_dropout, model.sot_q,
                               model.sot_k, num_classes=2)  # fmt: skip

    class OfficialSoT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.head = encoder, head

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            types = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            x = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **types).last_hidden_state
            if gpt:  # the last real token first, the other positions in order (sot_jax's text.class_token_first)
                last = attention_mask.sum(1, keepdim=True) - 1
                others = torch.arange(x.shape[1] - 1, device=x.device)[None]
                order = torch.cat([last, torch.where(others < last, others, others + 1)], dim=1)
                x = x.gather(1, order[..., None].expand(-1, -1, x.shape[-1]))
            return transformers.modeling_outputs.SequenceClassifierOutput(logits=self.head(x))

    return OfficialSoT()


def torch_row(variant: str, batch: int, steps: int, profile: bool = False, official_repo: str | None = None) -> dict:
    """`variant` = [FAMILY:]MODE: HF's BERT-base (no FAMILY) or GPT-2 (gpt2) sequence classifier, or either encoder
    under the official SoT text head (bert_sot, gpt2_sot); MODE eager or compile."""
    import torch
    import transformers

    family, _, mode = variant.rpartition(":")
    families = ("", "gpt2", "bert_sot", "gpt2_sot")
    if mode not in ("eager", "compile") or family not in families:
        raise ValueError(f"PyTorch row {variant!r}: [FAMILY:]eager or [FAMILY:]compile, FAMILY one of "
                         f"{', '.join(families[1:])} (none: BERT)")  # fmt: skip
    device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a quick check that the row runs
    if family.endswith("_sot"):
        model = official_sot_model(family, official_repo)
    elif family == "gpt2":  # dropout 0.1 on embeddings, attention and residuals, as configs/sot_glue.py's gpt2
        config = transformers.GPT2Config(num_labels=2, pad_token_id=GPT2_PAD_TOKEN)
        model = transformers.GPT2ForSequenceClassification(config)
    else:
        model = transformers.BertForSequenceClassification(transformers.BertConfig(num_labels=2))
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, eps=1e-8, weight_decay=0.0, fused=device == "cuda")
    arrays = synthetic_batch(batch, gpt=family.startswith("gpt2"))
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
    name = f"HF {family.split('_')[0].upper()}'s encoder, official SoT head" if family.endswith("_sot") else (
        f"HF {type(model).__name__}")  # fmt: skip
    row = {"row": f"torch {mode} ({name})", "batch": batch, "seq_per_s": batch / seconds,
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
    parser.add_argument("--official-repo", help="a checkout of cokezrr/transformers, for the bert_sot and gpt2_sot "
                        "PyTorch rows (added to the default rows)")  # fmt: skip
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
            row = torch_row(variant, int(batch), args.steps, bool(args.profile), args.official_repo)
        print("RESULT " + json.dumps(row), flush=True)
        return
    rows = [tuple(r.split(":", 1)) for r in args.rows] if args.rows else ROWS + OFFICIAL_HEAD_ROWS * bool(
        args.official_repo)  # fmt: skip
    results = []
    for batch in args.batches:
        for framework, variant in rows:
            command = [sys.executable, __file__, "--one", framework, variant, str(batch), "--steps", str(args.steps)]
            command += ["--profile", args.profile] if args.profile else []
            command += ["--no-xla-defaults"] if args.no_xla_defaults else []
            command += ["--official-repo", args.official_repo] if args.official_repo else []
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
