"""PyTorch reference training throughput, measured like SPEC §8: synthetic data on the GPU, batch 256, bf16
autocast, AdamW (one process per model, so that peak memory is its own).

    python bench/torch_reference.py --model deit_small_patch16_224 [--compile]            # timm
    python bench/torch_reference.py --model SoT_Small --official-repo PATH [--compile]     # jiangtaoxie/SoT
    python bench/torch_reference.py --model hvt_s_1 --official-repo PATH [--compile]       # zhuang-group/HVT
    python bench/torch_reference.py --model lvvit_s --official-repo PATH [--compile]       # zihangJiang/TokenLabeling

Official code is imported from PATH (a checkout outside this repository, never copied here) with the timm its
repository pins on PYTHONPATH ahead of any newer timm: 0.3.4 (SoT), 0.3.2 (HVT), 0.4.5 (TokenLabeling). LV-ViT
trains with its dense loss (class-token CE + token CE on the image label, the official fallback).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import sys
import time

import torch


def official_model(name: str, repo: str) -> torch.nn.Module:
    sys.path.insert(0, sys.path[0] + "/../tests/fixtures")
    from make_official_fixtures import install_shims

    install_shims()
    sys.path.insert(0, repo)
    if name.startswith("SoT_"):
        import sot_src.sot as sot

        return getattr(sot, name)(num_classes=1000, drop_path_rate=0.1)
    if name.startswith("lvvit_"):
        lvvit = importlib.import_module("tlt.models.lvvit")  # `from tlt.models import lvvit` is a function there

        return getattr(lvvit, name)(num_classes=1000, drop_path_rate=0.1)
    if name == "hvt_s_1":  # HVT reads its architecture from command-line arguments (config/hvt-s-1.json)
        sys.argv = sys.argv[:1]
        import params

        params.args.pool_block_width, params.args.pool_kernel_size = 12, 3
        import models as hvt

        return hvt.HVT(img_size=224, patch_size=16, num_classes=1000, embed_dim=384, depth=12, num_heads=6,
                       mlp_ratio=4, qkv_bias=True, norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
                       drop_path_rate=0.1)  # fmt: skip
    raise ValueError(f"no official model {name!r}: SoT_Tiny/Small/Base, hvt_s_1, lvvit_t/s/m/l")


def loss_of(outputs, labels: torch.Tensor) -> torch.Tensor:
    """Cross entropy; LV-ViT's training output (class logits, token logits, box) adds the token loss."""
    if isinstance(outputs, tuple):
        cls_logits, token_logits = outputs[:2]
        token_labels = labels.repeat_interleave(token_logits.shape[1])
        return torch.nn.functional.cross_entropy(cls_logits, labels) + torch.nn.functional.cross_entropy(
            token_logits.flatten(0, 1), token_labels
        )
    return torch.nn.functional.cross_entropy(outputs, labels)


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
    parser.add_argument("--official-repo", help="checkout of the official repository (SoT_*, hvt_s_1, lvvit_*)")
    parser.add_argument("--device", default="cuda", help="cpu: a quick check that the model builds and trains")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-batch", action="store_true", help="also find the largest batch (multiple of 32)")
    args = parser.parse_args()

    if args.official_repo:
        model = official_model(args.model, args.official_repo)
    else:
        import timm

        model = timm.create_model(args.model, num_classes=1000, drop_path_rate=0.1)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    synchronize = torch.cuda.synchronize if gpu else lambda: None
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    forward = torch.compile(model) if args.compile else model

    data = {}  # batch size -> synthetic (images, labels) on the GPU, made once

    def step(batch=args.batch):
        if batch not in data:
            data.clear()
            labels = torch.randint(0, 1000, (batch,), device=device)
            data[batch] = torch.randn(batch, 3, 224, 224, device=device), labels
        images, labels = data[batch]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_of(forward(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(5):  # warm-up (and compilation)
        step()
    synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    result = {
        "model": args.model + (" (compiled)" if args.compile else " (eager)"),
        "train_img_s": args.batch / seconds,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else None,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if gpu else "cpu",
    }
    if args.max_batch:
        result["max_batch"] = largest_batch(step, args.batch)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
