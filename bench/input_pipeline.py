"""Input-pipeline throughput: images/s per CPU core of the full training augmentation (decode-and-crop of the
JPEG, bicubic resize to 224, flip, RandAugment rand-m9-mstd0.5-inc1) on ImageNet-like JPEGs, and the number of
cores that feeds a given accelerator step rate.

    python bench/input_pipeline.py [--images 256] [--feed 2841]      # --feed: train img/s to keep up with

JPEGs are generated: 500×375 (the ImageNet median), quality chosen so that they average about 110 KB. The
single-core rate runs tf.data with a one-thread pool and no intra-op parallelism; the all-cores rate with
tf.data's defaults.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import time

import numpy as np
import tensorflow as tf
from PIL import Image

from sot_jax import recipes
from sot_jax.data import pipeline


def imagenet_like_jpegs(count: int, target_kb: float = 110.0) -> list[bytes]:
    """Smooth random scenes with texture (a blurred field plus noise); quality tuned to about target_kb."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        coarse = rng.uniform(0, 255, size=(12, 16, 3)).astype(np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((500, 375), Image.BICUBIC), np.float32)
        images.append(np.clip(base + rng.normal(0, 21, size=base.shape), 0, 255).astype(np.uint8))

    def encode(quality):
        out = []
        for pixels in images:
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
            out.append(buffer.getvalue())
        return out

    quality = min(range(50, 100, 5), key=lambda q: abs(np.mean([len(b) for b in encode(q)[:16]]) / 1e3 - target_kb))
    return encode(quality)


def images_per_second(jpegs: list[bytes], threads: int | None, repeats: int) -> float:
    config = recipes.base_config()

    def preprocess(i, image_bytes):
        seed = tf.stack([tf.constant(0, tf.int64), i])
        return pipeline.train_preprocess(image_bytes, seed, config.input, config.model.img_size)[0]

    ds = tf.data.Dataset.from_tensor_slices(jpegs).repeat(repeats).enumerate()
    ds = ds.map(preprocess)
    ds = ds.batch(64)
    options = tf.data.Options()
    if threads:
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
    ds = ds.with_options(options).prefetch(2)
    start = time.perf_counter()
    count = sum(batch.shape[0] for batch in ds.as_numpy_iterator())
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--feed", type=float, default=0.0, help="accelerator train img/s the host must supply")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    jpegs = imagenet_like_jpegs(args.images)
    images_per_second(jpegs[:64], 1, 1)  # warm-up: tracing and kernels
    one_core = images_per_second(jpegs, 1, args.repeats)
    all_cores = images_per_second(jpegs, None, args.repeats)
    cores = os.cpu_count()
    result = {
        "mean_jpeg_kb": float(np.mean([len(b) for b in jpegs]) / 1e3),
        "img_s_one_core": one_core,
        "img_s_all_cores": all_cores,
        "cores": cores,
        "tensorflow": tf.__version__,
    }
    print(
        f"{result['mean_jpeg_kb']:.0f} KB JPEGs: {one_core:.0f} img/s on one core, {all_cores:.0f} img/s on all "
        f"{cores} cores ({all_cores / cores:.0f} per core)",
        flush=True,
    )
    if args.feed:
        result["cores_needed"] = math.ceil(args.feed / one_core)
        print(f"feeding {args.feed:.0f} img/s needs {result['cores_needed']} such cores", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
