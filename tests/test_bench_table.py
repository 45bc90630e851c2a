"""`bench/results/issue31_table.sh` with LANES: rows side by side, each on its own GPU and CPU cores.

The rows' Python is a stub that reports what it was given (CUDA_VISIBLE_DEVICES, its CPU affinity, when it ran),
so the scheduling is tested without a GPU.
"""

import json
import os
import pathlib
import shutil
import subprocess

import pytest

SCRIPT = pathlib.Path(__file__).parent.parent / "bench" / "results" / "issue31_table.sh"
STUB = """#!/bin/bash
start=$(date +%s.%N)
sleep 1
cpus=$(python3 -c 'import os; print(sorted(os.sched_getaffinity(0)))')
echo "{\\"visible\\": \\"${CUDA_VISIBLE_DEVICES:-}\\", \\"cpus\\": $cpus, \\"start\\": $start, \\
\\"end\\": $(date +%s.%N)}"
"""
ROWS = ["matmul_peak", "matmul_peak_gpu1", "deit_s_jax", "deit_s_torch_eager", "sot_small_jax"]


def run_table(tmp_path: pathlib.Path, lanes: str) -> dict[str, dict]:
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    state = tmp_path / f"state{lanes}"
    env = dict(os.environ, PYTHON=str(stub), ONLY=" ".join(ROWS), LANES=lanes)
    env.pop("OUT", None)
    subprocess.run(["bash", str(SCRIPT), str(state), "600", str(tmp_path)], env=env, check=True, capture_output=True)
    results = {name: state / f"{name}.json" for name in ROWS}
    return {name: json.loads(path.read_text()) for name, path in results.items() if path.exists()}


@pytest.mark.skipif(shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2, reason="needs taskset, 2 CPUs")
def test_lanes_run_rows_side_by_side_each_on_its_gpu_and_cores(tmp_path):
    rows = run_table(tmp_path, "2")
    assert sorted(rows) == sorted(ROWS)
    cores = sorted(os.sched_getaffinity(0))
    per_lane = len(cores) // 2
    for name, row in rows.items():
        gpu = row["gpu"]
        assert row["visible"] == str(gpu), name
        assert row["cpus"] == cores[gpu * per_lane : (gpu + 1) * per_lane], name
    assert (rows["matmul_peak"]["gpu"], rows["matmul_peak_gpu1"]["gpu"]) == (0, 1)
    assert rows["matmul_peak_gpu1"]["start"] < rows["matmul_peak"]["end"]  # side by side
    assert {row["gpu"] for row in rows.values()} == {0, 1}

    one_lane = run_table(tmp_path, "1")  # the default: one row at a time, on whatever GPUs the machine has
    assert sorted(one_lane) == sorted(set(ROWS) - {"matmul_peak_gpu1"})
    assert all(row["visible"] == "" and "gpu" not in row and row["cpus"] == cores for row in one_lane.values())
    ordered = sorted(one_lane.values(), key=lambda row: row["start"])
    assert all(before["end"] <= after["start"] for before, after in zip(ordered[:-1], ordered[1:], strict=True))
