"""The step and the loop: `train_and_evaluate(experiment, workdir)` trains an `experiment.build` result in
`workdir`, resuming from its latest checkpoint, on every process of a multi-host job.

The step (`train_step`) is a pure function of the state and a batch, jitted over the device mesh; it reads resolved
values (`StepOptions`), never the config. Its neighbours: `experiment` (the config resolved into the parts below),
`optim` (AdamW and the schedule), `sharding` (mesh and shardings), `checkpoints` (all checkpoint I/O), `evaluate`
(eval sets and metrics), `data` (the input pipelines), `augment`/`token_labels` (batch augmentation on the
accelerator).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import flax
import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp

from sot_jax import augment, checkpoints, data, evaluate, models, sharding, sweep, token_labels
from sot_jax.errors import UserError

if TYPE_CHECKING:  # the type only: experiment.py builds on this module
    from sot_jax.experiment import Experiment


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any  # None without EMA
    ema_batch_stats: Any
    rng: jax.Array  # raw key data; each step folds in its step number


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Batch augmentation on the accelerator: the config's `aug` group, under the same names (a text config sets
    only some; the rest stay off)."""

    random_erasing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_switch_prob: float = 0.5
    mix_group_size: int = 0
    erase_after_mix: bool = True
    mix_token: bool = False
    label_smoothing: float = 0.0
    token_label_smoothing: str = "official"


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """What `train_step` reads besides the model and optimizer, resolved once by `experiment.build`."""

    aug: Augmentation
    grad_accum_steps: int = 1
    ema_decay: float = 0.0  # 0: no EMA
    sum_loss_weights: tuple[float, float] = (1.0, 1.0)


class NonFiniteLossError(UserError):
    pass


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
    key: jax.Array, batch: dict[str, jax.Array], model: Any, aug: Augmentation
) -> tuple[dict[str, jax.Array], jax.Array, jax.Array | None]:
    """The model's inputs and targets for an image batch: normalize, erase and Mixup/CutMix (in the order
    `aug.erase_after_mix` gives), or token label maps' targets, or MixToken. Returns (inputs, targets, token
    targets)."""
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
    state: TrainState, batch: dict[str, jax.Array], *, model: Any, tx: Any, schedule: Callable, options: StepOptions
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step (with `grad_accum_steps` micro-batches): augment images (`augment_images`; text batches
    go in as they are), forward, backward, AdamW, EMA. Float labels are a regression's scores (STS-B): the model's
    one output learns them by mean squared error."""
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    regression = jnp.issubdtype(batch["label"].dtype, jnp.floating) if "label" in batch else False
    accum = options.grad_accum_steps
    micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)

    def micro_step(carry, inputs):
        grads_sum, loss_sum, batch_stats = carry
        index, micro_batch = inputs
        augment_key, dropout_key = jax.random.split(jax.random.fold_in(rng, index))
        if "image" in micro_batch:
            model_inputs, targets, token_targets = augment_images(augment_key, micro_batch, model, options.aug)
        else:
            model_inputs, token_targets = data.model_inputs(micro_batch), None
            targets = micro_batch["label"]
            if not regression:
                targets = augment.smooth_one_hot(targets, model.num_classes, options.aug.label_smoothing)

        def loss_fn(params):
            outputs, updates = model.apply(
                {"params": params, "batch_stats": batch_stats}, **model_inputs, train=True,
                rngs={"dropout": dropout_key}, mutable=["batch_stats"],
            )  # fmt: skip
            if regression:
                return jnp.mean((outputs[:, 0] - targets) ** 2), updates
            loss = classification_loss(outputs, targets, options.sum_loss_weights, token_targets)
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
        decay = options.ema_decay
        ema_params = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema_params, params)
        ema_batch_stats = jax.tree.map(lambda e, b: decay * e + (1 - decay) * b, ema_batch_stats, batch_stats)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
        ema_params=ema_params, ema_batch_stats=ema_batch_stats,
    )  # fmt: skip
    metrics = {"loss": loss / accum, "lr": schedule(state.step), "grad_norm": optax.global_norm(grads)}
    return new_state, metrics


def jit_train_step(
    model: Any, tx: Any, schedule: Callable, options: StepOptions, shardings: TrainState, batch_sharding: Any
) -> Callable:
    """`train_step` jitted over the batch's mesh: the state keeps `shardings` (and is donated), metrics replicate.
    The step is traced under the mesh, for the ops that split their work over it themselves (the fused attention
    kernels)."""
    mesh = batch_sharding.mesh.abstract_mesh

    def step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        with jax.sharding.use_abstract_mesh(mesh):
            return train_step(state, batch, model=model, tx=tx, schedule=schedule, options=options)

    return jax.jit(
        step,
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


def initial_state(model: Any, tx: Any, seed: int, ema: bool) -> TrainState:
    """A fresh TrainState (parameters from `seed`; `ema`: with EMA weights); jit it with the state's
    out_shardings."""
    init_key, base_key = jax.random.split(jax.random.key(seed))
    inputs = {k: jnp.zeros(x.shape, x.dtype) for k, x in models.example_inputs(model).items()}
    variables = model.init({"params": init_key}, **inputs)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
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
        self, experiment: Experiment, evaluator: evaluate.Evaluator, manager: ocp.CheckpointManager,
        best: checkpoints.BestWeights, log: MetricsLog,
    ):  # fmt: skip
        self.experiment, self.evaluator, self.manager, self.best, self.log = experiment, evaluator, manager, best, log
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
            img_per_sec = (step - self.window_step) * self.experiment.batch_size / max(elapsed, 1e-9)
            self.window_start, self.window_step = time.perf_counter(), step
            latest = {k: float(v) for k, v in values[-1][1].items()}
            self.log.write(step, {**latest, "img_per_sec": img_per_sec})
            self.progress.set_postfix(
                loss=f"{latest['loss']:.4f}", lr=f"{latest['lr']:.2e}", img_s=f"{img_per_sec:.0f}"
            )

    def save(self, step: int, state: TrainState) -> None:
        self.flush_metrics(step)  # never checkpoint a state that followed a non-finite loss
        self.manager.save(step, args=checkpoints.save_args(state, self.experiment.meta, self.batches), force=True)
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
        self, state: TrainState, step: int, batches: Iterator, step_fn: Callable, stopper: Stopper,
        after_step: Callable | None,
    ) -> TrainState:  # fmt: skip
        from tqdm import tqdm

        experiment, batch_sharding = self.experiment, self.experiment.trainer.batch_sharding
        total_steps = experiment.total_steps
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
                if step % experiment.log_every_steps == 0:
                    self.flush_metrics(step)
                if step % experiment.eval_every_steps == 0 or step == total_steps:
                    self.best.update(step, self.evaluate(step, state), state)
                if step % experiment.checkpoint_every_steps == 0 or step == total_steps:
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


def train_and_evaluate(
    experiment: Experiment, workdir: str, after_step: Callable[[int], None] | None = None
) -> TrainState:
    """Train `experiment` (`experiment.build(config)`) in `workdir`, resuming from its latest checkpoint; returns the
    final state.

    `after_step(step)` is called after each step (a hook for profiling or tests)."""
    from sot_jax import evaluate

    trainer = experiment.trainer
    workdir = Path(workdir).absolute()
    is_main = jax.process_index() == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)

    # Restore: this workdir's latest checkpoint, else a fresh state (from init_from when given).
    manager = checkpoints.checkpoint_manager(workdir, experiment.keep_checkpoints)
    latest = manager.latest_step()
    if latest is not None:
        abstract = sharding.with_shardings(trainer.abstract_state, trainer.state_shardings)
        state = checkpoints.restore_state(manager, latest, abstract)
        print(f"resumed from {manager.directory / str(latest)}", flush=True)
    else:
        state = trainer.initial_state()
        if experiment.init_from:
            params, batch_stats = checkpoints.pretrained_variables(
                state.params, state.batch_stats, experiment.init_from, experiment.pretrained
            )
            state = with_fresh_ema(state.replace(params=params, batch_stats=batch_stats))
            state = jax.device_put(state, trainer.state_shardings)

    # Input: batches from the state's step on (at the saved position when resuming).
    start = int(state.step)
    batches = experiment.train_batches(start)
    if latest is not None:
        checkpoints.restore_input_position(manager, latest, batches)

    # Loop: steps, logs, evaluations, checkpoints, until total_steps or SIGTERM.
    evaluator = evaluate.Evaluator(trainer.model, experiment.eval_sets, trainer.mesh)
    best = checkpoints.BestWeights(workdir, experiment.best_metric, experiment.meta, start)
    stopper = Stopper()
    loop = Loop(experiment, evaluator, manager, best, MetricsLog(workdir, is_main))
    try:
        state = loop.run(state, start, batches, trainer.jit_step(), stopper, after_step)
    finally:
        manager.wait_until_finished()
        best.wait_until_finished()
        stopper.close()

    # Finish: the dev score both ways, as GLUE results are reported; the record marks the run finished (sweep).
    if is_main and int(state.step) == experiment.total_steps:
        metric = experiment.best_metric
        final, best_value, best_step = sweep.final_and_best(workdir, metric)
        print(f"{metric}: final {final:.2f}, best {best_value:.2f} (step {best_step})", flush=True)
        record = {"metric": metric, "final": final, "best": best_value, "best_step": best_step,
                  "step": experiment.total_steps}  # fmt: skip
        (workdir / sweep.FINAL_FILE).write_text(json.dumps(record))
    return state
