"""SoT (arXiv 2104.10935, official code jiangtaoxie/SoT with timm 0.3.4) and "DeiT + ours".

Token embedding: Conv3x3(3→64) → MaxPool(3, s2) → three DenseNet stages (6 layers, growth 16, bottleneck 32)
each followed by a transition (BatchNorm → Conv1x1 → AvgPool2) → Conv1x1(128→D): 224² → 14×14 tokens.
timm 0.3.4's `DenseBlock` defaults its norm layer to ReLU, so each dense layer is
ReLU → Conv1x1 → ReLU → Conv3x3 with no BatchNorm; that quirk is reproduced. Then a class token, a fixed
sinusoidal position embedding, pre-norm blocks without qkv bias (LayerNorm eps 1e-5), and the MGCrP head fused
with the class token (`sum_fc`).

"DeiT + ours" (`deit_*_sot`) puts this token embedding and head on DeiT-T/S/B's widths, depths and MLP ratio 4,
otherwise as SoT (the official repository ships no such model; SPEC §1).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sot_jax.models.layers import Dtype, batch_norm, conv
from sot_jax.models.spec import ModelSpec

TOKEN_DIM = 64
GROWTH = 16
BOTTLENECK = 2 * GROWTH
TRANSITION_WIDTH = 128


class DenseLayer(nn.Module):
    """timm 0.3.4 with its default norm_layer=ReLU: ReLU → Conv1x1 → ReLU → Conv3x3, no BatchNorm."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = conv(BOTTLENECK, (1, 1), "conv1", self.dtype, use_bias=False)(nn.relu(x))
        return conv(GROWTH, (3, 3), "conv2", self.dtype, use_bias=False, padding=((1, 1), (1, 1)))(nn.relu(x))


class DenseBlock(nn.Module):
    num_layers: int = 6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = [x]
        for i in range(self.num_layers):
            features.append(DenseLayer(self.dtype, name=f"denselayer{i + 1}")(jnp.concatenate(features, axis=-1)))
        return jnp.concatenate(features, axis=-1)


class DenseTransition(nn.Module):
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = batch_norm("norm", train, self.dtype)(x)
        x = conv(TRANSITION_WIDTH, (1, 1), "conv", self.dtype, use_bias=False)(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNetStem(nn.Module):
    """SoT's "DenseNet" token embedding: stride 16, (B, H, W, 3) -> (B, H/16, W/16, embed_dim)."""

    embed_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = conv(TOKEN_DIM, (3, 3), "stem_0", self.dtype, padding=((1, 1), (1, 1)))(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage in range(3):
            x = DenseBlock(dtype=self.dtype, name=f"stage_{2 * stage}")(x)
            x = DenseTransition(self.dtype, name=f"stage_{2 * stage + 1}")(x, train)
        return conv(self.embed_dim, (1, 1), "transition", self.dtype)(x)


def _sot(embed_dim: int, depth: int, num_heads: int, mlp_hidden: int, wr_dim: int, head_dropout: float) -> ModelSpec:
    return ModelSpec(
        family="sot",
        stem=lambda dim, dtype: DenseNetStem(dim, dtype),
        stride=16,
        backbone=dict(
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_hidden=mlp_hidden,
            qkv_bias=False,
            layer_norm_eps=1e-5,
            position_embedding="sinusoidal",
        ),
        head=dict(
            representation="mgcrp",
            fusion="sum_fc",
            num_heads=6,
            wr_dim=wr_dim,
            svpn_method="power_iter",
            dropout=head_dropout,
        ),
        torch_renames=(
            ("stem", "visual_tokens.tokens"),
            ("classifier.representation.svpn_start", "classifier.representation.norm.weight"),
        ),
        torch_ignored=("pos_embed",),
    )


MODELS = {
    "sot_tiny": _sot(240, 12, 4, 600, wr_dim=14, head_dropout=0.0),
    "sot_small": _sot(384, 14, 6, 1344, wr_dim=24, head_dropout=0.5),
    "sot_base": _sot(528, 24, 8, 1584, wr_dim=38, head_dropout=0.7),
    "deit_tiny_sot": _sot(192, 12, 3, 768, wr_dim=14, head_dropout=0.0),
    "deit_small_sot": _sot(384, 12, 6, 1536, wr_dim=24, head_dropout=0.5),
    "deit_base_sot": _sot(768, 12, 12, 3072, wr_dim=38, head_dropout=0.7),
}
