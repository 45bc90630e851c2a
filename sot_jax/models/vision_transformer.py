"""The transformer trunk every family shares: stem -> [class token] -> position embedding -> blocks -> norm -> head."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sot_jax import token_labels
from sot_jax.errors import UserError
from sot_jax.models.dropout import Dropout
from sot_jax.models.heads import ClassifierHead, PairedLogits
from sot_jax.models.layers import (
    Dtype,
    check_images,
    dense_init,
    sinusoidal_position_embedding,
    token_grid,
    transformer_blocks,
)


def hvt_pooled_lengths(num_tokens: int, depth: int, pool_block_width: int | None) -> list[int | None]:
    """HVT: block i pools (kernel 3, stride 2) when i % pool_block_width == 0; None where a block does not."""
    lengths: list[int | None] = []
    for i in range(depth):
        if pool_block_width and i % pool_block_width == 0:
            if num_tokens < 3:
                raise UserError(
                    f"HVT pooling at block {i} needs at least 3 tokens, has {num_tokens}: use larger images or a "
                    f"larger pool_block_width (now {pool_block_width})"
                )
            num_tokens = (num_tokens - 3) // 2 + 1
            lengths.append(num_tokens)
        else:
            lengths.append(None)
    return lengths


class VisionTransformer(nn.Module):
    """A ViT whose stem, position embedding, class token, pooling and head are chosen by its family.

    `__call__(images, train, mix_box)`: images are float NHWC of `img_size`, normalized. Returns float32 logits
    (B, num_classes), or in training for the `sum_loss` fusion and the LV-ViT `token_label` head,
    `heads.PairedLogits`. `mix_box` (top, left, bottom, right
    on the token grid; (4,) for the batch or (G, 4), one per group of B/G images) applies MixToken
    (`token_labels.mix_tokens`); token logits come back un-mixed. Training
    needs the rng stream 'dropout' (dropout and drop path) and, for stems with BatchNorm, `mutable=['batch_stats']`.
    """

    model_name: str
    stem: nn.Module
    stride: int
    num_classes: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int
    qkv_bias: bool
    layer_norm_eps: float
    head: dict[str, Any]
    img_size: int | tuple[int, int] = 224
    cls_token: bool = True
    position_embedding: str = "learned"  # or "sinusoidal" (SoT: fixed, not trained)
    pool_block_width: int | None = None  # HVT
    skip_lam: float = 1.0  # LV-ViT
    drop_path_rate: float = 0.0
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    attention: str = "auto"  # layers.ATTENTION_IMPLEMENTATIONS
    remat: str | None = None  # layers.REMAT_POLICIES: recompute inside each block in the backward pass

    @property
    def grid(self) -> tuple[int, int]:
        return token_grid(self.img_size, self.stride, self.model_name)

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False, mix_box: jax.Array | None = None) -> Any:
        check_images(images, self.img_size, self.model_name)
        rows, cols = self.grid
        x = self.stem(images.astype(self.dtype), train)
        x = x.reshape(x.shape[0], rows * cols, self.embed_dim)
        if mix_box is not None:  # MixToken, before the class token and position embedding
            x = token_labels.mix_tokens(x, mix_box, self.grid)
        if self.cls_token:
            cls = self.param("cls_token", dense_init, (1, 1, self.embed_dim))
            x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.embed_dim)).astype(x.dtype), x], axis=1)
        if self.position_embedding == "sinusoidal":
            position = jnp.asarray(sinusoidal_position_embedding(x.shape[1], self.embed_dim))
        else:
            position = self.param("pos_embed", dense_init, (1, x.shape[1], self.embed_dim))
        x = Dropout(self.dropout, deterministic=not train)(x + position.astype(x.dtype))
        x = transformer_blocks(
            x,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_hidden=self.mlp_hidden,
            qkv_bias=self.qkv_bias,
            layer_norm_eps=self.layer_norm_eps,
            drop_path_rate=self.drop_path_rate,
            train=train,
            dtype=self.dtype,
            skip_lam=self.skip_lam,
            pooled_lengths=hvt_pooled_lengths(rows * cols, self.depth, self.pool_block_width),
            attention=self.attention,
            remat=self.remat,
        )
        x = nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype, name="norm")(x)
        head = ClassifierHead(
            self.num_classes, has_cls_token=self.cls_token, dtype=self.dtype, name="classifier", **self.head
        )
        outputs = head(x, train)
        if mix_box is not None and isinstance(outputs, PairedLogits) and outputs.per_token:
            outputs = outputs.replace(other=token_labels.mix_tokens(outputs.other, mix_box, self.grid))  # un-mix
        return jax.tree.map(lambda logits: logits.astype(jnp.float32), outputs)
