"""Summarize runs that differ only in their seed: the final and the best value of a metric, mean ± std over runs.

    for seed in 1 2 3 4 5; do python -m sot_jax.main --config=configs/sot_glue.py:bert_base_sot,rte \
        --workdir=runs/rte_$seed --config.seed=$seed ...; done
    python -m sot_jax.seeds runs/rte_* [--metric val_top1]

Reads each workdir's metrics.jsonl (the evaluations it logged); std is the sample standard deviation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from sot_jax.errors import UserError


def final_and_best(workdir: str | Path, metric: str) -> tuple[float, float, int]:
    """(final value, best value, step of the best) of `metric` in a run's metrics.jsonl."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{workdir} has no metrics.jsonl (not a training workdir)")
    rows = [row for row in map(json.loads, path.read_text().splitlines()) if metric in row]
    if not rows:
        raise UserError(f"{path} logged no {metric!r}")
    best = max(rows, key=lambda row: row[metric])
    return rows[-1][metric], best[metric], best["step"]


def summarize(workdirs: list[str], metric: str) -> str:
    """One line per run and a last line with mean ± std of the final and best values."""
    results = [final_and_best(w, metric) for w in workdirs]
    lines = [
        f"{w}: final {final:.2f}, best {best:.2f} (step {step})"
        for w, (final, best, step) in zip(workdirs, results, strict=True)
    ]
    finals, bests = np.array([r[0] for r in results]), np.array([r[1] for r in results])
    spread = (lambda x: x.std(ddof=1)) if len(results) > 1 else (lambda x: 0.0)
    lines.append(
        f"{metric} over {len(results)} runs: final {finals.mean():.2f} ± {spread(finals):.2f}, "
        f"best {bests.mean():.2f} ± {spread(bests):.2f}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--metric", default=None, help="default: val_mcc when logged, else val_top1")
    args = parser.parse_args(argv)
    try:
        metric = args.metric
        if metric is None:
            first = Path(args.workdirs[0]) / "metrics.jsonl"
            metric = "val_mcc" if first.is_file() and '"val_mcc"' in first.read_text() else "val_top1"
        print(summarize(args.workdirs, metric))
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
