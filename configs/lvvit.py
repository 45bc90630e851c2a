r"""LV-ViT with token labeling on ImageNet (SPEC §6; official code zihangJiang/TokenLabeling).

    python -m sot_jax.convert_labels --label-root LABEL_ROOT --output labels/nfnet_top5    # once
    python -m sot_jax.main --config=configs/lvvit.py[:VARIANT] --workdir=DIR \
        --config.input.token_label_dir=labels/nfnet_top5
    python -m sot_jax.main --config=configs/lvvit.py:lvvit_s --config.dry_run=True   # print the recipe

Recipe card: zihangJiang/TokenLabeling 9dbfd59 (timm 0.4.5), README: `./distributed_train.sh 8 DATA --model
lvvit_s -b 128 --apex-amp --img-size 224 --drop-path 0.1 --token-label --token-label-data LABELS
--token-label-size 14 --model-ema` (lvvit_m: --drop-path 0.2; lvvit_l: --drop-path 0.3 --lr 1.e-3 --aa
rand-n3-m9-mstd0.5-inc1; lvvit_t has no command and is assumed to be S's with drop path 0.1); main.py's defaults
for the rest. Effective batch 1024 = 8 × 128, lr 1.6e-3 as given (not rescaled), wd 0.05, AdamW, 300 epochs + 10
cooldown (the loop runs the scheduler's 310 epochs), 5 warmup, `lr_scheduler.step(epoch + 1)` after each epoch
(optim.schedule_epoch_offset 0). Crop and RandAugment interpolation random (bilinear or bicubic),
rand-m9-mstd0.5-inc1, erasing 0.25 (before MixToken, which runs inside the model), smoothing 0.1, MixToken instead
of Mixup/CutMix with one box and λ per GPU batch, mixing with its reverse (aug.mix_group_size 128), EMA 0.99992
whose top-1 is reported and ranks the best checkpoint, loss 1.0 · class-token CE + 1.0 · mean token CE
(`optim.sum_loss_weights`). Without `input.token_label_dir` every token's target is the image label (the official
fallback, timm's smoothed one-hot). With it, the official label-map path, quirks included by default: flip,
RandAugment on the whole image (the map follows its geometric ops), the random resized crop last; the map read
out as `get_label` does (torchvision roi_align, adaptive sampling) over the crop box mirrored across the map's
diagonal (`input.token_label_box` "official"; "corrected" reads the crop itself); map cells RandAugment moved off
the image score 0, a uniform softmax (`input.token_label_outside` "zero"; "nearest": the nearest border cell);
map targets smoothed as softmax · (1 − s + s/C) + s/C, summing to 1 + s/C (`aug.token_label_smoothing`
"official"; "corrected": (1 − s) · softmax + s/C). Corrected: `--config.input.token_label_box=corrected
--config.aug.token_label_smoothing=corrected` (and `--config.input.token_label_outside=nearest`), each on its own
as well. Eval: bicubic, crop_pct 0.9 (lvvit_t, lvvit_s: resize 248, crop 224) or 1.0 (lvvit_m, lvvit_l), the
models' default_cfg in tlt/models/lvvit.py.
VARIANT (default lvvit_s) and published ImageNet top-1 with token labeling: lvvit_t 79.1, lvvit_s 83.3,
lvvit_m 84.0 (224 px), lvvit_l 86.2 (trained at 224, fine-tuned at 448: `init_from` a 224 run with
`--config.model.img_size=448`). Hardware: 8 GPUs (4 with -b 256); no training time published. 1 H200 (this
code's training rate in BENCHMARKS.md, synthetic data, evaluation not counted): lvvit_s 21 h.

BatchNorm in the convolutional stem normalizes with each GPU's 128 images, as the official runs without SyncBN do
(model.bn_group_size 128; the running statistics follow the mean over groups, the official rank 0's group alone).

RandAugment moves the label map as the official does (input.token_label_resample=official): the square map
resampled by nearest neighbour in its own cell coordinates at each op (rounding at every op, rotating about a point
half a cell off the centre, and on non-square images rotating and shearing the map unlike the image); `traced`
follows each cell's centre through the composed ops in the image's own pixel geometry instead.

Kept different from the official code: no mixed-precision loss scaling (bf16 compute).

`digits` is the embedded-dataset demo: a 2-block LV-ViT at 64 px (4×4 tokens) with MixToken and the dense loss on
image labels (the embedded set has no label maps): 85–88% val top-1 in about 4½ minutes on a 2-core CPU (seeds
0, 1, 2: 85.0, 86.6, 88.3; 4m18s from a fresh clone, 2026-12-06).
"""

from sot_jax import recipes

DROP_PATH = {"lvvit_t": 0.1, "lvvit_s": 0.1, "lvvit_m": 0.2, "lvvit_l": 0.3}
EVAL_CROP_PCT = {"lvvit_t": 0.9, "lvvit_s": 0.9, "lvvit_m": 1.0, "lvvit_l": 1.0}  # tlt/models/lvvit.py default_cfgs


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
    config.aug.mix_group_size = 128  # 8 GPUs × 128, each drawing its own MixToken box
    config.model.bn_group_size = 128  # and normalizing with its own BatchNorm statistics (no SyncBN)
    config.lr = 1.6e-3
    config.optim.weight_decay = 0.05
    config.optim.ema_decay = 0.99992
    config.input.eval_crop_pct = EVAL_CROP_PCT[variant]
    if variant == "lvvit_l":
        config.lr = 1e-3
        config.input.randaugment_layers = 3
    return config
