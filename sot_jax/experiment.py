"""The config resolved once: `build(config) -> Experiment`, the plain values and objects a run needs.

`build` runs every config check before anything trains, and resolves, in order: `init_from`'s checkpoint (a text
model's architecture, vocabulary and casing come from it), the training source and the schedule's length, the
model, optimizer and schedule with the train state's shardings (`Trainer`), the input (a training-batch factory,
and each eval set with its own batches), the metric that ranks the best weights, and what checkpoints record.
`train.train_and_evaluate` and `evaluate.evaluate_checkpoint` take the result; nothing after `build` reads the
config. `build_trainer` is the model-and-step part alone, for benchmarks on synthetic batches.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from sot_jax import checkpoints, data, evaluate, models, optim, recipes, sharding, token_labels, train
from sot_jax.data import label_maps, pipeline, source_base, sources
from sot_jax.errors import UserError, check_choice, group_count


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
    if config.input.get("token_label_dir"):
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


def build_model(model_config: Any, num_classes: int) -> Any:
    """The model `config.model` describes (`models.create_model`, the same checks and messages)."""
    check_choice("model.dtype", model_config.dtype, ("float32", "bfloat16"))
    overrides = {**recipes.model_overrides(model_config), "dtype": jnp.dtype(model_config.dtype)}
    return models.create_model(model_config.name, num_classes=num_classes, **overrides)


def step_options(config: Any) -> train.StepOptions:
    """The values `train.train_step` reads: the `aug` group (an unknown key is an error) and the loss, accumulation
    and EMA settings of `optim`."""
    fields = {f.name for f in dataclasses.fields(train.Augmentation)}
    unknown = sorted(set(config.aug) - fields)
    if unknown:
        raise UserError(f"unknown config key(s) aug.{', aug.'.join(unknown)}; valid: {', '.join(sorted(fields))}")
    return train.StepOptions(
        aug=train.Augmentation(**config.aug), grad_accum_steps=config.optim.grad_accum_steps,
        ema_decay=config.optim.ema_decay, sum_loss_weights=tuple(config.optim.sum_loss_weights),
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Trainer:
    """The model and what its training step needs: optimizer, schedule, step options, the mesh and the train
    state's shardings (`abstract_state`: its shapes, for restoring)."""

    model: Any
    tx: optax.GradientTransformation
    schedule: Callable[[jax.Array], jax.Array]
    options: train.StepOptions
    seed: int
    mesh: Mesh
    state_shardings: Any  # a TrainState of NamedShardings
    batch_sharding: NamedSharding
    abstract_state: Any

    def initial_state(self) -> train.TrainState:
        """A fresh state from `seed`, each array placed on its sharding directly."""
        init = functools.partial(train.initial_state, self.model, self.tx, self.seed, self.options.ema_decay > 0)
        return jax.jit(init, out_shardings=self.state_shardings)()

    def jit_step(self) -> Callable:
        """`train.train_step` jitted over the mesh (the state donated)."""
        return train.jit_train_step(
            self.model, self.tx, self.schedule, self.options, self.state_shardings, self.batch_sharding
        )


def build_trainer(config: Any, num_classes: int, total_steps: int, mesh: Mesh | None = None) -> Trainer:
    """The `Trainer` of `config` for `num_classes` and a schedule of `total_steps`; `mesh` (benchmarks) replaces the
    one over every device."""
    model = build_model(config.model, num_classes)
    abstract_params = models.abstract_variables(model)["params"]
    tx, schedule = optim.make_optimizer(config, abstract_params, total_steps)
    options = step_options(config)
    abstract = jax.eval_shape(functools.partial(train.initial_state, model, tx, config.seed, options.ema_decay > 0))
    mesh = mesh or sharding.make_mesh()
    return Trainer(
        model=model, tx=tx, schedule=schedule, options=options, seed=config.seed, mesh=mesh,
        state_shardings=sharding.state_shardings(abstract, mesh, config.sharding),
        batch_sharding=sharding.batch_sharding(mesh), abstract_state=abstract,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A config resolved: the trainer, the training source (with a text source's tokenizer) and its batches from a
    step on, the eval sets, the loop's intervals, the best weights' metric (empty for eval_only), `init_from` and its
    metadata, and `meta` (what every checkpoint records: the model's name, classes and options, a text run's class
    names and tokenizer, and the config)."""

    trainer: Trainer
    source: source_base.Source
    tokenizer: data.tokenization.Tokenizer | None  # a text source's
    train_batches: Callable[[int], Iterator[dict[str, np.ndarray]]]
    eval_sets: list[evaluate.EvalSet]
    batch_size: int
    total_steps: int  # 0 for eval_only
    eval_every_steps: int
    log_every_steps: int
    checkpoint_every_steps: int
    keep_checkpoints: int
    best_metric: str
    init_from: str
    pretrained: dict[str, Any] | None
    meta: dict[str, Any]


def build(config: Any) -> Experiment:
    """Resolve `config` (module docstring); every problem the user can fix is a `UserError` raised here."""
    # Check: the trainer's values, then init_from (a text model's config comes back completed from it).
    validate_config(config, jax.device_count(), jax.process_count())
    config, pretrained = checkpoints.resolve_init_from(config)

    # Source: the training data (in the checkpoint's class order) and the schedule's length in steps.
    source = sources.get_source(config.dataset, config.data_dir, prepare_embedded=jax.process_index() == 0)
    data.use_checkpoint_classes(source, pretrained)
    total_steps = epoch_steps = 0
    if not config.eval_only:
        epoch_steps = pipeline.steps_per_epoch(source, config.input.train_split, config.batch_size)
        total_steps = config.total_steps or epoch_steps * (config.optim.num_epochs + config.optim.cooldown_epochs)

    # Trainer: model, optimizer, schedule, step options and shardings.
    trainer = build_trainer(config, source.num_classes, total_steps)
    model = trainer.model

    # Input: this process's training batches from a step on, and a batch factory per eval set.
    shard = data.process_shard()
    seed, batch_size, train_split = config.seed, config.batch_size, config.input.train_split
    eval_batch = config.eval_batch_size or batch_size
    record, tokenizer = {}, None
    if isinstance(source, data.text.TextSource):
        gpt_format = config.input.get("gpt_format") or "hf"
        vocab_size = getattr(model, "encoder_config", {}).get("vocab_size")
        vocab, lower_case = config.get("vocab", ""), config.input.get("lower_case")
        tokenizer = data.load_tokenizer(source, vocab, lower_case, gpt_format, vocab_size)
        token_types = model.family in models.text.BERT_FAMILIES  # HF's GPT adds the token embedding of any type ids
        text_options = {"max_seq_length": config.input.max_seq_length, "token_types": token_types, **shard}
        record = {"label_names": source.label_names, "vocab": tokenizer.source, "lower_case": tokenizer.lower_case,
                  "gpt_format": gpt_format}  # fmt: skip

        def train_batches(start_step: int) -> Iterator[dict[str, np.ndarray]]:
            return data.text.text_train_batches(
                source, tokenizer, seed=seed, global_batch=batch_size, start_step=start_step, split=train_split,
                **text_options,
            )  # fmt: skip

        def eval_batches(eval_source: Any, split: str, multi_label: bool) -> Callable[[], Iterator]:
            return functools.partial(
                data.text.text_eval_batches, eval_source, split, tokenizer, global_batch=eval_batch, **text_options
            )

    else:
        input_config, group_size = config.input.copy_and_resolve_references(), config.aug.mix_group_size

        def train_batches(start_step: int) -> Iterator[dict[str, np.ndarray]]:
            return pipeline.train_batches(
                source, input_config, image_size=model.img_size, seed=seed, global_batch=batch_size,
                start_step=start_step, group_size=group_size, token_grid=model.grid, **shard,
            )  # fmt: skip

        def eval_batches(eval_source: Any, split: str, multi_label: bool) -> Callable[[], Iterator]:
            return functools.partial(
                pipeline.eval_batches, eval_source, split, image_size=model.img_size,
                crop_pct=input_config.eval_crop_pct, global_batch=eval_batch, multi_label=multi_label,
                skip_bad_images=input_config.skip_bad_images, threads=pipeline.resolve_workers(input_config.workers),
                **shard,
            )  # fmt: skip

    # Evals: every config.evals entry resolved now, so that a bad one stops before the first step.
    eval_sets = evaluate.resolve_evals(config, source, source.num_classes, eval_batches)
    best_metric = "" if config.eval_only else recipes.best_metric(config)

    overrides = {k: v for k, v in recipes.model_overrides(config.model).items() if k != "dtype"}
    meta = {"model": config.model.name, "num_classes": source.num_classes, "overrides": overrides, **record,
            "config": config.to_json_best_effort()}  # fmt: skip
    return Experiment(
        trainer=trainer, source=source, tokenizer=tokenizer, train_batches=train_batches, eval_sets=eval_sets,
        batch_size=config.batch_size, total_steps=total_steps, eval_every_steps=config.eval_every_steps or epoch_steps,
        log_every_steps=config.log_every_steps, checkpoint_every_steps=config.checkpoint_every_steps,
        keep_checkpoints=config.keep_checkpoints, best_metric=best_metric, init_from=config.init_from,
        pretrained=pretrained, meta=meta,
    )  # fmt: skip
