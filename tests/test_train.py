"""The trainer: exact resume, a non-finite loss, gradient accumulation, every family and head, ImageNet and folder
datasets end to end."""

import json
import os
import re
import shutil
import signal

import jax
import numpy as np
import pytest
from conftest import assert_trees_close, params_of

from sot_jax import experiment, models, sharding, train


def full_augmentation(tiny_config, **changes):
    """The ImageNet recipe's augmentation and EMA on the tiny model: every source of randomness is exercised."""
    return tiny_config(
        randaugment_layers=2, hflip=True, random_erasing=0.25, mixup=0.8, cutmix=1.0, ema_decay=0.9, **changes
    )


@pytest.mark.slow
def test_resume_after_sigterm_ends_with_the_same_params(tiny_config, tmp_path):
    config = full_augmentation(tiny_config)
    uninterrupted = train.train_and_evaluate(experiment.build(config), tmp_path / "a")

    def interrupt(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    interrupted = train.train_and_evaluate(experiment.build(config), tmp_path / "b", after_step=interrupt)
    assert int(interrupted.step) == 2
    assert (tmp_path / "b" / "checkpoints" / "2").is_dir()  # SIGTERM saved before exiting
    # As a checkpoint written before input positions were saved (or by another number of processes): the
    # position follows from the step.
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "2" / "data")
    resumed = train.train_and_evaluate(experiment.build(config), tmp_path / "b")
    assert int(resumed.step) == 6
    assert_trees_close(uninterrupted.params, resumed.params)
    assert_trees_close(uninterrupted.ema_params, resumed.ema_params)
    assert_trees_close(uninterrupted.opt_state, resumed.opt_state)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path):
    config = tiny_config(lr=1e38, warmup_epochs=0, checkpoint_every_steps=1, eval_every_steps=100)
    with pytest.raises(train.NonFiniteLossError) as error:
        train.train_and_evaluate(experiment.build(config), tmp_path)
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
        state = train.train_and_evaluate(experiment.build(config), tmp_path / str(accum))
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
    state = train.train_and_evaluate(experiment.build(config), tmp_path)
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert int(state.step) == 2


@pytest.mark.slow
def test_a_tiny_imagenet2012_run_works_end_to_end(tiny_imagenet, tiny_config, tmp_path):
    config = full_augmentation(
        tiny_config, dataset="imagenet2012", data_dir=tiny_imagenet, batch_size=4, total_steps=4, eval_every_steps=4
    )
    state = train.train_and_evaluate(experiment.build(config), tmp_path)
    assert state.params["classifier"]["cls_fc"]["kernel"].shape[-1] == 1000
    last = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()][-1]
    assert 0.0 <= last["val_top1"] <= 100.0 and "ema_val_top1" in last


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [{"head": "gap"}, {"head": "gem"}, {"head": "ggem", "gem_positive": "softplus"}, {"head": "gcp"},
     {"head": "mgcrp", "fusion": "concat"}, {"head": "mgcrp", "fusion": "aggre_all", "svpn": "gram_eigh"},
     {"head": "mgcrp", "svpn": "svd", "svpn_alpha": 0.4}],
)  # fmt: skip
def test_any_head_fusion_and_svpn_trains_from_config_keys(tiny_config, tmp_path, options):
    config = tiny_config(total_steps=1, wr_dim=4, **{f"model.{k}": v for k, v in options.items()})
    state = train.train_and_evaluate(experiment.build(config), tmp_path)
    model = experiment.build_model(config.model, 10)
    assert {k: model.head[k] for k in options} == options  # the keys reached create_model under their own names
    assert jax.tree.structure(state.params) == jax.tree.structure(models.abstract_variables(model)["params"])


@pytest.mark.slow
def test_a_folder_dataset_trains_resumes_exactly_and_evaluates(tiny_config, tmp_path):
    from test_data import write_image_folders

    root = write_image_folders(tmp_path / "data", classes=[f"n{i:02d}" for i in range(6)], per_class=3, val=1)
    config = full_augmentation(tiny_config, dataset="folder", data_dir=str(root), batch_size=4, total_steps=6)
    uninterrupted = train.train_and_evaluate(experiment.build(config), tmp_path / "a")

    def interrupt(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    assert int(train.train_and_evaluate(experiment.build(config), tmp_path / "b", after_step=interrupt).step) == 2
    # The checkpoint holds the input position (Grain's handler, one file per process).
    saved = json.loads((tmp_path / "b" / "checkpoints" / "2" / "data" / "process_0-of-1.json").read_text())
    assert saved == {"step": 2}
    config.input.workers = 2  # resumed by two worker processes: the same batches as in this process
    resumed = train.train_and_evaluate(experiment.build(config), tmp_path / "b")
    assert_trees_close(uninterrupted.params, resumed.params)
    assert_trees_close(uninterrupted.opt_state, resumed.opt_state)
    evals = [json.loads(r) for r in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines() if "val_top1" in r]
    assert [r["step"] for r in evals] == [3, 6] and all(0.0 <= r["val_top1"] <= 100.0 for r in evals)


def test_the_jitted_step_is_traced_under_its_mesh(monkeypatch):
    """`fused_attention.attention` reads the mesh while the step is traced, to run its kernels on each device's part
    of the batch; without it, several GPUs would fall back to XLA's attention."""
    seen = []

    def step(state, batch, **_):
        seen.append(jax.sharding.get_abstract_mesh())
        return state, {"loss": batch["x"].sum()}

    monkeypatch.setattr(train, "train_step", step)
    mesh = sharding.make_mesh()
    jitted = train.jit_train_step(None, None, None, None, sharding.replicated(mesh), sharding.batch_sharding(mesh))
    jitted.trace(np.zeros(3, np.float32), {"x": np.zeros(4, np.float32)})
    assert seen == [mesh.abstract_mesh]
