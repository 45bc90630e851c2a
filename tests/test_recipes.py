"""Recipe fidelity (issue 16): the input pipeline, augmentation, initialization and schedules against the official
code: timm's own transforms (0.4.5, whose data code equals 0.3.4's) where timm imports, else short transcriptions
of the official functions (torchvision 0.8, Pillow 8)."""

import io
import itertools
import math
import random
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, import_timm, load_config, timm_fixture
from PIL import Image
from scipy import stats

from sot_jax import augment, optim, recipes
from sot_jax.data import transforms
from sot_jax.errors import UserError
from sot_jax.models import layers


def transcribed_get_params(image: Image.Image, scale: tuple, ratio: tuple) -> tuple[int, int, int, int]:
    """timm 0.3.4 data/transforms.py, RandomResizedCropAndInterpolation.get_params (the same in 0.3.2 and 0.4.5):
    the reference where timm is not installed."""
    width, height = image.size
    area = width * height
    for _ in range(10):
        target_area = random.uniform(*scale) * area
        aspect_ratio = math.exp(random.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if w <= width and h <= height:
            return random.randint(0, height - h), random.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def test_crop_sampler_draws_timms_distribution():
    try:
        get_params = import_timm("transforms").RandomResizedCropAndInterpolation.get_params
    except pytest.skip.Exception:  # timm is not installed
        get_params = transcribed_get_params
    height, width, n = 375, 500, 10_000
    image = Image.new("RGB", (width, height))
    random.seed(100)  # timm's get_params draws from Python's random
    reference = np.array([get_params(image, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(n)])
    rng = np.random.default_rng(100)
    windows = np.array([transforms.crop_window(rng, height, width, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(n)])
    # Two-sample KS against timm on the area and on the log aspect ratio w/h.
    assert stats.ks_2samp(reference[:, 2] * reference[:, 3], windows[:, 2] * windows[:, 3]).pvalue > 0.01
    aspects = [np.log(x[:, 3] / x[:, 2]) for x in (reference, windows)]
    assert stats.ks_2samp(*aspects).pvalue > 0.01
    top, left, h, w = windows.T
    assert np.all((top >= 0) & (left >= 0) & (top + h <= height) & (left + w <= width))
    # Offsets reach both ends, H − h and W − w included (timm's randint), as often as timm's do.
    for ours_at_end, timm_at_end in ((top == height - h, reference[:, 0] == height - reference[:, 2]),
                                     (left == width - w, reference[:, 1] == width - reference[:, 3])):  # fmt: skip
        assert 0.7 < np.mean(ours_at_end) / np.mean(timm_at_end) < 1.4
    # The fallback: a 20:1 strip fits no draw and gets the centre crop of the clamped aspect, as timm's.
    strip = Image.new("RGB", (200, 10))
    assert transforms.crop_window(rng, 10, 200, (0.08, 1.0), (3 / 4, 4 / 3)) == get_params(strip, (0.08, 1.0),
                                                                                          (3 / 4, 4 / 3))


def test_random_erasing_boxes_reach_the_last_row_and_column():
    images = jnp.zeros((3000, 6, 6, 1))
    erased = np.asarray(augment.random_erasing(jax.random.key(0), images, probability=1.0) != 0)[..., 0]
    rows, cols = erased.any(axis=2), erased.any(axis=1)
    hit = rows.any(axis=1)
    # timm draws top in [0, H − h] (randint includes both ends): boxes touch the first and the last row/column.
    for first_last in (rows[hit][:, 0], rows[hit][:, -1], cols[hit][:, 0], cols[hit][:, -1]):
        assert 0.05 < first_last.mean() < 0.95


def scene(height: int, width: int, seed: int) -> np.ndarray:
    """A real-looking test image: smooth colour regions, stripes, a checkered pattern of edges and sensor noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (max(height // 40, 2), max(width // 40, 2), 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
    rows, cols = np.mgrid[0:height, 0:width]
    stripes = 25 * np.sin(cols * rng.uniform(0.2, 0.9) + rows * rng.uniform(0.1, 0.6))[..., None]
    edges = 60 * ((cols // rng.integers(15, 40) + rows // rng.integers(15, 40)) % 2)[..., None]
    noise = rng.normal(0, 6, (height, width, 3))
    return np.clip(smooth + stripes + edges - 30 + noise, 0, 255).astype(np.uint8)


def encoded(image: np.ndarray, kind: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=kind)
    return buffer.getvalue()


def test_train_crop_is_timms_random_resized_crop(monkeypatch):
    """The crop and its resize equal timm's RandomResizedCropAndInterpolation (torchvision's resized_crop on PIL)
    at the same window and interpolation, on JPEG and PNG."""
    timm_transforms = import_timm("transforms")
    config = recipes.base_config().input
    config.update({"randaugment_layers": 0, "hflip": False})
    for seed, kind in itertools.product(range(6), ("JPEG", "PNG")):
        data = encoded(scene(375, 500, seed), kind)
        for interpolation in ("bilinear", "bicubic"):
            config.interpolation = interpolation
            ours = transforms.train_image(data, np.random.default_rng(seed), config, 224)[0]
            window = transforms.crop_window(np.random.default_rng(seed).spawn(3)[0], 375, 500, (0.08, 1.0),
                                            (3 / 4, 4 / 3))  # fmt: skip
            timm_crop = timm_transforms.RandomResizedCropAndInterpolation(224, interpolation=interpolation)
            monkeypatch.setattr(timm_crop, "get_params", lambda *args, window=window: window)
            reference = np.asarray(timm_crop(Image.open(io.BytesIO(data)).convert("RGB")))
            np.testing.assert_array_equal(ours, reference)


def test_train_crop_and_eval_transform_match_timms_recorded_outputs():
    """timm's RandomResizedCropAndInterpolation at given windows and its eval transform, recorded in
    tests/fixtures/timm_transforms.npz (for where timm is not installed; the tests above run timm itself)."""
    fixture = timm_fixture()
    checked = 0
    for key, expected in fixture.items():
        parts = key.split("/")
        if parts[0] == "crop" and parts[1] not in ("input", "window"):
            seed, fmt, interpolation = parts[1:]
            window = tuple(int(v) for v in fixture[f"crop/window/{seed}"])
            image = Image.fromarray(fixture[f"crop/input/{seed}/{fmt}"])
            ours = transforms.resized_crop(image, window, transforms.RESAMPLE[interpolation], 32)
        elif parts[0] == "eval" and parts[1] != "input":
            shape, fmt, crop_pct = parts[1:]
            ours = transforms.eval_image(fixture[f"eval/input/{shape}/{fmt}"], 32, float(crop_pct))
        else:
            continue
        assert np.array_equal(np.asarray(ours), expected), key
        checked += 1
    assert checked == 3 * 2 * 2 + 5 * 2  # 3 windows × JPEG, PNG × 2 filters; 5 eval shapes × JPEG, PNG


def test_eval_transform_is_timms():
    timm_factory = import_timm("transforms_factory")
    # 256×259 and 256×263: no resize and a centre offset of 17.5 and 19.5 (rounded half to even: 18, 20).
    for (height, width), crop_pct in [((256, 259), 0.875), ((256, 263), 0.875), ((375, 500), 0.875),
                                      ((250, 333), 0.9), ((500, 375), 1.0)]:  # fmt: skip
        eval_transform = timm_factory.transforms_imagenet_eval(224, crop_pct=crop_pct, interpolation="bicubic")
        pil_ops = eval_transform.transforms[:-2]  # before ToTensor
        for kind in ("JPEG", "PNG"):
            data = encoded(scene(height, width, height * width), kind)
            reference = Image.open(io.BytesIO(data)).convert("RGB")
            for op in pil_ops:
                reference = op(reference)
            np.testing.assert_array_equal(transforms.eval_image(data, 224, crop_pct), np.asarray(reference))


GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
METHODS = ("bilinear", "bicubic")


def test_interpolation_random_picks_bilinear_or_bicubic_per_image():
    data = encoded(scene(90, 120, 3), "PNG")
    config = recipes.base_config().input
    config.update({"randaugment_layers": 0, "hflip": False})

    def crop(seed, interpolation):
        config.interpolation = interpolation
        return transforms.train_image(data, np.random.default_rng(seed), config, 32)[0]

    picks = []
    for seed in range(12):
        fixed = {m: crop(seed, m) for m in ("bilinear", "bicubic")}
        picks += [m for m, out in fixed.items() if np.array_equal(crop(seed, "random"), out)]
    assert len(picks) == 12 and 2 <= picks.count("bicubic") <= 10
    with pytest.raises(UserError, match="interpolation 'nearest'; choose one of bicubic, bilinear, random"):
        crop(0, "nearest")


def test_conv_biases_get_pytorchs_default_init_and_conv_computes_like_nn_conv():
    import flax.linen as nn

    x = jnp.ones((1, 32, 32, 8))
    for module, fan_in in ((layers.conv(4096, (3, 3), "c", jnp.float32), 72), (layers.PatchConv(4096, 16), 2048)):
        params = module.init(jax.random.key(0), x)["params"]
        bound = 1 / math.sqrt(fan_in)
        for values in (params["bias"], params["kernel"]):  # kaiming-uniform(a=√5): the same bound for the kernel
            values = np.asarray(values).ravel()
            assert np.abs(values).max() <= bound and np.abs(values).max() > 0.99 * bound
            assert np.var(values) == pytest.approx(bound**2 / 3, rel=0.1)
    assert not np.any(nn.Dense(4).init(jax.random.key(0), x)["params"]["bias"])  # Linear biases stay 0 (timm)
    for kwargs in ({}, {"strides": (2, 2), "padding": ((3, 3), (3, 3))}, {"padding": "VALID", "use_bias": False}):
        ours = layers.conv(5, (3, 3), "c", jnp.float32, **kwargs)
        params = ours.init(jax.random.key(1), x)
        flax_conv = nn.Conv(5, (3, 3), **kwargs)
        np.testing.assert_allclose(ours.apply(params, x), flax_conv.apply(params, x), rtol=1e-6, atol=1e-6)


def test_mixing_draws_once_per_group_with_the_group_reversed_as_partner():
    batch, group = 12, 4
    images = jnp.broadcast_to(jnp.arange(batch, dtype=jnp.float32)[:, None, None, None], (batch, 8, 8, 3))
    for mixup, cutmix in ((0.8, 0.0), (0.0, 1.0)):
        _, targets = augment.mixup_cutmix(
            jax.random.key(3), images, jnp.eye(batch), mixup, cutmix, group_size=group
        )  # fmt: skip
        targets = np.asarray(targets)
        index = np.arange(batch)
        partner = index // group * group + group - 1 - index % group  # reversed within the group (timm's flip(0))
        np.testing.assert_allclose(targets[index, index] + targets[index, partner], 1.0, rtol=1e-6)
        lams = targets[index, index].reshape(batch // group, group)
        assert np.allclose(lams, lams[:, :1]) and len(np.unique(lams[:, 0].round(6))) == batch // group
    with pytest.raises(UserError, match="mix_group_size 5 does not divide"):
        augment.mixup_cutmix(jax.random.key(0), images, jnp.eye(batch), 0.8, 1.0, group_size=5)


@pytest.mark.parametrize("erase_after_mix", [True, False])
def test_erasing_runs_after_or_before_mixing(erase_after_mix):
    from types import SimpleNamespace

    from sot_jax import train

    aug = recipes.base_config().aug
    aug.update({"random_erasing": 1.0, "mixup": 0.8, "cutmix": 0.0, "mix_group_size": 2})
    aug.erase_after_mix = erase_after_mix
    batch = {"image": jnp.zeros((64, 16, 16, 3), jnp.uint8), "label": jnp.zeros(64, jnp.int32)}
    model = SimpleNamespace(num_classes=10)
    inputs, _, _ = train.augment_images(jax.random.key(0), batch, model, train.Augmentation(**aug))
    deviation = np.asarray(inputs["images"] - augment.normalize(batch["image"]))
    stds = [np.std(d[np.abs(d) > 0]) for d in deviation]
    # Erased after mixing, each image holds one box of N(0, 1) pixels; erased before, the boxes blend with λ.
    assert (np.median(stds) > 0.95) == erase_after_mix and (np.median(stds) < 0.9) != erase_after_mix


def timm_cosine_lr(t: int, lr: float, epochs: int, warmup_t=5, warmup_lr=1e-6, lr_min=1e-5, decay_rate=0.1):
    """timm 0.3.4 scheduler/cosine_lr.py CosineLRScheduler._get_lr (same in 0.3.2 and 0.4.5), as create_scheduler
    builds it: t_initial = epochs, t_mul 1, cycle_limit 1, warmup_prefix False, decay_rate = args.decay_rate."""
    if t < warmup_t:
        return warmup_lr + t * (lr - warmup_lr) / warmup_t
    i = t // epochs
    if i < 1:  # cycle_limit 1
        gamma, t_curr = decay_rate**i, t - epochs * i
        return lr_min * gamma + 0.5 * (lr * gamma - lr_min * gamma) * (1 + math.cos(math.pi * t_curr / epochs))
    return lr_min


def official_epoch_rates(script: str, lr: float, epochs=300, cooldown=10) -> list[float]:
    """The rate of every training epoch as each official main.py steps the scheduler."""
    rate = 1e-6  # CosineLRScheduler.__init__ with warmup: update_groups(warmup_lr_init)
    if script in ("sot", "lvvit"):  # for epoch in range(num_epochs) (epochs + cooldown); step(epoch + 1) after it
        loop, late = epochs + cooldown, 0
    else:  # deit, hvt: for epoch in range(args.epochs); lr_scheduler.step(epoch) after it
        loop, late = epochs, 1
    rates = []
    for epoch in range(loop):
        rates.append(rate)
        rate = timm_cosine_lr(epoch + 1 - late, lr, epochs)
    return rates


@pytest.mark.parametrize(
    "config_file, variant, script, lr",
    [
        ("configs/sot_deit.py", "sot_tiny", "sot", 1e-3),
        ("configs/sot_deit.py", "sot_base", "sot", 5e-4),  # `-b 64` on 8 GPUs, lr not rescaled
        ("configs/sot_deit.py", "deit_small_sot", "sot", 1e-3),
        ("configs/sot_deit.py", "deit_small", "deit", 5e-4 * 1024 / 512),  # main.py's linear_scaled_lr
        ("configs/hvt.py", "hvt_s_1", "hvt", 5e-4 * 1024 / 512),
        ("configs/lvvit.py", "lvvit_s", "lvvit", 1.6e-3),
        ("configs/lvvit.py", "lvvit_l", "lvvit", 1e-3),
    ],
)
def test_schedule_gives_every_epoch_the_official_scripts_rate(config_file, variant, script, lr):
    config = load_config(config_file, variant)
    official = official_epoch_rates(script, lr)
    epochs = config.optim.num_epochs + config.optim.cooldown_epochs
    assert epochs == len(official)
    steps_per_epoch = 1_281_167 // config.batch_size
    schedule = optim.make_schedule(config, steps_per_epoch * epochs)
    starts = np.arange(epochs) * steps_per_epoch
    for steps in (starts, starts + steps_per_epoch - 1):  # constant within each epoch
        np.testing.assert_allclose(np.asarray(schedule(jnp.asarray(steps))), official, rtol=1e-5, atol=1e-12)


# Per family: (aug.mix_group_size, model.bn_group_size, aug.erase_after_mix) as the official runs had them: one
# Mixup/CutMix (or MixToken) draw and one BatchNorm batch per GPU batch (no SyncBN; DeiT and HVT have no BatchNorm),
# SoT erasing after the mix (timm 0.3.4's prefetcher), DeiT and HVT before it (in each image's transform).
OFFICIAL_GROUPS = {
    ("configs/sot_deit.py", "sot_tiny"): (128, 128, True), ("configs/sot_deit.py", "sot_small"): (128, 128, True),
    ("configs/sot_deit.py", "sot_base"): (64, 64, True), ("configs/sot_deit.py", "deit_tiny_sot"): (128, 128, True),
    ("configs/sot_deit.py", "deit_small_sot"): (128, 128, True),
    ("configs/sot_deit.py", "deit_base_sot"): (64, 64, True),
    ("configs/sot_deit.py", "deit_tiny"): (256, None, False), ("configs/sot_deit.py", "deit_small"): (256, None, False),
    ("configs/sot_deit.py", "deit_base"): (64, None, False),
    **{("configs/hvt.py", v): (128, None, False)
       for v in ("hvt_ti_1", "hvt_s_0", "hvt_s_1", "hvt_s_2", "hvt_s_3", "scale_hvt_ti_4")},
    **{("configs/lvvit.py", v): (128, 128, True) for v in ("lvvit_t", "lvvit_s", "lvvit_m", "lvvit_l")},
}  # fmt: skip


def test_configs_carry_the_official_data_choices():
    for (path, variant), groups in OFFICIAL_GROUPS.items():
        config = load_config(path, variant)
        found = (config.aug.mix_group_size, config.model.get("bn_group_size"), config.aug.erase_after_mix)
        assert found == groups, (path, variant)
    deit, hvt = load_config("configs/sot_deit.py", "deit_base"), load_config("configs/hvt.py", "hvt_ti_1")
    for config in (deit, hvt):
        assert (config.input.repeated_aug, config.input.interpolation, config.optim.ema_decay) == (3, "bicubic", 0)
        assert recipes.best_metric(config) == "val_top1"
    for variant, crop_pct in (("lvvit_t", 0.9), ("lvvit_s", 0.9), ("lvvit_m", 1.0), ("lvvit_l", 1.0)):
        config = load_config("configs/lvvit.py", variant)
        assert (config.input.eval_crop_pct, config.input.interpolation) == (crop_pct, "random")
        assert recipes.best_metric(config) == "ema_val_top1"  # TokenLabeling's main.py ranks by the EMA
    sot = load_config("configs/sot_deit.py", "sot_small")
    assert (sot.input.interpolation, sot.input.repeated_aug, recipes.best_metric(sot)) == ("random", 1, "ema_val_top1")
    sot.best_metric = "ema_val_top5"
    assert recipes.best_metric(sot) == "ema_val_top5"
    for bad, config in (("ema_val_top1", deit), ("imagenet_a_top1", sot), ("val_loss", sot)):
        config.best_metric = bad
        with pytest.raises(UserError, match=f"unknown best_metric '{bad}'; choose one of val_top1"):
            recipes.best_metric(config)


def test_dry_run_prints_the_recipe_without_data_or_workdir(digits_dir, tmp_path):
    def dry_run(*args):
        result = subprocess.run(
            [sys.executable, "-m", "sot_jax.main", "--config=configs/sot_deit.py:sot_small", "--config.dry_run=True",
             *args],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    out = dry_run(f"--config.data_dir={tmp_path / 'absent'}")
    expected = (
        "300 epochs + 10 cooldown = 310 epochs = steps per epoch unknown until imagenet2012:train is prepared",
        "peak lr 0.001", "lr at warmup end (epoch 5): 0.0009993", "RandAugment n2 m9 mstd0.5", "random erasing 0.25",
        "mixup 0.8 / cutmix 1", "EMA 0.99996; best weights by ema_val_top1", "resize 256 bicubic",
    )  # fmt: skip
    for line in expected:
        assert line in out, out
    assert not (tmp_path / "absent").exists()
    # The steps follow from the prepared source's size (the embedded digits: 1,438 training images).
    out = dry_run("--config.dataset=digits", f"--config.data_dir={digits_dir}", "--config.batch_size=64")
    assert "310 epochs = 6820 steps (22 per epoch: 1,438 digits examples // batch)" in out, out


def test_every_create_model_keyword_is_a_config_key():
    """`--config.model.KEY` reaches every keyword of `create_model` (vision) and `create_text_model` (text)."""
    from sot_jax.models import factory, text

    assert set(factory.OPTIONS) <= set(recipes.base_config().model)
    for variant in ("bert_base_sot,cola", "demo"):
        assert set(text.TEXT_OPTIONS) <= set(load_config("configs/sot_glue.py", variant).model)
    assert set(text.OPTION_TYPES) == set(text.TEXT_OPTIONS) - {"dtype"}  # one type per option
