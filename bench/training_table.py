"""BENCHMARKS.md's training-throughput table in one command: sot_jax's train step and the PyTorch references, on
the same GPU in the same run, each model in its own process.

    python bench/training_table.py --sot SOT_CHECKOUT:TIMM_0.3.4 --hvt HVT_CHECKOUT:TIMM_0.3.2 \
        --tokenlabeling TOKENLABELING_CHECKOUT:TIMM_0.4.5 [--models sot_small hvt_s_1] [--json OUT.json]

Runs `bench/train_throughput.py` for the models, then `bench/torch_reference.py` eager and with `--compile` for
each model's reference: the official code (from a checkout outside this repository, with the timm its repository
pins ahead of any newer one on PYTHONPATH) or, for DeiT-S, the installed timm. A reference whose checkout is not
given is left blank. Prints the table's Markdown rows, with the ratio to the faster PyTorch number.
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


def torch_images_per_second(
    reference: str, checkout: str | None, args: argparse.Namespace, compile_: bool
) -> float | None:
    """The reference's train img/s, or None if it failed (its error is printed)."""
    command = [args.torch_python, str(BENCH / "torch_reference.py"), "--model", reference, "--device", args.device]
    command += ["--batch", str(args.batch), "--steps", str(args.steps)] + ["--compile"] * compile_
    env = dict(os.environ)
    if checkout:
        repo, timm = checkout.split(":")
        command += ["--official-repo", repo]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [timm, env.get("PYTHONPATH")]))
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        print(f"{reference}{' (compiled)' * compile_}: failed\n{run.stderr[-2000:]}", flush=True)
        return None
    return json.loads(run.stdout.strip().splitlines()[-1])["train_img_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=MODELS)
    for repo in OFFICIAL_REPOS:
        parser.add_argument(f"--{repo}", metavar="CHECKOUT:TIMM", help=f"the official {repo} code and its timm")
    parser.add_argument("--torch-python", default=sys.executable, help="the Python that has PyTorch (and timm)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda", help="PyTorch's device (JAX uses its default backend)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {MODELS}")
    for spec in (getattr(args, repo) for repo in OFFICIAL_REPOS):
        if spec and (spec.count(":") != 1 or not all(Path(p).is_dir() for p in spec.split(":"))):
            parser.error(f"{spec!r} is not CHECKOUT:TIMM, two existing folders")

    with tempfile.TemporaryDirectory() as tmp:
        jax_json = f"{tmp}/jax.json"
        command = [sys.executable, str(BENCH / "train_throughput.py"), *args.models, "--batch", str(args.batch)]
        subprocess.run(command + ["--steps", str(args.steps), "--json", jax_json], check=True)
        jax_rows = {row["model"]: row for row in json.loads(Path(jax_json).read_text())["results"]}

    rows = []
    print("| model | train img/s | GFLOP / img / step | MFU | eval img/s | peak GiB | PyTorch eager | PyTorch compiled "
          "| vs best PyTorch |\n|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for model in args.models:
        row = dict(jax_rows.get(model, {"model": model}))
        repo, reference = REFERENCES.get(model, (None, None))
        checkout = getattr(args, repo) if repo else None
        if reference and (checkout or not repo):
            row["torch_eager"] = torch_images_per_second(reference, checkout, args, compile_=False)
            row["torch_compiled"] = torch_images_per_second(reference, checkout, args, compile_=True)
        best = max(filter(None, [row.get("torch_eager"), row.get("torch_compiled")]), default=None)
        if best and "train_img_s" in row:
            row["vs_best_torch"] = row["train_img_s"] / best
        rows.append(row)
        print(markdown_row(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def markdown_row(row: dict) -> str:
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
    ]
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()
