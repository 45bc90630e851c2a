"""Training and evaluation: a jitted, sharded train step over a `Mesh`, Orbax checkpoints, metrics logs.

`train_and_evaluate(config, workdir)` trains (resuming from `workdir/checkpoints` when present);
`evaluate_checkpoint(config)` evaluates `config.init_from`. Both run on every process of a multi-host job.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from orbax.checkpoint.checkpoint_managers import preservation_policy

from sot_jax import augment, checkpoints, models, token_labels

# ---------------------------------------------------------------------------------------------------------------
# State and configuration checks


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any  # None without EMA
    ema_batch_stats: Any
    rng: jax.Array  # raw key data; each step folds in its step number


def validate_config(config: Any, num_devices: int, process_count: int) -> None:
    """Stop on values the trainer cannot use, naming the key."""
    problems = []
    if not config.lr > 0:
        problems.append(f"lr must be positive, got {config.lr}")
    for key in ("batch_size", "grad_accum_steps", "log_every_steps", "checkpoint_every_steps"):
        if not (isinstance(config[key], int) and config[key] > 0):
            problems.append(f"{key} must be a positive integer, got {config[key]!r}")
    if config.total_steps < 0 or config.eval_every_steps < 0:
        problems.append("total_steps and eval_every_steps must be >= 0")
    if not problems:
        per_step = num_devices * config.grad_accum_steps
        if config.batch_size % per_step or config.batch_size % process_count:
            problems.append(
                f"batch_size {config.batch_size} does not divide over {num_devices} devices × "
                f"{config.grad_accum_steps} accumulation steps ({process_count} processes)"
            )
    if config.sharding not in ("data", "fsdp"):
        problems.append(f"sharding must be 'data' or 'fsdp', got {config.sharding!r}")
    if config.model.dtype not in ("float32", "bfloat16"):
        problems.append(f"model.dtype must be 'float32' or 'bfloat16', got {config.model.dtype!r}")
    if config.eval_only and not config.init_from:
        problems.append("eval_only needs init_from=DIR (a converted or trained checkpoint)")
    if config.token_label_dir and (config.mixup > 0 or config.cutmix > 0):
        problems.append("token_label_dir does not combine with mixup/cutmix (the LV-ViT recipe uses mix_token)")
    if problems:
        raise ValueError("invalid config: " + "; ".join(problems))


def build_model(config: Any, num_classes: int):
    """The config's model at config.image_size (an img_size in model.overrides is ignored)."""
    overrides = {k: v for k, v in config.model.overrides.items() if k != "img_size"}
    return models.create_model(
        config.model.name,
        num_classes=num_classes,
        img_size=config.image_size,
        dtype=jnp.dtype(config.model.dtype),
        **overrides,
    )


# ---------------------------------------------------------------------------------------------------------------
# Optimizer and schedule


def make_schedule(config: Any, total_steps: int) -> Callable[[jax.Array], jax.Array]:
    """timm's cosine schedule stepped per epoch (warmup from warmup_lr, cosine to min_lr, then cooldown)."""
    epochs = config.num_epochs + config.cooldown_epochs
    steps_per_epoch = total_steps / epochs

    def schedule(step):
        epoch = jnp.floor(step / steps_per_epoch)
        warmup = config.warmup_lr + (config.lr - config.warmup_lr) * epoch / max(config.warmup_epochs, 1)
        cosine = config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + jnp.cos(jnp.pi * epoch / config.num_epochs))
        return jnp.where(
            epoch < config.warmup_epochs, warmup, jnp.where(epoch < config.num_epochs, cosine, config.min_lr)
        )

    return schedule


def weight_decay_mask(params: Any, no_decay_names: tuple[str, ...]) -> Any:
    """Decay every parameter except 1-D ones (biases, norms, GeM's p, SVPN's start vector) and named ones."""

    def decays(path, x):
        names = {getattr(k, "key", str(k)) for k in path}
        return x.ndim > 1 and not names & set(no_decay_names)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: Any, params: Any, total_steps: int) -> tuple[optax.GradientTransformation, Callable]:
    schedule = make_schedule(config, total_steps)
    adamw = optax.adamw(
        schedule,
        b1=config.b1,
        b2=config.b2,
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
        mask=weight_decay_mask(params, tuple(config.model.no_weight_decay)),
    )
    if config.grad_clip_norm > 0:
        adamw = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adamw)
    return adamw, schedule


# ---------------------------------------------------------------------------------------------------------------
# Steps


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), axis=-1)


def classification_loss(
    outputs: Any, targets: jax.Array, weights: tuple[float, float], token_targets: jax.Array | None = None
) -> jax.Array:
    """Soft-target cross entropy; a pair of outputs (sum_loss fusion, LV-ViT) gives
    weights[0] · CE(first, targets) + weights[1] · CE(second, ...).

    LV-ViT's token logits (B, N, C) learn `token_targets` (B, N, C) averaged over tokens, by default the image's
    target at every token (the official fallback without token label maps)."""
    if not isinstance(outputs, tuple):
        return jnp.mean(soft_cross_entropy(outputs, targets))
    first, second = outputs
    if second.ndim == 3:
        second_targets = targets[:, None] if token_targets is None else token_targets
    else:
        second_targets = targets
    second_loss = jnp.mean(soft_cross_entropy(second, second_targets))
    return weights[0] * jnp.mean(soft_cross_entropy(first, targets)) + weights[1] * second_loss


def train_step(
    state: TrainState, batch: dict[str, jax.Array], *, model: Any, tx: Any, schedule: Callable, config: Any
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step (with `grad_accum_steps` micro-batches): augment (erasing, Mixup/CutMix or MixToken),
    forward, backward, AdamW, EMA."""
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    num_classes = model.num_classes
    accum = config.grad_accum_steps
    micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)

    def micro_step(carry, inputs):
        grads_sum, loss_sum, batch_stats = carry
        index, micro_batch = inputs
        key = jax.random.fold_in(rng, index)
        erase_key, mix_key, token_key, dropout_key = jax.random.split(key, 4)
        images = augment.normalize(micro_batch["image"])
        images = augment.random_erasing(erase_key, images, config.random_erasing)
        if "token_label_classes" in micro_batch:  # token label maps give both targets (no Mixup/CutMix)
            targets, token_targets = token_labels.dense_targets(
                micro_batch["token_label_classes"], micro_batch["token_label_weights"], num_classes,
                config.label_smoothing,
            )  # fmt: skip
        else:
            targets = augment.smooth_one_hot(micro_batch["label"], num_classes, config.label_smoothing)
            images, targets = augment.mixup_cutmix(
                mix_key, images, targets, config.mixup, config.cutmix, config.mix_switch_prob
            )
            token_targets = targets[:, None]
        mix_box = None
        if config.mix_token:  # token outputs come back un-mixed, so only the class target mixes
            mix_box, lam = token_labels.mix_token_box(token_key, model.grid)
            targets = lam * targets + (1 - lam) * targets[::-1]

        def loss_fn(params):
            outputs, updates = model.apply(
                {"params": params, "batch_stats": batch_stats}, images, train=True, mix_box=mix_box,
                rngs={"dropout": dropout_key}, mutable=["batch_stats"],
            )  # fmt: skip
            loss = classification_loss(outputs, targets, tuple(config.sum_loss_weights), token_targets)
            return loss, updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
        return (grads_sum, loss_sum + loss, updates.get("batch_stats", batch_stats)), None

    carry = (jax.tree.map(jnp.zeros_like, state.params), jnp.zeros((), jnp.float32), state.batch_stats)
    if accum == 1:  # no loop: XLA:CPU runs convolutions inside a while loop far slower
        (grads, loss, batch_stats), _ = micro_step(carry, (0, jax.tree.map(lambda x: x[0], micro)))
    else:
        (grads, loss, batch_stats), _ = jax.lax.scan(micro_step, carry, (jnp.arange(accum), micro))
    grads = jax.tree.map(lambda g: g / accum, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params, ema_batch_stats = state.ema_params, state.ema_batch_stats
    if ema_params is not None:
        decay = config.ema_decay
        ema_params = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema_params, params)
        ema_batch_stats = jax.tree.map(lambda e, b: decay * e + (1 - decay) * b, ema_batch_stats, batch_stats)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
        ema_params=ema_params, ema_batch_stats=ema_batch_stats,
    )  # fmt: skip
    metrics = {"loss": loss / accum, "lr": schedule(state.step), "grad_norm": optax.global_norm(grads)}
    return new_state, metrics


def eval_step(params: Any, batch_stats: Any, batch: dict[str, jax.Array], *, model: Any, class_mask: Any) -> dict:
    """Counts of top-1/top-5 hits over the unpadded examples (ReaL: a hit is any of the real labels)."""
    logits = model.apply({"params": params, "batch_stats": batch_stats}, augment.normalize(batch["image"]))
    if class_mask is not None:  # ImageNet-A: predict among its 200 classes only
        logits = jnp.where(class_mask, logits, -jnp.inf)
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]  # top-5 is top-all below 5 classes
    mask = batch["mask"].astype(jnp.float32)
    if "real" in batch:
        hits = jnp.take_along_axis(batch["real"], top5, axis=1).astype(jnp.float32)
        mask = mask * (jnp.sum(batch["real"], axis=1) > 0)  # ReaL leaves out images without any real label
    else:
        hits = (top5 == batch["label"][:, None]).astype(jnp.float32)
    return {"top1": jnp.sum(hits[:, 0] * mask), "top5": jnp.sum(jnp.max(hits, axis=1) * mask), "count": jnp.sum(mask)}


# ---------------------------------------------------------------------------------------------------------------
# Sharding


def fsdp_spec(shape: tuple[int, ...], mesh_size: int) -> P:
    """Shard the largest axis that the mesh divides (replicate small or indivisible arrays)."""
    candidates = [i for i in np.argsort(shape)[::-1] if shape[i] % mesh_size == 0 and shape[i] >= mesh_size]
    if not candidates or int(np.prod(shape)) < 2**10:
        return P()
    spec = [None] * len(shape)
    spec[candidates[0]] = "data"
    return P(*spec)


def state_shardings(abstract_state: TrainState, mesh: Mesh, mode: str) -> TrainState:
    def sharding(x):
        spec = fsdp_spec(x.shape, mesh.size) if mode == "fsdp" else P()
        return NamedSharding(mesh, spec)

    return jax.tree.map(sharding, abstract_state)


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_manager(workdir: Path, config: Any) -> ocp.CheckpointManager:
    policy = preservation_policy.AnyPreservationPolicy(
        [
            preservation_policy.LatestN(config.keep_checkpoints),
            preservation_policy.BestN(
                get_metric_fn=lambda metrics: metrics["val_top1"], n=1, keep_checkpoints_without_metrics=False
            ),
        ]
    )
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=True, create=True)
    return ocp.CheckpointManager(workdir / "checkpoints", options=options, item_names=("state", "meta"))


def restore_state(manager: ocp.CheckpointManager, step: int, abstract_state: TrainState) -> TrainState:
    try:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    except Exception as e:  # Orbax raises many types for missing files, bad shapes or corrupt data
        raise ValueError(
            f"cannot resume from checkpoint {manager.directory / str(step)}: it is corrupt or was written by a "
            f"different config ({type(e).__name__}: {str(e)[:500]})"
        ) from e
    return restored.state


def read_init_variables(directory: str) -> dict[str, Any]:
    """Variables to start from: a model checkpoint (sot_jax.convert) or a training workdir's latest checkpoint.

    Returns {"params", "batch_stats"} and, from training checkpoints with EMA, "ema_params"/"ema_batch_stats".
    """
    path = Path(directory).absolute()
    if (path / checkpoints.METADATA_FILE).is_file():
        _, variables, _ = checkpoints.load_model(path)
        return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    manager = ocp.CheckpointManager(root, item_handlers=handlers, options=ocp.CheckpointManagerOptions(read_only=True))
    step = manager.latest_step() if root.is_dir() else None
    if step is None:
        raise ValueError(f"init_from={directory}: no sot_jax model checkpoint or training checkpoint found there")
    try:
        # Restore onto this machine's devices (replicated), whatever topology wrote the checkpoint.
        replicated = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P())
        metadata = manager.item_metadata(step)["state"]
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated), metadata)
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state
    except Exception as e:
        raise ValueError(f"init_from={directory}: cannot read checkpoint {root / str(step)}: {e}") from e
    keys = ("params", "batch_stats", "ema_params", "ema_batch_stats")
    return {k: state[k] for k in keys if state.get(k) is not None}


def export_model(workdir: str, output: str, ema: bool = False) -> Path:
    """Write the latest checkpoint of the training run in `workdir` as a model checkpoint (what
    `checkpoints.load_model` reads, for inference or sharing); `ema` takes the EMA weights."""
    root = Path(workdir).absolute() / "checkpoints"
    options = ocp.CheckpointManagerOptions(read_only=True)
    manager = ocp.CheckpointManager(root, item_handlers={"meta": ocp.JsonCheckpointHandler()}, options=options)
    step = manager.latest_step() if root.is_dir() else None
    if step is None:
        raise ValueError(f"{workdir} holds no training checkpoint")
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    variables = read_init_variables(workdir)
    prefix = "ema_" if ema else ""
    if prefix + "params" not in variables:
        raise ValueError(f"{workdir} was trained without EMA (ema_decay=0); export without ema")
    config = json.loads(meta["config"])
    overrides = {**config["model"]["overrides"], "img_size": config["image_size"]}
    metadata = {"model": meta["model"], "num_classes": meta["num_classes"], "overrides": overrides,
                "source": f"{workdir} step {step}" + (" (EMA)" if ema else "")}  # fmt: skip
    exported = {"params": variables[prefix + "params"], "batch_stats": variables.get(prefix + "batch_stats", {})}
    return checkpoints.save_model(output, exported, metadata)


def merge_pretrained(fresh: Any, loaded: Any, what: str) -> tuple[Any, list[str]]:
    """Loaded values where shapes agree; the classifier keeps its fresh init when the class count differs."""
    fresh_flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(fresh), sep="/")
    loaded_flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(loaded), sep="/")
    merged, reinitialized, problems = {}, [], []
    for key, value in fresh_flat.items():
        if key in loaded_flat and np.shape(loaded_flat[key]) == value.shape:
            merged[key] = jnp.asarray(loaded_flat[key], value.dtype)
        elif key.startswith("classifier/"):
            merged[key] = value
            reinitialized.append(key)
        else:
            found = np.shape(loaded_flat[key]) if key in loaded_flat else "absent"
            problems.append(f"{key} (checkpoint {found}, model {value.shape})")
    if problems:
        raise ValueError(f"init_from {what} does not fit the model: " + "; ".join(problems[:20]))
    return flax.traverse_util.unflatten_dict(merged, sep="/"), reinitialized


# ---------------------------------------------------------------------------------------------------------------
# Logging


class MetricsLog:
    """metrics.jsonl and TensorBoard scalars, written by process 0."""

    def __init__(self, workdir: Path, enabled: bool):
        self.enabled = enabled
        self.path = workdir / "metrics.jsonl"
        self.writer = None
        if enabled:
            import tensorflow as tf

            self.writer = tf.summary.create_file_writer(str(workdir / "tensorboard"))

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in values.items()}}) + "\n")
        import tensorflow as tf

        with self.writer.as_default():
            for key, value in values.items():
                tf.summary.scalar(key, float(value), step=step)
        self.writer.flush()


class Stopper:
    """SIGTERM asks the loop to checkpoint and exit; every process stops at the same step."""

    def __init__(self):
        self.requested = False
        self.previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def should_stop(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        flag = multihost_utils.process_allgather(np.array(self.requested))
        return bool(np.any(flag))

    def close(self):
        signal.signal(signal.SIGTERM, self.previous)


class NonFiniteLossError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------------------------
# The loop


@dataclasses.dataclass
class Setup:
    """Everything the loop and evaluation need, built once."""

    model: Any
    mesh: Mesh
    batch_sharding: NamedSharding
    builder: Any
    num_classes: int
    eval_steps: dict = dataclasses.field(default_factory=dict)  # jitted eval step per eval set


def make_setup(config: Any) -> Setup:
    from sot_jax import input_pipeline  # TensorFlow is only needed where data is read

    validate_config(config, jax.device_count(), jax.process_count())
    builder = input_pipeline.get_builder(
        config.dataset, config.data_dir or None, prepare_embedded=jax.process_index() == 0
    )
    num_classes = builder.info.features["label"].num_classes
    model = build_model(config, num_classes)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    return Setup(model, mesh, NamedSharding(mesh, P("data")), builder, num_classes)


def evaluate(setup: Setup, config: Any, params: Any, batch_stats: Any) -> dict[str, float]:
    """Top-1/top-5 (percent) on the validation split and on each extra eval set that is prepared."""
    from sot_jax import input_pipeline

    eval_batch = config.eval_batch_size or config.batch_size
    sets = [(setup.builder, config.eval_split, "val")]
    for name in config.extra_eval_sets:
        try:
            builder = input_pipeline.get_builder(name, config.data_dir or None, prepare_embedded=False)
        except (input_pipeline.DatasetNotReadyError, ValueError):
            continue
        sets.append((builder, input_pipeline.EXTRA_EVAL_SETS[name], name))
    results = {}
    replicated = NamedSharding(setup.mesh, P())
    for builder, split, prefix in sets:
        if prefix not in setup.eval_steps:
            class_mask = input_pipeline.label_subset(builder, split)
            step_fn = functools.partial(eval_step, model=setup.model, class_mask=class_mask)
            setup.eval_steps[prefix] = jax.jit(step_fn, out_shardings=replicated)
        step = setup.eval_steps[prefix]
        totals = {"top1": 0.0, "top5": 0.0, "count": 0.0}
        for local in input_pipeline.eval_batches(
            builder, split, config, global_batch=eval_batch,
            process_index=jax.process_index(), process_count=jax.process_count(),
        ):  # fmt: skip
            counts = step(params, batch_stats, global_batch(local, setup.batch_sharding))
            totals = {k: totals[k] + float(v) for k, v in counts.items()}
        count = max(totals["count"], 1.0)
        results[f"{prefix}_top1"] = 100 * totals["top1"] / count
        results[f"{prefix}_top5"] = 100 * totals["top5"] / count
    return results


def jit_train_step(
    model: Any, tx: Any, schedule: Callable, config: Any, shardings: TrainState, batch_sharding: NamedSharding
) -> Callable:
    """`train_step` jitted over the batch's mesh: the state keeps `shardings` (and is donated), metrics replicate."""
    return jax.jit(
        functools.partial(train_step, model=model, tx=tx, schedule=schedule, config=config),
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, NamedSharding(batch_sharding.mesh, P())),
        donate_argnums=(0,),
    )


def initial_state(model: Any, config: Any, total_steps: int) -> TrainState:
    """A fresh TrainState for `config` (parameters from `config.seed`); jit it with the state's out_shardings."""
    init_key, base_key = jax.random.split(jax.random.key(config.seed))
    images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    variables = model.init({"params": init_key}, images)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    tx, _ = make_optimizer(config, params, total_steps)
    ema = config.ema_decay > 0
    copy = functools.partial(jax.tree.map, jnp.copy)  # the EMA gets its own buffers: the train step donates both
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, opt_state=tx.init(params),
        ema_params=copy(params) if ema else None, ema_batch_stats=copy(batch_stats) if ema else None,
        rng=jax.random.key_data(base_key),
    )  # fmt: skip


def train_and_evaluate(config: Any, workdir: str, after_step: Callable[[int], None] | None = None) -> TrainState:
    """Train `config` in `workdir`, resuming from its latest checkpoint; returns the final state.

    `after_step(step)` is called after each step (a hook for profiling or tests)."""
    from sot_jax import input_pipeline

    workdir = Path(workdir).absolute()
    setup = make_setup(config)
    model, mesh = setup.model, setup.mesh
    is_main = jax.process_index() == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
    epoch_steps = input_pipeline.steps_per_epoch(setup.builder, config.train_split, config.batch_size)
    total_steps = config.total_steps or epoch_steps * (config.num_epochs + config.cooldown_epochs)
    eval_every = config.eval_every_steps or epoch_steps

    # Initial state (abstract first, to place every array on its sharding directly).
    init_state = functools.partial(initial_state, model, config, total_steps)
    abstract = jax.eval_shape(init_state)
    shardings = state_shardings(abstract, mesh, config.sharding)
    tx, schedule = make_optimizer(config, abstract.params, total_steps)
    manager = checkpoint_manager(workdir, config)
    latest = manager.latest_step()
    if latest is not None:
        abstract_with_sharding = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
        )
        state = restore_state(manager, latest, abstract_with_sharding)
        print(f"resumed from {manager.directory / str(latest)}", flush=True)
    else:
        state = jax.jit(init_state, out_shardings=shardings)()
        if config.init_from:
            state = start_from_pretrained(state, config.init_from, shardings)

    step_fn = jit_train_step(model, tx, schedule, config, shardings, setup.batch_sharding)
    start = int(state.step)
    batches = input_pipeline.train_batches(
        setup.builder, config, global_batch=config.batch_size, start_step=start,
        process_index=jax.process_index(), process_count=jax.process_count(), token_grid=model.grid,
    )  # fmt: skip
    log = MetricsLog(workdir, is_main)
    stopper = Stopper()
    meta = {"model": config.model.name, "num_classes": setup.num_classes, "config": config.to_json_best_effort()}
    try:
        state = Loop(setup, config, manager, log, meta).run(
            state, start, total_steps, eval_every, batches, step_fn, stopper, after_step
        )
    finally:
        manager.wait_until_finished()
        stopper.close()
    return state


def start_from_pretrained(state: TrainState, directory: str, shardings: TrainState) -> TrainState:
    loaded = read_init_variables(directory)
    params, reinitialized = merge_pretrained(state.params, loaded["params"], directory)
    batch_stats, _ = merge_pretrained(state.batch_stats, loaded.get("batch_stats", {}), directory)
    if reinitialized and jax.process_index() == 0:
        print(f"init_from {directory}: classifier re-initialized ({', '.join(reinitialized)})", flush=True)
    copy = functools.partial(jax.tree.map, jnp.copy)  # EMA needs its own buffers: the step donates both
    state = state.replace(
        params=params,
        batch_stats=batch_stats,
        ema_params=copy(params) if state.ema_params is not None else None,
        ema_batch_stats=copy(batch_stats) if state.ema_batch_stats is not None else None,
    )
    return jax.device_put(state, shardings)


class Loop:
    """The step loop's bookkeeping: metrics fetched lazily from the device, checkpoints, evaluation, stopping."""

    def __init__(self, setup: Setup, config: Any, manager: ocp.CheckpointManager, log: MetricsLog, meta: dict):
        self.setup, self.config, self.manager, self.log, self.meta = setup, config, manager, log, meta
        self.pending: list[tuple[int, dict]] = []  # per-step metrics still on the device: no per-step sync
        self.last_saved = manager.latest_step()
        self.window_start, self.window_step = time.perf_counter(), None
        self.progress = None

    def flush_metrics(self, step: int) -> None:
        """Fetch pending metrics; stop at the first non-finite loss; log the latest values."""
        values = [(s, jax.device_get(m)) for s, m in self.pending]
        self.pending.clear()
        for s, m in values:
            if not math.isfinite(float(m["loss"])):
                where = (
                    f"the last good checkpoint, step {self.last_saved}, is intact in {self.manager.directory}"
                    if self.last_saved is not None
                    else "no checkpoint was written yet"
                )
                raise NonFiniteLossError(f"loss became {float(m['loss'])} at step {s + 1}; stopping ({where})")
        if values:
            elapsed = time.perf_counter() - self.window_start
            img_per_sec = (step - self.window_step) * self.config.batch_size / max(elapsed, 1e-9)
            self.window_start, self.window_step = time.perf_counter(), step
            latest = {k: float(v) for k, v in values[-1][1].items()}
            self.log.write(step, {**latest, "img_per_sec": img_per_sec})
            self.progress.set_postfix(
                loss=f"{latest['loss']:.4f}", lr=f"{latest['lr']:.2e}", img_s=f"{img_per_sec:.0f}"
            )

    def save(self, step: int, state: TrainState, metrics: dict | None = None) -> None:
        self.flush_metrics(step)  # never checkpoint a state that followed a non-finite loss
        composite = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(self.meta))
        self.manager.save(step, args=composite, metrics=metrics, force=True)
        self.last_saved = step

    def evaluate(self, step: int, state: TrainState) -> dict[str, float]:
        self.flush_metrics(step)
        results = evaluate(self.setup, self.config, state.params, state.batch_stats)
        if state.ema_params is not None:
            ema = evaluate(self.setup, self.config, state.ema_params, state.ema_batch_stats)
            results.update({f"ema_{k}": v for k, v in ema.items()})
        self.log.write(step, results)
        if jax.process_index() == 0:
            self.progress.write(f"step {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in results.items()))
        return results

    def run(self, state, step, total_steps, eval_every, batches: Iterator, step_fn, stopper, after_step) -> TrainState:
        from tqdm import tqdm

        config = self.config
        self.window_step = step
        self.progress = tqdm(total=total_steps, initial=step, disable=jax.process_index() != 0, dynamic_ncols=True)
        try:
            while step < total_steps:
                state, metrics = step_fn(state, global_batch(next(batches), self.setup.batch_sharding))
                self.pending.append((step, metrics))
                step += 1
                self.progress.update(1)
                if after_step is not None:
                    after_step(step)
                if step % config.log_every_steps == 0:
                    self.flush_metrics(step)
                evaluated = None
                if step % eval_every == 0 or step == total_steps:
                    evaluated = self.evaluate(step, state)
                if evaluated is not None or step % config.checkpoint_every_steps == 0 or step == total_steps:
                    self.save(step, state, {"val_top1": evaluated["val_top1"]} if evaluated else None)
                if stopper.should_stop(step):
                    if self.last_saved != step:
                        self.save(step, state)
                    self.manager.wait_until_finished()
                    self.progress.write(
                        f"SIGTERM: saved step {step} in {self.manager.directory}; rerun the same command to resume"
                    )
                    break
            self.flush_metrics(step)
        finally:
            self.progress.close()
        return state


def evaluate_checkpoint(config: Any) -> dict[str, float]:
    """eval_only: top-1/top-5 of `config.init_from` (and of its EMA weights when it has them)."""
    setup = make_setup(config)
    loaded = read_init_variables(config.init_from)
    images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    fresh = jax.eval_shape(lambda: setup.model.init({"params": jax.random.key(0)}, images))
    replicated = NamedSharding(setup.mesh, P())
    results = {}
    for prefix in ("", "ema_"):
        if f"{prefix}params" not in loaded:
            continue
        params = merge_exact(fresh["params"], loaded[f"{prefix}params"], config.init_from)
        batch_stats = merge_exact(
            fresh.get("batch_stats", {}), loaded.get(f"{prefix}batch_stats", {}), config.init_from
        )
        params, batch_stats = jax.device_put((params, batch_stats), replicated)
        results.update({prefix + k: v for k, v in evaluate(setup, config, params, batch_stats).items()})
    return results


def merge_exact(fresh: Any, loaded: Any, what: str) -> Any:
    merged, reinitialized = merge_pretrained(jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), fresh), loaded, what)
    if reinitialized:
        raise ValueError(f"init_from {what} was trained for another number of classes ({', '.join(reinitialized)})")
    return merged
