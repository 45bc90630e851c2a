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
import numpy as np

from sot_jax.models.layers import BatchNorm, Dtype, conv, conv_bias_init, conv_init
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
            layer = DenseLayer(self.dtype, name=f"denselayer{i + 1}")
            features.append(layer(jnp.concatenate(features, axis=-1)))
        return jnp.concatenate(features, axis=-1)


class DenseTransition(nn.Module):
    """BatchNorm → Conv1x1 → AvgPool2, computed at the pooled resolution: the BatchNorm statistics come from the
    full-resolution input (or are the running ones), then the input is average-pooled and normalized and the 1×1
    conv applied. Normalization and the 1×1 conv are affine per pixel, so they commute with averaging an image's
    pixels: the same function (and running-statistic update) with 4× fewer pixels for the normalization and the
    conv. Same variables as the plain order (norm/{scale, bias, mean, var}, conv/kernel)."""

    dtype: Dtype = jnp.float32
    bn_group_size: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        # Pooled in at least float32, as the normalization computes.
        pooled = nn.avg_pool(x.astype(jnp.promote_types(x.dtype, jnp.float32)), (2, 2), strides=(2, 2))
        x = BatchNorm(self.bn_group_size, self.dtype, name="norm")(x, train, normalize=pooled)
        return conv(TRANSITION_WIDTH, (1, 1), "conv", self.dtype, use_bias=False)(x)


def _offset_placement() -> np.ndarray:
    """P[d, t, s, r] = 1 where input pixel 2o + d - 1 + t (tap t of the conv at pixel 2o + d, d = -1, 0, 1) is
    pixel r of the space-to-depth cell o + s (s = -1, 0, 1), for one spatial axis."""
    placement = np.zeros((3, 3, 3, 2), np.float32)
    for d in range(3):
        for t in range(3):
            s, r = divmod(d + t - 2, 2)
            placement[d, t, s + 1, r] = 1
    return placement


class ConvMaxPool(nn.Module):
    """Conv3x3(3→C, padding 1) → MaxPool(3, stride 2, padding 1), without the full-resolution activation.

    The pool's nine candidates for output pixel o are the conv outputs at 2o + (-1, 0, 1)², each a linear function
    of the 3×3 neighbourhood of cell o in the 2×2 space-to-depth image. So one 3×3 convolution of that image with
    9·C outputs (the 3×3 kernel placed at each offset) followed by a maximum over the nine gives the same values.
    This replaces the 224²×C activation, its max-pool scatter and its 3-channel weight gradient with GEMM-shaped
    work at 112²: faster on a GPU despite 9× the FLOPs, slower on a CPU (BENCHMARKS.md, "Training throughput").
    Same parameters as the plain `nn.Conv`.
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        kernel = self.param("kernel", conv_init, (3, 3, channels, self.features), jnp.float32)
        bias = self.param("bias", conv_bias_init(9 * channels), (self.features,), jnp.float32)
        x = jnp.pad(x, ((0, 0), (0, height % 2), (0, width % 2), (0, 0))).astype(self.dtype)
        cells = x.reshape(batch, x.shape[1] // 2, 2, x.shape[2] // 2, 2, channels).transpose(0, 1, 3, 2, 4, 5)
        cells = cells.reshape(*cells.shape[:3], 4 * channels)
        placement = _offset_placement()
        # (s_i, s_j, r_i, r_j, c, d_i, d_j, out): the kernel of each offset d on the space-to-depth grid.
        offset_kernel = jnp.einsum("ptsr,quvw,tuco->svrwcpqo", placement, placement, kernel)
        offset_kernel = offset_kernel.reshape(3, 3, 4 * channels, 9 * self.features).astype(self.dtype)
        candidates = jax.lax.conv_general_dilated(
            cells, offset_kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        candidates = candidates.reshape(*cells.shape[:3], 9, self.features)
        # Conv pixels outside the image are the pool's padding: never the maximum.
        rows = 2 * np.arange(cells.shape[1])[:, None] + np.arange(-1, 2)
        cols = 2 * np.arange(cells.shape[2])[:, None] + np.arange(-1, 2)
        inside = ((rows >= 0) & (rows < height))[:, None, :, None] & ((cols >= 0) & (cols < width))[None, :, None, :]
        candidates = jnp.where(inside.reshape(*inside.shape[:2], 9, 1), candidates, -jnp.inf)
        return _max_over_candidates(candidates) + bias.astype(self.dtype)


@jax.custom_vjp
def _max_over_candidates(candidates: jax.Array) -> jax.Array:
    return jnp.max(candidates, axis=-2)


def _max_over_candidates_fwd(candidates: jax.Array) -> tuple[jax.Array, jax.Array]:
    # The backward keeps the winner's index (int8), not the nine candidates; ties go to the first, as in PyTorch.
    winner = jnp.argmax(candidates, axis=-2).astype(jnp.int8)
    return jnp.max(candidates, axis=-2), winner


def _max_over_candidates_bwd(winner: jax.Array, cotangent: jax.Array) -> tuple[jax.Array]:
    chosen = winner[..., None, :] == jnp.arange(9, dtype=jnp.int8)[:, None]
    return (jnp.where(chosen, cotangent[..., None, :], 0).astype(cotangent.dtype),)


_max_over_candidates.defvjp(_max_over_candidates_fwd, _max_over_candidates_bwd)


class DenseNetStem(nn.Module):
    """SoT's "DenseNet" token embedding: stride 16, (B, H, W, 3) -> (B, H/16, W/16, embed_dim). `bn_group_size`:
    the transitions' BatchNorm statistics per run of that many images (`layers.BatchNorm`)."""

    embed_dim: int
    dtype: Dtype = jnp.float32
    bn_group_size: int = 0

    def conv_and_pool(self, x: jax.Array) -> jax.Array:
        """Conv3x3(3→64) → MaxPool(3, s2), computed by `ConvMaxPool`."""
        return ConvMaxPool(TOKEN_DIM, self.dtype, name="stem_0")(x)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = self.conv_and_pool(x)
        for stage in range(3):
            x = DenseBlock(dtype=self.dtype, name=f"stage_{2 * stage}")(x)
            x = DenseTransition(self.dtype, self.bn_group_size, name=f"stage_{2 * stage + 1}")(x, train)
        return conv(self.embed_dim, (1, 1), "transition", self.dtype)(x)


def _sot(embed_dim: int, depth: int, num_heads: int, mlp_hidden: int, wr_dim: int, head_dropout: float) -> ModelSpec:
    return ModelSpec(
        family="sot",
        stem=lambda dim, dtype, bn_group_size=0: DenseNetStem(dim, dtype, bn_group_size),
        stem_options=("bn_group_size",),
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
            head="mgcrp",
            fusion="sum_fc",
            mgcrp_heads=6,
            wr_dim=wr_dim,
            svpn="power_iter",
            head_dropout=head_dropout,
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
