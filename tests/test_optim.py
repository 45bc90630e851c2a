"""The optimizer: timm's cosine schedule with warmup and cooldown, and the weight-decay mask."""


import numpy as np
import pytest

from sot_jax import models, optim


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
