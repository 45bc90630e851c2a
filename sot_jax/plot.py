"""Plot a run's curves: `python -m sot_jax.plot WORKDIR [--output FILE.png]`.

Reads WORKDIR/metrics.jsonl and writes the training loss and the validation top-1 (and EMA top-1 when present)
against the step, by default to WORKDIR/curves.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_metrics(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{path} does not exist: is {workdir} a training workdir?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot(workdir: str | Path, output: str | Path | None = None) -> Path:
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's (e.g. a notebook's) backend alone

    workdir = Path(workdir)
    rows = read_metrics(workdir)
    figure = Figure(figsize=(11, 4))
    loss_axis, accuracy_axis = figure.subplots(1, 2)
    train = [r for r in rows if "loss" in r]
    loss_axis.plot([r["step"] for r in train], [r["loss"] for r in train])
    loss_axis.set(xlabel="step", ylabel="training loss", title="loss")
    for key, label in (("val_top1", "top-1"), ("ema_val_top1", "EMA top-1")):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            accuracy_axis.plot(*zip(*points, strict=True), marker="o", label=label)
    accuracy_axis.set(xlabel="step", ylabel="validation accuracy (%)", title="validation")
    accuracy_axis.legend()
    figure.tight_layout()
    output = Path(output) if output else workdir / "curves.png"
    figure.savefig(output, dpi=100)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir")
    parser.add_argument("--output", help="PNG path (default WORKDIR/curves.png)")
    args = parser.parse_args(argv)
    try:
        print(f"wrote {plot(args.workdir, args.output)}")
    except ValueError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
