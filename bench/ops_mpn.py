"""Forward+backward time of matrix power normalization on SoT-head shapes, with PyTorch in the same run.

    python bench/ops_mpn.py [--repeats 20] [--json OUT.json]

Each row times one jitted `value_and_grad` of sum(Y * W) over a batch of matrices built like the SoT head's
(Z = AᵀB/N from N = 196 tokens; C = AᵀA/N for `mpn`), in float32. When torch is importable, the same shapes go
through `torch.linalg.eigh` (C^½ = U diag(√λ) Uᵀ) and `torch.linalg.svd` (U Σ^½ Vᵀ) with autograd, on the same
device. Prints a markdown table (milliseconds, median of `--repeats`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from sot_jax import ops

TOKENS = 196
SHAPES = [(256 * 6, 14), (256 * 6, 24), (256 * 6, 38), (256 * 6, 64), (256, 256)]
JAX_METHODS = {
    "mpn eigh": lambda z, c: ops.mpn(c, 0.5, method="eigh"),
    "mpn newton_schulz (5 it)": lambda z, c: ops.mpn(c, 0.5, method="newton_schulz", num_iters=5),
    "svpn gram_eigh": lambda z, c: ops.svpn(z, 0.5, method="gram_eigh"),
    "svpn svd": lambda z, c: ops.svpn(z, 0.5, method="svd"),
    "svpn power_iter": lambda z, c: ops.svpn(z, 0.5, method="power_iter"),
}


def median_ms(step, repeats: int) -> float:
    step()  # compile / warm up
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def inputs(batch: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(batch, TOKENS, d)).astype(np.float32)
    b = rng.normal(size=(batch, TOKENS, d)).astype(np.float32)
    z = np.einsum("bnd,bne->bde", a, b) / TOKENS
    c = np.einsum("bnd,bne->bde", a, a) / TOKENS
    return z, c, rng.normal(size=(batch, d, d)).astype(np.float32)


def time_jax(method, z, c, w, repeats: int) -> float:
    fn = JAX_METHODS[method]
    step = jax.jit(jax.value_and_grad(lambda z, c: jnp.sum(fn(z, c) * w), argnums=(0, 1)))
    z, c = jax.device_put(z), jax.device_put(c)
    return median_ms(lambda: jax.block_until_ready(step(z, c)), repeats)


def time_torch(z, c, w, repeats: int) -> dict[str, float]:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    z, c, w = (torch.from_numpy(x).to(device) for x in (z, c, w))

    def eigh_step():
        x = c.clone().requires_grad_(True)
        lam, u = torch.linalg.eigh(x)
        y = u @ torch.diag_embed(lam.clamp_min(0).add(1e-6).sqrt()) @ u.transpose(-1, -2)
        (y * w).sum().backward()
        torch.cuda.synchronize() if device == "cuda" else None

    def svd_step():
        x = z.clone().requires_grad_(True)
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        y = u @ torch.diag_embed(s.add(1e-6).sqrt()) @ vh
        (y * w).sum().backward()
        torch.cuda.synchronize() if device == "cuda" else None

    return {"torch eigh": median_ms(eigh_step, repeats), "torch svd": median_ms(svd_step, repeats)}


def environment() -> dict[str, str]:
    info = {"jax": jax.__version__, "device": str(jax.devices()[0].device_kind), "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["torch device"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    results = {}
    for batch, d in SHAPES:
        z, c, w = inputs(batch, d)
        row = {method: time_jax(method, z, c, w, args.repeats) for method in JAX_METHODS}
        try:
            row.update(time_torch(z, c, w, args.repeats))
        except ImportError:
            pass
        results[f"{batch}x{d}x{d}"] = row
        print(f"{batch}x{d}x{d}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)

    columns = list(next(iter(results.values())))
    print("\n" + " | ".join(f"{k}" for k in environment().items()))
    print("\n| matrices | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for shape, row in results.items():
        print(f"| {shape} | " + " | ".join(f"{row[k]:.2f}" for k in columns) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment(), "ms": results}, f, indent=1)


if __name__ == "__main__":
    main()
