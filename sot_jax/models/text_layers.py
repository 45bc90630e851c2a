"""The layers of HF transformers' text models that BERT (`bert.py`) and GPT (`gpt.py`) both use: Linear and
LayerNorm as HF initializes and PyTorch computes them, softmax attention with HF's attention dropout (fused into
Pallas kernels on a GPU: `fused_attention.py`), an embedding
lookup whose gradient stays out of XLA's fusions, HF's MLP, and the activations under HF's names.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from sot_jax.errors import UserError
from sot_jax.models import fused_attention
from sot_jax.models.dropout import draw_seed
from sot_jax.models.layers import Dtype

# HF initializes Linear and Embedding weights N(0, initializer_range = 0.02), untruncated.
text_init = nn.initializers.normal(0.02)

# Activation names as HF's ACT2FN spells them: "gelu" is the exact (erf) GELU, "gelu_new" the tanh approximation.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
    "silu": nn.silu,
}


def dense(features: int, name: str, dtype: Dtype, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, kernel_init=text_init, dtype=dtype, name=name)


def feed_forward(
    x: jax.Array, intermediate_size: int, activation: str, dtype: Dtype, names: tuple[str, str]
) -> jax.Array:
    """HF's MLP: a Linear to `intermediate_size`, the activation, a Linear back to x's width (modules `names`)."""
    hidden = ACTIVATIONS[activation](dense(intermediate_size, names[0], dtype)(x))
    return dense(x.shape[-1], names[1], dtype)(hidden)


def layer_norm(epsilon: float, name: str, dtype: Dtype) -> nn.LayerNorm:
    # Two-pass variance, as PyTorch computes it: the fast E[x²] - E[x]² loses digits on post-LN residuals.
    return nn.LayerNorm(epsilon, dtype=dtype, use_fast_variance=False, name=name)


def attend(
    module: nn.Module,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_mask: jax.Array,
    causal: bool,
    dropout_rate: float,
    train: bool,
) -> jax.Array:
    """Softmax attention of (B, L, heads, head_dim) q, k, v with scale head_dim^-0.5; `key_mask` (B, L) is True on
    real tokens. Logits and softmax in float32. Outputs at queries whose keys are all masked are arbitrary (HF's are
    too): compare real positions only.

    In training the attention probabilities are dropped as HF drops them, with `dropout.keep_mask`'s masks:
    by the fused Pallas kernels where they run (`fused_attention.kernel_runs`), elsewhere by the same function in XLA
    ops, so either path drops the same entries."""
    if not train:
        mask = key_mask[:, None, None, :]
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation="xla")
    seed = draw_seed(module) if dropout_rate else None
    if fused_attention.kernel_runs(q.shape):
        return fused_attention.attention(q, k, v, key_mask, causal, dropout_rate, seed)
    return fused_attention.reference_attention(q, k, v, key_mask, causal, dropout_rate, seed)


@jax.custom_vjp
def embedding_lookup(table: jax.Array, ids: jax.Array) -> jax.Array:
    """Rows `ids` of `table`; the gradient is one scatter-add that XLA may not fuse with what produces it: fused into
    the backward pass's last elementwise ops, that scatter ran many times slower than alone (BENCHMARKS.md, change
    T1; bench/embedding_backward.py)."""
    return jnp.take(table, ids, axis=0)


def _lookup_forward(table, ids):
    return jnp.take(table, ids, axis=0), (table, ids)


def _lookup_backward(residuals, grads):
    table, ids = residuals
    grads = jax.lax.optimization_barrier(grads)
    return jnp.zeros(table.shape, jnp.float32).at[ids].add(grads.astype(jnp.float32)).astype(table.dtype), None


embedding_lookup.defvjp(_lookup_forward, _lookup_backward)


def embedding_table(module_name: str, num: int, features: int) -> jax.Array:
    """The (num, features) table of an `nn.Embed` named `module_name` (its `embedding` parameter, HF's init), to
    read with `embedding_lookup`."""
    return nn.Embed(num, features, embedding_init=text_init, name=module_name).embedding


def check_activation(name: str) -> None:
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
