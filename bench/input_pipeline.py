"""Input-pipeline throughput of the Grain + PIL pipeline (`sot_jax.data`), against timm's own PIL transform, on
generated ImageNet-like JPEGs: 500×375 (ImageNet's median size) at the JPEG quality, a multiple of 5, whose mean
comes nearest 110 KB (ImageNet's median file): about 104 KB.

    python bench/input_pipeline.py [--images 128] [--seconds 10] [--rounds 2] [--workers 1 2] [--batch 32]
        [--feed IMG_S ...] [--pillow-simd] [--json OUT.json]

Measures, in img/s:
1. One core (this process pinned to one core with sched_setaffinity; a plain loop over the JPEGs, whole passes
   until --seconds have run): ours train = `transforms.train_image` with the SoT recipe (`recipes.base_config()`:
   random resized crop with random interpolation, flip, RandAugment rand-m9-mstd0.5-inc1; per-image generator
   default_rng((0, 0, i)) as the pipeline seeds); timm PIL part = timm's `create_transform(224, is_training=True,
   scale=(0.08, 1), interpolation='random', auto_augment='rand-m9-mstd0.5-inc1', ...)` up to its ToTensor (the
   same steps as ours, which leaves normalization and erasing to the accelerator: compare these two); timm full =
   the official SoT train transform, also ToTensor, Normalize and RandomErasing(0.25, pixel); ours eval =
   `transforms.eval_image` (resize 256 bicubic, centre crop 224). Both decode as timm's loader does
   (`Image.open(...).convert("RGB")`). The rows run --rounds times, interleaved (each round in the reverse order
   of the one before), because one-core numbers on a shared machine are noisy: read the spread between rounds
   (and the load average printed at the start and the end). Each row's rate comes per second of wall clock and per
   second of the process's CPU time: on a loaded machine the second leaves out the time other processes had the
   core (not their effect on its caches). "ours train / timm ...": > 1 = ours faster.
   timm needs torch; the comparison is with timm 0.3.4 (SoT's) only for timm <= 0.4.5, whose data code equals
   0.3.4's (timm 1.x's RandAugment differs). Under Pillow >= 10 timm <= 0.4.5 fails on Posterize to 0 bits
   (magnitude 10); the benchmark gives it Pillow 8's result (a black image), as ours does.
2. Grain: `pipeline.TrainBatches` with N worker processes (--workers), batches of --batch JPEGs through
   `transforms.train_image`. Startup (worker processes up and the first batch out) is reported apart; the rate is
   taken over --seconds of batches after it (the batches buffered during startup are read off first, untimed).
   Efficiency = img/s / (N × img/s with 1 worker); on a machine with no more cores than workers, the main process
   and anything else running take cores from them. `--workers` with no number skips this part.
3. Cores per GPU: ceil(train img/s of one GPU / ours train's one-core img per CPU second, i.e. a core of its own)
   for BENCHMARKS.md's H100 training-table rows, or for the --feed rates. That assumes the host's cores are like
   this machine's and that the workers scale as (2) shows.

The first line names the machine and versions; Pillow's line says whether it looks like pillow-simd (a ".post"
version); --pillow-simd marks a run meant to have it, and warns when it does not. --json writes every number, the
versions (Python, numpy, Pillow, grain, timm and torch if any), the core counts and the load averages.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import random
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import grain
import numpy as np
import PIL
from PIL import Image, ImageOps, features

from sot_jax import recipes
from sot_jax.data import pipeline, transforms

IMAGE_SIZE = 224
# BENCHMARKS.md's training table (one H100, re-measured 2026-12-06): train img/s per GPU.
TRAIN_TABLE = {"sot_tiny": 3435, "sot_small": 2985, "sot_base": 1723, "deit_small_patch16_224": 7507,
               "hvt_s_1": 12249}  # fmt: skip
Transform = Callable[[bytes, int], Any]  # (JPEG bytes, running image index) -> the transformed image


def imagenet_like_jpegs(count: int, target_kb: float = 110.0) -> list[bytes]:
    """Smooth random scenes with texture (a blurred field plus noise); quality tuned to about target_kb."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        coarse = rng.uniform(0, 255, size=(12, 16, 3)).astype(np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((500, 375), Image.BICUBIC), np.float32)
        images.append(np.clip(base + rng.normal(0, 21, size=base.shape), 0, 255).astype(np.uint8))

    def encode(quality: int) -> list[bytes]:
        out = []
        for pixels in images:
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
            out.append(buffer.getvalue())
        return out

    quality = min(range(50, 100, 5), key=lambda q: abs(np.mean([len(b) for b in encode(q)[:16]]) / 1e3 - target_kb))
    return encode(quality)


@contextlib.contextmanager
def pinned(core: int) -> Iterator[None]:
    """This process on `core` only (so a rate is per core); the previous affinity afterwards."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def loop_rate(transform: Transform, jpegs: list[bytes], seconds: float) -> tuple[float, float]:
    """img/s of `transform` in a plain loop, whole passes over `jpegs` until `seconds` have run: per second of wall
    clock and per second of this process's CPU time (which other processes on the core do not count in)."""
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    while count == 0 or time.perf_counter() - start < seconds:
        for data in jpegs:
            transform(data, count)
            count += 1
    return count / (time.perf_counter() - start), count / (time.process_time() - cpu)


def cpu_model() -> str:
    """The CPU's model name (Linux), else the machine type."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.machine()


def pillow_info(expect_simd: bool) -> dict[str, Any]:
    """Pillow's version and whether it looks like pillow-simd (whose versions carry ".post")."""
    return {
        "version": PIL.__version__,
        "looks_like_pillow_simd": ".post" in PIL.__version__,
        "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo")),
        "pillow_simd_expected": expect_simd,
    }


def timm_transforms() -> tuple[dict[str, Any], dict[str, Transform]]:
    """timm's SoT train transform, full and its PIL part, as Transforms; ({"error": ...}, {}) without timm."""
    try:
        import torch

        register_fake = torch.library.register_fake  # torchvision's fake ops fail to register under a newer torch
        torch.library.register_fake = lambda name, *args, **kwargs: (
            (lambda f: f) if str(name).startswith("torchvision::") else register_fake(name, *args, **kwargs)
        )
        try:
            import timm
            from timm.data import auto_augment, create_transform
        finally:
            torch.library.register_fake = register_fake
    except Exception as error:  # ImportError, or torchvision's own failures
        return {"error": f"{type(error).__name__}: {error}"}, {}
    info = {"timm": timm.__version__, "torch": torch.__version__, "notes": []}
    if tuple(int(n) for n in re.findall(r"\d+", timm.__version__)[:3]) > (0, 4, 5):
        info["notes"].append(f"timm {timm.__version__}: the comparison with SoT's timm 0.3.4 needs timm <= 0.4.5")
    try:
        ImageOps.posterize(Image.new("RGB", (1, 1)), 0)
    except ValueError:  # Pillow >= 10 refuses 0 bits; timm <= 0.4.5 passes them at magnitude 10
        posterize = auto_augment.NAME_TO_OP["Posterize"]

        def posterize_0_bits(img: Image.Image, bits: int, **kwargs: Any) -> Image.Image:
            return img.point([0] * 256 * len(img.getbands())) if bits == 0 else posterize(img, bits, **kwargs)

        for name, op in auto_augment.NAME_TO_OP.items():
            if op is posterize:
                auto_augment.NAME_TO_OP[name] = posterize_0_bits
        info["notes"].append("Posterize to 0 bits patched to Pillow 8's black image (Pillow >= 10 refuses 0 bits)")
    torch.set_num_threads(1)
    full = create_transform(IMAGE_SIZE, is_training=True, scale=(0.08, 1.0), interpolation="random",
                            auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, re_mode="pixel", re_count=1)  # fmt: skip
    steps = full.transforms
    pil_part = type(full)(steps[: next(i for i, t in enumerate(steps) if "ToTensor" in type(t).__name__)])
    info["pil_part"], info["full"] = [type(t).__name__ for t in pil_part.transforms], [type(t).__name__ for t in steps]
    random.seed(0)  # timm draws from Python's and torch's generators
    torch.manual_seed(0)

    def timm_call(transform: Callable[[Image.Image], Any]) -> Transform:
        return lambda data, i: transform(Image.open(io.BytesIO(data)).convert("RGB"))

    return info, {"timm train PIL part": timm_call(pil_part), "timm train full": timm_call(full)}


class JpegBatch:
    """Batch `step` of the JPEGs: images step·B ... step·B + B − 1 (mod their count) through `train_image`, stacked
    (`pipeline._TrainBatch` without the source); picklable, for Grain's workers."""

    def __init__(self, jpegs: list[bytes], input_config: Any, batch: int):
        self.jpegs, self.input_config, self.batch = jpegs, input_config, batch

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        images = []
        for i in range(step * self.batch, (step + 1) * self.batch):
            data, rng = self.jpegs[i % len(self.jpegs)], np.random.default_rng((0, 0, i))
            images.append(transforms.train_image(data, rng, self.input_config, IMAGE_SIZE)[0])
        return {"image": np.stack(images)}


def grain_rate(make_batch: JpegBatch, workers: int, seconds: float) -> dict[str, float]:
    """Startup seconds (to the first batch) and img/s of `TrainBatches` with `workers` processes."""
    start = time.perf_counter()
    batches = pipeline.TrainBatches(make_batch, 0, workers)
    next(batches)
    startup = time.perf_counter() - start
    for _ in range(2 * workers):  # what the workers buffered (2 each) while the others started
        next(batches)
    count, start = 0, time.perf_counter()
    while count == 0 or time.perf_counter() - start < seconds:
        count += len(next(batches)["image"])
    rate = count / (time.perf_counter() - start)
    batches.close()  # stop the workers before the next row
    return {"startup_s": startup, "img_s": rate, "img_s_per_worker": rate / workers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128, help="generated JPEGs (the loops cycle over them)")
    parser.add_argument("--seconds", type=float, default=10.0, help="at least this long per measured row")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the one-core rows")
    parser.add_argument("--core", type=int, help="the core of the one-core rows (default: the last one available)")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="Grain worker counts")
    parser.add_argument("--batch", type=int, default=32, help="Grain batch size")
    parser.add_argument("--feed", type=float, nargs="+", help="train img/s per GPU (default: BENCHMARKS.md's table)")
    parser.add_argument("--pillow-simd", action="store_true", help="this run is meant to have pillow-simd")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    config = recipes.base_config()
    timm_info, timm_rows = timm_transforms()
    result: dict[str, Any] = {
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "grain": grain.__version__,
            "timm": timm_info.get("timm"),
            "torch": timm_info.get("torch"),
        },
        "pillow": pillow_info(args.pillow_simd),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)),
        "load_average_start": os.getloadavg(),
        "timm": timm_info,
    }
    pil = result["pillow"]
    versions = ", ".join(f"{name} {version}" for name, version in result["versions"].items() if version)
    print(f"{result['cpu']}, {result['cpu_count']} cores ({result['cores_available']} available, load average "
          f"{result['load_average_start'][0]:.1f}); {versions}", flush=True)  # fmt: skip
    simd = pil["looks_like_pillow_simd"]
    looks = "looks like pillow-simd (version with .post)" if simd else "not pillow-simd (version without .post)"
    print(f"Pillow {pil['version']}: {looks}, libjpeg-turbo {'yes' if pil['libjpeg_turbo'] else 'no'}", flush=True)
    if args.pillow_simd and not simd:
        print("warning: --pillow-simd given, but this Pillow does not look like pillow-simd", flush=True)
    if "error" in timm_info:
        print(f"timm rows skipped: timm does not import ({timm_info['error']})", flush=True)
    for note in timm_info.get("notes", []):
        print(f"timm: {note}", flush=True)

    jpegs = imagenet_like_jpegs(args.images)
    mean_kb = float(np.mean([len(b) for b in jpegs]) / 1e3)
    result["jpegs"] = {"count": len(jpegs), "width": 500, "height": 375, "mean_kb": mean_kb}
    print(f"{len(jpegs)} JPEGs 500x375, mean {mean_kb:.0f} KB", flush=True)

    def ours_train(data: bytes, i: int) -> np.ndarray:
        return transforms.train_image(data, np.random.default_rng((0, 0, i)), config.input, IMAGE_SIZE)[0]

    rows: dict[str, Transform] = {
        "ours train": ours_train,
        **timm_rows,
        "ours eval": lambda data, i: transforms.eval_image(data, IMAGE_SIZE, config.input.eval_crop_pct),
    }
    core = max(os.sched_getaffinity(0)) if args.core is None else args.core
    rates: dict[str, dict[str, list[float]]] = {clock: {name: [] for name in rows} for clock in ("wall", "cpu")}
    with pinned(core):
        for transform in rows.values():  # warm-up: imports, caches
            for i, data in enumerate(jpegs[:8]):
                transform(data, i)
        for r in range(args.rounds):
            for name in list(rows)[:: 1 if r % 2 == 0 else -1]:
                wall, cpu = loop_rate(rows[name], jpegs, args.seconds)
                rates["wall"][name].append(wall)
                rates["cpu"][name].append(cpu)
    mean = {clock: {name: float(np.mean(v)) for name, v in by_name.items()} for clock, by_name in rates.items()}
    result["one_core"] = {"core": core, "img_s": rates["wall"], "img_s_mean": mean["wall"],
                          "img_per_cpu_s": rates["cpu"], "img_per_cpu_s_mean": mean["cpu"]}  # fmt: skip
    print(f"\none core (core {core}), {args.rounds} round(s) interleaved (>= {args.seconds:g} s each):")
    for clock, title in ("wall", "img/s (wall clock)"), ("cpu", "img per second of this process's CPU time"):
        print(f"  {title:<40}" + "".join(f"{f'round {r + 1}':>9}" for r in range(args.rounds)) + f"{'mean':>9}")
        for name, values in rates[clock].items():
            print(f"    {name:<38}" + "".join(f"{v:9.0f}" for v in values) + f"{mean[clock][name]:9.0f}")
        for name in timm_rows:
            ratios = [a / b for a, b in zip(rates[clock]["ours train"], rates[clock][name], strict=True)]
            print(f"    {'ours train / ' + name:<38}" + "".join(f"{x:9.2f}" for x in ratios)
                  + f"{mean[clock]['ours train'] / mean[clock][name]:9.2f}")  # fmt: skip

    if args.workers:
        print(f"\nGrain TrainBatches, batch {args.batch}, rate over >= {args.seconds:g} s after startup:")
        print(f"  {'workers':>7} {'startup s':>9} {'img/s':>7} {'per worker':>10} {'efficiency':>10}")
        make_batch = JpegBatch(jpegs, config.input, args.batch)
        result["grain"] = {}
        for workers in args.workers:
            row = grain_rate(make_batch, workers, args.seconds)
            one = result["grain"].get(1)
            row["efficiency"] = row["img_s"] / (workers * one["img_s"]) if one else None
            result["grain"][workers] = row
            efficiency = f"{row['efficiency']:.0%}" if row["efficiency"] is not None else "-"
            print(f"  {workers:7d} {row['startup_s']:9.1f} {row['img_s']:7.0f} {row['img_s_per_worker']:10.0f} "
                  f"{efficiency:>10}", flush=True)  # fmt: skip

    feed = {f"{rate:g} img/s": rate for rate in args.feed} if args.feed else TRAIN_TABLE
    per_core = mean["cpu"]["ours train"]  # a core of its own
    result["cores_per_gpu"] = {name: math.ceil(rate / per_core) for name, rate in feed.items()}
    print(f"\ncores per GPU to feed it, at {per_core:.0f} img/s per core (ours train, one core, per CPU second):")
    for name, rate in feed.items():
        print(f"  {name:<24} {rate:8,.0f} img/s {result['cores_per_gpu'][name]:4d} cores")
    result["load_average_end"] = os.getloadavg()
    print(f"load average at the end: {result['load_average_end'][0]:.1f} (1 min)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
