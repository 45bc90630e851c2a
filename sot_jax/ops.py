"""Matrix power normalization with backward passes that stay finite on degenerate input.

Two entry points, both batched over leading axes and safe under `jit`, `vmap` and `grad`:

* `mpn(c, alpha)`: the power C^alpha of symmetric positive semi-definite matrices (..., d, d), as used by
  global covariance pooling (the `gcp` head). `method="eigh"` is exact; `method="newton_schulz"` is the
  iSQRT-COV iteration (alpha = 0.5 only).
* `svpn(z, alpha)`: singular value power normalization U Σ^alpha Vᵀ of general matrices (..., n, m), as used by
  the SoT head on cross-covariance matrices. `method="gram_eigh"` and `"svd"` are exact; `"power_iter"` is the
  official SoT approximation (one power iteration from a learnable start vector).

Both pre-normalize by the trace (‖Z‖_F² for `svpn`) and compensate afterwards, so the regularizer `eps` is
relative to the matrix's scale and Y(cA) = c^alpha Y(A) holds exactly. Eigenvalues are regularized as
max(λ, 0) + eps; singular values are mapped by σ ↦ σ (σ² + eps)^((alpha-1)/2), which equals σ^alpha for σ² ≫ eps
and is smooth at σ = 0, so that `gram_eigh` and `svd` compute the same function.

The exact backward passes use the Daleckii–Krein (Loewner) form, whose divided differences of t ↦ t^p are
evaluated from log-ratios (`_power_divided_difference`) rather than by dividing by eigenvalue gaps: they stay
accurate for repeated, clustered and zero eigenvalues, where JAX's own `eigh`/`svd` derivatives divide by zero.

Arithmetic runs in float32 (float64 for float64 input) at HIGHEST matmul precision, whatever the input dtype;
outputs come back in the input dtype.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

MPN_METHODS = ("eigh", "newton_schulz")
SVPN_METHODS = ("gram_eigh", "svd", "power_iter")

# Below this |log(x_i / x_j)| the divided difference switches to its Taylor series (its error there is
# O(ell^3) ~ 1e-9, far under float32 rounding).
_TAYLOR_BELOW = 1e-3
# F.normalize's epsilon and the constant added to s^(1-alpha) in the official SoT svPN.
_OFFICIAL_NORMALIZE_EPS = 1e-12
_OFFICIAL_DENOMINATOR_EPS = 1e-5

_matmul = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)


def _transpose(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, -1, -2)


def _compute_dtype(dtype) -> jnp.dtype:
    return jnp.promote_types(dtype, jnp.float32)


def _scale_floor(dtype) -> float:
    # A floor for the trace / squared Frobenius norm: keeps the all-zero matrix's gradient finite while
    # leaving every representable non-degenerate scale untouched.
    return float(np.sqrt(jnp.finfo(dtype).tiny))


def _check_alpha(alpha) -> None:
    if np.ndim(alpha) != 0:
        raise ValueError(f"alpha must be a scalar, got shape {np.shape(alpha)}")
    try:
        value = float(alpha)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return  # traced (e.g. learnable) alpha: cannot be checked at trace time
    if not 0.0 < value <= 1.0:
        raise ValueError(f"alpha must lie in (0, 1], got {value}")


def _check_method(method: str, methods: tuple[str, ...], name: str) -> None:
    if method not in methods:
        raise ValueError(f"unknown {name} method {method!r}; choose one of {', '.join(methods)}")


def _check_matrix(x: jax.Array, name: str, square: bool) -> None:
    if x.ndim < 2:
        raise ValueError(f"{name} must have rank >= 2 (..., n, m), got shape {x.shape}")
    if square and x.shape[-1] != x.shape[-2]:
        raise ValueError(f"{name} must be square in its last two axes, got shape {x.shape}")


def _power_divided_difference(x: jax.Array, p: jax.Array) -> jax.Array:
    """L_ij = (x_i^p - x_j^p) / (x_i - x_j), L_ii = p x_i^(p-1), for x > 0, without dividing by x_i - x_j.

    With hi = max(x_i, x_j), lo = min(x_i, x_j) and ell = log(lo / hi) <= 0:
    L_ij = hi^(p-1) · expm1(p·ell) / expm1(ell), whose limit ell -> 0 is p·hi^(p-1).
    """
    xi, xj = x[..., :, None], x[..., None, :]
    hi, lo = jnp.maximum(xi, xj), jnp.minimum(xi, xj)
    ell = jnp.log(lo) - jnp.log(hi)
    near = ell > -_TAYLOR_BELOW
    safe_ell = jnp.where(near, -1.0, ell)
    series = p * (1 + (p - 1) * ell / 2 + (2 * p - 1) * (p - 1) * ell**2 / 12)
    ratio = jnp.where(near, series, jnp.expm1(p * safe_ell) / jnp.expm1(safe_ell))
    return hi ** (p - 1) * ratio


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _symmetric_power(a: jax.Array, p: jax.Array, eps: float) -> jax.Array:
    """U diag((max(λ, 0) + eps)^p) Uᵀ for symmetric `a` = U diag(λ) Uᵀ."""
    return _symmetric_power_fwd(a, p, eps)[0]


def _symmetric_power_fwd(a, p, eps):
    eigenvalues, u = jnp.linalg.eigh(a)
    eigenvalues = jnp.maximum(eigenvalues, 0) + eps
    powered = eigenvalues**p
    y = _matmul(u * powered[..., None, :], _transpose(u))
    return y, (u, eigenvalues, powered, p)


def _symmetric_power_bwd(eps, residuals, g):
    u, eigenvalues, powered, p = residuals
    g_eigenbasis = _matmul(_transpose(u), _matmul(0.5 * (g + _transpose(g)), u))
    loewner = _power_divided_difference(eigenvalues, p)
    a_bar = _matmul(u, _matmul(loewner * g_eigenbasis, _transpose(u)))
    diagonal = jnp.diagonal(g_eigenbasis, axis1=-2, axis2=-1)
    p_bar = jnp.sum(diagonal * powered * jnp.log(eigenvalues)).astype(p.dtype)
    return a_bar, p_bar


_symmetric_power.defvjp(_symmetric_power_fwd, _symmetric_power_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _svd_power(z: jax.Array, alpha: jax.Array, eps: float) -> jax.Array:
    """U diag(f(σ)) Vᵀ with f(σ) = σ (σ² + eps)^((alpha-1)/2), for Z = U diag(σ) Vᵀ."""
    return _svd_power_fwd(z, alpha, eps)[0]


def _svd_power_fwd(z, alpha, eps):
    u, sigma, vt = jnp.linalg.svd(z, full_matrices=False)
    shifted = sigma**2 + eps
    h = shifted ** ((alpha - 1) / 2)  # f(σ) / σ
    f = sigma * h
    y = _matmul(u * f[..., None, :], vt)
    return y, (u, sigma, vt, shifted, h, f, alpha)


def _svd_power_bwd(eps, residuals, g):
    # Fréchet derivative of the generalized matrix function: with P = Uᵀ dZ V,
    # dY = U (A ∘ sym P + B ∘ skew P) Vᵀ + (terms on the complements of U and V for rectangular Z), where
    # A_ij = (f_i - f_j)/(σ_i - σ_j) = h_i + σ_j (σ_i + σ_j) · [divided difference of t^beta at σ² + eps],
    # B_ij = (f_i + f_j)/(σ_i + σ_j), both bounded when singular values repeat or vanish.
    u, sigma, vt, shifted, h, f, alpha = residuals
    beta = (alpha - 1) / 2
    v = _transpose(vt)
    si, sj = sigma[..., :, None], sigma[..., None, :]
    a = h[..., :, None] + sj * (si + sj) * _power_divided_difference(shifted, beta)
    sum_sigma = si + sj
    b = jnp.where(
        sum_sigma > 0,
        (f[..., :, None] + f[..., None, :]) / jnp.where(sum_sigma > 0, sum_sigma, 1.0),
        h[..., :, None],
    )
    ut_g = _matmul(_transpose(u), g)
    q = _matmul(ut_g, v)
    aq, bq = a * q, b * q
    p_bar = 0.5 * (aq + _transpose(aq)) + 0.5 * (bq - _transpose(bq))
    z_bar = _matmul(u, _matmul(p_bar, vt))
    n, m = g.shape[-2:]
    if n > m:  # tall: the part of Ḡ outside span(U)
        z_bar += _matmul((_matmul(g, v) - _matmul(u, q)) * h[..., None, :], vt)
    elif n < m:  # wide: the part of Ḡ outside span(V)
        z_bar += _matmul(u, h[..., :, None] * (ut_g - _matmul(q, vt)))
    diagonal = jnp.diagonal(q, axis1=-2, axis2=-1)
    alpha_bar = jnp.sum(diagonal * f * jnp.log(shifted) / 2).astype(alpha.dtype)
    return z_bar, alpha_bar


_svd_power.defvjp(_svd_power_fwd, _svd_power_bwd)


def _newton_schulz_sqrt(a: jax.Array, num_iters: int) -> jax.Array:
    """iSQRT-COV: coupled Newton–Schulz iteration Y -> A^(1/2), Z -> A^(-1/2) for trace-normalized A.

    Plain autodiff through the unrolled loop equals the paper's hand-derived backward.
    """
    eye = jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)
    y, z = a, eye
    for _ in range(num_iters):
        t = 0.5 * (3.0 * eye - _matmul(z, y))
        y, z = _matmul(y, t), _matmul(t, z)
    return y


def mpn(
    c: jax.Array,
    alpha: float | jax.Array = 0.5,
    method: str = "eigh",
    eps: float = 1e-6,
    num_iters: int = 5,
) -> jax.Array:
    """Matrix power C^alpha of symmetric PSD matrices `c` (..., d, d).

    Args:
      c: batched symmetric positive semi-definite matrices (only the symmetric part is used).
      alpha: the power, in (0, 1]; may be a traced (learnable) scalar, which receives a gradient.
      method: "eigh" (exact, Daleckii–Krein backward) or "newton_schulz" (iSQRT-COV, alpha = 0.5 only).
      eps: eigenvalue regularizer relative to the trace: eigenvalues of C/tr(C) become max(λ, 0) + eps.
      num_iters: Newton–Schulz iterations (3 in SoT's GCP head, 5 in fast-MPN-COV).

    Returns:
      tr(C)^alpha · (C/tr C)^alpha in the dtype of `c`.
    """
    c = jnp.asarray(c)
    _check_matrix(c, "c", square=True)
    _check_method(method, MPN_METHODS, "mpn")
    _check_alpha(alpha)
    if method == "newton_schulz":
        if num_iters < 1:
            raise ValueError(f"num_iters must be >= 1, got {num_iters}")
        try:
            exact_half = float(alpha) == 0.5
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
            exact_half = False
        if not exact_half:
            raise ValueError("method='newton_schulz' computes the square root only; use alpha=0.5 or method='eigh'")
    dtype = _compute_dtype(c.dtype)
    x = c.astype(dtype)
    x = 0.5 * (x + _transpose(x))
    trace = jnp.trace(x, axis1=-2, axis2=-1)[..., None, None]
    trace = jnp.maximum(trace, _scale_floor(dtype))
    a = x / trace
    if method == "eigh":
        alpha = jnp.asarray(alpha, dtype)
        y = _symmetric_power(a, alpha, eps) * trace**alpha
    else:
        y = _newton_schulz_sqrt(a, num_iters) * jnp.sqrt(trace)
    return y.astype(c.dtype)


def _l2_normalize(x: jax.Array) -> jax.Array:
    # x / max(‖x‖, eps) as F.normalize, written so that its gradient at x = 0 is finite.
    squared_norm = jnp.sum(x**2, axis=-1, keepdims=True)
    return x / jnp.sqrt(jnp.maximum(squared_norm, _OFFICIAL_NORMALIZE_EPS**2))


def _power_iteration_svpn(z: jax.Array, alpha: jax.Array, start: jax.Array | None, num_iters: int) -> jax.Array:
    """The official SoT svPN (iterNum = num_iters, svNum = 1): one rank-1 term raised to alpha, the rest scaled.

    u = normalize(Z w), v = normalize(Zᵀ u) (repeated num_iters times), s = uᵀ Z v,
    Y = s^alpha u vᵀ + (Z - s u vᵀ) / (s^(1-alpha) + 1e-5).
    """
    if start is None:
        start = jnp.ones(z.shape[-1], z.dtype)
    start = jnp.asarray(start, z.dtype)
    if start.shape != (z.shape[-1],):
        raise ValueError(f"start must have shape ({z.shape[-1]},) to match z {z.shape}, got {start.shape}")
    v = jnp.broadcast_to(start, z.shape[:-2] + start.shape)
    for _ in range(num_iters):
        u = _l2_normalize(jnp.einsum("...nm,...m->...n", z, v, precision=jax.lax.Precision.HIGHEST))
        v = _l2_normalize(jnp.einsum("...nm,...n->...m", z, u, precision=jax.lax.Precision.HIGHEST))
    s = jnp.einsum("...n,...nm,...m->...", u, z, v, precision=jax.lax.Precision.HIGHEST)[..., None, None]
    # s >= 0 by construction; the floor only keeps d(s^alpha)/ds finite for an all-zero Z.
    s = jnp.maximum(s, _scale_floor(z.dtype))
    uv = u[..., :, None] * v[..., None, :]
    return s**alpha * uv + (z - s * uv) / (s ** (1 - alpha) + _OFFICIAL_DENOMINATOR_EPS)


def svpn(
    z: jax.Array,
    alpha: float | jax.Array = 0.5,
    method: str = "gram_eigh",
    eps: float = 1e-6,
    start: jax.Array | None = None,
    num_iters: int = 1,
) -> jax.Array:
    """Singular value power normalization U Σ^alpha Vᵀ of matrices `z` (..., n, m).

    Args:
      z: batched matrices, square or rectangular.
      alpha: the power, in (0, 1]; may be a traced (learnable) scalar, which receives a gradient.
      method: "gram_eigh" (Z (ZᵀZ + eps I)^((alpha-1)/2) through the smaller Gram matrix), "svd" (jnp.linalg.svd
        with a custom backward), both exact; or "power_iter", the official SoT approximation.
      eps: singular value regularizer relative to ‖Z‖_F² (exact methods).
      start: power_iter's start vector, shape (m,) (SoT learns it); ones when None.
      num_iters: power_iter's number of power iterations (official: 1).

    Returns:
      The normalized matrices, same shape and dtype as `z`.
    """
    z = jnp.asarray(z)
    _check_matrix(z, "z", square=False)
    _check_method(method, SVPN_METHODS, "svpn")
    _check_alpha(alpha)
    dtype = _compute_dtype(z.dtype)
    x = z.astype(dtype)
    alpha = jnp.asarray(alpha, dtype)
    if method == "power_iter":
        if num_iters < 1:
            raise ValueError(f"num_iters must be >= 1, got {num_iters}")
        return _power_iteration_svpn(x, alpha, start, num_iters).astype(z.dtype)
    scale = jnp.maximum(jnp.sum(x**2, axis=(-2, -1), keepdims=True), _scale_floor(dtype))
    x = x / jnp.sqrt(scale)
    if method == "svd":
        y = _svd_power(x, alpha, eps)
    elif x.shape[-1] <= x.shape[-2]:
        y = _matmul(x, _symmetric_power(_matmul(_transpose(x), x), (alpha - 1) / 2, eps))
    else:
        y = _matmul(_symmetric_power(_matmul(x, _transpose(x)), (alpha - 1) / 2, eps), x)
    return (y * scale ** (alpha / 2)).astype(z.dtype)


def triu_vector(y: jax.Array) -> jax.Array:
    """The upper triangle (diagonal included) of (..., d, d) matrices, row-major: (..., d (d + 1) / 2)."""
    _check_matrix(y, "y", square=True)
    rows, cols = np.triu_indices(y.shape[-1])
    return y[..., rows, cols]
