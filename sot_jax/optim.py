"""AdamW with timm's per-epoch cosine schedule (warmup, cosine, cooldown), weight-decay masks and the learning
rate's batch-size rule; reads the config's top-level `lr`/`batch_size` and its `optim` group."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax


def peak_lr(config: Any) -> float:
    """`config.lr`, rescaled by batch_size / optim.lr_base_batch when a base batch is set (HVT's rule)."""
    base = config.optim.lr_base_batch
    return config.lr * config.batch_size / base if base else config.lr


def make_schedule(config: Any, total_steps: int) -> Callable[[jax.Array], jax.Array]:
    """timm's cosine schedule stepped per epoch (warmup from warmup_lr, cosine to min_lr, then cooldown)."""
    o = config.optim
    lr = peak_lr(config)
    steps_per_epoch = total_steps / (o.num_epochs + o.cooldown_epochs)

    def schedule(step):
        epoch = jnp.floor(step / steps_per_epoch)
        warmup = o.warmup_lr + (lr - o.warmup_lr) * epoch / max(o.warmup_epochs, 1)
        cosine = o.min_lr + 0.5 * (lr - o.min_lr) * (1 + jnp.cos(jnp.pi * epoch / o.num_epochs))
        return jnp.where(epoch < o.warmup_epochs, warmup, jnp.where(epoch < o.num_epochs, cosine, o.min_lr))

    return schedule


def weight_decay_mask(params: Any, no_decay_names: tuple[str, ...]) -> Any:
    """Decay every parameter except 1-D ones (biases, norms, GeM's p, SVPN's start vector) and named ones."""

    def decays(path, x):
        names = {getattr(k, "key", str(k)) for k in path}
        return x.ndim > 1 and not names & set(no_decay_names)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: Any, params: Any, total_steps: int) -> tuple[optax.GradientTransformation, Callable]:
    """(AdamW with the config's schedule, the schedule); `params` may be abstract (shapes only)."""
    o = config.optim
    schedule = make_schedule(config, total_steps)
    mask = weight_decay_mask(params, tuple(o.no_weight_decay))
    tx = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=mask)
    if o.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), tx)
    return tx, schedule
