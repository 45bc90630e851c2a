"""Shared training-config defaults; the files in configs/ start from `base_config()` and set their recipe.

Layout: the keys users type most sit at the top (`dataset`, `data_dir`, `batch_size`, `total_steps`, `lr`, `seed`,
`*_every_steps`); the rest is grouped: `model` (the registry name, compute dtype, and every `create_model` keyword
under its own name), `input` (the workers' PIL transforms: splits, crop, flip, RandAugment, token label maps),
`aug` (on the accelerator: erasing, Mixup/CutMix, MixToken, label smoothing), `optim` (AdamW, schedule, EMA, loss
weights) and `evals` (named evaluation sets).
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from sot_jax.errors import UserError, check_choice
from sot_jax.models import factory

# Keys of an evals entry: dataset and data_dir ("" = the config's), split ("" = the dataset's validation split),
# optional (skipped with one warning line when not prepared), label_subset (predict among the classes present,
# ImageNet-A), multi_label (ImageNet-ReaL's real labels), metrics (what is logged as <name>_<metric>, see
# EVAL_METRICS; none for a test split without labels), submission (a GLUE server file name: eval_only writes the
# set's predictions into the workdir under it).
EVAL_KEYS = ("dataset", "data_dir", "split", "optional", "label_subset", "multi_label", "metrics", "submission")
# top1 (accuracy) and top5 (above 5 classes), and for text tasks GLUE's: mcc (Matthews), f1 (of class 1), pearson and
# spearman (regression), glue (the task's GLUE score: the mean of its metrics), all in percent.
EVAL_METRICS = ("top1", "top5", "mcc", "f1", "pearson", "spearman", "glue")


def eval_set(
    dataset: str = "", split: str = "", optional: bool = False, label_subset: bool = False, multi_label: bool = False,
    metrics: tuple[str, ...] = ("top1", "top5"), submission: str = "",
) -> ml_collections.ConfigDict:
    """One `config.evals` entry (see EVAL_KEYS)."""
    return ml_collections.ConfigDict(
        {"dataset": dataset, "data_dir": "", "split": split, "optional": optional, "label_subset": label_subset,
         "multi_label": multi_label, "metrics": tuple(metrics), "submission": submission}
    )  # fmt: skip


# ImageNet's extra evaluation sets, used when prepared in the data dir (`python -m sot_jax.prepare NAME`).
IMAGENET_EVALS = {
    "imagenet_a": eval_set("imagenet_a", "test", optional=True, label_subset=True),
    "imagenet_v2": eval_set("imagenet_v2", "test", optional=True),
    "imagenet2012_real": eval_set("imagenet2012_real", "validation", optional=True, multi_label=True),
}


def base_config() -> ml_collections.ConfigDict:
    """Every key the trainer reads, with the SoT/DeiT ImageNet recipe (SPEC §3) as the default values."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.dataset = "imagenet2012"  # a TFDS name, or "folder" (data_dir/<split>/<class>/<image>)
    config.data_dir = ""  # empty: the TFDS default (~/tensorflow_datasets)
    config.batch_size = 1024  # global, over all devices and processes
    config.total_steps = 0  # 0: (num_epochs + cooldown_epochs) epochs; otherwise the schedule is squeezed into it
    config.lr = 1e-3  # the peak rate at optim.lr_base_batch (0: used as is, whatever the batch size)
    config.log_every_steps = 50
    config.eval_every_steps = 0  # 0: once per epoch
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 3  # the latest ones, plus the best by `best_metric`
    config.eval_batch_size = 0  # 0: batch_size
    config.sharding = "data"  # "data" (replicated parameters) or "fsdp" (parameters and optimizer state sharded)
    config.init_from = ""  # a converted or trained checkpoint to start from (fine-tuning re-inits the classifier)
    config.eval_only = False
    config.dry_run = False  # True: print the resolved recipe (`describe`) and exit; reads only the split's size
    # The weights kept as best (workdir/best): an eval metric ("val_top1", "ema_val_top1" for the EMA weights, ...);
    # "auto": ema_val_top1 with EMA on (the SoT and LV-ViT scripts), else val_top1.
    config.best_metric = "auto"

    config.model = ml_collections.ConfigDict()
    config.model.name = "deit_small_sot"
    config.model.dtype = "bfloat16"  # compute dtype; parameters, covariance and SVPN stay float32
    config.model.img_size = 224
    config.model.drop_path_rate = 0.1
    for key, kind in factory.OPTION_TYPES.items():  # every other create_model keyword; None: the model's own
        if key not in config.model:
            config.model[key] = placeholder(kind)

    config.input = ml_collections.ConfigDict()
    config.input.train_split = "train"
    config.input.eval_crop_pct = 0.875  # resize 256, centre-crop 224
    config.input.crop_scale = (0.08, 1.0)
    config.input.crop_ratio = (3 / 4, 4 / 3)
    config.input.interpolation = "random"  # crop resize and RandAugment's geometric ops: bicubic, bilinear, random
    config.input.hflip = True
    config.input.randaugment_layers = 2  # rand-m9-mstd0.5-inc1
    config.input.randaugment_magnitude = 9.0
    config.input.randaugment_std = 0.5
    config.input.repeated_aug = 1  # >1: each image that many times per epoch
    config.input.token_label_dir = ""  # token label maps from `python -m sot_jax.convert_labels` (empty: image label)
    config.input.token_label_box = "official"  # map read-out: "official" (box mirrored on the diagonal) or "corrected"
    config.input.token_label_outside = "zero"  # map cells RandAugment moved off the image: "zero" scores or "nearest"
    config.input.token_label_resample = "official"  # the map under RandAugment: "official" per-op or "traced" geometry
    config.input.skip_bad_images = False  # True: replace (and log) files that do not decode instead of stopping
    config.input.workers = -1  # image-transform processes per host (Grain); -1: one per core; 0: in this process

    config.aug = ml_collections.ConfigDict()
    config.aug.random_erasing = 0.25
    config.aug.mixup = 0.8
    config.aug.cutmix = 1.0
    config.aug.mix_switch_prob = 0.5
    config.aug.mix_group_size = 0  # >0: one Mixup/CutMix draw per group of that many images (a GPU's batch); 0: all
    config.aug.erase_after_mix = True  # SoT's order (timm's prefetcher); False: erase each image first (DeiT, HVT)
    config.aug.mix_token = False  # LV-ViT's MixToken (replaces Mixup/CutMix in its recipe)
    config.aug.label_smoothing = 0.1
    config.aug.token_label_smoothing = "official"  # map targets: "official" p(1−s+s/C)+s/C or "corrected" (1−s)p+s/C

    # AdamW, timm's cosine schedule stepped per epoch, warmup and cooldown.
    config.optim = ml_collections.ConfigDict()
    config.optim.schedule = "cosine_epochs"  # timm's cosine stepped per epoch; "linear": per step to 0 (GLUE)
    config.optim.lr_base_batch = 0  # >0: the rate is lr · batch_size / lr_base_batch (HVT's rule)
    config.optim.weight_decay = 0.03
    config.optim.no_weight_decay = ()  # parameter names excluded from weight decay besides 1-D ones
    config.optim.b1, config.optim.b2, config.optim.eps = 0.9, 0.999, 1e-8
    config.optim.grad_clip_norm = 0.0  # 0: no clipping
    config.optim.grad_accum_steps = 1
    config.optim.num_epochs = 300
    config.optim.warmup_epochs = 5
    config.optim.cooldown_epochs = 10
    config.optim.warmup_lr = 1e-6
    config.optim.min_lr = 1e-5
    config.optim.schedule_epoch_offset = 0  # 1: each epoch's rate one epoch late (DeiT's and HVT's scripts)
    config.optim.ema_decay = 0.99996  # 0: no EMA
    config.optim.sum_loss_weights = (1.0, 1.0)  # (class-token loss, other loss): sum_loss fusion; LV-ViT (cls, dense)

    config.evals = ml_collections.ConfigDict({"val": eval_set(), **IMAGENET_EVALS})
    return config


def best_metric(config: ml_collections.ConfigDict) -> str:
    """`config.best_metric`, checked against the metrics every evaluation logs: the `metrics` of a non-optional
    eval set, with the "ema_" prefix only when EMA is on; "auto" is ema_val_top1 with EMA on
    (the official SoT and LV-ViT scripts rank checkpoints by the EMA weights), else val_top1 (DeiT, HVT)."""
    ema = config.optim.ema_decay > 0
    metrics = []
    for name, entry in config.evals.items():
        if not entry.optional:
            metrics += [f"{name}_{metric}" for metric in entry.metrics]
    metrics += [f"ema_{m}" for m in metrics] if ema else []
    metric = config.best_metric
    if metric == "auto":
        metric = "ema_val_top1" if ema else "val_top1"
    check_choice("best_metric", metric, tuple(metrics))
    return metric


def model_overrides(model_config: ml_collections.ConfigDict) -> dict:
    """`create_model` keywords from `config.model`: every key but name, with the unset (None) ones left out."""
    return {k: v for k, v in model_config.items() if k != "name" and v is not None}


def unknown_variant(variant: str, variants) -> UserError:
    return UserError(f"unknown config variant {variant!r}; choose one of {', '.join(variants)}")


def deit_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """DeiT's main.py (timm 0.3.2), which HVT's main.py copies: lr scaled by batch / 512, 300 epochs without the
    cooldown (the loop stops before it) and each epoch's rate one epoch late (`scheduler.step(epoch)`), no EMA,
    repeated augmentation ×3, bicubic interpolation, erasing each image before Mixup/CutMix."""
    config.optim.lr_base_batch = 512
    config.optim.cooldown_epochs = 0
    config.optim.schedule_epoch_offset = 1
    config.optim.ema_decay = 0.0
    config.input.repeated_aug = 3
    config.input.interpolation = "bicubic"
    config.aug.erase_after_mix = False
    return config


def digits_demo(config: ml_collections.ConfigDict, model: str, **model_options) -> ml_collections.ConfigDict:
    """Turn a recipe into the embedded-dataset demo: a small model on 32×32 digits, a few CPU minutes."""
    config.dataset = "digits"
    config.evals = ml_collections.ConfigDict({"val": eval_set()})
    config.model.img_size = 32
    config.input.eval_crop_pct = 1.0
    config.input.crop_scale = (0.6, 1.0)
    config.input.hflip = False  # mirrored digits are other digits
    config.input.randaugment_layers = 0
    config.aug.random_erasing = 0.0
    config.aug.mixup = config.aug.cutmix = 0.0
    config.model.name = model
    config.model.dtype = "float32"
    config.model.update({"embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_hidden": 128, "drop_path_rate": 0.0})
    config.model.update(model_options)
    config.batch_size = 64
    config.lr = 2e-3
    config.optim.weight_decay = 0.05
    config.optim.num_epochs = 20
    config.optim.warmup_epochs = 2
    config.optim.cooldown_epochs = 0
    config.optim.ema_decay = 0.0
    config.log_every_steps = 22
    config.eval_every_steps = 110  # every 5 epochs of 22 steps
    config.checkpoint_every_steps = 110
    return config


def train_examples(config: ml_collections.ConfigDict) -> int | None:
    """The size of the training split, read from its source; None where the data is not prepared (a dry run
    prepares nothing, the embedded datasets included)."""
    from sot_jax.data import sources

    try:
        source = sources.get_source(config.dataset, config.data_dir, prepare_embedded=False)
        return source.num_examples(config.input.train_split)
    except UserError:
        return None


def describe(config: ml_collections.ConfigDict) -> str:
    """The resolved recipe, as `--config.dry_run=True` prints it: model, optimizer, schedule length in epochs and
    steps, the rate after warmup, augmentation, EMA, best-checkpoint metric and evaluation."""
    import numpy as np

    from sot_jax import optim

    optimizer, inputs, aug = config.optim, config.input, config.aug
    epochs = optimizer.num_epochs + optimizer.cooldown_epochs
    count = train_examples(config)
    epoch_steps = count // config.batch_size if count else None
    if config.total_steps:
        steps = f"{config.total_steps} steps (total_steps: the schedule squeezed into them)"
    elif epoch_steps:
        per_epoch = f"{epoch_steps} per epoch: {count:,} {config.dataset} examples // batch"
        steps = f"{epoch_steps * epochs} steps ({per_epoch})"
    else:
        where = f"{config.dataset}:{inputs.train_split}"
        steps = f"steps per epoch unknown until {where} is prepared"
    peak = optim.peak_lr(config)
    base_batch, offset = optimizer.lr_base_batch, optimizer.schedule_epoch_offset
    rule = f"{config.lr:g} · batch / {base_batch}" if base_batch else "as given, whatever the batch"
    warmed = optimizer.warmup_epochs + offset  # the first training epoch past warmup
    late = f"; each epoch's rate {offset} epoch(s) late" if offset else ""
    crop = f"random resized crop {tuple(inputs.crop_scale)} × aspect {tuple(round(r, 3) for r in inputs.crop_ratio)}"
    train_aug = [f"{crop} ({inputs.interpolation})"] + (["hflip"] if inputs.hflip else [])
    if inputs.randaugment_layers:
        train_aug.append(
            f"RandAugment n{inputs.randaugment_layers} m{inputs.randaugment_magnitude:g} "
            f"mstd{inputs.randaugment_std:g} "
            f"(geometric ops {inputs.interpolation}{', whole image' if inputs.token_label_dir else ''})"
        )
    if inputs.token_label_dir:  # the official token-labeling order: the crop last
        train_aug = train_aug[1:] + train_aug[:1]
    if inputs.repeated_aug > 1:
        train_aug.append(f"repeated augmentation ×{inputs.repeated_aug}")
    batch_aug = [f"random erasing {aug.random_erasing:g}"] if aug.random_erasing else []
    if aug.mixup or aug.cutmix:
        groups = f"one draw per {aug.mix_group_size} images" if aug.mix_group_size else "one draw per batch"
        mix = f"mixup {aug.mixup:g} / cutmix {aug.cutmix:g} (switch {aug.mix_switch_prob:g}, {groups})"
        batch_aug.insert(0 if aug.erase_after_mix else len(batch_aug), mix)
    if aug.mix_token:
        boxes = f"one box per {aug.mix_group_size} images" if aug.mix_group_size else "one box per batch"
        batch_aug.append(f"MixToken ({boxes})")
    batch_aug.append(f"label smoothing {aug.label_smoothing:g}")
    if optimizer.schedule == "linear":
        schedule = [
            f"schedule: linear from {peak:g} to 0 over {epochs} epochs = {steps}; warmup {optimizer.warmup_epochs}"
        ]
    else:
        schedule = [
            f"schedule: {optimizer.num_epochs} epochs + {optimizer.cooldown_epochs} cooldown = {epochs} epochs = "
            f"{steps}",
            f"  warmup {optimizer.warmup_epochs} epochs from {optimizer.warmup_lr:g}{late}; lr at warmup end (epoch "
            f"{warmed}): {float(optim.epoch_lr(config, warmed)):.4g}; cosine to {optimizer.min_lr:g}",
        ]
    sets = ", ".join(f"{k}{' (optional)' if v.optional else ''}" for k, v in config.evals.items())
    if "img_size" in config.model:
        resize = int(np.floor(config.model.img_size / inputs.eval_crop_pct))
        token_labels = []
        if aug.mix_token or inputs.token_label_dir:
            no_maps = "no maps (every token learns the image label)"
            maps = f"maps {inputs.token_label_dir}" if inputs.token_label_dir else no_maps
            token_labels.append(
                f"token labels: {maps}; map read-out box {inputs.token_label_box}, cells moved off the image "
                f"{inputs.token_label_outside}, target smoothing {aug.token_label_smoothing}"
            )
        input_lines = [
            "augmentation (workers, PIL): " + ", ".join(train_aug),
            "augmentation (accelerator, in order): " + ", ".join(batch_aug),
            *token_labels,
            f"eval: resize {resize} bicubic, centre crop {config.model.img_size} (crop_pct {inputs.eval_crop_pct:g}); "
            f"sets {sets}",
        ]
    else:  # text
        vocab = config.get("vocab") or ("init_from's" if config.init_from else "the dataset's own")
        casing = "the vocabulary's saved casing" if inputs.lower_case is None else f"lower_case {inputs.lower_case}"
        casing += f", GPT inputs {inputs.gpt_format}" if inputs.get("gpt_format") else ""
        input_lines = [
            f"text: max_seq_length {inputs.max_seq_length}, vocabulary {vocab}, {casing}; "
            f"label smoothing {aug.label_smoothing:g}",
            f"eval sets {sets}",
        ]
    clip = f", gradient clipping {optimizer.grad_clip_norm:g}" if optimizer.grad_clip_norm else ""
    bn_groups = config.model.get("bn_group_size")
    bn = f", BatchNorm statistics per {bn_groups} images" if bn_groups else ""
    lines = [
        f"model {config.model.name} ({config.model.dtype}), dataset {config.dataset}, batch {config.batch_size}{bn}",
        f"AdamW b1 {optimizer.b1:g} b2 {optimizer.b2:g} eps {optimizer.eps:g}, weight decay "
        f"{optimizer.weight_decay:g}, peak lr {peak:g} ({rule}){clip}",
        *schedule,
        *input_lines[:-1],
        "eval_only: no training" if config.eval_only else
        f"EMA {optimizer.ema_decay:g}; best weights by {best_metric(config)}" if optimizer.ema_decay else
        f"no EMA; best weights by {best_metric(config)}",
        input_lines[-1],
    ]  # fmt: skip
    return "\n".join(lines)


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """The config of `FILE[:VARIANT]` (the file's `get_config`), as `--config=` names it."""
    import importlib.util
    import os

    path, _, variant = spec.partition(":")
    if not os.path.isfile(path):
        raise UserError(f"config file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location("sot_jax_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def config_node(config: ml_collections.ConfigDict, key: str) -> tuple[ml_collections.ConfigDict, str]:
    """(the ConfigDict that holds `key`, e.g. "model.head", and its last part); a UserError naming the valid keys
    where the key does not exist."""
    parts = key.split(".")
    node = config
    for depth, part in enumerate(parts):
        if not hasattr(node, "keys") or part not in node:
            where = ".".join(parts[:depth]) or "the config"
            valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else f"none ({where} is a value)"
            raise UserError(f"unknown config key {key!r}: {where} has no {part!r}; valid: {valid}")
        if depth < len(parts) - 1:
            node = node[part]
    return node, parts[-1]
