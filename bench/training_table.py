"""BENCHMARKS.md's training-throughput table in one command: sot_jax's train step and the PyTorch references, on
the same GPU in the same run, each model in its own process.

    python bench/training_table.py --sot SOT_CHECKOUT:TIMM_0.3.4 --hvt HVT_CHECKOUT:TIMM_0.3.2 \
        --tokenlabeling TOKENLABELING_CHECKOUT:TIMM_0.4.5 [--models sot_small hvt_s_1] [--max-batch] [--json OUT.json]

Runs `bench/train_throughput.py` for the models, then `bench/torch_reference.py` eager and with `--compile` for
each model's reference: the official code (from a checkout outside this repository, with the timm its repository
pins ahead of any newer one on PYTHONPATH) or, for DeiT-S, the installed timm. A reference whose checkout is not
given is left blank. Prints the table's Markdown rows, with the ratio to the faster PyTorch number. `--max-batch`
adds the largest batch that trains: JAX's in its memory pool (set XLA_PYTHON_CLIENT_MEM_FRACTION for the command to
change it), PyTorch's eager on the whole GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from train_throughput import MODELS

from sot_jax import xla_defaults

BENCH = Path(__file__).resolve().parent
# sot_jax model -> (official repository, its model name); None: timm's own model of that name.
REFERENCES = {
    "sot_tiny": ("sot", "SoT_Tiny"),
    "sot_small": ("sot", "SoT_Small"),
    "sot_base": ("sot", "SoT_Base"),
    "deit_small_patch16_224": (None, "deit_small_patch16_224"),
    "hvt_s_1": ("hvt", "hvt_s_1"),
    "lvvit_s": ("tokenlabeling", "lvvit_s"),
}
OFFICIAL_REPOS = ("sot", "hvt", "tokenlabeling")  # each a --REPO CHECKOUT:TIMM option


def torch_reference(
    reference: str, checkout: str | None, args: argparse.Namespace, compile_: bool, max_batch: bool = False
) -> dict:
    """`bench/torch_reference.py`'s result (train_img_s, and max_batch if asked), or {} if it failed (its error is
    printed)."""
    command = [args.torch_python, str(BENCH / "torch_reference.py"), "--model", reference, "--device", args.device]
    command += ["--batch", str(args.batch), "--steps", str(args.steps)] + ["--compile"] * compile_
    command += ["--max-batch"] * max_batch
    env = dict(os.environ)
    if checkout:
        repo, timm = checkout.split(":")
        command += ["--official-repo", repo]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [timm, env.get("PYTHONPATH")]))
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        print(f"{reference}{' (compiled)' * compile_}: failed\n{run.stderr[-2000:]}", flush=True)
        return {}
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=MODELS)
    for repo in OFFICIAL_REPOS:
        parser.add_argument(f"--{repo}", metavar="CHECKOUT:TIMM", help=f"the official {repo} code and its timm")
    parser.add_argument("--torch-python", default=sys.executable, help="the Python that has PyTorch (and timm)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda", help="PyTorch's device (JAX uses its default backend)")
    parser.add_argument("--max-batch", action="store_true", help="also the largest batch that trains")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--no-xla-defaults", action="store_true", help="JAX rows without sot_jax.xla_defaults")
    args = parser.parse_args()
    if not args.no_xla_defaults:
        xla_defaults.apply()  # as sot_jax.main does; the JAX rows' processes inherit XLA_FLAGS
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {MODELS}")
    for spec in (getattr(args, repo) for repo in OFFICIAL_REPOS):
        if spec and (spec.count(":") != 1 or not all(Path(p).is_dir() for p in spec.split(":"))):
            parser.error(f"{spec!r} is not CHECKOUT:TIMM, two existing folders")

    with tempfile.TemporaryDirectory() as tmp:
        jax_json = f"{tmp}/jax.json"
        command = [sys.executable, str(BENCH / "train_throughput.py"), *args.models, "--batch", str(args.batch)]
        command += ["--steps", str(args.steps), "--json", jax_json] + ["--max-batch"] * args.max_batch
        command += ["--no-xla-defaults"] * args.no_xla_defaults
        subprocess.run(command, check=True)
        jax_rows = {row["model"]: row for row in json.loads(Path(jax_json).read_text())["results"]}

    rows = []
    header = "model | train img/s | GFLOP / img / step | MFU | eval img/s | peak GiB | PyTorch eager | PyTorch compiled"
    header += " | vs best PyTorch" + " | largest batch | PyTorch largest batch" * args.max_batch
    print(f"| {header} |\n" + "|---" * (header.count("|") + 1) + "|")
    for model in args.models:
        row = dict(jax_rows.get(model, {"model": model}))
        repo, reference = REFERENCES.get(model, (None, None))
        checkout = getattr(args, repo) if repo else None
        if reference and (checkout or not repo):
            eager = torch_reference(reference, checkout, args, compile_=False, max_batch=args.max_batch)
            row["torch_eager"], row["torch_max_batch"] = eager.get("train_img_s"), eager.get("max_batch")
            row["torch_compiled"] = torch_reference(reference, checkout, args, compile_=True).get("train_img_s")
        best = max(filter(None, [row.get("torch_eager"), row.get("torch_compiled")]), default=None)
        if best and "train_img_s" in row:
            row["vs_best_torch"] = row["train_img_s"] / best
        rows.append(row)
        print(markdown_row(row, args.max_batch), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def markdown_row(row: dict, max_batch: bool = False) -> str:
    def number(key: str, form: str = "{:,.0f}") -> str:
        return form.format(row[key]) if row.get(key) is not None else ""

    cells = [
        row["model"],
        number("train_img_s"),
        f"{1e3 * row['step_tflop'] / row['batch']:.1f}" if "step_tflop" in row else "",
        number("mfu", "{:.1%}"),
        number("eval_img_s"),
        number("peak_gib", "{:.1f}"),
        number("torch_eager"),
        number("torch_compiled"),
        number("vs_best_torch", "**{:.2f}×**"),
    ] + [number("max_batch"), number("torch_max_batch")] * max_batch
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()
