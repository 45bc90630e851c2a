"""Checkpoints: the latest resumable states and the best weights, atomic saves, init_from and export."""

import json
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close

from sot_jax import checkpoints, experiment, plot, recipes, train


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
        final = train.train_and_evaluate(experiment.build(config), tmp_path)
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
    train.train_and_evaluate(experiment.build(config), tmp_path)
    # A save interrupted mid-write leaves only Orbax's temporary directory behind.
    partial = tmp_path / "checkpoints" / "9.orbax-checkpoint-tmp-1234"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\0" * 100)
    state = train.train_and_evaluate(experiment.build(tiny_config(total_steps=9)), tmp_path)
    assert int(state.step) == 9
    # A checkpoint corrupted after the fact is named, not silently skipped.
    for path in (tmp_path / "checkpoints" / "9" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"corrupt")
    with pytest.raises(ValueError, match=r"cannot resume from checkpoint .*checkpoints/9"):
        train.train_and_evaluate(experiment.build(tiny_config(total_steps=12)), tmp_path)


@pytest.mark.slow
def test_init_from_a_converted_checkpoint_fine_tunes_a_new_classifier(tiny_config, tmp_path):
    config = tiny_config(total_steps=1, warmup_lr=0.0, ema_decay=0.5)
    pretrained_model = experiment.build_model(config.model, num_classes=7)
    variables = pretrained_model.init({"params": jax.random.key(42)}, jnp.zeros((1, 32, 32, 3)))
    overrides = {k: v for k, v in recipes.model_overrides(config.model).items() if k != "dtype"}
    metadata = {"model": config.model.name, "num_classes": 7, "overrides": overrides}
    checkpoints.save_model(tmp_path / "pretrained", variables, metadata)
    config.init_from = str(tmp_path / "pretrained")
    state = train.train_and_evaluate(experiment.build(config), tmp_path / "run")  # lr 0 at step 0: as loaded
    assert state.params["classifier"]["cls_fc"]["kernel"].shape == (32, 10)
    assert_trees_close(state.params["blocks_0"], variables["params"]["blocks_0"])
    assert_trees_close(state.ema_params["blocks_0"], variables["params"]["blocks_0"])
    with pytest.raises(ValueError, match="init_from .* does not fit the model: .*blocks_0"):
        checkpoints.merge_pretrained(state.params, {**variables["params"], "blocks_0": {}}, "x")


@pytest.mark.slow
def test_a_training_run_exports_to_a_model_checkpoint(tiny_config, tmp_path):
    config = tiny_config(total_steps=3, ema_decay=0.9)
    state = train.train_and_evaluate(experiment.build(config), tmp_path / "run")
    for ema in (False, True):
        model, variables, metadata = checkpoints.load_model(
            checkpoints.export_model(str(tmp_path / "run"), str(tmp_path / f"export_{ema}"), ema=ema)
        )
        images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
        params = state.ema_params if ema else state.params
        variables_run = {"params": params, "batch_stats": state.batch_stats}
        expected = experiment.build_model(config.model, 10).apply(variables_run, images)
        np.testing.assert_allclose(model.apply(variables, images), expected, rtol=1e-5, atol=1e-6)
        assert metadata["num_classes"] == 10 and "step 3" in metadata["source"]
    with pytest.raises(ValueError, match="no training checkpoint"):
        checkpoints.export_model(str(tmp_path / "nothing"), str(tmp_path / "x"))
