"""HVT (arXiv 2103.10619, official code zhuang-group/HVT): hierarchical max pooling of the token sequence.

DeiT-style blocks (qkv bias, LayerNorm eps 1e-6, MLP ratio 4) without a class token; block i pools the tokens
(MaxPool1d kernel 3, stride 2) after its residuals when i % pool_block_width == 0 and adds a new learned position
embedding of the pooled length (196 → 97 → 48 → 23 → 11). Head: final LayerNorm → mean over tokens → Linear,
i.e. the `gap` head with `aggre_all` fusion. `hvt_s_0` does not pool.
"""

from __future__ import annotations

from sot_jax.models.layers import PatchEmbed
from sot_jax.models.spec import ModelSpec


def _hvt(embed_dim: int, num_heads: int, pool_block_width: int | None) -> ModelSpec:
    return ModelSpec(
        family="hvt",
        stem=lambda dim, dtype: PatchEmbed(dim, 16, dtype),
        stride=16,
        backbone=dict(
            embed_dim=embed_dim,
            depth=12,
            num_heads=num_heads,
            mlp_hidden=4 * embed_dim,
            qkv_bias=True,
            layer_norm_eps=1e-6,
            cls_token=False,
            pool_block_width=pool_block_width,
        ),
        head=dict(head="gap", fusion="aggre_all", wr_dim=24),
        torch_renames=(("stem", "patch_embed"), ("classifier.visual_fc", "head")),
    )


MODELS = {
    "hvt_ti_1": _hvt(192, 3, 12),
    "hvt_s_0": _hvt(384, 6, None),
    "hvt_s_1": _hvt(384, 6, 12),
    "hvt_s_2": _hvt(384, 6, 6),
    "hvt_s_3": _hvt(384, 6, 4),
    "scale_hvt_ti_4": _hvt(384, 6, 3),
}
