"""RandAugment in TensorFlow with stateless randomness, following timm's `rand-m{M}-mstd{S}-inc1` policy.

Each of `num_layers` rounds picks one of 15 operations uniformly and applies it with probability 0.5, at a
magnitude drawn from N(M, S) clipped to [0, 10] (the "increasing" variants: larger magnitude, stronger change).
Geometric operations fill with timm's ImageNet mean colour. Images are uint8 (H, W, 3).
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


def _affine(image: tf.Tensor, matrix: tf.Tensor) -> tf.Tensor:
    """Apply an output->input affine map [a, b, c, d, e, f] (x_in = a x + b y + c, y_in = d x + e y + f)."""
    transform = tf.concat([matrix, tf.zeros([2], tf.float32)], 0)[None]
    channels = []
    for c in range(3):  # one fill value per channel
        channels.append(
            tf.raw_ops.ImageProjectiveTransformV3(
                images=image[None, ..., c : c + 1], transforms=transform, output_shape=tf.shape(image)[:2],
                fill_value=float(FILL[c]), interpolation="BILINEAR", fill_mode="CONSTANT",
            )[0]
        )  # fmt: skip
    return tf.concat(channels, -1)


def _rotation(size: tf.Tensor, degrees: tf.Tensor) -> tf.Tensor:
    """Counter-clockwise about the centre (PIL's rotate): input = R(-angle)·(output - centre) + centre."""
    angle = degrees * math.pi / 180.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = (size[1] - 1) / 2, (size[0] - 1) / 2
    return tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy])


def _homogeneous(matrix: tf.Tensor) -> tf.Tensor:
    return tf.reshape(tf.concat([matrix, [0.0, 0.0, 1.0]], 0), (3, 3))


IDENTITY = tf.constant([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])


def apply_op(index: tf.Tensor, image: tf.Tensor, magnitude: tf.Tensor, sign: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Operation OPS[index] at `magnitude` in [0, 10]; `sign` (±1) negates the signed ones. Returns the image and
    the output->input pixel map of the geometric ops as a 3×3 matrix (identity for the others)."""
    level = magnitude / MAX_LEVEL
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    enhance = 1.0 + sign * level * 0.9

    def posterize():
        shift = tf.cast(8 - (4 - tf.cast(level * 4, tf.int32)), tf.uint8)
        return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)

    def solarize_add():
        added = tf.clip_by_value(tf.cast(image, tf.int32) + tf.cast(level * 110, tf.int32), 0, 255)
        return tf.where(image < 128, tf.cast(added, tf.uint8), image)

    def contrast():
        mean = tf.reduce_mean(tf.cast(tf.image.rgb_to_grayscale(image), tf.float32))
        return _blend(tf.fill(tf.shape(image), tf.cast(tf.round(mean), tf.uint8)), image, enhance)

    def geometric(matrix):
        return lambda: (_affine(image, matrix), matrix)

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
        geometric(tf.stack([1.0, sign * level * 0.3, 0.0, 0.0, 1.0, 0.0])),
        geometric(tf.stack([1.0, 0.0, 0.0, sign * level * 0.3, 1.0, 0.0])),
        geometric(tf.stack([1.0, 0.0, sign * level * 0.45 * size[1], 0.0, 1.0, 0.0])),
        geometric(tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, sign * level * 0.45 * size[0]])),
    ]
    image_out, matrix = tf.switch_case(index, branches)
    return tf.ensure_shape(image_out, image.shape), _homogeneous(matrix)


def randaugment(
    image: tf.Tensor, seed: tf.Tensor, num_layers: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.5
) -> tuple[tf.Tensor, tf.Tensor]:
    """timm's RandAugment (increasing ops, each applied with probability 0.5) on a uint8 (H, W, 3) image.

    Also returns the output->input pixel map of the geometric ops applied (3×3; what a token label map needs)."""
    seeds = tf.random.experimental.stateless_split(seed, 4 * num_layers)
    total = tf.eye(3)
    for layer in range(num_layers):
        op_seed, apply_seed, magnitude_seed, sign_seed = tf.unstack(seeds[4 * layer : 4 * layer + 4])
        index = tf.random.stateless_uniform([], op_seed, 0, len(OPS), dtype=tf.int32)
        noisy = magnitude + magnitude_std * tf.random.stateless_normal([], magnitude_seed)
        level = tf.clip_by_value(noisy, 0.0, MAX_LEVEL)
        sign = tf.where(tf.random.stateless_uniform([], sign_seed) < 0.5, -1.0, 1.0)
        apply = tf.random.stateless_uniform([], apply_seed) < 0.5
        image, matrix = tf.cond(
            apply, lambda i=index, x=image, m=level, s=sign: apply_op(i, x, m, s), lambda x=image: (x, tf.eye(3))
        )
        total = total @ matrix  # this layer's output -> its input, then the earlier layers' maps
    return image, total
