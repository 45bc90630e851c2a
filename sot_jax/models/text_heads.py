"""The official SoT head for language transformers (SPEC §10), ported from `cokezrr/transformers` (commit 794889f:
`src/model/classifier.py`, `src/representation/covariance.py`, `src/normalization/svPN.py`), which replaces
BERT's pooler and whose output is the logits.

    logits = cls_fc(x[:, 0]) + visual_fc(dropout(vec(svPN(Z))))
    A = ReLU(BN(x[:, 1:] W_a)) (N, q),  B = ReLU(BN(x[:, 1:] W_b)) (N, k),  each centred per channel over tokens,
    Z = Ãᵀ B̃ / N (q × k)

It is not the vision MGCrP (`heads.MGCrP`): one head, BatchNorm + ReLU after the bias-free projections (1×1
convolutions in the official code), a per-channel mean (not one scalar), q = 56 and k = 32, and dropout 0.8.

Official quirks kept:
- No dropout and no tanh on the class-token branch.
- svPN runs on Zᵀ (k × q): its learnable start vector w ~ randn(q) gives u = normalize(Zᵀ w), v = normalize(Z u),
  s = uᵀ Zᵀ v, P = s^α u vᵀ + (Zᵀ − s u vᵀ) / (s^(1−α) + 1e-5) (alpha 0.5, one power iteration, one singular
  value) and the result is transposed back to q × k before the full (not triangular) row-major vectorization.
  That is `ops.svpn(Zᵀ, method="power_iter", start=w)`; the exact methods ("gram_eigh", "svd") are an option.
- The word tokens are every position after the first, padding included (inputs were padded to 128): padding
  enters the BatchNorm statistics, the centring and Z, and N counts it. `mask_padding=True` is the correct
  variant: only real tokens count (the caller passes the mask).
- BatchNorm as PyTorch's BatchNorm2d over (batch × tokens): momentum 0.1, eps 1e-5, normalizing by the biased
  batch variance while the running variance is updated with the unbiased one (`TorchBatchNorm`).
- Init: projections kaiming-normal (fan_out, ReLU gain), BatchNorm 1/0, Linear N(0, 0.02) with zero bias (HF's
  init_weights), start vector randn.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sot_jax import ops
from sot_jax.models.dropout import Dropout
from sot_jax.models.layers import Dtype
from sot_jax.models.text_layers import dense

# kaiming_normal_(mode="fan_out", nonlinearity="relu") of a 1×1 convolution: N(0, 2 / out_channels), untruncated.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _masked_mean(x: jax.Array, weights: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Mean of x (…, C) over `axes` counting each position by `weights` (broadcast over C)."""
    total = jnp.sum(weights, axis=axes, keepdims=True)
    return jnp.sum(x * weights, axis=axes, keepdims=True) / jnp.maximum(total, 1.0)


class TorchBatchNorm(nn.Module):
    """PyTorch's BatchNorm over all (batch, token) positions of (B, N, C) features, with optional position weights
    (B, N) in {0, 1} that exclude positions from the statistics.

    Training normalizes by the biased batch variance and updates running_var with the unbiased one (n / (n − 1)),
    as PyTorch does (Flax's `nn.BatchNorm` keeps the biased one); running = (1 − momentum) running + momentum batch.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, weights: jax.Array, train: bool) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,))
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,))
        if train:
            w = weights[..., None]
            mean = _masked_mean(x, w, (0, 1))
            var = _masked_mean((x - mean) ** 2, w, (0, 1))
            if not self.is_initializing():
                n = jnp.sum(weights)
                unbiased = var * n / jnp.maximum(n - 1.0, 1.0)
                running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * mean.reshape(-1)
                running_var.value = (1 - self.momentum) * running_var.value + self.momentum * unbiased.reshape(-1)
        else:
            mean, var = running_mean.value, running_var.value
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


class SoTTextHead(nn.Module):
    """Tokens (B, L, D) with the class token at position 0 and `word_mask` (B, L − 1), 1 where a later position
    counts as a word token (all ones: the official behaviour) -> float32 logits (B, num_classes).

    `apply(..., mutable=["intermediates"])` also returns Z (B, q, k) under intermediates/…/cross_covariance.
    """

    num_classes: int
    q: int = 56
    k: int = 32
    svpn: str = "power_iter"
    svpn_alpha: float = 0.5
    dropout: float = 0.8
    dtype: Dtype = jnp.float32

    def branch(self, words: jax.Array, weights: jax.Array, width: int, name: str, train: bool) -> jax.Array:
        """Bias-free projection -> BatchNorm -> ReLU -> per-channel centring over the counted tokens, which are
        then the only non-zero rows."""
        y = nn.Dense(width, use_bias=False, kernel_init=conv_init, dtype=self.dtype, name=f"conv_{name}")(words)
        y = nn.relu(TorchBatchNorm(name=f"bn_{name}")(y.astype(jnp.float32), weights, train))
        w = weights[..., None]
        return (y - _masked_mean(y, w, (1,))) * w

    @nn.compact
    def __call__(self, x: jax.Array, word_mask: jax.Array, train: bool) -> jax.Array:
        cls_logits = dense(self.num_classes, "cls_fc", self.dtype)(x[:, 0]).astype(jnp.float32)
        words, weights = x[:, 1:], word_mask.astype(jnp.float32)
        a = self.branch(words, weights, self.q, "a", train)
        b = self.branch(words, weights, self.k, "b", train)
        tokens = jnp.maximum(jnp.sum(weights, axis=1), 1.0)[:, None, None]
        z = jnp.einsum("bnq,bnk->bqk", a, b, precision=jax.lax.Precision.HIGHEST) / tokens
        self.sow("intermediates", "cross_covariance", z)  # kept only with mutable=["intermediates"]
        start = None
        if self.svpn == "power_iter":
            start = self.param("svpn_start", nn.initializers.normal(1.0), (self.q,))
        y = jnp.swapaxes(ops.svpn(jnp.swapaxes(z, 1, 2), self.svpn_alpha, method=self.svpn, start=start), 1, 2)
        y = Dropout(self.dropout, deterministic=not train)(y.reshape(y.shape[0], self.q * self.k))
        visual_logits = dense(self.num_classes, "visual_fc", self.dtype)(y.astype(self.dtype))
        return cls_logits + visual_logits.astype(jnp.float32)


# Flax module path -> the official module key (prefix stripped: the official head is BertModel's `pooler`).
OFFICIAL_KEYS = {
    ("cls_fc",): "pooler.cls_fc",
    ("conv_a",): "pooler.representation.conv_dr_block.0.0",
    ("bn_a",): "pooler.representation.conv_dr_block.0.1",
    ("conv_b",): "pooler.representation.conv_dr_block.1.0",
    ("bn_b",): "pooler.representation.conv_dr_block.1.1",
    (): "pooler.normalization",  # svpn_start -> pooler.normalization.weight
    ("visual_fc",): "pooler.visual_fc",
}
