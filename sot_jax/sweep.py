r"""Studies in one command: a grid of config values × seeds, each an ordinary `sot_jax.main` training, then a table
with statistics and a plot.

    python -m sot_jax.sweep --config=configs/sot_deit.py:digits --workdir=runs/heads \
        --grid=model.head=cls,gem,mgcrp --seeds=0,1,2 [--variant=exact:model.head=mgcrp:model.svpn=gram_eigh] \
        [--baseline=model.head=cls] [--metric=val_top1] [--config.KEY=VALUE ...] [--print-commands] [--summarize]

- `--grid=KEY=V1,V2,...` axes combine as a product; `--variant=NAME:KEY=V[:KEY=V...]` adds a named set of
  overrides (for combinations a product cannot express); `--config.KEY=VALUE` applies to every run.
- Each run trains in `WORKDIR/<combination>/seed_<s>` as `python -m sot_jax.main ... --config.seed=<s>` (its own
  checkpoints, metrics and exact resume). Running the same command again skips finished runs (`final.json`) and
  resumes interrupted ones; a run directory whose recorded config differs from the one asked now is refused, never
  reused. A failing run is reported and the sweep goes on.
- `--print-commands` prints one `python -m sot_jax.main ...` line per pending run (for a scheduler or GNU
  parallel) instead of running them; `--summarize` only summarizes what is there.
- The summary (`WORKDIR/sweep_table.md`, `sweep_table.json`, printed) gives per combination the metric's final and
  best value per seed, n, mean ± std (sample std), min–max and, against `--baseline` (default: the first
  combination), the difference of the final values' means with Welch's t-test and the Mann–Whitney U test
  (two-sided p-values). `WORKDIR/sweep.png` shows
  the final values per combination (every seed a point, the mean a bar) and the validation curves. The metric
  defaults to the config's `best_metric` (the one checkpoints are ranked by).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import itertools
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sot_jax import recipes
from sot_jax.errors import UserError

FINAL_FILE = "final.json"  # written by the trainer when a run reaches its last step
RUN_FILE = "sweep_run.json"  # the command and resolved config of a run, written before it starts
SWEEP_FILE = "sweep.json"  # the config file and variant a sweep directory belongs to


def parse_value(config: Any, key: str, text: str) -> Any:
    """`text` as the type of config field `key` (as `--config.KEY=VALUE` parses it); a UserError if it is not."""
    node, leaf = recipes.config_node(config, key)
    kind = node.get_type(leaf)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if kind in (int, float):
            return kind(text)
        if kind is str:
            return text
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise UserError(f"value {text!r} of {key} is not a {getattr(kind, '__name__', kind)}") from None


@dataclasses.dataclass(frozen=True)
class Combination:
    """A named set of overrides (KEY -> VALUE as typed on the command line); its runs go in the sweep's
    `<folder>/seed_<s>`, the folder by default the name ("": the sweep directory itself)."""

    name: str
    overrides: tuple[tuple[str, str], ...]
    folder: str | None = None

    @property
    def directory(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", self.name) if self.folder is None else self.folder


def combinations(grid: Sequence[str], variants: Sequence[str]) -> list[Combination]:
    """The product of the `--grid` axes, then the `--variant`s; one "base" combination when there is neither."""
    axes = []
    for axis in grid:
        key, equals, values = axis.partition("=")
        if not equals or not values:
            raise UserError(f"--grid {axis!r}: expected KEY=V1,V2,...")
        axes.append([(key, value) for value in values.split(",")])
    found = [
        Combination(",".join(f"{k}={v}" for k, v in pairs), tuple(pairs)) for pairs in itertools.product(*axes)
    ] if axes else []  # fmt: skip
    for variant in variants:
        name, colon, rest = variant.partition(":")
        pairs = [item.partition("=") for item in rest.split(":")] if colon else []
        if not name or any(not key or not equals for key, equals, _ in pairs):
            raise UserError(f"--variant {variant!r}: expected NAME:KEY=V[:KEY=V...]")
        found.append(Combination(name, tuple((key, value) for key, _, value in pairs)))
    names = [c.name for c in found]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"two combinations are named {repeated[0]!r}; give each --variant its own name")
    return found or [Combination("base", ())]


@dataclasses.dataclass
class Run:
    combination: Combination
    seed: int
    directory: Path
    command: list[str]
    config: dict[str, Any]

    def finished(self) -> bool:
        return (self.directory / FINAL_FILE).is_file()


def plan(spec: str, workdir: Path, combos: list[Combination], seeds: Sequence[int], common: Sequence[str]) -> list[Run]:
    """Every run of the sweep, with its command and resolved config; a UserError for unknown keys, values of the
    wrong type, or a run directory (or sweep directory) that holds another config's runs."""
    recorded = workdir / SWEEP_FILE
    other = json.loads(recorded.read_text())["config"] if recorded.is_file() else spec
    if other != spec:
        raise UserError(f"{workdir} holds a sweep of --config={other}, not {spec}; use another --workdir")
    overrides_common = []
    for item in common:
        match = re.fullmatch(r"--config\.([^=]+)=(.*)", item)
        if not match:
            raise UserError(f"unknown argument {item!r}; config values are given as --config.KEY=VALUE")
        overrides_common.append((match.group(1), match.group(2)))
    runs = []
    for combo in combos:
        for seed in seeds:
            config = recipes.load_config_file(spec)
            pairs = [*overrides_common, *combo.overrides, ("seed", str(seed))]
            for key, text in pairs:
                node, leaf = recipes.config_node(config, key)
                node[leaf] = parse_value(config, key, text)
            directory = workdir / combo.directory / f"seed_{seed}"
            command = [sys.executable, "-m", "sot_jax.main", f"--config={spec}", f"--workdir={directory}"]
            command += [f"--config.{key}={text}" for key, text in pairs]
            run = Run(combo, seed, directory, command, json.loads(config.to_json_best_effort()))
            previous = directory / RUN_FILE
            if previous.is_file():
                differs = _first_difference(json.loads(previous.read_text())["config"], run.config)
                if differs:
                    raise UserError(
                        f"{directory} holds a run of another config ({differs}); remove it or use another --workdir"
                    )
            runs.append(run)
    return runs


def _first_difference(old: Any, new: Any, path: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return ""
    return "" if old == new else f"{path}: {old!r} there, {new!r} now"


def _record(workdir: Path, spec: str, run: Run) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / SWEEP_FILE).write_text(json.dumps({"config": spec}))
    run.directory.mkdir(parents=True, exist_ok=True)
    (run.directory / RUN_FILE).write_text(json.dumps({"command": run.command, "config": run.config}, indent=1))


def execute(runs: list[Run], workdir: Path, spec: str, launch: Callable[[list[str]], int]) -> dict[str, int]:
    """Run every pending run in turn (finished ones are skipped); returns the failed runs' exit codes by dir."""
    failed = {}
    for index, run in enumerate(runs, 1):
        if run.finished():
            continue
        _record(workdir, spec, run)
        print(f"[{index}/{len(runs)}] {run.combination.name}, seed {run.seed}: {run.directory}", flush=True)
        code = launch(run.command)
        if code != 0:
            failed[str(run.directory)] = code
            print(f"run {run.directory} failed (exit {code}); the sweep goes on", flush=True)
    return failed


def print_pending(runs: list[Run], workdir: Path, spec: str) -> None:
    """One `python -m sot_jax.main ...` line per run not finished (recorded first, as `execute` does)."""
    for run in runs:
        if not run.finished():
            _record(workdir, spec, run)
            print(shlex.join(["python", *run.command[1:]]))


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


def compare(values: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
    """Difference of means, Welch's t-test and the Mann–Whitney U test (two-sided p-values; NaN below 2 runs)."""
    from scipy import stats

    difference = float(np.mean(values) - np.mean(baseline))
    if min(len(values), len(baseline)) < 2:
        return {"difference": difference, "welch_p": float("nan"), "mann_whitney_p": float("nan")}
    welch = stats.ttest_ind(values, baseline, equal_var=False).pvalue
    mann_whitney = stats.mannwhitneyu(values, baseline, alternative="two-sided").pvalue
    return {"difference": difference, "welch_p": float(welch), "mann_whitney_p": float(mann_whitney)}


def summarize(runs: list[Run], metric: str, baseline: str | None, failed: dict[str, int]) -> dict[str, Any]:
    """Per combination: each seed's final and best value (or why it has none), n, mean ± std, min–max, and the
    comparison with `baseline`."""
    rows = {}
    for run in runs:
        row = rows.setdefault(run.combination.name, {"seeds": {}, "final": [], "best": []})
        if not (run.directory / "metrics.jsonl").is_file() or not run.finished():
            code = failed.get(str(run.directory))
            row["seeds"][run.seed] = f"failed (exit {code})" if code is not None else "not finished"
            continue
        final, best, _ = final_and_best(run.directory, metric)
        row["seeds"][run.seed] = {"final": final, "best": best}
        row["final"].append(final)
        row["best"].append(best)
    for row in rows.values():
        for kind in ("final", "best"):
            values = np.asarray(row[kind], float)
            row[f"{kind}_stats"] = {
                "n": len(values), "mean": float(values.mean()) if len(values) else float("nan"),
                "std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                "min": float(values.min()) if len(values) else float("nan"),
                "max": float(values.max()) if len(values) else float("nan"),
            }  # fmt: skip
    if baseline is not None:
        for name, row in rows.items():
            if name != baseline and row["final"] and rows[baseline]["final"]:
                row["vs_baseline"] = compare(row["final"], rows[baseline]["final"])
    return {"metric": metric, "baseline": baseline, "combinations": rows}


def markdown(summary: dict[str, Any]) -> str:
    metric, baseline = summary["metric"], summary["baseline"]
    lines = [
        f"{metric}: final and best per run (seed: final / best), mean ± std over seeds (sample std), min–max"
        + (f"; against {baseline}: difference of the final means, Welch's t-test p, Mann–Whitney U p" if baseline
           else ""),  # fmt: skip
        "",
        "| combination | n | final mean ± std | final min–max | best mean ± std | per seed"
        + (" | Δ final vs baseline | Welch p | Mann–Whitney p |" if baseline else " |"),
        "|---|---|---|---|---|---" + ("|---|---|---|" if baseline else "|"),
    ]
    for name, row in summary["combinations"].items():
        final, best = row["final_stats"], row["best_stats"]
        seeds = "; ".join(
            f"{seed}: {v['final']:.2f} / {v['best']:.2f}" if isinstance(v, dict) else f"{seed}: {v}"
            for seed, v in row["seeds"].items()
        )
        cells = [
            name, str(final["n"]), f"{final['mean']:.2f} ± {final['std']:.2f}",
            f"{final['min']:.2f}–{final['max']:.2f}", f"{best['mean']:.2f} ± {best['std']:.2f}", seeds,
        ]  # fmt: skip
        if baseline:
            versus = row.get("vs_baseline")
            cells += ["(baseline)", "", ""] if name == baseline else (
                [f"{versus['difference']:+.2f}", f"{versus['welch_p']:.3g}", f"{versus['mann_whitney_p']:.3g}"]
                if versus else ["", "", ""]
            )  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: list[Run], summary: dict[str, Any], output: Path) -> Path:
    from matplotlib.figure import Figure

    from sot_jax.plot import read_metrics

    metric = summary["metric"]
    names = list(summary["combinations"])
    figure = Figure(figsize=(12, 4.5))
    points, curves = figure.subplots(1, 2)
    for index, name in enumerate(names):
        values = summary["combinations"][name]["final"]
        points.scatter(np.full(len(values), index), values, color=f"C{index}", alpha=0.7)
        if values:
            points.hlines(np.mean(values), index - 0.3, index + 0.3, color=f"C{index}")
    points.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    points.set_ylabel(f"final {metric}")
    for run in runs:
        if run.finished():
            rows = [r for r in read_metrics(run.directory) if metric in r]
            color = f"C{names.index(run.combination.name)}"
            curves.plot([r["step"] for r in rows], [r[metric] for r in rows], color=color, alpha=0.6, lw=1)
    curves.set_xlabel("step")
    curves.set_ylabel(metric)
    figure.tight_layout()
    figure.savefig(output, dpi=110)
    return output


def write_summary(runs: list[Run], workdir: Path, metric: str, baseline: str | None, failed: dict) -> str:
    summary = summarize(runs, metric, baseline, failed)
    table = markdown(summary)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "sweep_table.md").write_text(table)
    (workdir / "sweep_table.json").write_text(json.dumps(summary, indent=1))
    if any(run.finished() for run in runs):
        plot(runs, summary, workdir / "sweep.png")
    return table


def main(argv: list[str] | None = None, launch: Callable[[list[str]], int] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sot_jax.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="FILE[:VARIANT], as for sot_jax.main")
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--grid", action="append", default=[], help="KEY=V1,V2,... (axes combine as a product)")
    parser.add_argument("--variant", action="append", default=[], help="NAME:KEY=V[:KEY=V...]")
    parser.add_argument("--seeds", default=None, help="comma-separated (default: the config's seed)")
    parser.add_argument("--baseline", help="the combination the others are compared with (default: the first)")
    parser.add_argument("--metric", help="default: the config's best_metric")
    parser.add_argument("--print-commands", action="store_true", help="print the pending runs' commands only")
    parser.add_argument("--summarize", action="store_true", help="only summarize the runs that are there")
    args, common = parser.parse_known_args(argv)
    try:
        base = recipes.load_config_file(args.config)
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [base.seed]
        combos = combinations(args.grid, args.variant)
        names = [c.name for c in combos]
        if args.baseline is not None and args.baseline not in names:
            raise UserError(f"--baseline {args.baseline!r} names no combination; they are: {', '.join(names)}")
        baseline = args.baseline or (names[0] if len(names) > 1 else None)
        runs = plan(args.config, args.workdir, combos, seeds, common)
        metric = args.metric or recipes.best_metric(base)
        if args.print_commands:
            print_pending(runs, args.workdir, args.config)
            return 0
        failed = {} if args.summarize else execute(runs, args.workdir, args.config, launch or run_command)
        print(write_summary(runs, args.workdir, metric, baseline, failed), end="")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if failed else 0


def run_command(command: list[str]) -> int:
    return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main())
