"""`experiment.build`: every config check before the first step, and the config resolved into plain values."""

import pytest
from conftest import set_config

from sot_jax import experiment, recipes, train
from sot_jax.errors import UserError


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
        train.train_and_evaluate(experiment.build(config), tmp_path / "run")


def test_eval_sets_are_checked_before_the_first_step(tiny_config, tmp_path, capsys):
    config = tiny_config(total_steps=1)
    config.evals.imagenet_a = recipes.eval_set("imagenet_a", "test", label_subset=True)
    missing = r"evals.imagenet_a: dataset 'imagenet_a' is not prepared .*python -m sot_jax.prepare imagenet_a"
    with pytest.raises(ValueError, match=missing):
        train.train_and_evaluate(experiment.build(config), tmp_path / "missing")
    assert not (tmp_path / "missing" / "checkpoints").exists()  # stopped before anything was trained or written
    config.evals.imagenet_a.optional = True
    train.train_and_evaluate(experiment.build(config), tmp_path / "optional")
    assert "warning: evals.imagenet_a skipped: dataset 'imagenet_a' is not prepared" in capsys.readouterr().out
    config.evals.imagenet_a = recipes.eval_set(split="nonsense")
    with pytest.raises(ValueError, match="evals.imagenet_a: dataset 'digits' has no split 'nonsense'"):
        train.train_and_evaluate(experiment.build(config), tmp_path / "split")
    config.evals.imagenet_a = {"datset": "digits"}
    with pytest.raises(ValueError, match="evals.imagenet_a: unknown key.s. datset; valid: dataset"):
        train.train_and_evaluate(experiment.build(config), tmp_path / "key")



def test_build_resolves_the_step_options_the_schedule_and_each_eval_sets_batches(tiny_config):
    config = tiny_config(total_steps=5, mixup=0.8, grad_accum_steps=2)
    config.eval_batch_size = 6
    built = experiment.build(config)
    assert built.trainer.options == train.StepOptions(
        aug=train.Augmentation(**config.aug), grad_accum_steps=2, ema_decay=0.0, sum_loss_weights=(1.0, 1.0)
    )
    assert (built.total_steps, built.eval_every_steps, built.best_metric) == (5, 3, "val_top1")
    (val,) = built.eval_sets
    first = next(val.batches())
    assert first["image"].shape == (6, 32, 32, 3) and first["mask"].shape == (6,)  # the set's own batch size
    assert next(built.train_batches(0))["image"].shape == (8, 32, 32, 3)
    assert built.meta["model"] == "deit_tiny_patch16_224" and built.meta["num_classes"] == 10
    config.aug.mixup_alpha = 0.8  # a misspelt augmentation key
    with pytest.raises(UserError, match=r"unknown config key\(s\) aug.mixup_alpha; valid: cutmix, erase_after_mix"):
        experiment.build(config)
