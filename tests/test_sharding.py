"""Sharding and multi-host: 8 devices (data and FSDP) and 2 processes match one, no image leaves its device when
mixing within device batches, and SIGTERM stops every process at one step."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT, assert_trees_close, common_flags, params_of, reference_run, run_main, tiny_overrides


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["data", "fsdp"])
def test_eight_devices_match_one(digits_dir, tiny_config, tmp_path, sharding):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = run_main([*common_flags(digits_dir, tmp_path / "eight"), f"--config.sharding={sharding}"], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    single = reference_run(tiny_config, tmp_path / "one")
    assert_trees_close(params_of(tmp_path / "eight")["params"], single.params, rtol=2e-4, atol=2e-5)


@pytest.mark.slow
def test_fsdp_shards_parameters_over_the_mesh():
    script = (
        "import jax, numpy as np; from jax.sharding import Mesh; from sot_jax import sharding, models;"
        "m = models.create_model('deit_small_patch16_224');"
        "params = models.abstract_variables(m)['params'];"
        "mesh = Mesh(np.array(jax.devices()), ('data',));"
        "s = [sharding.fsdp_spec(x.shape, mesh.size) for x in jax.tree.leaves(params)];"
        "leaves = jax.tree.leaves(params);"
        "print(sum(x.size for x, p in zip(leaves, s) if p != ()) / sum(x.size for x in leaves))"
    )  # fmt: skip
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) > 0.99  # all but biases and norms


COLLECTIVES_SCRIPT = """
import re
import jax, jax.numpy as jnp
from sot_jax import experiment, recipes
config = recipes.base_config()
config.model.update(name="deit_tiny_patch16_224", img_size=32, depth=1)
config.batch_size, config.aug.mixup, config.aug.cutmix = 16, 0.8, 1.0
for config.aug.mix_group_size in (0, 2):
    trainer = experiment.build_trainer(config, num_classes=10, total_steps=100)
    images = trainer.batch_sharding
    batch = {"image": jax.ShapeDtypeStruct((16, 32, 32, 3), jnp.uint8, sharding=images),
             "label": jax.ShapeDtypeStruct((16,), jnp.int32, sharding=images)}
    compiled = trainer.jit_step().lower(trainer.abstract_state, batch).compile()
    print(len(re.findall(r" collective-permute(?:-start)?\\(", compiled.as_text())))
"""


@pytest.mark.slow
def test_mixing_within_each_device_batch_sends_no_images_between_devices():
    """Mixup/CutMix partners of the reversed global batch live on other devices (collective-permutes of the images
    and targets); with aug.mix_group_size equal to each device's batch (2 of 16 images on each of 8 devices) they
    stay local."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", COLLECTIVES_SCRIPT], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-2000:]
    global_batch, per_device = map(int, result.stdout.split()[-2:])
    assert global_batch > 0 and per_device == 0


@pytest.mark.slow
def test_two_processes_match_one(digits_dir, tiny_config, tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    flags = [
        *common_flags(digits_dir, tmp_path / "two"),
        f"--coordinator_address=localhost:{port}",
        "--num_processes=2",
    ]
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sot_jax.main",
                "--config=configs/sot_deit.py:digits",
                *tiny_overrides(),
                *flags,
                f"--process_id={i}",
            ],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs[0][1][-3000:] + outputs[1][1][-3000:]
    single = reference_run(tiny_config, tmp_path / "one")
    assert_trees_close(params_of(tmp_path / "two")["params"], single.params, rtol=2e-4, atol=2e-5)


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(digits_dir, tmp_path):
    """Preemption needs no per-step collective: JAX's preemption service tells every process where to stop."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    flags = [f"--workdir={tmp_path}", f"--config.data_dir={digits_dir}", "--config.batch_size=8",
             "--config.total_steps=400", "--config.log_every_steps=1", "--config.eval_every_steps=1000",
             "--config.checkpoint_every_steps=1000", f"--coordinator_address=localhost:{port}", "--num_processes=2"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    command = [sys.executable, "-m", "sot_jax.main", "--config=configs/sot_deit.py:digits", *tiny_overrides(), *flags]
    processes = [
        subprocess.Popen([*command, f"--process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)  # fmt: skip
        for i in range(2)
    ]
    metrics = tmp_path / "metrics.jsonl"
    for _ in range(600):  # until both train (process 0 logs every step)
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.5)
    processes[1].send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=300) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs[0][1][-2000:] + outputs[1][1][-2000:]
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and 3 <= saved[0] < 400  # one checkpoint, written together where both stopped
    assert all(f"SIGTERM: saved step {saved[0]}" in out for out, _ in outputs)
