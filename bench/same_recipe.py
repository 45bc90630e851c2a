"""Same recipe, two implementations: train the official PyTorch SoT (jiangtaoxie/SoT, from a checkout outside this
repository, with timm 0.3.4) and sot_jax's port from the same initial weights, on the same numpy batches, with the
same optimizer, schedule and loss, for the same steps on one device; print both accuracy curves.

On the GPU machine (TensorFlow is not needed; ml_collections must be importable; PYTHONPATH must hold `.` and
`bench`, and the official checkout and timm 0.3.4 live under .official/):

    PYTHONPATH=/tmp/site:.:bench python3 bench/same_recipe.py --official-repo .official/SoT \
        --timm .official/timm-0.3.4 --device cuda --steps 600 --batch 64 --train-size 6000 --val-size 1000 \
        --eval-every 50 --json $OUT/same_recipe.json

CPU smoke test (3 minutes on 2 cores; PyTorch's bf16 autocast on CPU is several times slower, hence fp32):

    PYTHONPATH=.:bench python bench/same_recipe.py --official-repo /work/official/SoT \
        --timm /work/official/timm-0.3.4 --device cpu --steps 4 --batch 4 --train-size 64 --val-size 32 \
        --eval-every 2 --precision fp32

With `--precision fp32 --drop-path 0` nothing random is left in the steps, and both sides' losses agree to the
printed 4 decimals step after step (checked on CPU for 3 steps: 2.2629, 4.3002, 3.2457 on both).

Data (`bench/shapes_data.py`): 10 classes of coloured shapes (5 kinds × filled/outline) at 224², random position,
size, rotation and colours, gradient background, pixel noise and distractor discs; generated in memory from
--seed. Each step's batch (a fresh random order every epoch, random horizontal flip) is drawn once from one numpy
stream and fed to both sides as the same uint8 NHWC array. The official stem only gives 14×14 tokens at 224²,
so the image size is fixed.

Recipe, identical on both sides:
  - initial weights: the official model built with torch.manual_seed(--seed) (its own init: trunc-normal Linear
    weights, svPN's random start vector, ...), converted by `sot_jax.models.from_torch`; the script checks that
    both give the same float32 eval logits before training and that step-0 accuracies agree;
  - AdamW (torch's defaults β = (0.9, 0.999), ε = 1e-8) at --lr with weight decay (default: the variant's
    official value, 0.03 for SoT-Tiny), no decay on biases and 1-D parameters (timm 0.3.4 `create_optimizer`'s
    rule; SoT has no `no_weight_decay` skip list, and its fixed position embedding is not trained);
  - timm's cosine schedule (CosineLRScheduler through `create_scheduler`, official main.py's defaults: warmup from
    1e-6, cosine to 1e-5) stepped once per training step: --warmup steps of warmup, cosine over --steps;
  - label smoothing 0.1 (official: timm's LabelSmoothingCrossEntropy when Mixup is off; sot_jax: smoothed one-hot
    targets, the same loss), drop path 0.1 (official main.py's default) linearly over the blocks;
  - inputs normalized as timm's prefetcher does: (x − 255·mean) / (255·std), ImageNet mean and std;
  - bf16 compute: PyTorch autocast(bfloat16) around the forward and loss, sot_jax's bf16 compute dtype (parameters
    float32 on both); --precision fp32 turns both off;
  - no Mixup/CutMix, random erasing, RandAugment or EMA (EMA 0.99996 would barely move in a few hundred steps), no
    gradient clipping.
The sot_jax side runs the library's own code: the config is configs/sot_deit.py's variant adjusted as above
(`schedule` "epochs" = steps), `experiment.build_trainer`'s fresh state + the converted weights as `init_from`
does, its jitted `train.train_step` over a one-device mesh (augmentation in the step: normalize and label
smoothing), and
`evaluate.eval_step` for top-1. The PyTorch side is a plain loop in the official train_epoch's form: model.train(),
forward, loss, zero_grad, backward, step, `lr_scheduler.step(next)`; evaluation in model.eval() under no_grad.

Not the same, by construction: the random draws inside the step (drop-path masks) come from each framework's own
generator; bf16 autocast (PyTorch casts per op, e.g. its svPN power iteration runs in bf16 inside autocast) and
sot_jax's bf16 compute dtype (which keeps the covariance and svPN in float32) round differently. (BatchNorm is
the same: both normalize by the biased batch variance and update the running variance with the unbiased one,
`layers.BatchNorm` as PyTorch.) The official run used
fp16 autocast with a loss scaler (`--amp`); bf16 needs no scaler. Neither loop synchronizes every step (the
official loop calls torch.cuda.synchronize() and loss.item() each step), so both sides' times are the device's.

Output: every --eval-every steps a row with the learning rate, each side's mean train loss since the last row and
val top-1; then a one-line JSON summary (final and best top-1, wall-clock per side); --json OUT also writes it
with the curves.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import shapes_data

ROOT = Path(__file__).resolve().parents[1]
IMG_SIZE = 224  # the official DenseNet stem gives 14×14 tokens only at 224²
OFFICIAL_NAMES = {"sot_tiny": "SoT_Tiny", "sot_small": "SoT_Small", "sot_base": "SoT_Base"}
SIDES = ("official", "sot_jax")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm.data.constants, as the official data config resolves them
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-repo", required=True, help="checkout of jiangtaoxie/SoT")
    parser.add_argument("--timm", required=True, help="timm 0.3.4 source tree (put first on sys.path)")
    parser.add_argument("--model", default="sot_tiny", choices=sorted(OFFICIAL_NAMES))
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="data, batch order and the initial weights")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak rate (the official 1e-3 is for batch 1024)")
    parser.add_argument("--weight-decay", type=float, help="default: the variant's official value")
    parser.add_argument("--warmup", type=int, help="warmup steps (default: a tenth of --steps)")
    parser.add_argument("--drop-path", type=float, default=0.1)
    parser.add_argument("--smoothing", type=float, default=0.1)
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--only", choices=SIDES, help="train one side only")
    parser.add_argument("--json", help="also write the summary and curves to this file")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = args.steps // 10
    if min(args.steps, args.batch, args.eval_every, args.train_size, args.val_size) < 1:
        parser.error("--steps, --batch, --eval-every, --train-size and --val-size must be positive")
    if args.batch > args.train_size:
        parser.error(f"--batch {args.batch} is larger than --train-size {args.train_size}")
    return args


# ---------------------------------------------------------------------------------------------------------------
# The official model, optimizer and schedule (timm 0.3.4)


def import_official(repo: str, timm_path: str) -> Any:
    """The official `sot_src.sot` module, with timm 0.3.4 first on sys.path and the shims old timm needs on new
    torch (`install_shims` of tests/fixtures/make_official_fixtures.py, as bench/torch_reference.py uses)."""
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    from make_official_fixtures import install_shims

    install_shims()
    sys.path.insert(0, str(Path(timm_path).resolve()))
    sys.path.insert(0, str(Path(repo).resolve()))
    import timm

    if timm.__version__ != "0.3.4":
        raise SystemExit(f"--timm: got timm {timm.__version__} ({timm.__file__}); the official code needs 0.3.4")
    import sot_src.sot as sot

    return sot


def official_model(sot: Any, name: str, num_classes: int, drop_path_rate: float, seed: int) -> Any:
    """The official model with its own initialization under torch.manual_seed(seed). (bench/torch_reference.py's
    `official_model` fixes 1000 classes, hence this.)"""
    import torch

    torch.manual_seed(seed)
    return getattr(sot, OFFICIAL_NAMES[name])(num_classes=num_classes, drop_path_rate=drop_path_rate)


def official_recipe(args: argparse.Namespace, weight_decay: float) -> argparse.Namespace:
    """The official main.py's arguments that timm's create_optimizer/create_scheduler read, with one scheduler
    'epoch' per step."""
    return argparse.Namespace(
        opt="adamw", lr=args.lr, weight_decay=weight_decay, opt_eps=None, opt_betas=None, momentum=0.9,
        sched="cosine", epochs=args.steps, min_lr=1e-5, warmup_lr=1e-6, warmup_epochs=args.warmup, cooldown_epochs=0,
        decay_rate=0.1, lr_noise=None, lr_cycle_mul=1.0, lr_cycle_limit=1, seed=args.seed,
    )  # fmt: skip


def train_official(args: argparse.Namespace, model: Any, recipe: argparse.Namespace, data: dict, val: dict) -> dict:
    import torch
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer
    from timm.scheduler import create_scheduler

    start = time.perf_counter()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    torch.backends.cudnn.benchmark = True  # as main.py
    synchronize = torch.cuda.synchronize if gpu else (lambda: None)
    model = model.to(device)
    optimizer = create_optimizer(recipe, model)
    scheduler, _ = create_scheduler(recipe, optimizer)
    loss_fn = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    mean = torch.tensor([255 * m for m in IMAGENET_MEAN], device=device).view(1, 3, 1, 1)
    std = torch.tensor([255 * s for s in IMAGENET_STD], device=device).view(1, 3, 1, 1)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def inputs(images: np.ndarray) -> Any:  # uint8 NHWC -> normalized float NCHW, as timm's PrefetchLoader
        x = torch.from_numpy(images).to(device, non_blocking=gpu).permute(0, 3, 1, 2).contiguous()
        return x.float().sub_(mean).div_(std)

    @torch.no_grad()
    def top1() -> float:
        model.eval()
        correct = 0
        for batch in shapes_data.eval_batches(val, args.batch):
            with autocast():
                predicted = model(inputs(batch["image"])).argmax(-1).cpu().numpy()
            correct += int(np.sum((predicted == batch["label"]) * batch["mask"]))
        return 100.0 * correct / len(val["label"])

    def step(number: int, batch: dict) -> tuple:
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        target = torch.from_numpy(batch["label"]).long().to(device)
        with autocast():
            loss = loss_fn(model(inputs(batch["image"])), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step(number)  # main.py's lr_scheduler.step(epoch + 1) after each epoch: the next step's rate
        return loss.detach(), lr

    def fetch(pending: list) -> list[tuple[float, float]]:
        losses = torch.stack([loss for loss, _ in pending]).float().cpu().tolist()
        return [(loss, lr) for loss, (_, lr) in zip(losses, pending, strict=True)]

    return run_side(
        "official", args, data, step, fetch, top1, synchronize, start,
        device=torch.cuda.get_device_name() if gpu else "cpu", framework=f"torch {torch.__version__}",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# sot_jax: the library's config, state, train step and eval step


def sot_jax_config(args: argparse.Namespace) -> Any:
    """configs/sot_deit.py's variant, adjusted to this recipe."""
    from configs import sot_deit

    config = sot_deit.get_config(args.model)
    config.seed = args.seed
    config.batch_size = args.batch
    config.total_steps = args.steps
    config.lr = args.lr
    if args.weight_decay is not None:
        config.optim.weight_decay = args.weight_decay
    config.optim.lr_base_batch = 0
    config.optim.schedule = "cosine_epochs"  # with one schedule "epoch" per step:
    config.optim.num_epochs, config.optim.warmup_epochs, config.optim.cooldown_epochs = args.steps, args.warmup, 0
    config.optim.schedule_epoch_offset = 0
    config.optim.warmup_lr, config.optim.min_lr = 1e-6, 1e-5
    config.optim.b1, config.optim.b2, config.optim.eps = 0.9, 0.999, 1e-8
    config.optim.grad_clip_norm = 0.0
    config.optim.grad_accum_steps = 1
    config.optim.ema_decay = 0.0
    config.aug.random_erasing = config.aug.mixup = config.aug.cutmix = 0.0
    config.aug.mix_group_size = 0
    config.aug.mix_token = False
    config.aug.label_smoothing = args.smoothing
    config.model.img_size = IMG_SIZE
    config.model.drop_path_rate = args.drop_path
    config.model.dtype = "bfloat16" if args.precision == "bf16" else "float32"
    return config


def train_sot_jax(args: argparse.Namespace, config: Any, variables: dict, data: dict, val: dict) -> dict:
    import jax

    from sot_jax import evaluate, experiment, sharding, train

    start = time.perf_counter()
    experiment.validate_config(config, jax.device_count(), jax.process_count())
    trainer = experiment.build_trainer(config, shapes_data.NUM_CLASSES, config.total_steps)
    model, batch_sharding = trainer.model, trainer.batch_sharding
    state = trainer.initial_state()
    for key in ("params", "batch_stats"):  # the converted official weights, as init_from puts them in
        if jax.tree.structure(getattr(state, key)) != jax.tree.structure(variables[key]):
            raise SystemExit(f"converted {key} do not have the model's tree")
    state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"])
    state = jax.device_put(train.with_fresh_ema(state), trainer.state_shardings)
    step_fn = trainer.jit_step()
    eval_fn = jax.jit(functools.partial(evaluate.eval_step, model=model, class_mask=None))
    holder = {"state": state}

    def top1() -> float:
        correct = 0.0
        for batch in shapes_data.eval_batches(val, args.batch):
            counts = eval_fn(holder["state"].params, holder["state"].batch_stats, batch)
            correct += float(counts["top1"])
        return 100.0 * correct / len(val["label"])

    def step(number: int, batch: dict) -> Any:
        holder["state"], metrics = step_fn(holder["state"], sharding.global_batch(batch, batch_sharding))
        return metrics

    def fetch(pending: list) -> list[tuple[float, float]]:  # the loss and the rate each step used
        return [(float(m["loss"]), float(m["lr"])) for m in jax.device_get(pending)]

    result = run_side(
        "sot_jax", args, data, step, fetch, top1, lambda: jax.block_until_ready(holder["state"]), start,
        device=jax.devices()[0].device_kind, framework=f"jax {jax.__version__}",
    )  # fmt: skip
    return result


# ---------------------------------------------------------------------------------------------------------------
# One side's loop (both sides run it) and the report


def run_side(
    name: str, args: argparse.Namespace, data: dict, step: Callable, fetch: Callable, top1: Callable,
    synchronize: Callable, start: float, device: str, framework: str,
) -> dict:  # fmt: skip
    """Train `args.steps` steps on the shared batch stream (`step(number, batch)` returns what
    `fetch([...])` turns into (loss, lr) pairs, without waiting for the device in between); evaluate at step 0 and
    every --eval-every steps.
    Times: first_step_s (compilation or autotuning included), train_s (every step, evaluation excluded),
    wall_s (from model set-up to the last evaluation)."""
    curve = [{"step": 0, "loss": None, "top1": top1()}]
    print(f"{name}: step 0, val top-1 {curve[0]['top1']:.1f}", flush=True)
    pending, lrs, train_s, first_step_s = [], [], 0.0, None
    tick = time.perf_counter()
    batches = shapes_data.train_batches(data, args.batch, args.steps, seed=args.seed)
    for number, batch in enumerate(batches, 1):
        pending.append(step(number, batch))
        if number == 1:
            synchronize()
            first_step_s = time.perf_counter() - tick
        if number % args.eval_every == 0 or number == args.steps:
            losses, rates = zip(*fetch(pending), strict=True)
            lrs += rates
            synchronize()
            train_s += time.perf_counter() - tick
            pending = []
            row = {"step": number, "loss": float(np.mean(losses)), "top1": top1()}
            curve.append(row)
            print(f"{name}: step {number}, lr {lrs[-1]:.3g}, loss {row['loss']:.4f}, val top-1 {row['top1']:.1f}",
                  flush=True)  # fmt: skip
            tick = time.perf_counter()
    steady = (train_s - first_step_s) / max(args.steps - 1, 1)
    return {
        "final_top1": curve[-1]["top1"], "best_top1": max(r["top1"] for r in curve), "final_loss": curve[-1]["loss"],
        "first_step_s": first_step_s, "train_s": train_s, "step_ms": 1e3 * steady,
        "train_img_s": args.batch / steady if steady > 0 else None, "wall_s": time.perf_counter() - start,
        "device": device, "framework": framework, "curve": curve, "lrs": lrs,
    }  # fmt: skip


def init_logits_rel_err(model: Any, name: str, variables: dict, images: np.ndarray) -> float:
    """max |official − sot_jax| / max |official| of float32 eval-mode logits of the converted initial weights."""
    import jax
    import jax.numpy as jnp
    import torch

    from sot_jax import augment, models

    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        mean = torch.tensor([255 * m for m in IMAGENET_MEAN]).view(1, 3, 1, 1)
        std = torch.tensor([255 * s for s in IMAGENET_STD]).view(1, 3, 1, 1)
        expected = model.eval()((x - mean) / std).numpy()
    jax_model = models.create_model(name, num_classes=shapes_data.NUM_CLASSES, img_size=IMG_SIZE)
    with jax.default_matmul_precision("highest"):
        logits = jax_model.apply(variables, augment.normalize(jnp.asarray(images)), train=False)
    return float(np.max(np.abs(np.asarray(logits) - expected)) / np.max(np.abs(expected)))


def table(results: dict) -> str:
    sides = [s for s in SIDES if s in results]
    curves = {s: {r["step"]: r for r in results[s]["curve"]} for s in sides}
    lrs = next(iter(results.values()))["lrs"]
    header = f"{'step':>6} {'lr':>9} " + " ".join(f"| {s + ' loss':>13} {'top-1':>6} " for s in sides)
    lines = [header, "-" * len(header)]
    for step_number in sorted(set().union(*curves.values())):
        lr = f"{lrs[step_number - 1]:9.3g}" if step_number else " " * 9
        cells = []
        for s in sides:
            row = curves[s].get(step_number)
            loss = "-" if row is None or row["loss"] is None else f"{row['loss']:.4f}"
            cells.append(f"| {loss:>13} {row['top1'] if row else float('nan'):6.1f} ")
        lines.append(f"{step_number:>6} {lr} " + " ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # PyTorch shares the GPU
    sys.path.insert(0, str(ROOT))  # sot_jax and configs/

    tick = time.perf_counter()
    data = shapes_data.make_split("train", args.train_size, IMG_SIZE, args.seed)
    val = shapes_data.make_split("val", args.val_size, IMG_SIZE, args.seed)
    data_s = time.perf_counter() - tick
    print(f"data: {args.train_size} train + {args.val_size} val images {IMG_SIZE}² in {data_s:.1f} s", flush=True)

    sot = import_official(args.official_repo, args.timm)
    from sot_jax import models

    config = sot_jax_config(args)
    torch_model = official_model(sot, args.model, shapes_data.NUM_CLASSES, args.drop_path, args.seed)
    state_dict = {k: v.detach().clone() for k, v in torch_model.state_dict().items()}
    variables = models.from_torch(args.model, state_dict, num_classes=shapes_data.NUM_CLASSES, img_size=IMG_SIZE)
    rel_err = init_logits_rel_err(torch_model, args.model, variables, val["image"][:4])
    print(f"initial weights: official {OFFICIAL_NAMES[args.model]} converted; float32 eval logits rel. error "
          f"{rel_err:.2e}", flush=True)  # fmt: skip

    results = {}
    if args.only in (None, "official"):
        recipe = official_recipe(args, config.optim.weight_decay)
        results["official"] = train_official(args, torch_model, recipe, data, val)
        del torch_model
        if args.device == "cuda":
            import torch

            torch.cuda.empty_cache()
    if args.only in (None, "sot_jax"):
        results["sot_jax"] = train_sot_jax(args, config, variables, data, val)

    print(table(results), flush=True)
    lr_diff = None
    if len(results) == 2:
        lr_diff = float(np.max(np.abs(np.subtract(results["official"]["lrs"], results["sot_jax"]["lrs"]))))
    summary = {
        "model": args.model, "steps": args.steps, "batch": args.batch, "train_size": args.train_size,
        "val_size": args.val_size, "seed": args.seed, "lr": args.lr, "weight_decay": config.optim.weight_decay,
        "warmup": args.warmup, "precision": args.precision, "data_s": data_s, "init_logits_rel_err": rel_err,
        "lr_max_abs_diff": lr_diff,
        **{
            side: {k: v for k, v in r.items() if k not in ("curve", "lrs")} for side, r in results.items()
        },
    }  # fmt: skip
    print(json.dumps(summary), flush=True)
    if args.json:
        curves = {side: r["curve"] for side, r in results.items()}
        with open(args.json, "w") as f:
            json.dump({**summary, "curves": curves, "lrs": next(iter(results.values()))["lrs"]}, f, indent=1)


if __name__ == "__main__":
    main()
