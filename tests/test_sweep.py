"""Sweeps: combinations, skipping and resuming, refusing a changed config, the statistics, and a real grid × seeds."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, tiny_overrides
from scipy import stats

from sot_jax import sweep

CONFIG = "configs/sot_deit.py:digits"


class FakeTrainer:
    """Stands in for `python -m sot_jax.main`: logs a val_top1 that depends on the head and the seed, and marks the
    run finished, unless told to fail or to stop before the end."""

    def __init__(self, fail=(), stop=()):
        self.calls, self.fail, self.stop = [], set(fail), set(stop)

    def __call__(self, command):
        self.calls.append(command)
        workdir = Path(next(a.split("=", 1)[1] for a in command if a.startswith("--workdir=")))
        if workdir.name in self.fail and workdir.parent.name in self.fail:
            return 3
        head = next((a.split("=", 1)[1] for a in command if a.startswith("--config.model.head=")), "cls")
        seed = int(next(a.split("=", 1)[1] for a in command if a.startswith("--config.seed=")))
        value = {"cls": 90.0, "gem": 92.0}.get(head, 80.0) + seed
        with (workdir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"step": 10, "val_top1": value - 5}) + "\n")
            f.write(json.dumps({"step": 20, "val_top1": value}) + "\n")
        if workdir.name not in self.stop:
            (workdir / sweep.FINAL_FILE).write_text(json.dumps({"step": 20}))
        return 0


def run(tmp_path, *args, launch=None):
    return sweep.main([f"--config={CONFIG}", f"--workdir={tmp_path / 'w'}", *args], launch=launch)


def test_grid_and_variants_make_the_combinations():
    combos = sweep.combinations(["model.head=cls,gem", "lr=0.1,0.2"], ["exact:model.head=mgcrp:model.svpn=gram_eigh"])
    assert [c.name for c in combos] == [
        "model.head=cls,lr=0.1", "model.head=cls,lr=0.2", "model.head=gem,lr=0.1", "model.head=gem,lr=0.2", "exact"
    ]  # fmt: skip
    assert combos[-1].overrides == (("model.head", "mgcrp"), ("model.svpn", "gram_eigh"))
    assert [c.name for c in sweep.combinations([], [])] == ["base"]
    with pytest.raises(ValueError, match="two combinations are named 'a'"):
        sweep.combinations([], ["a:lr=0.1", "a:lr=0.2"])


def test_finished_runs_are_skipped_unfinished_resumed_and_failures_reported(tmp_path, capsys):
    trainer = FakeTrainer(stop={"seed_1"})
    assert run(tmp_path, "--grid=model.head=cls,gem", "--seeds=0,1", launch=trainer) == 0
    assert len(trainer.calls) == 4 and (tmp_path / "w" / "sweep_table.md").is_file()
    assert (tmp_path / "w" / "sweep.png").is_file()
    table = json.loads((tmp_path / "w" / "sweep_table.json").read_text())["combinations"]
    assert table["model.head=gem"]["seeds"]["1"] == "not finished" and table["model.head=gem"]["final"] == [92.0]
    # Again: only the two unfinished runs start (they resume in their own workdirs).
    trainer = FakeTrainer(fail={"model.head=gem", "seed_1"})
    assert run(tmp_path, "--grid=model.head=cls,gem", "--seeds=0,1", launch=trainer) == 1
    workdirs = [Path(a.split("=", 1)[1]) for c in trainer.calls for a in c if a.startswith("--workdir=")]
    resumed = sorted((w.parent.name, w.name) for w in workdirs)
    assert resumed == [("model.head=cls", "seed_1"), ("model.head=gem", "seed_1")]
    out = capsys.readouterr().out
    assert "model.head=gem/seed_1 failed (exit 3); the sweep goes on" in out and "1: failed (exit 3)" in out
    # A third time nothing is pending but the failed run; --print-commands lists it, as main would run it.
    assert run(tmp_path, "--grid=model.head=cls,gem", "--seeds=0,1", "--print-commands") == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith(f"python -m sot_jax.main --config={CONFIG} --workdir=")
    assert printed[0].endswith("--config.model.head=gem --config.seed=1")


def test_a_changed_config_or_another_config_file_is_refused(tmp_path, capsys):
    assert run(tmp_path, "--grid=model.head=cls", "--seeds=0", "--config.lr=0.01", launch=FakeTrainer()) == 0
    assert run(tmp_path, "--grid=model.head=cls", "--seeds=0", "--config.lr=0.02", launch=FakeTrainer()) == 2
    error = capsys.readouterr().err
    assert "seed_0 holds a run of another config (lr: 0.01 there, 0.02 now)" in error
    assert sweep.main(["--config=configs/hvt.py:digits", f"--workdir={tmp_path / 'w'}"], launch=FakeTrainer()) == 2
    assert "holds a sweep of --config=configs/sot_deit.py:digits, not configs/hvt.py:digits" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--grid=model.heads=cls"], "unknown config key 'model.heads': model has no 'heads'; valid: .*head"),
        (["--grid=model.depth=two"], "value 'two' of model.depth is not a int"),
        (["--variant=a:lr=1", "--variant=a:lr=2"], "two combinations are named 'a'"),
        (["--grid=lr=0.1,0.2", "--baseline=lr=0.3"], "--baseline 'lr=0.3' names no combination; they are: lr=0.1"),
        (["--grid=lr"], "--grid 'lr': expected KEY=V1,V2"),
        (["--config.no_such_key=1"], "unknown config key 'no_such_key'"),
    ],
)
def test_bad_sweeps_end_with_one_error_line(tmp_path, capsys, args, message):
    assert run(tmp_path, *args, launch=FakeTrainer()) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ")
    assert re.search(message, error[0]), error[0]


def test_comparison_statistics_match_their_definitions():
    a, b = [91.2, 92.5, 90.8, 93.1], [89.0, 90.1, 88.7]
    result = sweep.compare(a, b)
    assert result["difference"] == pytest.approx(np.mean(a) - np.mean(b))
    # Welch: t = Δ / sqrt(va/na + vb/nb), Welch–Satterthwaite degrees of freedom, two-sided.
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    assert result["welch_p"] == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)
    # Mann–Whitney, exact for small samples without ties: every a above every b is the most extreme of
    # C(7, 3) = 35 orderings, both tails: 2/35.
    assert result["mann_whitney_p"] == pytest.approx(2 / 35)
    assert math.isnan(sweep.compare([1.0], [2.0, 3.0])["welch_p"])


@pytest.mark.slow
def test_a_real_grid_of_heads_and_seeds_trains_summarizes_and_skips(digits_dir, tmp_path):
    """The issue's command at a tiny size: 2 heads × 2 seeds of `sot_jax.main`, then the same command again."""
    command = [
        sys.executable, "-m", "sot_jax.sweep", f"--config={CONFIG}", f"--workdir={tmp_path / 'w'}",
        "--grid=model.head=cls,gem", "--seeds=0,1", "--baseline=model.head=cls", f"--config.data_dir={digits_dir}",
        "--config.total_steps=2", "--config.eval_every_steps=2", "--config.input.workers=0", "--config.batch_size=8",
        *tiny_overrides(),
    ]  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    table = (tmp_path / "w" / "sweep_table.md").read_text()
    assert "| model.head=gem | 2 |" in table and "Welch p" in table and (tmp_path / "w" / "sweep.png").is_file()
    summary = json.loads((tmp_path / "w" / "sweep_table.json").read_text())
    assert summary["metric"] == "val_top1" and set(summary["combinations"]["model.head=cls"]["seeds"]) == {"0", "1"}
    for head in ("cls", "gem"):
        final = json.loads((tmp_path / "w" / f"model.head={head}" / "seed_1" / "final.json").read_text())
        assert final["step"] == 2 and final["metric"] == "val_top1"
    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0 and "seed 0:" not in again.stdout  # nothing trained again
    assert again.stdout.endswith(table)
    pending = subprocess.run([*command, "--print-commands"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert pending.returncode == 0 and pending.stdout == ""
