r"""HVT (hierarchical token pooling) on ImageNet with the official recipe (SPEC §5).

    python -m sot_jax.main --config=configs/hvt.py[:VARIANT] --workdir=DIR
    python -m sot_jax.main --config=configs/hvt.py:hvt_s_1 --config.dry_run=True   # print the recipe

Recipe card: zhuang-group/HVT f32cc1c (timm 0.3.2), README: `python -m torch.distributed.launch
--nproc_per_node=8 --use_env main.py --config config/hvt-ti-1.json --data-set IMNET --data-path DATA` (hvt-s-1,
hvt-s-2, hvt-s-3, scale-hvt-ti-4 alike: each json sets batch 128 per GPU, weight decay 0.025 and the pooling
width; hvt_s_0, no pooling, has no json and is assumed to share the recipe). The rest is params.py's defaults,
DeiT's recipe: effective batch 1024 = 8 × 128, lr 5e-4 · batch / 512 (`--config.lr` is the rate at batch 512;
`--config.batch_size` rescales it), AdamW, 5 warmup epochs, 300 epochs: the loop stops at `--epochs`, so the
scheduler's 10 cooldown epochs never run, and `lr_scheduler.step(epoch)` after each epoch puts every epoch's rate
one epoch late (optim.schedule_epoch_offset 1). Repeated augmentation ×3, bicubic crop and RandAugment
(rand-m9-mstd0.5-inc1), erasing 0.25 in each image's transform, then mixup 0.8 / cutmix 1.0 drawn per GPU batch
(aug.mix_group_size 128), smoothing 0.1, drop path 0.1, no EMA (params.py
enables it, main.py never creates it); the best checkpoint by the weights' own top-1. Eval: resize 256 bicubic,
centre crop 224.
VARIANT (default hvt_s_1) and published ImageNet top-1: hvt_ti_1 69.64, hvt_s_0 80.39, hvt_s_1 78.00,
hvt_s_2 77.36, hvt_s_3 76.32, scale_hvt_ti_4 75.23. Hardware: 8 GPUs; no training time published.
1 H200 (this code's training rate in BENCHMARKS.md, synthetic data, evaluation not counted): hvt_s_1 8 h.

Kept different from the official code: no mixed-precision loss scaling (bf16 compute).

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
    config = recipes.deit_recipe(config)
    config.model.name = variant
    config.optim.no_weight_decay = ("pos_embed",)
    config.optim.weight_decay = 0.025
    config.lr = 5e-4
    config.aug.mix_group_size = 128  # 8 GPUs × 128, each mixing its own batch
    return config
