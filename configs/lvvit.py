r"""LV-ViT on ImageNet (SPEC §6): class-token loss plus the dense token loss.

    python -m sot_jax.main --config=configs/lvvit.py[:VARIANT] --workdir=DIR

VARIANT (default lvvit_s) and published ImageNet top-1 with token labeling: lvvit_t 79.1, lvvit_s 83.3,
lvvit_m 84.0, lvvit_l 86.2 (at 448). Recipe: AdamW lr 1.6e-3 at batch 1024, wd 0.05, 300 epochs, drop path
0.1/0.1/0.2/0.3 (T/S/M/L), no EMA. Without label maps every token's target is the image label (the official
fallback). Hardware: the official runs used 8 GPUs for about 2–5 days.
`digits` is the embedded-dataset demo (a 2-block LV-ViT, a few minutes on a 2-core CPU).
"""

from sot_jax import recipes

DROP_PATH = {"lvvit_t": 0.1, "lvvit_s": 0.1, "lvvit_m": 0.2, "lvvit_l": 0.3}


def get_config(variant: str = "lvvit_s"):
    config = recipes.base_config()
    if variant == "digits":
        return recipes.digits_demo(config, "lvvit_t")
    if variant not in DROP_PATH:
        raise ValueError(f"unknown variant {variant!r}; choose one of digits, {', '.join(DROP_PATH)}")
    config.model.name = variant
    config.model.overrides.drop_path_rate = DROP_PATH[variant]
    config.model.no_weight_decay = ("pos_embed", "cls_token")
    config.lr = 1.6e-3
    config.weight_decay = 0.05
    config.ema_decay = 0.0
    if variant == "lvvit_l":
        config.image_size = 448
        config.eval_crop_pct = 1.0
    return config
