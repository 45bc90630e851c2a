"""The trainer: resume equality, checkpoints, sharding, two processes, fine-tuning, evaluation, bad input."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, TINY_MODEL, set_config, tiny_overrides

from sot_jax import checkpoints, evaluate, models, optim, plot, recipes, train


def params_of(workdir) -> dict:
    return checkpoints.read_init_variables(str(workdir))


def assert_trees_close(a, b, rtol=0.0, atol=0.0):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def full_augmentation(tiny_config, **changes):
    """The ImageNet recipe's augmentation and EMA on the tiny model: every source of randomness is exercised."""
    return tiny_config(
        randaugment_layers=2, hflip=True, random_erasing=0.25, mixup=0.8, cutmix=1.0, ema_decay=0.9, **changes
    )


@pytest.mark.slow
def test_resume_after_sigterm_ends_with_the_same_params(tiny_config, tmp_path):
    config = full_augmentation(tiny_config)
    uninterrupted = train.train_and_evaluate(config, tmp_path / "a")

    def interrupt(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    interrupted = train.train_and_evaluate(config, tmp_path / "b", after_step=interrupt)
    assert int(interrupted.step) == 2
    assert (tmp_path / "b" / "checkpoints" / "2").is_dir()  # SIGTERM saved before exiting
    # As a checkpoint written before input positions were saved (or by another number of processes): the
    # position follows from the step.
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "2" / "data")
    resumed = train.train_and_evaluate(config, tmp_path / "b")
    assert int(resumed.step) == 6
    assert_trees_close(uninterrupted.params, resumed.params)
    assert_trees_close(uninterrupted.ema_params, resumed.ema_params)
    assert_trees_close(uninterrupted.opt_state, resumed.opt_state)


def test_checkpoints_keep_the_latest_state_and_evaluations_only_the_best_weights(tiny_config, tmp_path):
    """An evaluation writes no training state: the resumable state is written every checkpoint_every_steps (the
    latest keep_checkpoints kept), the best weights (no optimizer state) only when the ranking metric improves."""
    config = tiny_config(total_steps=8, eval_every_steps=1, checkpoint_every_steps=4, keep_checkpoints=2, lr=3e-3)
    writes = []
    original = checkpoints.BestWeights.update

    def update(self, step, results, state):
        written = original(self, step, results, state)
        writes.append((step, written))
        return written

    with mock.patch.object(checkpoints.BestWeights, "update", update):
        final = train.train_and_evaluate(config, tmp_path)
    evals = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "val_top1" in r]
    assert [r["step"] for r in evals] == list(range(1, 9))
    kept = {int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()}
    assert kept == {4, 8}
    scores = [r["val_top1"] for r in evals]
    improved = [r["step"] for i, r in enumerate(evals) if scores[i] > max(scores[:i], default=-1)]
    assert [step for step, written in writes if written] == improved
    best = improved[-1]
    assert [int(p.name) for p in (tmp_path / "best").iterdir() if p.name.isdigit()] == [best]
    assert not (tmp_path / "best" / str(best) / "state" / "opt_state").exists()
    weights = checkpoints.read_init_variables(str(tmp_path / "best"))  # init_from reads it as a workdir
    assert set(weights) == {"params", "batch_stats"}
    if best == 8:
        assert_trees_close(weights["params"], final.params)
    train_rows = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 9))
    assert all({"lr", "img_per_sec", "grad_norm"} <= set(r) for r in train_rows)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()  # TensorBoard reads what metrics.jsonl has
    logged = [(r["step"], pytest.approx(r["val_top1"], rel=1e-6)) for r in evals]  # float32 in the event file
    assert [(e.step, e.value) for e in events.Scalars("val_top1")] == logged
    assert plot.plot(tmp_path).is_file()


@pytest.mark.slow
def test_a_crashed_save_never_costs_the_previous_checkpoint(tiny_config, tmp_path):
    config = tiny_config()
    train.train_and_evaluate(config, tmp_path)
    # A save interrupted mid-write leaves only Orbax's temporary directory behind.
    partial = tmp_path / "checkpoints" / "9.orbax-checkpoint-tmp-1234"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\0" * 100)
    state = train.train_and_evaluate(tiny_config(total_steps=9), tmp_path)
    assert int(state.step) == 9
    # A checkpoint corrupted after the fact is named, not silently skipped.
    for path in (tmp_path / "checkpoints" / "9" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"corrupt")
    with pytest.raises(ValueError, match=r"cannot resume from checkpoint .*checkpoints/9"):
        train.train_and_evaluate(tiny_config(total_steps=12), tmp_path)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path):
    config = tiny_config(lr=1e38, warmup_epochs=0, checkpoint_every_steps=1, eval_every_steps=100)
    with pytest.raises(train.NonFiniteLossError) as error:
        train.train_and_evaluate(config, tmp_path)
    message = str(error.value)
    bad_step = int(re.search(r"loss became \S+ at step (\d+); stopping", message).group(1))
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) < bad_step  # nothing from the bad step on was written
    assert f"the last good checkpoint, step {max(saved)}, is intact" in message
    assert params_of(tmp_path)["params"]  # and it restores


@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch(tiny_config, tmp_path):
    runs = {}
    for accum in (1, 2):
        config = tiny_config(total_steps=2, label_smoothing=0.0, grad_accum_steps=accum)
        state = train.train_and_evaluate(config, tmp_path / str(accum))
        rows = [json.loads(r) for r in (tmp_path / str(accum) / "metrics.jsonl").read_text().splitlines()]
        runs[accum] = (state, [r["grad_norm"] for r in rows if "grad_norm" in r])
    np.testing.assert_allclose(runs[1][1], runs[2][1], rtol=1e-5)  # the same gradients
    # Adam's first steps are about lr · sign(g): rounding in near-zero gradients moves params by up to ~lr.
    assert_trees_close(runs[1][0].params, runs[2][0].params, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "model,overrides",
    [
        ("deit_tiny_sot", {"fusion": "sum_loss", "wr_dim": 4}),
        ("lvvit_t", {}),
        ("hvt_ti_1", {"pool_block_width": 2, "remat": "dots_saveable"}),
    ],
)
def test_paired_losses_and_other_families_train(tiny_config, tmp_path, model, overrides):
    config = tiny_config(total_steps=2, **{"model.name": model})
    config.model.update(overrides)
    state = train.train_and_evaluate(config, tmp_path)
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert int(state.step) == 2


@pytest.mark.slow
def test_init_from_a_converted_checkpoint_fine_tunes_a_new_classifier(tiny_config, tmp_path):
    config = tiny_config(total_steps=1, warmup_lr=0.0, ema_decay=0.5)
    pretrained_model = recipes.build_model(config.model, num_classes=7)
    variables = pretrained_model.init({"params": jax.random.key(42)}, jnp.zeros((1, 32, 32, 3)))
    overrides = {k: v for k, v in recipes.model_overrides(config.model).items() if k != "dtype"}
    metadata = {"model": config.model.name, "num_classes": 7, "overrides": overrides}
    checkpoints.save_model(tmp_path / "pretrained", variables, metadata)
    config.init_from = str(tmp_path / "pretrained")
    state = train.train_and_evaluate(config, tmp_path / "run")  # lr 0 at step 0: params stay as loaded
    assert state.params["classifier"]["cls_fc"]["kernel"].shape == (32, 10)
    assert_trees_close(state.params["blocks_0"], variables["params"]["blocks_0"])
    assert_trees_close(state.ema_params["blocks_0"], variables["params"]["blocks_0"])
    with pytest.raises(ValueError, match="init_from .* does not fit the model: .*blocks_0"):
        checkpoints.merge_pretrained(state.params, {**variables["params"], "blocks_0": {}}, "x")


@pytest.mark.slow
def test_eval_only_reports_params_and_ema(tiny_config, tmp_path):
    train.train_and_evaluate(tiny_config(ema_decay=0.9), tmp_path)
    results = evaluate.evaluate_checkpoint(tiny_config(eval_only=True, init_from=str(tmp_path)))
    assert set(results) == {"val_top1", "val_top5", "ema_val_top1", "ema_val_top5"}
    last = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines() if "val_top1" in r][-1]
    assert results["val_top1"] == pytest.approx(last["val_top1"])


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"lr": 0.0}, "lr must be positive"),
        ({"input.workers": -2}, r"input.workers must be -1 \(one per core\), 0 \(none\) or a positive integer, got -2"),
        ({"batch_size": 9, "grad_accum_steps": 2}, "batch_size 9 does not divide over 1 devices × 2 accumulation"),
        ({"img_size": 30}, "image size 30x30 must be positive and divisible by its stride 16"),
        ({"dataset": "no_such_dataset"}, "unknown dataset 'no_such_dataset'"),
        ({"dataset": "imagenet2012"}, "python -m sot_jax.prepare imagenet2012 --data_dir=.* --manual_dir="),
        ({"model.name": "sot_huge"}, "unknown model 'sot_huge'"),
        ({"model.head": "attention"}, "unknown head 'attention'"),
        ({"model.remat": "dots"}, "unknown remat policy 'dots'"),
        ({"sharding": "tensor"}, "sharding must be 'data' or 'fsdp'"),
        ({"model.bn_group_size": 3}, r"model.bn_group_size 3 does not divide the \(micro-\)batch of 8 images"),
    ],
)
def test_bad_config_stops_with_a_clear_message(tiny_config, tmp_path, changes, message):
    config = tiny_config(data_dir=str(tmp_path / "empty") if changes.get("dataset") == "imagenet2012" else None)
    if config.data_dir is None:
        config = tiny_config()
    for key, value in changes.items():
        set_config(config, key, value)
    with pytest.raises(ValueError, match=message):
        train.train_and_evaluate(config, tmp_path / "run")


def run_main(args, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sot_jax.main", "--config=configs/sot_deit.py:digits", *tiny_overrides(), *args],
        cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=600, **kwargs,
    )  # fmt: skip


def test_command_line_errors_exit_non_zero_with_one_message(digits_dir, tmp_path):
    result = run_main([f"--workdir={tmp_path}", f"--config.data_dir={digits_dir}", "--config.lr=-1"])
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == "error: invalid config: lr must be positive, got -1.0"


def common_flags(digits_dir, workdir):
    return [
        f"--workdir={workdir}", f"--config.data_dir={digits_dir}", "--config.batch_size=8", "--config.total_steps=3",
        "--config.eval_every_steps=3", "--config.checkpoint_every_steps=3", "--config.aug.mixup=0.8",
        "--config.aug.cutmix=1.0", "--config.aug.random_erasing=0.25",
    ]  # fmt: skip


def reference_run(tiny_config, workdir, **changes):
    config = tiny_config(total_steps=3, mixup=0.8, cutmix=1.0, random_erasing=0.25, **changes)
    return train.train_and_evaluate(config, workdir)


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
import functools, re, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from sot_jax import optim, recipes, train, sharding
config = recipes.base_config()
config.model.update(name="deit_tiny_patch16_224", img_size=32, depth=1)
config.batch_size, config.aug.mixup, config.aug.cutmix = 16, 0.8, 1.0
mesh = Mesh(np.array(jax.devices()), ("data",))
model = recipes.build_model(config.model, num_classes=10)
abstract = jax.eval_shape(functools.partial(train.initial_state, model, config, 100))
tx, schedule = optim.make_optimizer(config, abstract.params, 100)
images = NamedSharding(mesh, P("data"))
batch = {"image": jax.ShapeDtypeStruct((16, 32, 32, 3), jnp.uint8, sharding=images),
         "label": jax.ShapeDtypeStruct((16,), jnp.int32, sharding=images)}
for config.aug.mix_group_size in (0, 2):
    step = train.jit_train_step(model, tx, schedule, config, sharding.state_shardings(abstract, mesh, "data"), images)
    print(len(re.findall(r" collective-permute(?:-start)?\\(", step.lower(abstract, batch).compile().as_text())))
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
def test_main_trains_the_digits_demo_from_the_command_line(digits_dir, tmp_path):
    result = run_main([f"--workdir={tmp_path}", f"--config.data_dir={digits_dir}", "--config.total_steps=4"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "4").is_dir()
    rerun = run_main([f"--workdir={tmp_path}", f"--config.data_dir={digits_dir}", "--config.total_steps=4"])
    assert rerun.returncode == 0 and "resumed from" in rerun.stdout
    assert Path(plot.plot(tmp_path)).is_file()
    assert models.list_models()  # the package imports cleanly after a run


@pytest.mark.slow
def test_a_tiny_imagenet2012_run_works_end_to_end(tiny_imagenet, tiny_config, tmp_path):
    config = full_augmentation(
        tiny_config, dataset="imagenet2012", data_dir=tiny_imagenet, batch_size=4, total_steps=4, eval_every_steps=4
    )
    state = train.train_and_evaluate(config, tmp_path)
    assert state.params["classifier"]["cls_fc"]["kernel"].shape[-1] == 1000
    last = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()][-1]
    assert 0.0 <= last["val_top1"] <= 100.0 and "ema_val_top1" in last


def test_schedule_follows_timm_cosine_with_warmup_and_cooldown(tiny_config):
    config = tiny_config(lr=1e-3, warmup_lr=1e-6, min_lr=1e-5, num_epochs=10, warmup_epochs=2, cooldown_epochs=2)
    schedule = optim.make_schedule(config, total_steps=120)  # 12 epochs of 10 steps
    lr = lambda step: float(schedule(step))  # noqa: E731
    assert lr(0) == pytest.approx(1e-6) and lr(9) == pytest.approx(1e-6)  # constant within an epoch
    assert lr(10) == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)
    cosine = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + np.cos(np.pi * 5 / 10))
    assert lr(50) == pytest.approx(cosine, rel=1e-5)
    assert lr(100) == pytest.approx(1e-5) and lr(119) == pytest.approx(1e-5)  # cooldown at min_lr


def test_weight_decay_skips_one_dimensional_and_named_parameters():
    params = models.abstract_variables(models.create_model("deit_tiny_patch16_224", num_classes=3))["params"]
    mask = optim.weight_decay_mask(params, ("pos_embed", "cls_token"))
    assert mask["blocks_0"]["attn"]["qkv"]["kernel"] and not mask["blocks_0"]["attn"]["qkv"]["bias"]
    assert not mask["norm"]["scale"] and not mask["pos_embed"] and not mask["cls_token"]
    sot = models.abstract_variables(models.create_model("sot_tiny", num_classes=3))["params"]
    sot_mask = optim.weight_decay_mask(sot, ())
    assert sot_mask["cls_token"]  # SoT decays its class token (SPEC §3)
    assert not sot_mask["classifier"]["representation"]["svpn_start"]


@pytest.mark.slow
def test_a_training_run_exports_to_a_model_checkpoint(tiny_config, tmp_path):
    config = tiny_config(total_steps=3, ema_decay=0.9)
    state = train.train_and_evaluate(config, tmp_path / "run")
    for ema in (False, True):
        model, variables, metadata = checkpoints.load_model(
            checkpoints.export_model(str(tmp_path / "run"), str(tmp_path / f"export_{ema}"), ema=ema)
        )
        images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
        params = state.ema_params if ema else state.params
        variables_run = {"params": params, "batch_stats": state.batch_stats}
        expected = recipes.build_model(config.model, 10).apply(variables_run, images)
        np.testing.assert_allclose(model.apply(variables, images), expected, rtol=1e-5, atol=1e-6)
        assert metadata["num_classes"] == 10 and "step 3" in metadata["source"]
    with pytest.raises(ValueError, match="no training checkpoint"):
        checkpoints.export_model(str(tmp_path / "nothing"), str(tmp_path / "x"))


def test_eval_step_handles_fewer_than_five_classes():
    model = models.create_model("deit_tiny_patch16_224", num_classes=2, img_size=32, **{**TINY_MODEL, "depth": 1})
    variables = model.init({"params": jax.random.key(0)}, jnp.zeros((1, 32, 32, 3)))
    batch = {"image": jnp.zeros((4, 32, 32, 3), jnp.uint8), "label": jnp.array([0, 1, 0, 1]), "mask": jnp.ones(4)}
    counts = evaluate.eval_step(variables["params"], {}, batch, model=model, class_mask=None)
    assert float(counts["top5"]) == 4.0 and float(counts["top1"]) == 2.0 and float(counts["count"]) == 4.0


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [{"head": "gap"}, {"head": "gem"}, {"head": "ggem", "gem_positive": "softplus"}, {"head": "gcp"},
     {"head": "mgcrp", "fusion": "concat"}, {"head": "mgcrp", "fusion": "aggre_all", "svpn": "gram_eigh"},
     {"head": "mgcrp", "svpn": "svd", "svpn_alpha": 0.4}],
)  # fmt: skip
def test_any_head_fusion_and_svpn_trains_from_config_keys(tiny_config, tmp_path, options):
    config = tiny_config(total_steps=1, wr_dim=4, **{f"model.{k}": v for k, v in options.items()})
    state = train.train_and_evaluate(config, tmp_path)
    model = recipes.build_model(config.model, 10)
    assert {k: model.head[k] for k in options} == options  # the keys reached create_model under their own names
    assert jax.tree.structure(state.params) == jax.tree.structure(models.abstract_variables(model)["params"])


@pytest.mark.slow
def test_a_head_chosen_on_the_command_line_trains_the_digits_demo(digits_dir, tmp_path):
    result = run_main([f"--workdir={tmp_path}", f"--config.data_dir={digits_dir}", "--config.total_steps=2",
                       "--config.model.head=gem", "--config.model.gem_positive=softplus"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((tmp_path / "checkpoints" / "2" / "meta" / "metadata").read_text())
    assert meta["overrides"]["head"] == "gem" and meta["overrides"]["gem_positive"] == "softplus"


@pytest.mark.slow
def test_a_folder_dataset_trains_resumes_exactly_and_evaluates(tiny_config, tmp_path):
    from test_data import write_image_folders

    root = write_image_folders(tmp_path / "data", classes=[f"n{i:02d}" for i in range(6)], per_class=3, val=1)
    config = full_augmentation(tiny_config, dataset="folder", data_dir=str(root), batch_size=4, total_steps=6)
    uninterrupted = train.train_and_evaluate(config, tmp_path / "a")

    def interrupt(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    assert int(train.train_and_evaluate(config, tmp_path / "b", after_step=interrupt).step) == 2
    # The checkpoint holds the input position (Grain's handler, one file per process).
    saved = json.loads((tmp_path / "b" / "checkpoints" / "2" / "data" / "process_0-of-1.json").read_text())
    assert saved == {"step": 2}
    config.input.workers = 2  # resumed by two worker processes: the same batches as in this process
    resumed = train.train_and_evaluate(config, tmp_path / "b")
    assert_trees_close(uninterrupted.params, resumed.params)
    assert_trees_close(uninterrupted.opt_state, resumed.opt_state)
    evals = [json.loads(r) for r in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines() if "val_top1" in r]
    assert [r["step"] for r in evals] == [3, 6] and all(0.0 <= r["val_top1"] <= 100.0 for r in evals)


def test_eval_sets_are_checked_before_the_first_step(tiny_config, tmp_path, capsys):
    config = tiny_config(total_steps=1)
    config.evals.imagenet_a = recipes.eval_set("imagenet_a", "test", label_subset=True)
    missing = r"evals.imagenet_a: dataset 'imagenet_a' is not prepared .*python -m sot_jax.prepare imagenet_a"
    with pytest.raises(ValueError, match=missing):
        train.train_and_evaluate(config, tmp_path / "missing")
    assert not (tmp_path / "missing" / "checkpoints").exists()  # stopped before anything was trained or written
    config.evals.imagenet_a.optional = True
    train.train_and_evaluate(config, tmp_path / "optional")
    assert "warning: evals.imagenet_a skipped: dataset 'imagenet_a' is not prepared" in capsys.readouterr().out
    config.evals.imagenet_a = recipes.eval_set(split="nonsense")
    with pytest.raises(ValueError, match="evals.imagenet_a: dataset 'digits' has no split 'nonsense'"):
        train.train_and_evaluate(config, tmp_path / "split")
    config.evals.imagenet_a = {"datset": "digits"}
    with pytest.raises(ValueError, match="evals.imagenet_a: unknown key.s. datset; valid: dataset"):
        train.train_and_evaluate(config, tmp_path / "key")


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
