"""PyTorch reference training throughput, measured like SPEC §8: synthetic data on the GPU, batch 256, bf16
autocast, AdamW (one process per model, so that peak memory is its own).

    python bench/torch_reference.py --model deit_small_patch16_224 [--compile]          # timm
    python bench/torch_reference.py --model SoT_Small --sot-repo PATH [--compile]        # official SoT code

The official SoT code needs timm 0.3.4 on PYTHONPATH ahead of any newer timm; it is imported from PATH (a
checkout of jiangtaoxie/SoT outside this repository), never copied here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def official_sot(name: str, repo: str) -> torch.nn.Module:
    sys.path.insert(0, sys.path[0] + "/../tests/fixtures")
    from make_official_fixtures import install_shims

    install_shims()
    sys.path.insert(0, repo)
    import sot_src.sot as sot

    return getattr(sot, name)(num_classes=1000, drop_path_rate=0.1)


def fits(step, batch: int) -> bool:
    try:
        step(batch)
        torch.cuda.synchronize()
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        torch.cuda.empty_cache()


def largest_batch(step, start: int) -> int:
    """Doubling from a batch that fits, then bisection, in multiples of 32."""
    low, high = start, 2 * start
    while fits(step, high):
        low, high = high, 2 * high
    while high - low > 32:
        middle = (low + high) // 64 * 32
        low, high = (middle, high) if fits(step, middle) else (low, middle)
    return low


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--sot-repo", help="checkout of the official SoT repository (for SoT_* models)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-batch", action="store_true", help="also find the largest batch (multiple of 32)")
    args = parser.parse_args()

    if args.sot_repo:
        model = official_sot(args.model, args.sot_repo)
    else:
        import timm

        model = timm.create_model(args.model, num_classes=1000, drop_path_rate=0.1)
    model = model.cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    forward = torch.compile(model) if args.compile else model

    data = {}  # batch size -> synthetic (images, labels) on the GPU, made once

    def step(batch=args.batch):
        if batch not in data:
            data.clear()
            labels = torch.randint(0, 1000, (batch,), device="cuda")
            data[batch] = torch.randn(batch, 3, 224, 224, device="cuda"), labels
        images, labels = data[batch]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(forward(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(5):  # warm-up (and compilation)
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    result = {
        "model": args.model + (" (compiled)" if args.compile else " (eager)"),
        "train_img_s": args.batch / seconds,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(),
    }
    if args.max_batch:
        result["max_batch"] = largest_batch(step, args.batch)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
