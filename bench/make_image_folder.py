"""Write an ImageNet-like image folder (`DIR/{train,val}/<class>/<i>.JPEG`) for end-to-end input benchmarks.

    python bench/make_image_folder.py DIR [--classes 100] [--train-per-class 100] [--val-per-class 2]

Images are 500×375 (the ImageNet median) smooth random scenes plus noise, JPEG quality 85 (about 100 KB, as
`input_pipeline.imagenet_like_jpegs`), made in parallel on every core. Then, for example (batch and steps as
`bench/train_throughput.py`'s synthetic run):

    python -m sot_jax.main --config=configs/sot_deit.py:sot_small --workdir=/tmp/run --config.dataset=folder \\
        --config.data_dir=DIR --config.batch_size=256 --config.total_steps=200 --config.log_every_steps=10
"""

from __future__ import annotations

import argparse
import multiprocessing
from pathlib import Path

import numpy as np
from PIL import Image


def write_class(args: tuple[Path, int, int, int]) -> None:
    folder, label, count, seed = args
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        coarse = rng.uniform(0, 255, size=(12, 16, 3)).astype(np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((500, 375), Image.BICUBIC), np.float32)
        pixels = np.clip(base + rng.normal(0, 21, size=base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{label:04d}_{index:05d}.JPEG", quality=85)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--val-per-class", type=int, default=2)
    args = parser.parse_args()
    jobs = [
        (args.directory / split / f"class_{label:04d}", label, count, seed * args.classes + label)
        for seed, (split, count) in enumerate((("train", args.train_per_class), ("val", args.val_per_class)))
        for label in range(args.classes)
    ]
    with multiprocessing.Pool() as pool:
        pool.map(write_class, jobs)
    counts = f"{args.train_per_class} train + {args.val_per_class} val"
    print(f"wrote {args.classes} classes × ({counts}) to {args.directory}")


if __name__ == "__main__":
    main()
