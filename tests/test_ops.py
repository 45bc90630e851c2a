"""Matrix power normalization: forwards against numpy float64, gradients against finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sot_jax import ops

EXACT_SVPN = ("gram_eigh", "svd")
ALL_SVPN = ("gram_eigh", "svd", "power_iter")


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def max_fd_error(fn, x, rng, num_directions=3, step=1e-6) -> float:
    """Worst relative gap between <grad f, d> and the central difference of f along random directions d."""
    weights = rng.normal(size=np.shape(fn(x)))

    def loss(x):
        return jnp.sum(fn(x) * weights)

    grad = jax.grad(loss)(x)
    assert np.all(np.isfinite(grad))
    worst = 0.0
    for _ in range(num_directions):
        direction = rng.normal(size=np.shape(x))
        numeric = (loss(x + step * direction) - loss(x - step * direction)) / (2 * step)
        analytic = jnp.sum(grad * direction)
        worst = max(worst, abs(float(numeric - analytic)) / max(abs(float(numeric)), 1e-8))
    return worst


def numpy_symmetric_power(c, alpha, eps):
    """The function mpn(method='eigh') defines, evaluated with numpy float64."""
    trace = np.trace(c)
    lam, u = np.linalg.eigh(c / trace)
    return (u * (np.maximum(lam, 0) + eps) ** alpha) @ u.T * trace**alpha


def numpy_singular_power(z, alpha, eps):
    """The function svpn's exact methods define, evaluated with numpy float64."""
    scale = np.sum(z**2)
    u, s, vt = np.linalg.svd(z / np.sqrt(scale), full_matrices=False)
    f = s * (s**2 + eps) ** ((alpha - 1) / 2)
    return (u * f) @ vt * scale ** (alpha / 2)


def numpy_official_power_iteration(z, alpha, start):
    """SPEC §2: u = normalize(Z w), v = normalize(Zᵀ u), s = uᵀ Z v, s^α u vᵀ + (Z - s u vᵀ)/(s^(1-α) + 1e-5)."""
    u = z @ start
    u = u / max(np.linalg.norm(u), 1e-12)
    v = z.T @ u
    v = v / max(np.linalg.norm(v), 1e-12)
    s = u @ z @ v
    rank_one = s * np.outer(u, v)
    return s**alpha * np.outer(u, v) + (z - rank_one) / (s ** (1 - alpha) + 1e-5)


TOKENS = {"full_rank": 24, "rank_deficient": 2, "repeated": 24, "identity": 8, "zero": 8, "rank_one": 8}


def features(kind: str, d: int, rng) -> np.ndarray:
    """Token features X (TOKENS[kind], d) whose covariance XᵀX/n is full-rank, rank-deficient or degenerate."""
    n = TOKENS[kind]
    if kind in ("full_rank", "rank_deficient"):
        return rng.normal(size=(n, d))
    if kind == "repeated":  # orthogonal columns in two groups of equal norm: eigenvalues {4, 4, 4, 1, 1, 1}
        q = np.linalg.qr(rng.normal(size=(n, d)))[0]
        return q * np.repeat([2.0, 1.0], [d // 2, d - d // 2])
    if kind == "identity":
        return np.eye(n, d)
    if kind == "zero":
        return np.zeros((n, d))
    if kind == "rank_one":
        return np.outer(rng.normal(size=n), rng.normal(size=d))
    raise AssertionError(kind)


FEATURE_KINDS = ("full_rank", "rank_deficient", "repeated", "identity", "zero", "rank_one")


@pytest.mark.parametrize("kind", FEATURE_KINDS)
@pytest.mark.parametrize("method,alpha", [("eigh", 0.5), ("eigh", 0.3), ("eigh", 1.0), ("newton_schulz", 0.5)])
def test_mpn_gradient_matches_finite_differences(x64, kind, method, alpha):
    rng = np.random.default_rng(0)
    x = features(kind, d=6, rng=rng)

    def fn(x):
        return ops.mpn(x.T @ x / x.shape[0], alpha, method=method)

    assert max_fd_error(fn, jnp.asarray(x), rng) < 1e-5


@pytest.mark.parametrize("kind", FEATURE_KINDS)
@pytest.mark.parametrize("shape", [(6, 6), (7, 4), (4, 7)])
@pytest.mark.parametrize("method", ALL_SVPN)
def test_svpn_gradient_matches_finite_differences(x64, kind, shape, method):
    """Z = AᵀB/N as in the SoT head, perturbing the token features A and B."""
    rng = np.random.default_rng(1)
    a, b = features(kind, d=shape[0], rng=rng), features(kind, d=shape[1], rng=rng)

    def fn(ab):
        a_, b_ = ab[:, : shape[0]], ab[:, shape[0] :]
        return ops.svpn(a_.T @ b_ / a_.shape[0], 0.5, method=method)

    assert max_fd_error(fn, jnp.asarray(np.concatenate([a, b], axis=1)), rng) < 1e-5


@pytest.mark.parametrize("method", EXACT_SVPN)
@pytest.mark.parametrize(
    "name", ["orthogonal", "repeated_singular_values", "rank_deficient", "wide", "tall", "near_degenerate"]
)
def test_svpn_gradient_on_direct_matrices(x64, method, name):
    rng = np.random.default_rng(2)
    q1, q2 = (np.linalg.qr(rng.normal(size=(6, 6)))[0] for _ in range(2))
    z = {
        "orthogonal": q1,
        "repeated_singular_values": (q1 * np.array([3.0, 3.0, 3.0, 1.0, 1.0, 0.5])) @ q2,
        "rank_deficient": (q1 * np.array([2.0, 1.0, 0.5, 0.0, 0.0, 0.0])) @ q2,
        "wide": rng.normal(size=(3, 6)),
        "tall": rng.normal(size=(6, 3)),
        "near_degenerate": (q1 * np.array([1.0, 1.0 + 1e-9, 0.5, 0.5, 1e-9, 0.0])) @ q2,
    }[name]
    assert max_fd_error(lambda z: ops.svpn(z, 0.5, method=method), jnp.asarray(z), rng) < 1e-5


@pytest.mark.parametrize("alpha", [0.5, 0.25, 1.0])
def test_mpn_forward_matches_numpy_eigh(x64, alpha):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 20, 7))
    c = np.einsum("bnd,bne->bde", x, x) / 20
    got = ops.mpn(c, alpha, eps=1e-6)
    for i in range(3):
        assert rel_err(got[i], numpy_symmetric_power(c[i], alpha, 1e-6)) < 1e-10
        # With a negligible eps it is the true matrix power.
        lam, u = np.linalg.eigh(c[i])
        assert rel_err(ops.mpn(c[i], alpha, eps=1e-15), (u * lam**alpha) @ u.T) < 1e-8


@pytest.mark.parametrize("method", EXACT_SVPN)
@pytest.mark.parametrize("shape", [(5, 5), (8, 3), (3, 8)])
def test_svpn_forward_matches_numpy_svd(x64, method, shape):
    rng = np.random.default_rng(4)
    z = rng.normal(size=(2, *shape))
    got = ops.svpn(z, 0.5, method=method, eps=1e-6)
    for i in range(2):
        assert rel_err(got[i], numpy_singular_power(z[i], 0.5, 1e-6)) < 1e-10
        u, s, vt = np.linalg.svd(z[i], full_matrices=False)
        assert rel_err(ops.svpn(z[i], 0.5, method=method, eps=1e-15), (u * np.sqrt(s)) @ vt) < 1e-7


def test_newton_schulz_equals_isqrt_cov_forward_and_converges(x64):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 6))
    c = x.T @ x / 30
    # The iSQRT-COV recursion (SPEC §4), written out: A = C/tr C, Y0 = A, Z0 = I.
    trace = np.trace(c)
    y, z = c / trace, np.eye(6)
    for _ in range(3):
        t = 0.5 * (3 * np.eye(6) - z @ y)
        y, z = y @ t, t @ z
    assert rel_err(ops.mpn(c, 0.5, method="newton_schulz", num_iters=3), y * np.sqrt(trace)) < 1e-12
    # With enough iterations it is the exact square root.
    assert rel_err(ops.mpn(c, 0.5, method="newton_schulz", num_iters=30), ops.mpn(c, 0.5, eps=1e-15)) < 1e-8


def test_power_iter_is_the_official_approximation(x64):
    rng = np.random.default_rng(6)
    z = rng.normal(size=(4, 6, 6))
    start = rng.normal(size=6)
    got = ops.svpn(z, 0.5, method="power_iter", start=start)
    for i in range(4):
        assert rel_err(got[i], numpy_official_power_iteration(z[i], 0.5, start)) < 1e-12
    # On random input it is far from the exact power (SPEC §9: relative error ~0.24) ...
    exact = ops.svpn(z, 0.5, method="svd", eps=1e-15)
    assert 0.05 < rel_err(got, exact) < 0.6
    # ... but exact on rank-one input, where one power iteration finds the only singular triplet.
    rank_one = 3.0 * np.outer(rng.normal(size=6), rng.normal(size=6))
    approx = ops.svpn(rank_one, 0.5, method="power_iter", start=start)
    assert rel_err(approx, ops.svpn(rank_one, 0.5, method="svd", eps=1e-15)) < 1e-5


def test_invariances(x64):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(12, 5))
    c = x.T @ x / 12
    r = np.linalg.qr(rng.normal(size=(5, 5)))[0]
    for method in ("eigh", "newton_schulz"):
        y = ops.mpn(c, 0.5, method=method)
        assert rel_err(ops.mpn(7.0 * c, 0.5, method=method), 7.0**0.5 * y) < 1e-10
        assert rel_err(ops.mpn(r @ c @ r.T, 0.5, method=method), r @ y @ r.T) < 1e-10
    assert rel_err(ops.mpn(3.0 * c, 0.3), 3.0**0.3 * ops.mpn(c, 0.3)) < 1e-10

    z = rng.normal(size=(5, 4))
    q = np.linalg.qr(rng.normal(size=(4, 4)))[0]
    for method in EXACT_SVPN:
        y = ops.svpn(z, 0.5, method=method)
        assert rel_err(ops.svpn(5.0 * z, 0.5, method=method), 5.0**0.5 * y) < 1e-10
        assert rel_err(ops.svpn(r @ z @ q, 0.5, method=method), r @ y @ q) < 1e-10
        gram = z.T @ z
        assert rel_err(y.T @ y, ops.mpn(gram, 0.5, eps=1e-15)) < 1e-5


@pytest.mark.parametrize("gap", [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7])
def test_float32_accuracy_across_eigenvalue_gaps(gap):
    """Two eigenvalues 1 and 1 + gap: float32 forward and backward within 1e-5 of float64.

    gram_eigh works on ZᵀZ, whose condition number is the square of Z's (here 400), so its backward gets 3e-5.
    """
    rng = np.random.default_rng(8)
    rotation = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    c = (rotation * np.array([1.0, 1.0 + gap, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05])) @ rotation.T
    c = np.asarray(c, np.float32)
    cotangent = rng.normal(size=(8, 8))
    functions = {
        "mpn eigh": (lambda m: ops.mpn(m, 0.5), 1e-5),
        "mpn eigh 0.3": (lambda m: ops.mpn(m, 0.3), 1e-5),
        "mpn newton_schulz": (lambda m: ops.mpn(m, 0.5, method="newton_schulz"), 1e-5),
        "svpn svd": (lambda m: ops.svpn(m, 0.5, method="svd"), 1e-5),
        "svpn gram_eigh": (lambda m: ops.svpn(m, 0.5), 3e-5),
    }
    for name, (fn, grad_tolerance) in functions.items():
        results = []
        for dtype in (jnp.float32, jnp.float64):
            with jax.enable_x64(dtype == jnp.float64):
                y, vjp = jax.vjp(fn, jnp.asarray(c, dtype))
                (grad,) = vjp(jnp.asarray(cotangent, dtype))
                results.append((y, grad))
        (y32, g32), (y64, g64) = results
        assert y32.dtype == jnp.float32
        assert rel_err(y32, y64) < 1e-5, name
        assert rel_err(g32, g64) < grad_tolerance, name


def degenerate_inputs(d=6):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(2, d))
    return {
        "zero": np.zeros((d, d)),
        "identity": np.eye(d),
        "rank_one": np.outer(x[0], x[0]),
        "rank_deficient": x.T @ x,
        "repeated": np.diag([2.0, 2.0, 2.0, 1.0, 1.0, 1.0]),
    }


@pytest.mark.parametrize("name", list(degenerate_inputs()))
def test_float32_outputs_and_gradients_finite_on_degenerate_input(name):
    m = jnp.asarray(degenerate_inputs()[name], jnp.float32)
    functions = [lambda m: ops.mpn(m, 0.5), lambda m: ops.mpn(m, 0.5, method="newton_schulz")]
    functions += [lambda m, method=method: ops.svpn(m, 0.5, method=method) for method in ALL_SVPN]
    for fn in functions:
        y, grad = jax.value_and_grad(lambda m, fn=fn: jnp.sum(jnp.sin(fn(m))))(m)
        assert np.isfinite(y) and np.all(np.isfinite(grad))


def test_raw_eigh_autodiff_fails_where_ours_does_not():
    """Regression: differentiating through jnp.linalg.eigh divides by eigenvalue gaps."""

    def naive_sqrt(c):
        lam, u = jnp.linalg.eigh(c)
        return (u * jnp.sqrt(jnp.maximum(lam, 0) + 1e-6)) @ u.T

    for c in (jnp.eye(4), jnp.diag(jnp.array([2.0, 2.0, 1.0, 0.0]))):
        naive = jax.grad(lambda c: jnp.sum(naive_sqrt(c) @ jnp.arange(16.0).reshape(4, 4)))(c)
        ours = jax.grad(lambda c: jnp.sum(ops.mpn(c, 0.5) @ jnp.arange(16.0).reshape(4, 4)))(c)
        assert not np.all(np.isfinite(naive))
        assert np.all(np.isfinite(ours))


def test_jit_vmap_and_batch_axes_agree():
    rng = np.random.default_rng(10)
    z = jnp.asarray(rng.normal(size=(2, 3, 5, 4)), jnp.float32)
    for method in ALL_SVPN:
        eager = ops.svpn(z, 0.5, method=method)
        jitted = jax.jit(lambda z, m=method: ops.svpn(z, 0.5, method=m))(z)
        mapped = jax.vmap(jax.vmap(lambda z, m=method: ops.svpn(z, 0.5, method=m)))(z)
        np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mapped, eager, rtol=1e-5, atol=1e-6)
        grads = jax.jit(jax.grad(lambda z, m=method: jnp.sum(ops.svpn(z, 0.5, method=m) ** 2)))(z)
        assert grads.shape == z.shape and np.all(np.isfinite(grads))
    c = jnp.einsum("...ij,...ik->...jk", z, z)
    for method in ("eigh", "newton_schulz"):
        np.testing.assert_allclose(
            jax.jit(jax.vmap(lambda c, m=method: ops.mpn(c, 0.5, method=m)))(c.reshape(-1, 4, 4)),
            ops.mpn(c, 0.5, method=method).reshape(-1, 4, 4),
            rtol=1e-5,
            atol=1e-6,
        )


def test_bfloat16_input_is_computed_in_float32():
    rng = np.random.default_rng(11)
    z = jnp.asarray(rng.normal(size=(3, 6, 6)), jnp.bfloat16)
    for method in ALL_SVPN:
        y = ops.svpn(z, 0.5, method=method)
        assert y.dtype == jnp.bfloat16
        reference = ops.svpn(z.astype(jnp.float32), 0.5, method=method).astype(jnp.bfloat16)
        np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(reference, np.float32))
    c = jnp.einsum("bij,bik->bjk", z, z)
    assert ops.mpn(c, 0.5).dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "fn",
    [
        lambda z, a: ops.svpn(z, a, method="gram_eigh"),
        lambda z, a: ops.svpn(z, a, method="svd"),
        lambda z, a: ops.svpn(z, a, method="power_iter"),
        lambda z, a: ops.mpn(z @ z.T, a),
    ],
)
def test_traced_alpha_gets_its_gradient(x64, fn):
    rng = np.random.default_rng(12)
    z = jnp.asarray(rng.normal(size=(5, 5)))
    weights = rng.normal(size=(5, 5))

    def loss(a):
        return jnp.sum(fn(z, a) * weights)

    analytic = jax.jit(jax.grad(loss))(0.4)
    numeric = (loss(0.4 + 1e-6) - loss(0.4 - 1e-6)) / 2e-6
    assert abs(analytic - numeric) < 1e-6 * max(1.0, abs(numeric))


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: ops.mpn(np.ones((3, 4)), 0.5), "square"),
        (lambda: ops.mpn(np.ones(3), 0.5), "rank >= 2"),
        (lambda: ops.svpn(np.ones(3), 0.5), "rank >= 2"),
        (lambda: ops.mpn(np.eye(3), 0.5, method="cholesky"), "unknown mpn method 'cholesky'"),
        (lambda: ops.svpn(np.eye(3), 0.5, method="qr"), "unknown svpn method 'qr'"),
        (lambda: ops.mpn(np.eye(3), 0.0), r"alpha must lie in \(0, 1\]"),
        (lambda: ops.svpn(np.eye(3), 1.5), r"alpha must lie in \(0, 1\]"),
        (lambda: ops.svpn(np.eye(3), np.ones(2)), "alpha must be a scalar"),
        (lambda: ops.mpn(np.eye(3), 0.25, method="newton_schulz"), "square root only"),
        (lambda: ops.svpn(np.eye(3), 0.5, method="power_iter", start=np.ones(4)), r"start must have shape \(3,\)"),
        (lambda: ops.svpn(np.eye(3), 0.5, method="power_iter", num_iters=0), "num_iters must be >= 1"),
        (lambda: ops.triu_vector(np.ones((2, 3))), "square"),
    ],
)
def test_invalid_input_raises_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_triu_vector_is_row_major_upper_triangle():
    y = jnp.arange(16.0).reshape(1, 4, 4)
    np.testing.assert_array_equal(ops.triu_vector(y)[0], [0, 1, 2, 3, 5, 6, 7, 10, 11, 15])
