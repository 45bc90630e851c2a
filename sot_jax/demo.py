"""A one-minute look at singular value power normalization on SoT-head-shaped cross-covariances.

    python -m sot_jax.demo

Builds Z = ÃᵀB̃/N for 6 heads of q = 24 from 196 random tokens (SoT-Small's head shapes), then prints, for each
`svpn` method, its distance from the exact U Σ^½ Vᵀ, the gradient norm, and whether everything stayed finite,
also on a rank-deficient input (N = 8 < q) where plain autodiff of an SVD breaks.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from sot_jax import ops


def cross_covariance(tokens: int, heads: int = 6, q: int = 24, seed: int = 0) -> jax.Array:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(2, heads, tokens, q)).astype(np.float32)
    a, b = a - a.mean(), b - b.mean()
    return jnp.einsum("hnq,hnr->hqr", a, b) / tokens


def main() -> None:
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}")
    for tokens in (196, 8):
        z = cross_covariance(tokens)
        exact = ops.svpn(z, 0.5, method="svd", eps=1e-12)
        print(f"\nZ: 6 heads of 24x24 from {tokens} tokens (rank {int(jnp.linalg.matrix_rank(z[0]))})")
        print(f"{'method':<11} {'rel. error vs exact':>20} {'grad norm':>10} {'finite':>7} {'ms':>7}")
        for method in ops.SVPN_METHODS:
            step = jax.jit(jax.value_and_grad(lambda z, m=method: jnp.sum(ops.svpn(z, 0.5, method=m) ** 2)))
            jax.block_until_ready(step(z))
            start = time.perf_counter()
            _, grad = jax.block_until_ready(step(z))
            ms = 1e3 * (time.perf_counter() - start)
            y = ops.svpn(z, 0.5, method=method)
            error = float(jnp.linalg.norm(y - exact) / jnp.linalg.norm(exact))
            finite = bool(jnp.all(jnp.isfinite(y)) & jnp.all(jnp.isfinite(grad)))
            print(f"{method:<11} {error:>20.2e} {float(jnp.linalg.norm(grad)):>10.3g} {finite!s:>7} {ms:>7.2f}")


if __name__ == "__main__":
    main()
