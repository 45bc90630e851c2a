"""DeiT (timm's `deit_*_patch16_224`): patch-16 convolution, class token, learned position embedding, cls head."""

from __future__ import annotations

from sot_jax.models.layers import PatchEmbed
from sot_jax.models.spec import ModelSpec


def _deit(embed_dim: int, num_heads: int, wr_dim: int) -> ModelSpec:
    return ModelSpec(
        family="deit",
        stem=lambda dim, dtype: PatchEmbed(dim, 16, dtype),
        stride=16,
        backbone=dict(
            embed_dim=embed_dim,
            depth=12,
            num_heads=num_heads,
            mlp_hidden=4 * embed_dim,
            qkv_bias=True,
            layer_norm_eps=1e-6,
        ),
        # wr_dim is SoT's q for "DeiT + ours", used when another head is chosen.
        head=dict(head="cls", wr_dim=wr_dim),
        torch_renames=(("stem", "patch_embed"), ("classifier.cls_fc", "head")),
    )


MODELS = {
    "deit_tiny_patch16_224": _deit(192, 3, 14),
    "deit_small_patch16_224": _deit(384, 6, 24),
    "deit_base_patch16_224": _deit(768, 12, 38),
}
