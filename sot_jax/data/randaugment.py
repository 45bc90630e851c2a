"""RandAugment on PIL images, following timm's `rand-m{M}-mstd{S}-inc1` policy (timm 0.3.4-0.4.5 auto_augment.py).

Each of `num_layers` rounds picks one of 15 operations uniformly and applies it with probability 0.5, at a
magnitude drawn from N(M, S) clipped to [0, 10] (the "increasing" variants: larger magnitude, stronger change).
The operations are the PIL calls timm makes, so they match timm's output pixel for pixel. Quirks kept from timm:
geometric operations fill with timm's ImageNet mean colour; Posterize at magnitude 10 keeps 0 bits, a black image
(as under Pillow 8; Pillow >= 10's ImageOps.posterize refuses 0 bits); "random" interpolation tosses a
bilinear/bicubic coin per operation. The geometric operations also return their output->input pixel map (what a
token label map needs to follow the image).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from sot_jax.errors import check_choice

MAX_LEVEL = 10.0
FILL = (124, 116, 104)  # timm's fill colour: the ImageNet mean in uint8
INTERPOLATIONS = ("bicubic", "bilinear", "random")
OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast",
    "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY",
)  # fmt: skip


# The geometric ops' value at level 1 (timm's level_to_arg, before the sign): degrees, shear factor, translation
# as a fraction of the width or height.
GEOMETRIC = {"Rotate": 30.0, "ShearX": 0.3, "ShearY": 0.3, "TranslateX": 0.45, "TranslateY": 0.45}


def _pixel_map(coefficients: tuple[float, ...]) -> np.ndarray:
    """PIL's AFFINE coefficients (output->input in continuous coordinates, where the centre of pixel (x, y) lies at
    (x + 0.5, y + 0.5)) as a 3×3 output->input map in pixel indices: x_in + ½ = a (x + ½) + b (y + ½) + c."""
    a, b, c, d, e, f = coefficients
    return np.array([[a, b, c + (a + b - 1) / 2], [d, e, f + (d + e - 1) / 2], [0.0, 0.0, 1.0]])


def _rotation(size: tuple[int, int], degrees: float) -> tuple[float, ...]:
    """The AFFINE coefficients of PIL's `rotate` (counter-clockwise about the centre (w/2, h/2), no expand)."""
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    cx, cy = size[0] / 2, size[1] / 2
    return (cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy)


def _affine(image: Image.Image, coefficients: tuple[float, ...], resample: int) -> tuple[Image.Image, np.ndarray]:
    out = image.transform(image.size, Image.AFFINE, coefficients, resample, fillcolor=FILL)
    return out, _pixel_map(coefficients)


def _lut(image: Image.Image, table: list[int]) -> Image.Image:
    return image.point(table * len(image.getbands()))


def apply_op(
    image: Image.Image, name: str, magnitude: float, sign: float, resample: int = Image.BILINEAR
) -> tuple[Image.Image, np.ndarray]:
    """Operation `name` (one of OPS) at `magnitude` in [0, 10]; `sign` (±1) negates the signed ones (timm's
    _randomly_negate); `resample` (PIL's BILINEAR or BICUBIC) for the geometric ones. Returns the image and the
    output->input pixel map of the geometric ops as a float64 3×3 matrix in pixel indices (x_in = a x + b y + c,
    y_in = d x + e y + f, pixel centres at integer indices), the identity for the photometric ops."""
    level = magnitude / MAX_LEVEL
    enhance = 1.0 + sign * level * 0.9
    value = sign * level * GEOMETRIC.get(name, 0.0)
    width, height = image.size
    match name:
        case "AutoContrast":
            image = ImageOps.autocontrast(image)
        case "Equalize":
            image = ImageOps.equalize(image)
        case "Invert":
            image = ImageOps.invert(image)
        case "Rotate":
            return image.rotate(value, resample, fillcolor=FILL), _pixel_map(_rotation(image.size, value))
        case "Posterize":  # keep the top 4 - int(4 level) bits; 0 bits is black (Pillow 8's ImageOps.posterize)
            mask = ~(2 ** (8 - (4 - int(level * 4))) - 1)
            image = _lut(image, [i & mask for i in range(256)])
        case "Solarize":
            image = ImageOps.solarize(image, 256 - int(level * 256))
        case "SolarizeAdd":
            add = int(level * 110)
            image = _lut(image, [min(255, i + add) if i < 128 else i for i in range(256)])
        case "Color":
            image = ImageEnhance.Color(image).enhance(enhance)
        case "Contrast":
            image = ImageEnhance.Contrast(image).enhance(enhance)
        case "Brightness":
            image = ImageEnhance.Brightness(image).enhance(enhance)
        case "Sharpness":
            image = ImageEnhance.Sharpness(image).enhance(enhance)
        case "ShearX":
            return _affine(image, (1, value, 0, 0, 1, 0), resample)
        case "ShearY":
            return _affine(image, (1, 0, 0, value, 1, 0), resample)
        case "TranslateX":  # timm's TranslateXRel: up to 45% of the width
            return _affine(image, (1, 0, value * width, 0, 1, 0), resample)
        case "TranslateY":
            return _affine(image, (1, 0, 0, 0, 1, value * height), resample)
        case _:
            check_choice("RandAugment operation", name, OPS)
    return image, np.eye(3)


def randaugment(
    image: Image.Image,
    rng: np.random.Generator,
    num_layers: int = 2,
    magnitude: float = 9.0,
    magnitude_std: float = 0.5,
    interpolation: str = "bilinear",
) -> tuple[Image.Image, np.ndarray, list[tuple[str, float]]]:
    """timm's RandAugment on an RGB image, with randomness from `rng` only: per layer an operation chosen uniformly
    (with replacement across layers), applied with probability 0.5 at a magnitude ~ N(magnitude, magnitude_std)
    clipped to [0, 10] and a random sign; geometric ops interpolate "bilinear", "bicubic" or "random" (a coin per
    operation, as timm does when its train interpolation is random).

    Each layer draws the same five numbers in the same order whatever its op and `interpolation` does. Also returns
    what a token label map needs to follow the image: the output->input pixel map of the geometric ops applied
    (3×3), and those ops in order as (name, value) pairs (value: sign × level × GEOMETRIC[name])."""
    check_choice("input.interpolation", interpolation, INTERPOLATIONS)
    total, geometric = np.eye(3), []
    for _ in range(num_layers):
        name = OPS[rng.integers(len(OPS))]
        skip = rng.random() > 0.5  # timm: skip when random() > prob
        level = min(MAX_LEVEL, max(0.0, magnitude + magnitude_std * rng.standard_normal()))
        sign = -1.0 if rng.random() > 0.5 else 1.0  # timm's _randomly_negate
        coin = rng.random() < 0.5  # timm's random.choice((BILINEAR, BICUBIC)) for "random"
        if skip:
            continue
        bicubic = interpolation == "bicubic" or (interpolation == "random" and coin)
        image, matrix = apply_op(image, name, level, sign, Image.BICUBIC if bicubic else Image.BILINEAR)
        total = total @ matrix  # this layer's output -> its input, then the earlier layers' maps
        if name in GEOMETRIC:
            geometric.append((name, sign * (level / MAX_LEVEL) * GEOMETRIC[name]))  # apply_op's value
    return image, total, geometric
