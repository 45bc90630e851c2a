"""Classification heads over a transformer's final (LayerNorm'ed) tokens, chosen by name (`head=`).

A pooling head is a representation of the tokens (`POOLINGS`) plus a *fusion* with the class token (SoT's
`Classifier`); `cls` and `token_label` use the class token directly:

heads
  cls          cls_fc(x[:, 0]) alone (DeiT).
  gap          mean of the tokens.
  gem, ggem    generalized mean, one learnable p (gem) or one per channel group (ggem; groups default to the
               backbone's attention heads), p initialized to 3. Post-LayerNorm tokens are signed while the
               generalized mean needs positive input: `gem_positive="clamp"` (default, GeM's own max(x, 1e-6))
               or `"softplus"` (keeps the information in negative values). Pooling is over the same tokens as
               every other representation, after the final LayerNorm.
  gcp          iSQRT-COV: Linear(D, d) -> covariance -> Newton–Schulz square root (3 iterations) -> upper
               triangle, with d = int(sqrt(2 · heads · q²)) as in the official code.
  mgcrp        SoT's multi-headed global cross-covariance pooling: a fused bias-free Linear(D, 2·H·q), per head
               Z = ÃᵀB̃/N, singular value power normalization (`svpn`, official `power_iter`), flattened
               row-major, dropout (`head_dropout`).
  token_label  LV-ViT: head(cls) and aux_head on every patch token; eval logits head(cls) + 0.5 · max over tokens.

fusions (for the pooling heads, on backbones with a class token)
  sum_fc     cls_fc(x[:, 0]) + visual_fc(rep(x[:, 1:]))   (SoT's default)
  concat     visual_fc([x[:, 0], rep(x[:, 1:])])
  aggre_all  visual_fc(rep(x)), over every token including the class token; the only fusion without one (HVT)
  sum_loss   training returns `PairedLogits(cls_fc(x[:, 0]), visual_fc(rep(x[:, 1:])))` for two summed losses;
             eval sums them

Official quirks kept: the covariance centering subtracts one scalar mean per matrix (over all N×q entries), and
the GCP covariance divides by the feature dimension, not the token count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from sot_jax import ops
from sot_jax.errors import UserError, check_choice
from sot_jax.models.dropout import Dropout
from sot_jax.models.layers import Dense, Dtype

FUSIONS = ("sum_fc", "concat", "aggre_all", "sum_loss")
GEM_POSITIVE = ("clamp", "softplus")


@flax.struct.dataclass
class PairedLogits:
    """Training output of the heads that learn from two losses (fusion `sum_loss`, head `token_label`).

    `cls` (B, C): class-token logits. `other`: the second logits, (B, C) for sum_loss (the visual branch) or
    (B, N, C) for token_label (one per patch token, `per_token`), learned from the image target or token targets.
    """

    cls: jax.Array
    other: jax.Array
    per_token: bool = flax.struct.field(pytree_node=False, default=False)


def _remove_scalar_mean(x: jax.Array) -> jax.Array:
    """The official `_remove_mean`: one mean over each matrix's last two axes."""
    return x - jnp.mean(x, axis=(-2, -1), keepdims=True)


class MGCrP(nn.Module):
    """Multi-headed global cross-covariance pooling with singular value power normalization.

    `apply(..., mutable=["intermediates"])` also returns each head's cross-covariance Z (B, heads, q, q) under
    intermediates/…/representation/cross_covariance (what the SVPN explorer notebook plots)."""

    num_heads: int
    wr_dim: int
    svpn: str = "power_iter"
    svpn_alpha: float = 0.5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, tokens, _ = x.shape
        heads, q = self.num_heads, self.wr_dim
        projected = Dense(2 * heads * q, "wr", use_bias=False, dtype=self.dtype)(x)
        # (B, N, 2, H, q) -> two (B, H, N, q) branches, covariance and SVPN in float32.
        a, b = jnp.moveaxis(projected.reshape(batch, tokens, 2, heads, q).astype(jnp.float32), (2, 3), (0, 2))
        a, b = _remove_scalar_mean(a), _remove_scalar_mean(b)
        z = jnp.einsum("bhnq,bhnr->bhqr", a, b, precision=jax.lax.Precision.HIGHEST) / tokens
        self.sow("intermediates", "cross_covariance", z)  # kept only with mutable=["intermediates"]
        start = None
        if self.svpn == "power_iter":
            start = self.param("svpn_start", nn.initializers.normal(1.0), (q,))
        y = ops.svpn(z, self.svpn_alpha, method=self.svpn, start=start)
        return y.reshape(batch, heads * q * q)


def gcp_pool(x: jax.Array, num_iters: int = 3) -> jax.Array:
    """iSQRT-COV of already projected tokens (B, N, d): covariance -> Newton–Schulz square root -> upper triangle."""
    x = _remove_scalar_mean(x.astype(jnp.float32))
    cov = jnp.einsum("bnd,bne->bde", x, x, precision=jax.lax.Precision.HIGHEST) / x.shape[-1]
    return ops.triu_vector(ops.mpn(cov, 0.5, method="newton_schulz", num_iters=num_iters))


class GeM(nn.Module):
    """Generalized mean over tokens with one learnable p per channel group (groups=1: GeM)."""

    groups: int = 1
    p_init: float = 3.0
    positive: str = "clamp"
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, _, dim = x.shape
        if dim % self.groups:
            raise UserError(f"ggem: {self.groups} groups do not divide the {dim} channels")
        p = self.param("p", nn.initializers.constant(self.p_init), (self.groups,))
        x = x.astype(jnp.float32)
        x = jnp.maximum(x, self.eps) if self.positive == "clamp" else nn.softplus(x) + self.eps
        p_per_channel = jnp.repeat(p, dim // self.groups)
        return jnp.mean(x**p_per_channel, axis=1) ** (1.0 / p_per_channel)


# The pooling heads: name -> features of the word tokens (B, N, D) -> (B, F), built inside `ClassifierHead` (whose
# options they read), so their parameters live under `classifier/`. A new pooling head is one module and one entry.
Pooling = Callable[["ClassifierHead", jax.Array], jax.Array]


def _gcp(head: ClassifierHead, tokens: jax.Array) -> jax.Array:
    cov_dim = int((2 * head.mgcrp_heads * head.wr_dim**2) ** 0.5)  # the official head keeps `dr` on the classifier
    return gcp_pool(Dense(cov_dim, "dr", dtype=head.dtype)(tokens))


POOLINGS: dict[str, Pooling] = {
    "gap": lambda head, tokens: jnp.mean(tokens, axis=1),
    "gem": lambda head, tokens: GeM(1, positive=head.gem_positive, name="representation")(tokens),
    "ggem": lambda head, tokens: GeM(head.gem_groups, positive=head.gem_positive, name="representation")(tokens),
    "gcp": _gcp,
    "mgcrp": lambda head, tokens: MGCrP(
        head.mgcrp_heads, head.wr_dim, head.svpn, head.svpn_alpha, head.dtype, name="representation"
    )(tokens),
}
HEADS = ("cls", "token_label", *POOLINGS)
# ClassifierHead's options and their types: `create_model` keywords and `config.model` keys under these names.
HEAD_OPTIONS = {
    "head": str, "fusion": str, "svpn": str, "svpn_alpha": float, "wr_dim": int, "mgcrp_heads": int,
    "head_dropout": float, "gem_groups": int, "gem_positive": str,
}  # fmt: skip


def check_head_options(options: dict[str, Any], has_cls_token: bool) -> None:
    """Raise a UserError naming a bad head option and the valid choices."""
    check_choice("head", options.get("head", "cls"), HEADS)
    check_choice("fusion", options.get("fusion", "sum_fc"), FUSIONS)
    check_choice("svpn method", options.get("svpn", "power_iter"), ops.SVPN_METHODS)
    check_choice("gem_positive", options.get("gem_positive", "clamp"), GEM_POSITIVE)
    head, fusion = options.get("head", "cls"), options.get("fusion", "sum_fc")
    if not has_cls_token and (head in ("cls", "token_label") or fusion != "aggre_all"):
        raise UserError(
            f"head {head!r} with fusion {fusion!r} needs a class token, which this backbone lacks; use a pooling "
            f"head ({', '.join(POOLINGS)}) with fusion='aggre_all'"
        )


class ClassifierHead(nn.Module):
    """Tokens (B, N, D) -> logits; see the module docstring for heads and fusions.

    Returns logits (B, num_classes), except when `train` is True with fusion `sum_loss` or head `token_label`,
    where it returns `PairedLogits`.
    """

    num_classes: int
    head: str = "cls"
    fusion: str = "sum_fc"
    has_cls_token: bool = True
    mgcrp_heads: int = 6
    wr_dim: int = 24
    svpn: str = "power_iter"
    svpn_alpha: float = 0.5
    head_dropout: float = 0.0
    gem_groups: int = 1
    gem_positive: str = "clamp"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> Any:
        options = {name: getattr(self, name) for name in ("head", "fusion", "svpn", "gem_positive")}
        check_head_options(options, self.has_cls_token)
        fc = lambda name: Dense(self.num_classes, name, dtype=self.dtype)  # noqa: E731
        if self.head == "cls":
            return fc("cls_fc")(x[:, 0])
        if self.head == "token_label":
            cls_logits = fc("head")(x[:, 0])
            token_logits = fc("aux_head")(x[:, 1:])
            if train:
                return PairedLogits(cls_logits, token_logits, per_token=True)
            return cls_logits + 0.5 * jnp.max(token_logits, axis=1)

        tokens = x if self.fusion == "aggre_all" else x[:, 1:]
        features = POOLINGS[self.head](self, tokens)
        features = Dropout(self.head_dropout, deterministic=not train)(features).astype(self.dtype)
        if self.fusion == "aggre_all":
            return fc("visual_fc")(features)
        if self.fusion == "concat":
            return fc("visual_fc")(jnp.concatenate([x[:, 0], features], axis=-1))
        cls_logits, visual_logits = fc("cls_fc")(x[:, 0]), fc("visual_fc")(features)
        if self.fusion == "sum_loss" and train:
            return PairedLogits(cls_logits, visual_logits)
        return cls_logits + visual_logits
