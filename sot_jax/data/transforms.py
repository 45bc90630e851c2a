"""The official recipes' image transforms as PIL calls, one image at a time, with randomness from a numpy Generator.

Training (timm 0.3.4/0.4.5 `transforms_imagenet_train`, what the SoT, DeiT, HVT and LV-ViT scripts run): decode to
RGB, `RandomResizedCropAndInterpolation` (timm's sampler, `crop_window`), horizontal flip, RandAugment
(`randaugment`). With token label maps, TokenLabeling's order instead: flip, RandAugment on the whole image, the
random resized crop last, and the geometry a label map needs to follow the image (`label_maps.sample_label_map`).
Evaluation (timm's `transforms_imagenet_eval` with torchvision 0.8's PIL ops): the shorter side resized bicubic to
floor(image_size / crop_pct), then the centre crop.

The images leave as uint8 (H, W, 3) arrays; normalization, erasing and mixing run on the accelerator.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from PIL import Image

from sot_jax.data import randaugment
from sot_jax.errors import check_choice

RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
INTERPOLATIONS = randaugment.INTERPOLATIONS
CROP_TRIES = 10  # timm's get_params


def decode(data: bytes | np.ndarray | Image.Image) -> Image.Image:
    """Encoded bytes (any format PIL reads), a decoded uint8 array or a PIL image, as an RGB image (timm's loader
    converts)."""
    if isinstance(data, Image.Image):
        return data.convert("RGB") if data.mode != "RGB" else data
    if isinstance(data, np.ndarray):
        return Image.fromarray(data.squeeze(-1) if data.shape[-1] == 1 else data).convert("RGB")
    return Image.open(io.BytesIO(data)).convert("RGB")


def crop_window(
    rng: np.random.Generator, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """timm's `RandomResizedCropAndInterpolation.get_params`: of 10 draws of an area uniform in `scale` × the
    image area and a log-uniform aspect ratio w/h in `ratio`, the first that fits, at offsets uniform in
    [0, H − h] × [0, W − w]; none fits: the centre crop of the aspect clamped to `ratio`. Returns (top, left,
    height, width). The 10 draws are made whichever fits, so the stream after them does not depend on the image."""
    areas = rng.uniform(scale[0], scale[1], CROP_TRIES) * (height * width)
    aspects = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), CROP_TRIES))
    offsets = rng.random(2)
    for area, aspect in zip(areas.tolist(), aspects.tolist(), strict=True):
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:  # > 0: only tiny images can round to nothing
            return int(offsets[0] * (height - h + 1)), int(offsets[1] * (width - w + 1)), h, w
    aspect = width / height
    if aspect < min(ratio):
        w, h = width, round(width / min(ratio))
    elif aspect > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _resample(rng: np.random.Generator, interpolation: str) -> int:
    """PIL's filter for `interpolation`; "random" is timm's coin between bilinear and bicubic (drawn every time,
    so the stream does not depend on the choice)."""
    coin = rng.random()
    if interpolation == "random":
        return Image.BILINEAR if coin < 0.5 else Image.BICUBIC
    return RESAMPLE[interpolation]


def resized_crop(image: Image.Image, window: tuple[int, int, int, int], resample: int, size: int) -> Image.Image:
    """torchvision's `resized_crop` (what timm's RandomResizedCropAndInterpolation calls): the PIL crop of `window`
    (top, left, height, width), then PIL's antialiased resize to size² with filter `resample`."""
    top, left, height, width = window
    return image.crop((left, top, left + width, top + height)).resize((size, size), resample)


def _random_resized_crop(
    image: Image.Image, rng: np.random.Generator, input_config: Any, image_size: int
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """timm's RandomResizedCropAndInterpolation: its window, then the recipe's interpolation."""
    window = crop_window(rng, image.height, image.width, tuple(input_config.crop_scale),
                         tuple(input_config.crop_ratio))  # fmt: skip
    return resized_crop(image, window, _resample(rng, input_config.interpolation), image_size), window


def _flip(image: Image.Image, rng: np.random.Generator, input_config: Any) -> tuple[Image.Image, bool]:
    flipped = bool(rng.random() < 0.5) and bool(input_config.hflip)
    return (image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flipped else image), flipped


def _randaugment(
    image: Image.Image, rng: np.random.Generator, input_config: Any
) -> tuple[Image.Image, np.ndarray, list[tuple[str, float]]]:
    if input_config.randaugment_layers <= 0:
        return image, np.eye(3), []
    return randaugment.randaugment(
        image, rng, input_config.randaugment_layers, input_config.randaugment_magnitude,
        input_config.randaugment_std, input_config.interpolation,
    )  # fmt: skip


def train_image(
    data: bytes | np.ndarray | Image.Image, rng: np.random.Generator, input_config: Any, image_size: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """The training image (uint8, image_size²) and, with `input_config.token_label_dir`, its geometry.

    Without label maps, timm's order: random resized crop, flip, RandAugment on the crop; the geometry is empty.
    With them, TokenLabeling's `transforms_imagenet_train` order: flip, RandAugment on the whole image, the random
    resized crop last; the geometry (`label_maps.sample_label_map`): `flipped`; `affine`, RandAugment's
    output->input pixel map (3×3) at the whole image's `size` (height, width, float32), and `ops`, its geometric
    ops as (name, value); `box`, the crop (top, left, bottom, right) as fractions of the image in float32, as the
    official stores them (top + height, left + width)."""
    check_choice("input.interpolation", input_config.interpolation, INTERPOLATIONS)
    crop_rng, flip_rng, augment_rng = rng.spawn(3)  # each step's draws independent of the others'
    image = decode(data)
    if not input_config.token_label_dir:
        image, _ = _random_resized_crop(image, crop_rng, input_config, image_size)
        image, _ = _flip(image, flip_rng, input_config)
        image, _, _ = _randaugment(image, augment_rng, input_config)
        return np.asarray(image), {}
    image, flipped = _flip(image, flip_rng, input_config)
    image, affine, ops = _randaugment(image, augment_rng, input_config)
    size = np.array([image.height, image.width], np.float32)
    out, window = _random_resized_crop(image, crop_rng, input_config, image_size)
    fractions = (np.array(window, np.float64) / np.tile(size.astype(np.float64), 2)).astype(np.float32)
    box = np.concatenate([fractions[:2], fractions[:2] + fractions[2:]])
    return np.asarray(out), {"box": box, "flipped": flipped, "affine": affine, "size": size, "ops": ops}


def eval_image(data: bytes | np.ndarray | Image.Image, image_size: int, crop_pct: float) -> np.ndarray:
    """timm's eval transform: torchvision 0.8 `Resize(floor(image_size / crop_pct))` bicubic (the shorter side to
    that size, the longer one truncated; no resize when the shorter side has it already), then `CenterCrop`
    at offsets rounded half to even (Python's round)."""
    image = decode(data)
    size = math.floor(image_size / crop_pct)
    width, height = image.size
    if min(width, height) != size:
        shape = (size, int(size * height / width)) if width < height else (int(size * width / height), size)
        image = image.resize(shape, Image.BICUBIC)
    top, left = round((image.height - image_size) / 2), round((image.width - image_size) / 2)
    return np.asarray(image.crop((left, top, left + image_size, top + image_size)))
