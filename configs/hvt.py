r"""HVT (hierarchical token pooling) on ImageNet with the official recipe (SPEC §5).

    python -m sot_jax.main --config=configs/hvt.py[:VARIANT] --workdir=DIR

VARIANT (default hvt_s_1) and published ImageNet top-1: hvt_ti_1 69.64, hvt_s_0 80.39, hvt_s_1 78.00,
hvt_s_2 77.36, hvt_s_3 76.32, scale_hvt_ti_4 75.23. Recipe: DeiT's (AdamW, 300 epochs, RandAugment, mixup/cutmix,
erasing, label smoothing, repeated augmentation) with weight decay 0.025 and lr 5e-4 · batch / 512, no EMA
(`--config.lr` is the rate at batch 512; `--config.batch_size` rescales it).
Hardware: the official runs used 8 GPUs for about 1–2 days.
`digits` is the embedded-dataset demo (a 2-block HVT, a few minutes on a 2-core CPU).
"""

from sot_jax import recipes

VARIANTS = ("hvt_ti_1", "hvt_s_0", "hvt_s_1", "hvt_s_2", "hvt_s_3", "scale_hvt_ti_4")


def get_config(variant: str = "hvt_s_1"):
    config = recipes.base_config()
    if variant == "digits":  # 64 px: 16 tokens, pooled to 7 after the first block
        config = recipes.digits_demo(config, "hvt_ti_1", pool_block_width=2)
        config.model.img_size = 64
        return config
    if variant not in VARIANTS:
        raise recipes.unknown_variant(variant, ("digits", *VARIANTS))
    config.model.name = variant
    config.optim.no_weight_decay = ("pos_embed",)
    config.optim.weight_decay = 0.025
    config.lr, config.optim.lr_base_batch = 5e-4, 512
    config.input.repeated_aug = 3
    config.optim.ema_decay = 0.0
    return config
