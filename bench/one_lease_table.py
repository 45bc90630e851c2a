"""BENCHMARKS.md's one-lease table from `bench/results/issue31_table.sh`'s rows (its STATE/rows.jsonl):

    python bench/one_lease_table.py bench/results/one_lease_DATE_GPU.jsonl

Prints one Markdown row per model: sot_jax's number, PyTorch eager and compiled, and the ratio to the faster
PyTorch number; vision rows also the step's GFLOP per image and MFU (against the matmul peak measured in the same
lease), rows not measured left blank. Text rows in both pairings (the table script's `text_like_for_like`): the SoT
text head on both sides (sot_jax's SoT row against HF's encoder under the official head) and the baseline heads
(sot_jax's against HF's sequence classifier), and sot_jax's SoT row against HF's baseline as measured before.
"""

from __future__ import annotations

import argparse
import json

# table row -> the variant prefix of its rows in rows.jsonl (PREFIX_jax, PREFIX_torch_eager, PREFIX_torch_compile)
VISION = {
    "DeiT-S (deit_small_patch16_224)": "deit_s",
    "sot_small": "sot_small",
    "HVT-S-1": "hvt_s_1",
    "LV-ViT-S": "lvvit_s",
    "sot_tiny": "sot_tiny",
    "sot_base": "sot_base",
}
TEXT = {  # the same prefix + _jax_plain, _torch_sot_eager, _torch_sot_compile: the like-for-like rows
    "BERT-base, batch 256": "bert_b256",
    "BERT-base, batch 32": "bert_b32",
    "GPT-2, batch 32": "gpt2_b32",
    "GPT-2, batch 256": "gpt2_b256",
}
EXTRA = {
    "BERT-base + SoT, batch 256, `attention_dropout=0`": "bert_b256_jax_attention_dropout0",
    "BERT-base + SoT, batch 256, `JAX_DEFAULT_PRNG_IMPL=rbg`": "bert_b256_jax_rbg",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", help="rows.jsonl of bench/results/issue31_table.sh")
    args = parser.parse_args()
    rows = {}
    with open(args.rows) as f:
        for line in f:
            row = json.loads(line)
            rows[row["variant"]] = row
    peak = rows.get("matmul_peak", {}).get("peak")

    def cell(value, form="{:,.0f}"):
        return form.format(value) if value is not None else "not measured"

    def measured(key: str, metric: str, jax: str = "jax", torch: str = "torch") -> tuple[dict, float | None, ...]:
        """A row's JAX result, its PyTorch eager and compiled rates, and the better of the two."""
        eager = rows.get(f"{key}_{torch}_eager", {}).get(metric)
        compiled = rows.get(f"{key}_{torch}_compile", {}).get(metric)
        return rows.get(f"{key}_{jax}", {}), eager, compiled, max(filter(None, [eager, compiled]), default=None)

    def ratio(speed, best) -> str:
        return f"**{speed / best:.2f}×** ({speed / best:.3f})" if speed and best else ""

    print("| model (batch 256) | sot_jax img/s (step ms) | GFLOP / img / step | MFU | peak GiB | PyTorch eager | "
          "PyTorch compiled | vs best PyTorch |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    for label, key in VISION.items():
        jax_row, eager, compiled, best = measured(key, "train_img_s")
        speed = jax_row.get("train_img_s")
        flop = jax_row.get("step_tflop")
        cells = [
            label,
            f"{speed:,.0f} ({jax_row['step_ms']:.1f})" if speed else "not measured",
            f"{1e3 * flop / jax_row['batch']:.1f}" if flop else "",
            f"{jax_row['achieved_tflops'] / peak:.1%}" if flop and peak else "",
            cell(jax_row.get("peak_gib"), "{:.1f}"),
            cell(eager),
            cell(compiled),
            f"**{speed / best:.2f}×**" if speed and best else "",
        ]
        print("| " + " | ".join(cells) + " |")
    print("\n| text model (seq 128), seq/s | sot_jax + SoT (peak GiB) | HF + official SoT eager | compiled | **SoT vs "
          "SoT** | sot_jax baseline head | HF eager | HF compiled | **baseline vs baseline** | sot_jax + SoT vs HF "
          "baseline |\n|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for label, key in TEXT.items():
        sot, sot_eager, sot_compiled, sot_best = measured(key, "seq_per_s", torch="torch_sot")
        plain, eager, compiled, best = measured(key, "seq_per_s", jax="jax_plain")
        speed, plain_speed = sot.get("seq_per_s"), plain.get("seq_per_s")
        cells = [label, f"{cell(speed)} ({cell(sot.get('peak_GiB'), '{:.1f}')})", cell(sot_eager), cell(sot_compiled),
                 ratio(speed, sot_best), cell(plain_speed), cell(eager), cell(compiled), ratio(plain_speed, best),
                 ratio(speed, best)]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    base = rows.get("bert_b256_jax", {}).get("seq_per_s")
    print("\n| extra row | sot_jax seq/s | vs the default BERT b256 row |\n|---|---|---|")
    for label, key in EXTRA.items():
        speed = rows.get(key, {}).get("seq_per_s")
        change = f"{speed / base - 1:+.1%}" if speed and base else ""
        print(f"| {label} | {cell(speed)} | {change} |")
    if peak:
        print(f"\nbf16 matmul peak measured in the lease: {peak:.0f} TFLOP/s ({rows['matmul_peak'].get('device')})")
    gpus = sorted({row["gpu"] for row in rows.values() if "gpu" in row})
    if len(gpus) > 1:  # LANES=N: rows side by side, one per GPU
        peaks = ", ".join(f"GPU {row['gpu']} {row['peak']:.0f}" for key, row in sorted(rows.items())
                          if key.startswith("matmul_peak") and "gpu" in row)  # fmt: skip
        print(f"Rows side by side on GPUs {', '.join(map(str, gpus))}, each alone on its GPU; peak per GPU: {peaks}")


if __name__ == "__main__":
    main()
