"""RandAugment in TensorFlow with stateless randomness, following timm's `rand-m{M}-mstd{S}-inc1` policy.

Each of `num_layers` rounds picks one of 15 operations uniformly and applies it with probability 0.5, at a
magnitude drawn from N(M, S) clipped to [0, 10] (the "increasing" variants: larger magnitude, stronger change).
Geometric operations sample as PIL does (bilinear or bicubic, see `_affine`) and fill with timm's ImageNet mean
colour. Images are uint8 (H, W, 3).
"""

from __future__ import annotations

import math

import tensorflow as tf

MAX_LEVEL = 10.0
FILL = (124, 116, 104)  # timm's fill colour: the ImageNet mean in uint8
OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast",
    "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY",
)  # fmt: skip


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL's ImageEnhance: degenerate + factor · (image - degenerate), clipped to uint8."""
    blended = tf.cast(degenerate, tf.float32) + factor * (tf.cast(image, tf.float32) - tf.cast(degenerate, tf.float32))
    return tf.cast(tf.clip_by_value(tf.round(blended), 0.0, 255.0), tf.uint8)


def _grayscale(image: tf.Tensor) -> tf.Tensor:
    return tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))


def _auto_contrast(image: tf.Tensor) -> tf.Tensor:
    def channel(x):
        x = tf.cast(x, tf.float32)
        low, high = tf.reduce_min(x), tf.reduce_max(x)
        scaled = (x - low) * 255.0 / tf.maximum(high - low, 1.0)
        return tf.cast(tf.where(high > low, scaled, x), tf.uint8)

    return tf.stack([channel(image[..., c]) for c in range(3)], axis=-1)


def _equalize(image: tf.Tensor) -> tf.Tensor:
    """PIL's ImageOps.equalize, per channel."""

    def channel(x):
        histogram = tf.histogram_fixed_width(tf.cast(x, tf.int32), [0, 255], nbins=256)
        nonzero = tf.boolean_mask(histogram, histogram > 0)
        step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
        lut = (tf.cumsum(histogram) + step // 2) // tf.maximum(step, 1)
        lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
        return tf.where(step > 0, tf.cast(tf.gather(lut, tf.cast(x, tf.int32)), tf.uint8), x)

    return tf.stack([channel(image[..., c]) for c in range(3)], axis=-1)


def _sharpness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL's ImageEnhance.Sharpness: blend with a 3×3 smoothed image whose border pixels stay unchanged."""
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(tf.cast(image, tf.float32)[None], kernel, [1, 1, 1, 1], "VALID")[0]
    smooth = tf.cast(tf.clip_by_value(tf.round(smooth), 0.0, 255.0), tf.uint8)
    degenerate = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    border = tf.pad(tf.zeros_like(smooth, tf.bool), [[1, 1], [1, 1], [0, 0]], constant_values=True)
    return _blend(tf.where(border, image, degenerate), image, factor)


def _cubic_weights(d: tf.Tensor) -> list[tf.Tensor]:
    """PIL's transform bicubic (Geometry.c's BICUBIC, a = -1) at taps -1, 0, 1, 2 for a fraction d in [0, 1)."""
    d2, d3 = d * d, d * d * d
    return [-d + 2 * d2 - d3, 1 - 2 * d2 + d3, d + d2 - d3, d3 - d2]


def _affine(image: tf.Tensor, matrix: tf.Tensor, method: str) -> tf.Tensor:
    """PIL's `Image.transform(AFFINE, resample, fillcolor)` (what timm's geometric ops call) for an output->input
    map [a, b, c, d, e, f] in pixel indices (x_in = a x + b y + c, y_in = d x + e y + f): an output pixel whose
    source lies off the image takes the fill colour; otherwise bilinear or bicubic (a = -1) interpolation with
    neighbours clamped to the border, clipped and truncated to uint8, as PIL does."""
    height, width = tf.unstack(tf.shape(image)[:2])  # dynamic: with label maps it runs on the whole decoded image
    rows, cols = tf.meshgrid(tf.range(height), tf.range(width), indexing="ij")
    rows, cols = tf.cast(rows, tf.float32), tf.cast(cols, tf.float32)
    a, b, c, d, e, f = tf.unstack(matrix)
    x, y = a * cols + b * rows + c, d * cols + e * rows + f
    h_edge, w_edge = tf.cast(height, tf.float32) - 0.5, tf.cast(width, tf.float32) - 0.5
    inside = (x >= -0.5) & (x < w_edge) & (y >= -0.5) & (y < h_edge)  # PIL tests pixel edges
    x0, y0 = tf.floor(x), tf.floor(y)
    dx, dy = x - x0, y - y0
    if method == "bicubic":
        taps, x_weights, y_weights = (-1, 0, 1, 2), _cubic_weights(dx), _cubic_weights(dy)
    else:
        taps, x_weights, y_weights = (0, 1), [1 - dx, dx], [1 - dy, dy]
    x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    pixels = tf.reshape(tf.cast(image, tf.float32), (height * width, 3))
    value = tf.zeros((height, width, 3))
    for i, y_weight in zip(taps, y_weights, strict=True):
        row = tf.clip_by_value(y0 + i, 0, height - 1) * width
        for j, x_weight in zip(taps, x_weights, strict=True):
            gathered = tf.gather(pixels, row + tf.clip_by_value(x0 + j, 0, width - 1))
            value += (y_weight * x_weight)[..., None] * gathered
    value = tf.floor(tf.clip_by_value(value, 0.0, 255.0))
    return tf.cast(tf.where(inside[..., None], value, tf.constant(FILL, tf.float32)), tf.uint8)


def _rotation(size: tf.Tensor, degrees: tf.Tensor) -> tf.Tensor:
    """Counter-clockwise about the centre (PIL's rotate): input = R(-angle)·(output - centre) + centre."""
    angle = degrees * math.pi / 180.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = (size[1] - 1) / 2, (size[0] - 1) / 2
    return tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy])


def _homogeneous(matrix: tf.Tensor) -> tf.Tensor:
    return tf.reshape(tf.concat([matrix, [0.0, 0.0, 1.0]], 0), (3, 3))


IDENTITY = tf.constant([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])


def apply_op(
    index: tf.Tensor, image: tf.Tensor, magnitude: tf.Tensor, sign: tf.Tensor, bicubic: bool | tf.Tensor = False
) -> tuple[tf.Tensor, tf.Tensor]:
    """Operation OPS[index] at `magnitude` in [0, 10]; `sign` (±1) negates the signed ones; `bicubic` (a bool or a
    scalar bool tensor) makes the geometric ops interpolate bicubic instead of bilinear. Returns the image and the
    output->input pixel map of the geometric ops as a 3×3 matrix (identity for the others)."""
    level = magnitude / MAX_LEVEL
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    enhance = 1.0 + sign * level * 0.9

    def posterize():  # PIL's ImageOps.posterize: keep the top `bits` bits; 0 bits (magnitude 10) is black
        bits = 4 - tf.cast(level * 4, tf.int32)
        mask = -tf.bitwise.left_shift(1, 8 - bits)
        return tf.cast(tf.bitwise.bitwise_and(tf.cast(image, tf.int32), mask), tf.uint8)

    def solarize_add():
        added = tf.clip_by_value(tf.cast(image, tf.int32) + tf.cast(level * 110, tf.int32), 0, 255)
        return tf.where(image < 128, tf.cast(added, tf.uint8), image)

    def contrast():
        mean = tf.reduce_mean(tf.cast(tf.image.rgb_to_grayscale(image), tf.float32))
        return _blend(tf.fill(tf.shape(image), tf.cast(tf.round(mean), tf.uint8)), image, enhance)

    def geometric(matrix):
        def warp():
            return tf.cond(
                tf.convert_to_tensor(bicubic),
                lambda: _affine(image, matrix, "bicubic"),
                lambda: _affine(image, matrix, "bilinear"),
            )

        return lambda: (warp(), matrix)

    def photometric(op):
        return lambda: (op(), IDENTITY)

    branches = [
        photometric(lambda: _auto_contrast(image)),
        photometric(lambda: _equalize(image)),
        photometric(lambda: 255 - image),
        geometric(_rotation(size, sign * level * 30.0)),
        photometric(posterize),
        photometric(
            lambda: tf.where(tf.cast(image, tf.int32) >= 256 - tf.cast(level * 256, tf.int32), 255 - image, image)
        ),
        photometric(solarize_add),
        photometric(lambda: _blend(_grayscale(image), image, enhance)),
        photometric(contrast),
        photometric(lambda: _blend(tf.zeros_like(image), image, enhance)),
        photometric(lambda: _sharpness(image, enhance)),
        # PIL shears about the pixel edge (0, 0); in pixel indices that adds half the shear.
        geometric(tf.stack([1.0, sign * level * 0.3, sign * level * 0.15, 0.0, 1.0, 0.0])),
        geometric(tf.stack([1.0, 0.0, 0.0, sign * level * 0.3, 1.0, sign * level * 0.15])),
        geometric(tf.stack([1.0, 0.0, sign * level * 0.45 * size[1], 0.0, 1.0, 0.0])),
        geometric(tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, sign * level * 0.45 * size[0]])),
    ]
    image_out, matrix = tf.switch_case(index, branches)
    return tf.ensure_shape(image_out, image.shape), _homogeneous(matrix)


def randaugment(
    image: tf.Tensor,
    seed: tf.Tensor,
    num_layers: int = 2,
    magnitude: float = 9.0,
    magnitude_std: float = 0.5,
    interpolation: str = "bilinear",
) -> tuple[tf.Tensor, tf.Tensor]:
    """timm's RandAugment (increasing ops, each applied with probability 0.5) on a uint8 (H, W, 3) image; geometric
    ops interpolate "bilinear", "bicubic" or "random" (either, a coin flip per op, as timm does when its train
    interpolation is random).

    Also returns the output->input pixel map of the geometric ops applied (3×3; what a token label map needs)."""
    seeds = tf.random.experimental.stateless_split(seed, 5 * num_layers)
    total = tf.eye(3)
    for layer in range(num_layers):
        op_seed, apply_seed, magnitude_seed, sign_seed, method_seed = tf.unstack(seeds[5 * layer : 5 * layer + 5])
        index = tf.random.stateless_uniform([], op_seed, 0, len(OPS), dtype=tf.int32)
        noisy = magnitude + magnitude_std * tf.random.stateless_normal([], magnitude_seed)
        level = tf.clip_by_value(noisy, 0.0, MAX_LEVEL)
        sign = tf.where(tf.random.stateless_uniform([], sign_seed) < 0.5, -1.0, 1.0)
        apply = tf.random.stateless_uniform([], apply_seed) < 0.5
        if interpolation == "random":
            bicubic = tf.random.stateless_uniform([], method_seed) < 0.5
        else:
            bicubic = interpolation == "bicubic"
        image, matrix = tf.cond(
            apply,
            lambda i=index, x=image, m=level, s=sign, b=bicubic: apply_op(i, x, m, s, b),
            lambda x=image: (x, tf.eye(3)),
        )
        total = total @ matrix  # this layer's output -> its input, then the earlier layers' maps
    return image, total
