r"""LV-ViT with token labeling on ImageNet (SPEC §6; official code zihangJiang/TokenLabeling).

    python -m sot_jax.convert_labels --label-root LABEL_ROOT --output labels/nfnet_top5    # once
    python -m sot_jax.main --config=configs/lvvit.py[:VARIANT] --workdir=DIR \
        --config.input.token_label_dir=labels/nfnet_top5

VARIANT (default lvvit_s) and published ImageNet top-1 with token labeling: lvvit_t 79.1, lvvit_s 83.3,
lvvit_m 84.0 (224 px), lvvit_l 86.2 (trained at 224, fine-tuned at 448: `init_from` a 224 run with
`--config.model.img_size=448`). The official recipe (its README commands): AdamW lr 1.6e-3 at batch 1024 (lvvit_l
1e-3 with RandAugment n3), wd 0.05, 300 epochs, 5 warmup, drop path 0.1/0.1/0.2/0.3 (T/S/M/L), RandAugment
rand-m9-mstd0.5-inc1, random erasing 0.25, label smoothing 0.1, MixToken instead of Mixup/CutMix, EMA 0.99992,
loss 1.0 · class-token CE + 1.0 · mean token CE (`optim.sum_loss_weights`). Without `input.token_label_dir`
every token's target is the image label (the official fallback). Hardware: the official runs used 8 GPUs for
about 2–5 days.

`digits` is the embedded-dataset demo: a 2-block LV-ViT at 64 px (4×4 tokens) with MixToken and the dense loss on
image labels (the embedded set has no label maps): 91% val top-1 after about 7 minutes on a 2-core CPU.
"""

from sot_jax import recipes

DROP_PATH = {"lvvit_t": 0.1, "lvvit_s": 0.1, "lvvit_m": 0.2, "lvvit_l": 0.3}


def get_config(variant: str = "lvvit_s"):
    config = recipes.base_config()
    config.aug.mix_token = True
    if variant == "digits":
        config = recipes.digits_demo(config, "lvvit_t")
        config.model.img_size = 64
        return config
    if variant not in DROP_PATH:
        raise recipes.unknown_variant(variant, ("digits", *DROP_PATH))
    config.model.name = variant
    config.model.drop_path_rate = DROP_PATH[variant]
    config.optim.no_weight_decay = ("pos_embed", "cls_token")
    config.aug.mixup = config.aug.cutmix = 0.0
    config.lr = 1.6e-3
    config.optim.weight_decay = 0.05
    config.optim.ema_decay = 0.99992
    if variant == "lvvit_l":
        config.lr = 1e-3
        config.input.randaugment_layers = 3
    return config
