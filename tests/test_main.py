"""The command line: `python -m sot_jax.main` trains and resumes, bad input ends with one error line, and importing
sot_jax starts no JAX backend."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_main

from sot_jax import models, plot


def test_command_line_errors_exit_non_zero_with_one_message(digits_dir, tmp_path):
    result = run_main([f"--workdir={tmp_path}", f"--config.data_dir={digits_dir}", "--config.lr=-1"])
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == "error: invalid config: lr must be positive, got -1.0"


@pytest.mark.slow
def test_main_trains_the_digits_demo_from_the_command_line(digits_dir, tmp_path):
    result = run_main([f"--workdir={tmp_path}", f"--config.data_dir={digits_dir}", "--config.total_steps=4"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "4").is_dir()
    rerun = run_main([f"--workdir={tmp_path}", f"--config.data_dir={digits_dir}", "--config.total_steps=4"])
    assert rerun.returncode == 0 and "resumed from" in rerun.stdout
    assert Path(plot.plot(tmp_path)).is_file()
    assert models.list_models()  # the package imports cleanly after a run


@pytest.mark.slow
def test_a_head_chosen_on_the_command_line_trains_the_digits_demo(digits_dir, tmp_path):
    result = run_main([f"--workdir={tmp_path}", f"--config.data_dir={digits_dir}", "--config.total_steps=2",
                       "--config.model.head=gem", "--config.model.gem_positive=softplus"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((tmp_path / "checkpoints" / "2" / "meta" / "metadata").read_text())
    assert meta["overrides"]["head"] == "gem" and meta["overrides"]["gem_positive"] == "softplus"


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,message",
    [
        (["--config=configs/sot_deit.py:sot_huge"], "error: unknown config variant 'sot_huge'; choose one of digits, "),
        (["--config.model.haed=gem"], "error: unknown config key 'model.haed': model has no 'haed'; valid: attention,"),
        (["--config.batch_size=many"], "error: flag --config.batch_size=many: invalid literal for int()"),
        (["--config.model.fusion=mean"], "error: unknown fusion 'mean'; choose one of sum_fc, concat, aggre_all,"),
        (["--config.dataset=folder"], "error: folder dataset "),
    ],
)
def test_bad_command_lines_end_with_one_error_line(tmp_path, args, message):
    result = run_main([f"--workdir={tmp_path}", f"--config.data_dir={tmp_path / 'none'}", *args])
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-2000:]


def test_main_prints_user_errors_as_one_line_and_keeps_other_tracebacks(monkeypatch):
    from sot_jax import main
    from sot_jax.errors import UserError

    def fail_with(error):
        def parse(argv):
            raise error

        monkeypatch.setattr(main, "parse_flags", parse)

    fail_with(UserError("bad value"))
    with pytest.raises(SystemExit, match="^error: bad value$"):
        main.run()
    fail_with(TypeError("a bug"))
    with pytest.raises(TypeError, match="a bug"):
        main.run()


@pytest.mark.slow
def test_every_module_imports_before_jax_distributed_initializes(tmp_path):
    """Importing sot_jax must not start a JAX backend: `jax.distributed.initialize` must still work after it."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    script = (
        "import importlib, pkgutil, sys, sot_jax\n"
        "for m in pkgutil.walk_packages(sot_jax.__path__, 'sot_jax.'): importlib.import_module(m.name)\n"
        "import jax\n"
        f"jax.distributed.initialize('localhost:{port}', 2, int(sys.argv[1]))\n"
        "print('processes', jax.process_count())\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(i)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)  # fmt: skip
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    for p, (out, err) in zip(processes, outputs, strict=True):
        assert p.returncode == 0 and "processes 2" in out, err[-3000:]
