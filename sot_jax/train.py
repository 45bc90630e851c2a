"""The training loop: `train_and_evaluate(config, workdir)` trains `config` in `workdir`, resuming from its latest
checkpoint, on every process of a multi-host job.

The step (`train_step`) is a pure function of the state and a batch, jitted over the device mesh. Its neighbours:
`optim` (AdamW and the schedule), `sharding` (mesh and shardings), `checkpoints` (all checkpoint I/O), `evaluate`
(eval sets and top-k), `data` (the Grain input pipeline), `augment`/`token_labels` (batch augmentation on the
accelerator).
"""

from __future__ import annotations

import functools
import json
import math
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp

from sot_jax import augment, checkpoints, evaluate, models, optim, recipes, sharding, sweep, token_labels
from sot_jax.errors import UserError, check_choice, group_count


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any  # None without EMA
    ema_batch_stats: Any
    rng: jax.Array  # raw key data; each step folds in its step number


class NonFiniteLossError(UserError):
    pass


def validate_config(config: Any, num_devices: int, process_count: int) -> None:
    """Stop on trainer values that cannot work, naming the key (the model's are checked by `create_model`)."""
    problems = []
    if not config.lr > 0:
        problems.append(f"lr must be positive, got {config.lr}")
    for key in ("batch_size", "log_every_steps", "checkpoint_every_steps", "optim.grad_accum_steps"):
        value = config[key.split(".")[0]] if "." not in key else config.optim[key.split(".")[1]]
        if not (isinstance(value, int) and value > 0):
            problems.append(f"{key} must be a positive integer, got {value!r}")
    if config.total_steps < 0 or config.eval_every_steps < 0:
        problems.append("total_steps and eval_every_steps must be >= 0")
    bn_group = config.model.get("bn_group_size") or 0
    if not problems:
        per_step = num_devices * config.optim.grad_accum_steps
        if config.batch_size % per_step or config.batch_size % process_count:
            problems.append(
                f"batch_size {config.batch_size} does not divide over {num_devices} devices × "
                f"{config.optim.grad_accum_steps} accumulation steps ({process_count} processes)"
            )
        micro_batch = config.batch_size // config.optim.grad_accum_steps
        mix_group = config.aug.get("mix_group_size") or 0  # text configs have no image mixing
        for key, group in (("aug.mix_group_size", mix_group), ("model.bn_group_size", bn_group)):
            try:  # the step would raise this at its first trace; say it before anything is built
                group_count(micro_batch, group, key)
            except UserError as error:
                problems.append(str(error))
    workers = config.input.get("workers", 0)  # text configs read no images
    if not (isinstance(workers, int) and workers >= -1):
        problems.append(f"input.workers must be -1 (one per core), 0 (none) or a positive integer, got {workers!r}")
    if config.sharding not in ("data", "fsdp"):
        problems.append(f"sharding must be 'data' or 'fsdp', got {config.sharding!r}")
    if config.eval_only and not config.init_from:
        problems.append("eval_only needs init_from=DIR (a converted or trained checkpoint)")
    if config.input.token_label_dir:
        from sot_jax.data import label_maps

        check_choice("input.token_label_box", config.input.token_label_box, label_maps.BOXES)
        check_choice("input.token_label_outside", config.input.token_label_outside, label_maps.OUTSIDES)
        check_choice("input.token_label_resample", config.input.token_label_resample, label_maps.RESAMPLES)
        check_choice("aug.token_label_smoothing", config.aug.token_label_smoothing, token_labels.SMOOTHINGS)
        if config.aug.mixup > 0 or config.aug.cutmix > 0:
            problems.append(
                "input.token_label_dir does not combine with mixup/cutmix (the LV-ViT recipe uses mix_token)"
            )
    if problems:
        raise UserError("invalid config: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------------------------
# The step


def classification_loss(
    outputs: Any, targets: jax.Array, weights: tuple[float, float], token_targets: jax.Array | None = None
) -> jax.Array:
    """Soft-target cross entropy; `PairedLogits` (sum_loss fusion, LV-ViT) give
    weights[0] · CE(class-token logits, targets) + weights[1] · CE(other logits, targets), where per-token logits
    (B, N, C) learn `token_targets` (B, N, C) averaged over tokens, by default the image's target at every token
    (the official fallback without token label maps)."""
    if not isinstance(outputs, models.PairedLogits):
        return jnp.mean(optax.softmax_cross_entropy(outputs, targets))
    if outputs.per_token:
        other_targets = targets[:, None] if token_targets is None else token_targets
    else:
        other_targets = targets
    other = jnp.mean(optax.softmax_cross_entropy(outputs.other, other_targets))
    return weights[0] * jnp.mean(optax.softmax_cross_entropy(outputs.cls, targets)) + weights[1] * other


def augment_images(
    key: jax.Array, batch: dict[str, jax.Array], model: Any, aug: Any
) -> tuple[dict[str, jax.Array], jax.Array, jax.Array | None]:
    """The model's inputs and targets for an image batch: normalize, erase and Mixup/CutMix (in the order
    `aug.erase_after_mix` gives), or token label maps' targets, or MixToken (`aug` is the config's `aug` group).
    Returns (inputs, targets, token targets)."""
    erase_key, mix_key, token_key = jax.random.split(key, 3)
    erase = functools.partial(augment.random_erasing, erase_key, probability=aug.random_erasing)
    if "token_label_classes" in batch:  # token label maps give both targets (no Mixup/CutMix)
        images = erase(augment.normalize(batch["image"]))
        targets, token_targets = token_labels.dense_targets(
            batch["token_label_classes"], batch["token_label_weights"], batch["class_label_classes"],
            batch["class_label_weights"], model.num_classes, aug.label_smoothing, aug.token_label_smoothing,
        )  # fmt: skip
    else:
        targets, token_targets = augment.smooth_one_hot(batch["label"], model.num_classes, aug.label_smoothing), None
        mix = functools.partial(
            augment.mixup_cutmix, mix_key, mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix,
            switch_prob=aug.mix_switch_prob, group_size=aug.mix_group_size,
        )  # fmt: skip
        if aug.erase_after_mix:  # SoT's timm 0.3.4 prefetcher: the collate mixes uint8 images (rounded), then erase
            images, targets = mix(batch["image"].astype(jnp.float32), targets)
            images = erase(augment.normalize(jnp.round(images)))
        else:  # DeiT and HVT erase in each image's transform and mix the batch after
            images, targets = mix(erase(augment.normalize(batch["image"])), targets)
    mix_box = None
    if aug.mix_token:  # token outputs come back un-mixed, so only the class target mixes (within each group)
        mix_box, lam = token_labels.mix_token_boxes(token_key, model.grid, images.shape[0], aug.mix_group_size)
        targets = token_labels.mix_targets(targets, lam)
    return {"images": images, "mix_box": mix_box}, targets, token_targets


def train_step(
    state: TrainState, batch: dict[str, jax.Array], *, model: Any, tx: Any, schedule: Callable, config: Any
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step (with `grad_accum_steps` micro-batches): augment images (`augment_images`; text batches
    go in as they are), forward, backward, AdamW, EMA. Float labels are a regression's scores (STS-B): the model's
    one output learns them by mean squared error."""
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    regression = jnp.issubdtype(batch["label"].dtype, jnp.floating) if "label" in batch else False
    accum = config.optim.grad_accum_steps
    micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)

    def micro_step(carry, inputs):
        grads_sum, loss_sum, batch_stats = carry
        index, micro_batch = inputs
        augment_key, dropout_key = jax.random.split(jax.random.fold_in(rng, index))
        if "image" in micro_batch:
            model_inputs, targets, token_targets = augment_images(augment_key, micro_batch, model, config.aug)
        else:
            model_inputs, token_targets = evaluate.model_inputs(micro_batch), None
            targets = micro_batch["label"]
            if not regression:
                targets = augment.smooth_one_hot(targets, model.num_classes, config.aug.label_smoothing)

        def loss_fn(params):
            outputs, updates = model.apply(
                {"params": params, "batch_stats": batch_stats}, **model_inputs, train=True,
                rngs={"dropout": dropout_key}, mutable=["batch_stats"],
            )  # fmt: skip
            if regression:
                return jnp.mean((outputs[:, 0] - targets) ** 2), updates
            loss = classification_loss(outputs, targets, tuple(config.optim.sum_loss_weights), token_targets)
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
        decay = config.optim.ema_decay
        ema_params = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema_params, params)
        ema_batch_stats = jax.tree.map(lambda e, b: decay * e + (1 - decay) * b, ema_batch_stats, batch_stats)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
        ema_params=ema_params, ema_batch_stats=ema_batch_stats,
    )  # fmt: skip
    metrics = {"loss": loss / accum, "lr": schedule(state.step), "grad_norm": optax.global_norm(grads)}
    return new_state, metrics


def jit_train_step(
    model: Any, tx: Any, schedule: Callable, config: Any, shardings: TrainState, batch_sharding: Any
) -> Callable:
    """`train_step` jitted over the batch's mesh: the state keeps `shardings` (and is donated), metrics replicate."""
    return jax.jit(
        functools.partial(train_step, model=model, tx=tx, schedule=schedule, config=config),
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, sharding.replicated(batch_sharding.mesh)),
        donate_argnums=(0,),
    )


def with_fresh_ema(state: TrainState) -> TrainState:
    """The EMA restarted from the current weights, in buffers of its own (the train step donates both)."""
    if state.ema_params is None:
        return state
    copy = functools.partial(jax.tree.map, jnp.copy)
    return state.replace(ema_params=copy(state.params), ema_batch_stats=copy(state.batch_stats))


def initial_state(model: Any, config: Any, total_steps: int) -> TrainState:
    """A fresh TrainState for `config` (parameters from `config.seed`); jit it with the state's out_shardings."""
    init_key, base_key = jax.random.split(jax.random.key(config.seed))
    inputs = {k: jnp.zeros(x.shape, x.dtype) for k, x in models.example_inputs(model).items()}
    variables = model.init({"params": init_key}, **inputs)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    tx, _ = optim.make_optimizer(config, params, total_steps)
    ema = config.optim.ema_decay > 0
    state = TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, opt_state=tx.init(params),
        ema_params=params if ema else None, ema_batch_stats=batch_stats if ema else None,
        rng=jax.random.key_data(base_key),
    )  # fmt: skip
    return with_fresh_ema(state)


# ---------------------------------------------------------------------------------------------------------------
# Bookkeeping: logs, preemption, the loop


class MetricsLog:
    """metrics.jsonl and TensorBoard scalars (an event file written with TensorBoard's record writer: no
    TensorFlow), written by process 0."""

    def __init__(self, workdir: Path, enabled: bool):
        self.enabled = enabled
        self.path = workdir / "metrics.jsonl"
        self.events = None
        if enabled:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.summary.writer.record_writer import RecordWriter

            folder = workdir / "tensorboard"
            folder.mkdir(parents=True, exist_ok=True)
            self.file = (folder / f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}").open("wb")
            self.events = RecordWriter(self.file)
            self.events.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in values.items()}}) + "\n")
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        scalars = [Summary.Value(tag=key, simple_value=float(value)) for key, value in values.items()]
        event = Event(wall_time=time.time(), step=step, summary=Summary(value=scalars))
        self.events.write(event.SerializeToString())
        self.events.flush()


class Stopper:
    """SIGTERM asks the loop to checkpoint and exit. With several processes, JAX's preemption service (which takes
    SIGTERM itself) agrees on the step where every process stops, without a blocking collective per step."""

    def __init__(self):
        self.requested = False
        self.previous = None
        if jax.process_count() == 1:
            self.previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def should_stop(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        return multihost_utils.reached_preemption_sync_point(step)

    def close(self):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


class Loop:
    """The step loop's bookkeeping: metrics fetched lazily from the device, evaluation (which writes only improved
    best weights), the resumable state every `checkpoint_every_steps`, at the end and on SIGTERM, stopping."""

    def __init__(
        self, config: Any, evaluator: evaluate.Evaluator, manager: ocp.CheckpointManager, best: checkpoints.BestWeights,
        log: MetricsLog, meta: dict,
    ):  # fmt: skip
        self.config, self.evaluator, self.manager, self.best, self.log, self.meta = (
            config, evaluator, manager, best, log, meta
        )  # fmt: skip
        self.pending: list[tuple[int, dict]] = []  # per-step metrics still on the device: no per-step sync
        self.last_saved = manager.latest_step()
        self.window_start, self.window_step = time.perf_counter(), None
        self.progress = None
        self.batches = None  # the input iterator of `run`, whose position each checkpoint saves

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

    def save(self, step: int, state: TrainState) -> None:
        self.flush_metrics(step)  # never checkpoint a state that followed a non-finite loss
        self.manager.save(step, args=checkpoints.save_args(state, self.meta, self.batches), force=True)
        self.last_saved = step

    def evaluate(self, step: int, state: TrainState) -> dict[str, float]:
        self.flush_metrics(step)
        results = self.evaluator(state.params, state.batch_stats)
        if state.ema_params is not None:
            ema = self.evaluator(state.ema_params, state.ema_batch_stats)
            results.update({f"ema_{k}": v for k, v in ema.items()})
        self.log.write(step, results)
        if jax.process_index() == 0:
            self.progress.write(f"step {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in results.items()))
        return results

    def run(
        self, state: TrainState, step: int, total_steps: int, eval_every: int, batches: Iterator, step_fn: Callable,
        batch_sharding: Any, stopper: Stopper, after_step: Callable | None,
    ) -> TrainState:  # fmt: skip
        from tqdm import tqdm

        config = self.config
        self.window_step, self.batches = step, batches
        self.progress = tqdm(total=total_steps, initial=step, disable=jax.process_index() != 0, dynamic_ncols=True)
        try:
            while step < total_steps:
                state, metrics = step_fn(state, sharding.global_batch(next(batches), batch_sharding))
                self.pending.append((step, metrics))
                step += 1
                self.progress.update(1)
                if after_step is not None:
                    after_step(step)
                if step % config.log_every_steps == 0:
                    self.flush_metrics(step)
                if step % eval_every == 0 or step == total_steps:
                    self.best.update(step, self.evaluate(step, state), state)
                if step % config.checkpoint_every_steps == 0 or step == total_steps:
                    self.save(step, state)
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


def train_and_evaluate(config: Any, workdir: str, after_step: Callable[[int], None] | None = None) -> TrainState:
    """Train `config` in `workdir`, resuming from its latest checkpoint; returns the final state.

    `after_step(step)` is called after each step (a hook for profiling or tests)."""
    from sot_jax import data

    # Set up: check the config (completed from init_from's checkpoint for a text model), find the workdir.
    validate_config(config, jax.device_count(), jax.process_count())
    config, pretrained = checkpoints.resolve_init_from(config)
    workdir = Path(workdir).absolute()
    is_main = jax.process_index() == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)

    # Data: the training source, and the schedule's length in steps.
    source = data.sources.get_source(config.dataset, config.data_dir, prepare_embedded=is_main)
    data.use_checkpoint_classes(source, pretrained)
    epoch_steps = data.pipeline.steps_per_epoch(source, config.input.train_split, config.batch_size)
    total_steps = config.total_steps or epoch_steps * (config.optim.num_epochs + config.optim.cooldown_epochs)
    eval_every = config.eval_every_steps or epoch_steps

    # Model and optimizer (abstract first, to place every array on its sharding directly).
    model = recipes.build_model(config.model, source.num_classes)
    init_state = functools.partial(initial_state, model, config, total_steps)
    abstract = jax.eval_shape(init_state)
    tx, schedule = optim.make_optimizer(config, abstract.params, total_steps)

    # Shard: one data axis over every device; parameters replicated or FSDP-sharded.
    mesh = sharding.make_mesh()
    shardings = sharding.state_shardings(abstract, mesh, config.sharding)
    batch_sharding = sharding.batch_sharding(mesh)

    # Evals: every config.evals entry resolved now, so that a bad one stops before the first step.
    evaluator = evaluate.Evaluator(config, model, evaluate.resolve_evals(config, source, source.num_classes), mesh)

    # Restore: this workdir's latest checkpoint, else a fresh state (from init_from when given).
    manager = checkpoints.checkpoint_manager(workdir, config)
    latest = manager.latest_step()
    if latest is not None:
        state = checkpoints.restore_state(manager, latest, sharding.with_shardings(abstract, shardings))
        print(f"resumed from {manager.directory / str(latest)}", flush=True)
    else:
        state = jax.jit(init_state, out_shardings=shardings)()
        if config.init_from:
            params, batch_stats = checkpoints.pretrained_variables(
                state.params, state.batch_stats, config.init_from, pretrained
            )
            state = jax.device_put(with_fresh_ema(state.replace(params=params, batch_stats=batch_stats)), shardings)

    # Step: jitted over the mesh; batches from this workdir's step on.
    step_fn = jit_train_step(model, tx, schedule, config, shardings, batch_sharding)
    start = int(state.step)
    batches = data.train_batches(source, config, model, start)
    if latest is not None:
        checkpoints.restore_input_position(manager, latest, batches)

    # Loop: steps, logs, evaluations, checkpoints, until total_steps or SIGTERM.
    log = MetricsLog(workdir, is_main)
    stopper = Stopper()
    overrides = {k: v for k, v in recipes.model_overrides(config.model).items() if k != "dtype"}
    meta = {"model": config.model.name, "num_classes": source.num_classes, "overrides": overrides,
            **data.checkpoint_record(source, config), "config": config.to_json_best_effort()}  # fmt: skip
    best = checkpoints.BestWeights(workdir, recipes.best_metric(config), meta, start)
    try:
        state = Loop(config, evaluator, manager, best, log, meta).run(
            state, start, total_steps, eval_every, batches, step_fn, batch_sharding, stopper, after_step
        )
    finally:
        manager.wait_until_finished()
        best.wait_until_finished()
        stopper.close()
    if is_main and int(state.step) == total_steps:  # the dev score both ways, as GLUE results are reported
        metric = recipes.best_metric(config)
        final, best, best_step = sweep.final_and_best(workdir, metric)
        print(f"{metric}: final {final:.2f}, best {best:.2f} (step {best_step})", flush=True)
        record = {"metric": metric, "final": final, "best": best, "best_step": best_step, "step": total_steps}
        (workdir / sweep.FINAL_FILE).write_text(json.dumps(record))  # the run is finished (sot_jax.sweep)
    return state
