"""AdamW with timm's per-epoch cosine schedule (warmup, cosine, cooldown), weight-decay masks and the learning
rate's batch-size rule; reads the config's top-level `lr`/`batch_size` and its `optim` group."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sot_jax.errors import check_choice


def peak_lr(config: Any) -> float:
    """`config.lr`, rescaled by batch_size / optim.lr_base_batch when a base batch is set (HVT's rule)."""
    base = config.optim.lr_base_batch
    return config.lr * config.batch_size / base if base else config.lr


def epoch_lr(config: Any, epoch: Any, xp: Any = np) -> Any:
    """The rate of (0-based) training epoch `epoch`: timm's CosineLRScheduler (warmup from warmup_lr, cosine over
    num_epochs to min_lr, then cooldown at min_lr) at epoch max(epoch − optim.schedule_epoch_offset, 0). SoT's
    and LV-ViT's scripts call `scheduler.step(epoch + 1)` after epoch `epoch` (offset 0); DeiT's and HVT's call
    `scheduler.step(epoch)` (offset 1: every rate one epoch late). `xp`: numpy, or jax.numpy inside jit."""
    o = config.optim
    lr = peak_lr(config)
    t = xp.maximum(epoch - o.schedule_epoch_offset, 0)
    warmup = o.warmup_lr + (lr - o.warmup_lr) * t / max(o.warmup_epochs, 1)
    cosine = o.min_lr + 0.5 * (lr - o.min_lr) * (1 + xp.cos(np.pi * t / o.num_epochs))
    return xp.where(t < o.warmup_epochs, warmup, xp.where(t < o.num_epochs, cosine, o.min_lr))


def make_schedule(config: Any, total_steps: int) -> Callable[[jax.Array], jax.Array]:
    """`epoch_lr` per step: the schedule's num_epochs + cooldown_epochs epochs spread over `total_steps`."""
    steps_per_epoch = total_steps / (config.optim.num_epochs + config.optim.cooldown_epochs)
    return lambda step: epoch_lr(config, jnp.floor(step / steps_per_epoch), jnp)


def linear_schedule(config: Any, total_steps: int) -> Callable[[jax.Array], jax.Array]:
    """HF's `get_linear_schedule_with_warmup`, stepped per step: from 0 to the peak over the warmup epochs, then
    linearly to 0 at the last step (the GLUE fine-tuning recipe)."""
    o = config.optim
    lr = peak_lr(config)
    warmup = total_steps * o.warmup_epochs / (o.num_epochs + o.cooldown_epochs)

    def schedule(step):
        rising = lr * step / max(warmup, 1.0)
        falling = lr * jnp.maximum(total_steps - step, 0) / max(total_steps - warmup, 1.0)
        return jnp.where(step < warmup, rising, falling)

    return schedule


# config.optim.schedule -> the schedule it names.
SCHEDULES = {"cosine_epochs": make_schedule, "linear": linear_schedule}


def weight_decay_mask(params: Any, no_decay_names: tuple[str, ...]) -> Any:
    """Decay every parameter except 1-D ones (biases, norms, GeM's p, SVPN's start vector) and named ones."""

    def decays(path, x):
        names = {getattr(k, "key", str(k)) for k in path}
        return x.ndim > 1 and not names & set(no_decay_names)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: Any, params: Any, total_steps: int) -> tuple[optax.GradientTransformation, Callable]:
    """(AdamW with the config's schedule, the schedule); `params` may be abstract (shapes only)."""
    o = config.optim
    check_choice("optim.schedule", o.schedule, tuple(SCHEDULES))
    schedule = SCHEDULES[o.schedule](config, total_steps)
    mask = weight_decay_mask(params, tuple(o.no_weight_decay))
    tx = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=mask)
    if o.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), tx)
    return tx, schedule
