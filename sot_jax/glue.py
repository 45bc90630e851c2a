r"""The paper's GLUE table in one command: every task × seed fine-tuned with the task's official settings, then a
table of dev scores beside the published ones.

    python -m sot_jax.glue --model=bert_base_sot --init_from=ckpt/bert_base_sot --tasks=cola,rte,mnli,qnli \
        --seeds=42,43,44 --workdir=runs/glue [--config.KEY=VALUE ...] [--print-commands] [--summarize]
    python -m sot_jax.glue --tasks=demo --seeds=1,2 --workdir=/tmp/glue_demo   # the embedded task, CPU minutes

- Each task is a `sot_jax.sweep` over the seeds of `configs/sot_glue.py:MODEL,TASK` (its official head shape, rate,
  evaluation interval and metrics): runs go in `WORKDIR/<task>/seed_<s>`, finished ones are skipped when the same
  command runs again, an interrupted one resumes, a failing one is reported and the others go on.
  `--config.KEY=VALUE` applies to every run (e.g. `--config.data_dir=DATA`); `--tasks=all` is GLUE's nine.
- `WORKDIR/glue_table.md` and `glue_table.json` (also printed): per task its GLUE score (`val_glue`: the mean of
  the task's metrics; MNLI matched and mismatched as two rows) at the end of training and at its best evaluation,
  per seed and as mean ± std (sample std), the GLUE average over the tasks (MNLI counting once, the mean of its two
  rows), and the paper's dev score for the model where it has one (SPEC §10; most likely its best checkpoint of one
  seed, so compare with the best column).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sot_jax import sweep
from sot_jax.errors import UserError

CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "sot_glue.py")
TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")
METRIC = "val_glue"
# The SoT paper's dev scores (SPEC §10; GPT is OpenAI GPT-1): CoLA MCC, RTE, MNLI and QNLI accuracy.
PUBLISHED = {
    "gpt": (54.32, 63.17, 82.10, 86.36), "gpt_sot": (57.25, 65.35, 82.41, 87.13),
    "bert_base": (54.82, 67.15, 83.47, 90.11), "bert_base_sot": (58.03, 69.31, 84.20, 90.78),
    "bert_large": (60.63, 73.65, 85.90, 91.82), "bert_large_sot": (61.82, 75.09, 86.46, 92.37),
    "roberta_base": (61.58, 77.60, 87.50, 92.70), "roberta_base_sot": (65.28, 80.50, 87.90, 93.10),
    "roberta_large": (67.98, 86.60, 90.20, 94.70), "roberta_large_sot": (70.90, 88.10, 90.50, 95.00),
}  # fmt: skip
PUBLISHED_TASKS = ("cola", "rte", "mnli", "qnli")


def parse_tasks(text: str) -> list[str]:
    if text == "demo":
        return ["demo"]
    tasks = list(TASKS) if text == "all" else text.split(",")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise UserError(f"unknown GLUE task {unknown[0] if unknown else text!r}; choose from {', '.join(TASKS)}, "
                        "all, or demo")  # fmt: skip
    return list(dict.fromkeys(tasks))


def task_spec(config: str, model: str, task: str) -> str:
    return f"{config}:demo" if task == "demo" else f"{config}:{model},{task}"


def task_runs(task: str, spec: str, workdir: Path, seeds: Sequence[int], common: list[str]) -> list[sweep.Run]:
    """The seeds of one task (`spec`: its config variant), a sweep in `workdir` (each run in its `seed_<s>`)."""
    return sweep.plan(spec, workdir, [sweep.Combination(task, (), folder="")], seeds, common)


def _row(runs: list[sweep.Run], metric: str, failed: dict[str, int], paper: float | None) -> dict[str, Any]:
    row = sweep.summarize(runs, metric, None, failed)["combinations"][runs[0].combination.name]
    return {"metric": metric, "seeds": row["seeds"], "final": row["final_stats"], "best": row["best_stats"],
            "paper": paper}  # fmt: skip


def table(model: str, tasks: list[str], runs: dict[str, list[sweep.Run]], failed: dict[str, int]) -> dict:
    """Per task (MNLI: `mnli-m` and `mnli-mm`) the scores of `_row`, and the GLUE average of the final and the best
    means over the tasks that have them."""
    published = dict(zip(PUBLISHED_TASKS, PUBLISHED.get(model, ()), strict=False))
    rows = {}
    for task in tasks:
        if task == "mnli":
            rows["mnli-m"] = _row(runs[task], METRIC, failed, published.get("mnli"))
            rows["mnli-mm"] = _row(runs[task], "val_mismatched_glue", failed, None)
        else:
            rows[task] = _row(runs[task], METRIC, failed, published.get(task))
    average = {}
    for kind in ("final", "best"):
        per_task = {}
        for name, row in rows.items():
            task = name.partition("-")[0]
            if row[kind]["n"]:
                per_task.setdefault(task, []).append(row[kind]["mean"])
        complete = len(per_task) == len(tasks)
        average[kind] = float(np.mean([np.mean(v) for v in per_task.values()])) if complete else None
    return {"model": "demo" if tasks == ["demo"] else model, "metric": METRIC, "tasks": rows, "average": average}


def markdown(summary: dict) -> str:
    def stats(s: dict) -> str:
        return f"{s['mean']:.2f} ± {s['std']:.2f}" if s["n"] else "–"

    lines = [
        f"GLUE dev scores of {summary['model']} (`val_glue`, the task's GLUE score; per seed final / best; mean ± "
        "sample std over seeds)",
        "",
        "| task | n | final | best | paper | per seed (final / best) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in summary["tasks"].items():
        seeds = "; ".join(
            f"{seed}: {v['final']:.2f} / {v['best']:.2f}" if isinstance(v, dict) else f"{seed}: {v}"
            for seed, v in row["seeds"].items()
        )
        paper = f"{row['paper']:.2f}" if row["paper"] is not None else ""
        lines.append(f"| {name} | {row['final']['n']} | {stats(row['final'])} | {stats(row['best'])} | {paper} "
                     f"| {seeds} |")  # fmt: skip
    average = summary["average"]
    cells = [f"{average[k]:.2f}" if average[k] is not None else "incomplete" for k in ("final", "best")]
    lines.append(f"| GLUE average | | {cells[0]} | {cells[1]} | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, launch: Callable[[list[str]], int] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sot_jax.glue", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=CONFIG, help="the GLUE config file (default: the clone's)")
    parser.add_argument("--model", default="bert_base_sot", help="a text model of configs/sot_glue.py")
    parser.add_argument("--init_from", default="", help="the converted pretrained checkpoint (not for demo)")
    parser.add_argument("--tasks", default="cola,rte,mnli,qnli", help="comma-separated GLUE tasks, all, or demo")
    parser.add_argument("--seeds", default="42", help="comma-separated")
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--print-commands", action="store_true", help="print the pending runs' commands only")
    parser.add_argument("--summarize", action="store_true", help="only tabulate the runs that are there")
    args, common = parser.parse_known_args(argv)
    try:
        tasks = parse_tasks(args.tasks)
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise UserError(f"--seeds {args.seeds!r}: expected comma-separated integers") from None
        if tasks != ["demo"] and not args.init_from:
            raise UserError("--init_from is required: the converted pretrained checkpoint (python -m sot_jax.convert)")
        if args.init_from:
            if tasks == ["demo"]:
                raise UserError("--tasks=demo trains from scratch; leave out --init_from")
            common = [*common, f"--config.init_from={Path(args.init_from).absolute()}"]
        if not Path(args.config).is_file():
            raise UserError(f"{args.config} does not exist: run from a clone (pip install -e .) or give --config")
        specs = {task: task_spec(args.config, args.model, task) for task in tasks}
        runs = {task: task_runs(task, specs[task], args.workdir / task, seeds, common) for task in tasks}
        if args.print_commands:
            for task, task_list in runs.items():
                sweep.print_pending(task_list, args.workdir / task, specs[task])
            return 0
        failed: dict[str, int] = {}
        if not args.summarize:
            for task, task_list in runs.items():
                failed.update(sweep.execute(task_list, args.workdir / task, specs[task], launch or sweep.run_command))
        summary = table(args.model, tasks, runs, failed)
        text = markdown(summary)
        args.workdir.mkdir(parents=True, exist_ok=True)
        (args.workdir / "glue_table.md").write_text(text)
        (args.workdir / "glue_table.json").write_text(json.dumps(summary, indent=1))
        print(text, end="")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
