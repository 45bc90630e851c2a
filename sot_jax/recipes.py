"""Shared training-config defaults; the files in configs/ start from `base_config()` and set their recipe."""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Every key the trainer reads, with the SoT/DeiT ImageNet recipe (SPEC §3) as the default values."""
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    config.model.name = "deit_small_sot"
    config.model.dtype = "bfloat16"  # compute dtype; parameters, covariance and SVPN stay float32
    config.model.overrides = ml_collections.ConfigDict(  # create_model keywords
        {"drop_path_rate": 0.1, "remat": ml_collections.config_dict.placeholder(str)}  # remat: layers.REMAT_POLICIES
    )
    config.model.no_weight_decay = ()  # parameter names excluded from weight decay besides 1-D ones

    config.dataset = "imagenet2012"
    config.data_dir = ""  # empty: the TFDS default (~/tensorflow_datasets)
    config.train_split = "train"
    config.eval_split = "validation"
    config.extra_eval_sets = ("imagenet_a", "imagenet_v2", "imagenet2012_real")  # used when prepared
    config.image_size = 224
    config.eval_crop_pct = 0.875  # resize 256, centre-crop 224

    # Input augmentation (per image, tf.data) and batch augmentation (on the accelerator).
    config.crop_scale = (0.08, 1.0)
    config.crop_ratio = (3 / 4, 4 / 3)
    config.hflip = True
    config.randaugment_layers = 2  # rand-m9-mstd0.5-inc1
    config.randaugment_magnitude = 9.0
    config.randaugment_std = 0.5
    config.repeated_aug = 1  # >1: each image that many times per epoch
    config.random_erasing = 0.25
    config.mixup = 0.8
    config.cutmix = 1.0
    config.mix_switch_prob = 0.5
    config.label_smoothing = 0.1
    config.sum_loss_weights = (1.0, 1.0)  # (class-token loss, other loss): sum_loss fusion; LV-ViT (cls, dense)
    config.mix_token = False  # LV-ViT's MixToken (replaces Mixup/CutMix in its recipe)
    config.token_label_dir = ""  # token label maps from `python -m sot_jax.convert_labels` (empty: image label)

    # Optimization: AdamW, timm's cosine schedule stepped per epoch, warmup and cooldown.
    config.batch_size = 1024  # global, over all devices and processes
    config.grad_accum_steps = 1
    config.lr = 1e-3  # not rescaled by batch size
    config.weight_decay = 0.03
    config.b1, config.b2, config.adam_eps = 0.9, 0.999, 1e-8
    config.grad_clip_norm = 0.0  # 0: no clipping
    config.num_epochs = 300
    config.warmup_epochs = 5
    config.cooldown_epochs = 10
    config.warmup_lr = 1e-6
    config.min_lr = 1e-5
    config.total_steps = 0  # 0: (num_epochs + cooldown_epochs) epochs; otherwise the schedule is squeezed into it
    config.ema_decay = 0.99996  # 0: no EMA
    config.sharding = "data"  # "data" (replicated parameters) or "fsdp" (parameters and optimizer state sharded)

    # Bookkeeping.
    config.log_every_steps = 50
    config.eval_every_steps = 0  # 0: once per epoch
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 3  # the latest ones, plus the best by validation top-1
    config.eval_batch_size = 0  # 0: batch_size
    config.init_from = ""  # a converted or trained checkpoint to start from (fine-tuning re-inits the classifier)
    config.eval_only = False
    return config


def digits_demo(config: ml_collections.ConfigDict, model: str, **model_overrides) -> ml_collections.ConfigDict:
    """Turn a recipe into the embedded-dataset demo: a small model on 32×32 digits, a few CPU minutes."""
    config.dataset = "digits"
    config.extra_eval_sets = ()
    config.image_size = 32
    config.eval_crop_pct = 1.0
    config.crop_scale = (0.6, 1.0)
    config.hflip = False  # mirrored digits are other digits
    config.randaugment_layers = 0
    config.random_erasing = 0.0
    config.mixup = config.cutmix = 0.0
    config.model.name = model
    config.model.dtype = "float32"
    config.model.overrides.update(
        {"embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_hidden": 128, "drop_path_rate": 0.0, **model_overrides}
    )
    config.batch_size = 64
    config.lr = 2e-3
    config.weight_decay = 0.05
    config.num_epochs = 20
    config.warmup_epochs = 2
    config.cooldown_epochs = 0
    config.ema_decay = 0.0
    config.log_every_steps = 22
    config.eval_every_steps = 110  # every 5 epochs of 22 steps
    config.checkpoint_every_steps = 110
    return config
