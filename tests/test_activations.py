"""sot_jax.models.activations.gelu: PyTorch's GELU values and gradients, float64 finite differences, and a backward
pass that keeps only the input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from sot_jax.models.activations import gelu

torch = pytest.importorskip("torch")

# Both tails, zero, and the bend between: where erfc and tanh saturate and where the slope changes sign.
POINTS = np.concatenate([np.linspace(-12, 12, 481), np.random.default_rng(0).normal(0, 2, 512)]).astype(np.float32)
TORCH_NAMES = {False: "none", True: "tanh"}
# dtype: (jax's, torch's, the allowed error beyond PyTorch's own in units in the last place: XLA's float32 erfc is
# a few units less exact than PyTorch's erf; bfloat16 rounds float32 math once, as PyTorch does).
DTYPES = {"float32": (jnp.float32, torch.float32, 8), "bfloat16": (jnp.bfloat16, torch.bfloat16, 1)}


def torch_value_and_grad(x: np.ndarray, approximate: bool, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray]:
    """torch.nn.functional.gelu at x (cast to dtype) and the gradient of its sum, as float64."""
    xt = torch.tensor(x).to(dtype).requires_grad_()
    yt = torch.nn.functional.gelu(xt, approximate=TORCH_NAMES[approximate])
    yt.sum().backward()
    return yt.detach().double().numpy(), xt.grad.double().numpy()


def exact_value_and_grad(x: np.ndarray, approximate: bool) -> tuple[np.ndarray, np.ndarray]:
    """GELU and its derivative at 40 digits (mpmath), where float64 would cancel in the tails."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40

    def f(t):
        if approximate:
            return t / (1 + mpmath.exp(-2 * mpmath.sqrt(2 / mpmath.pi) * (t + mpmath.mpf("0.044715") * t**3)))
        return t * mpmath.erfc(-t / mpmath.sqrt(2)) / 2

    return tuple(np.array([float(g(mpmath.mpf(float(t)))) for t in x]) for g in (f, lambda t: mpmath.diff(f, t)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", [False, True])
def test_at_least_as_accurate_as_torch(approximate, dtype):
    """Values and gradients in float32 and bfloat16 against the exact function: each error within a unit or a few
    in the last place of PyTorch's own error in the same dtype."""
    jax_dtype, torch_dtype, units = DTYPES[dtype]
    x = jnp.asarray(POINTS, jax_dtype)
    value = gelu(x, approximate)
    grad = jax.grad(lambda x: gelu(x, approximate).astype(jnp.float32).sum())(x)
    assert value.dtype == grad.dtype == jax_dtype
    inputs = np.asarray(x, np.float64)
    exact = exact_value_and_grad(inputs, approximate)
    # The slope's two terms (Φ(x) and x·φ(x)) cancel to 0 near x = -0.75, each about 0.25 there: its rounding error
    # scales with them, not with the sum.
    scales = np.abs(exact[0]), np.maximum(np.abs(exact[1]), 0.25)
    torch_results = torch_value_and_grad(inputs, approximate, torch_dtype)
    for name, got, want, scale, torch_got in zip(
        ("value", "grad"), (value, grad), exact, scales, torch_results, strict=True
    ):
        error, torch_error = np.abs(np.asarray(got, np.float64) - want), np.abs(torch_got - want)
        allowed = torch_error + units * float(jnp.finfo(jax_dtype).eps) * scale + float(jnp.finfo(jax_dtype).tiny)
        np.testing.assert_array_less(error, allowed, err_msg=name)


@pytest.mark.parametrize("approximate", [False, True])
def test_float64_gradients_match_finite_differences(approximate):
    with jax.enable_x64(True):
        x = jnp.asarray(np.linspace(-6, 6, 97))
        assert gelu(x, approximate).dtype == jnp.float64
        check_grads(lambda x: gelu(x, approximate), (x,), order=2, modes=["rev"], atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("approximate", [False, True])
def test_backward_keeps_only_the_input(approximate):
    """The reason for the custom VJP: autodiff of jax.nn.gelu keeps 3-4 intermediates of x's size; this keeps x."""
    x = jnp.ones((8, 64), jnp.bfloat16)

    def widths(activation):  # the residuals of x's shape that the VJP closes over (its pytree leaves)
        _, vjp = jax.vjp(lambda x: activation(x * 2), x)
        return [leaf.shape for leaf in jax.tree.leaves(vjp) if leaf.shape == x.shape]

    assert widths(lambda x: gelu(x, approximate)) == [x.shape]
    assert len(widths(lambda x: jax.nn.gelu(x, approximate=approximate))) >= 3
