r"""SoT and DeiT on ImageNet with the official SoT recipe (SPEC §3), and the embedded-dataset demo.

    python -m sot_jax.main --config=configs/sot_deit.py[:VARIANT] --workdir=DIR [--config.KEY=VALUE ...]

VARIANT (default deit_small_sot) and the published ImageNet top-1 (EMA weights; ImageNet-A in brackets):
  sot_tiny 80.3 (21.5), sot_small 82.7 (31.8), sot_base 83.5 (34.6);
  deit_tiny_sot 78.6, deit_small_sot 82.7, deit_base_sot 82.9;
  deit_tiny 72.2, deit_small 79.8, deit_base 81.8 (DeiT's own class-token head).
Recipe: AdamW, lr 1e-3 / wd 0.03 / batch 1024 (base: 5e-4 / 0.065 / 512), 300 epochs + 10 cooldown, 5 warmup,
RandAugment m9, random erasing 0.25, mixup 0.8 / cutmix 1.0, label smoothing 0.1, drop path 0.1, EMA 0.99996.
Hardware: the official runs used 8 GPUs for about 2–4 days (tiny to base); budget the same order of GPU-hours
(see BENCHMARKS.md for this code's measured step rates).

Evaluation: ImageNet val, and ImageNet-A (its 200 classes), ImageNet-V2 and ReaL when prepared in the data dir
(`config.evals`; `--config.evals.imagenet_a.optional=False` makes a missing one an error).
Any head on any backbone: `--config.model.head=gem` (cls, gap, gem, ggem, gcp, mgcrp, token_label),
`--config.model.fusion=concat`, `--config.model.svpn=gram_eigh`, ... (every `create_model` keyword).

  digits: `python -m sot_jax.main --config=configs/sot_deit.py:digits --workdir=/tmp/digits` trains a 2-block
  SoT (DenseNet stem, MGCrP head) on the embedded 8×8 digits upscaled to 32×32: about 3½ minutes on a 2-core CPU,
  ≥ 95% validation top-1.
"""

from sot_jax import recipes

# variant -> (model, lr, weight decay, batch size)
VARIANTS = {
    "sot_tiny": ("sot_tiny", 1e-3, 0.03, 1024),
    "sot_small": ("sot_small", 1e-3, 0.03, 1024),
    "sot_base": ("sot_base", 5e-4, 0.065, 512),
    "deit_tiny_sot": ("deit_tiny_sot", 1e-3, 0.03, 1024),
    "deit_small_sot": ("deit_small_sot", 1e-3, 0.03, 1024),
    "deit_base_sot": ("deit_base_sot", 5e-4, 0.065, 512),
    "deit_tiny": ("deit_tiny_patch16_224", 1e-3, 0.05, 1024),
    "deit_small": ("deit_small_patch16_224", 1e-3, 0.05, 1024),
    "deit_base": ("deit_base_patch16_224", 1e-3, 0.05, 1024),
}


def get_config(variant: str = "deit_small_sot"):
    config = recipes.base_config()
    if variant == "digits":
        return recipes.digits_demo(config, "deit_tiny_sot", wr_dim=8)
    if variant not in VARIANTS:
        raise recipes.unknown_variant(variant, ("digits", *VARIANTS))
    config.model.name, config.lr, config.optim.weight_decay, config.batch_size = VARIANTS[variant]
    if variant.startswith("deit_") and not variant.endswith("_sot"):
        config.optim.no_weight_decay = ("pos_embed", "cls_token")  # timm's DeiT
        config.optim.ema_decay = 0.0  # DeiT reports its non-EMA weights
    return config
