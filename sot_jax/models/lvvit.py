"""LV-ViT (arXiv 2104.10858, official code zihangJiang/TokenLabeling).

Stem: Conv7x7 s2 (3→C, no bias) BN ReLU, [Conv3x3 (C→C, no bias) BN ReLU]×2, Conv8x8 s8 (C→D), C = 64
(128 for lvvit_l): stride 16. Class token, learned position embedding, blocks without qkv bias (LayerNorm eps
1e-5) whose residual branches are divided by skip_lam. Head: `token_label` (head on the class token, aux_head on
every patch token; eval logits head(cls) + 0.5 · max over tokens of aux_head).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sot_jax.models.layers import BatchNorm, Dtype, conv
from sot_jax.models.spec import ModelSpec


class ConvStem(nn.Module):
    """`bn_group_size`: the BatchNorm statistics per run of that many images (`layers.BatchNorm`)."""

    embed_dim: int
    channels: int = 64
    dtype: Dtype = jnp.float32
    bn_group_size: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = conv(self.channels, (7, 7), "conv1", self.dtype, strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False)(
            x
        )
        x = nn.relu(BatchNorm(self.bn_group_size, self.dtype, name="bn1")(x, train))
        for i in (2, 3):
            x = conv(self.channels, (3, 3), f"conv{i}", self.dtype, padding=((1, 1), (1, 1)), use_bias=False)(x)
            x = nn.relu(BatchNorm(self.bn_group_size, self.dtype, name=f"bn{i}")(x, train))
        return conv(self.embed_dim, (8, 8), "proj", self.dtype, strides=(8, 8), padding="VALID")(x)


def _lvvit(embed_dim: int, depth: int, num_heads: int, skip_lam: float, stem_channels: int = 64) -> ModelSpec:
    return ModelSpec(
        family="lvvit",
        stem=lambda dim, dtype, bn_group_size=0: ConvStem(dim, stem_channels, dtype, bn_group_size),
        stem_options=("bn_group_size",),
        stride=16,
        backbone=dict(
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_hidden=3 * embed_dim,
            qkv_bias=False,
            layer_norm_eps=1e-5,
            skip_lam=skip_lam,
        ),
        head=dict(head="token_label", wr_dim=24),
        torch_renames=(
            ("stem", "patch_embed"),
            ("classifier.head", "head"),
            ("classifier.aux_head", "aux_head"),
            ("classifier.cls_fc", "head"),
        ),
    )


MODELS = {
    "lvvit_t": _lvvit(240, 12, 4, 1.0),
    "lvvit_s": _lvvit(384, 16, 6, 2.0),
    "lvvit_m": _lvvit(512, 20, 8, 2.0),
    "lvvit_l": _lvvit(768, 24, 12, 3.0, stem_channels=128),
}
