"""Building blocks shared by every model family: pre-norm transformer blocks, stochastic depth, embeddings."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sot_jax.errors import UserError, check_choice, group_count
from sot_jax.models.dropout import Dropout

Dtype = Any

# timm's init: Linear weights trunc-normal(0.02), biases 0; convs keep PyTorch's default kaiming-uniform(a=√5),
# i.e. uniform with variance 1/(3·fan_in), and biases uniform in ±1/√fan_in (`conv_bias_init`).
dense_init = nn.initializers.truncated_normal(stddev=0.02)
conv_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def conv_bias_init(fan_in: int) -> Callable[..., jax.Array]:
    """PyTorch's default convolution bias: uniform in ±1/√fan_in, fan_in = input channels × kernel area."""
    bound = 1 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def Dense(features: int, name: str, use_bias: bool = True, dtype: Dtype = jnp.float32) -> nn.Dense:  # noqa: N802
    return nn.Dense(features, use_bias=use_bias, kernel_init=dense_init, dtype=dtype, name=name)


class Conv(nn.Module):
    """`nn.Conv` (NHWC, same parameters and computation) with PyTorch's default initialization; Flax's bias
    initializer never sees the input channels that PyTorch's bias bound depends on."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: str | Sequence[tuple[int, int]] = "SAME"
    use_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", conv_init, shape, jnp.float32)
        bias = None
        if self.use_bias:
            bias = self.param("bias", conv_bias_init(math.prod(shape[:-1])), (self.features,), jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        padding = self.padding if isinstance(self.padding, str) else tuple(map(tuple, self.padding))
        dimensions = ("NHWC", "HWIO", "NHWC")
        y = jax.lax.conv_general_dilated(x, kernel, self.strides, padding, dimension_numbers=dimensions)
        return y if bias is None else y + bias


def conv(features: int, kernel: tuple[int, int], name: str, dtype: Dtype, **kwargs) -> Conv:
    return Conv(features, kernel, dtype=dtype, name=name, **kwargs)


def group_statistics(x: jax.Array, groups: int) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and biased variance (groups, C) of each run of B / groups consecutive images of x (B, ..., C),
    in at least float32, the variance as E[x²] − E[x]² (one fused pass, as Flax's BatchNorm). A reshape to
    (groups, group, ...) and a mean over the group's axes: with the batch sharded over devices and the group
    dividing the per-device batch, no statistic crosses a device."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32)).reshape(groups, -1, *x.shape[1:])
    axes = tuple(range(1, x.ndim - 1))
    mean, mean_of_squares = jnp.mean(x, axes), jnp.mean(jnp.square(x), axes)
    return mean, jnp.maximum(mean_of_squares - jnp.square(mean), 0.0)


class BatchNorm(nn.Module):
    """PyTorch's BatchNorm2d (momentum 0.1, eps 1e-5) over the last axis of (B, ..., C), optionally with one set of
    training statistics per run of `bn_group_size` consecutive images.

    The official SoT and LV-ViT runs train on 8 GPUs without SyncBN, so each BatchNorm normalizes with the
    statistics of one GPU's batch; `bn_group_size` set to that batch reproduces this (0: the whole batch; a batch
    no larger than the group is one group; otherwise the group must divide it). Training normalizes by each
    group's biased variance and updates the running variance with the unbiased one (n / (n − 1), n values per
    channel in a group), as PyTorch does (Flax's `nn.BatchNorm` keeps the biased one). The running statistics
    move towards the mean over groups of the group statistics: PyTorch DDP broadcasts rank 0's buffers, so the
    official ones are group 0's moving average, and the mean over groups has the same expectation with less
    noise. Evaluation uses the running statistics. Variables as `nn.BatchNorm`'s: params scale and bias,
    batch_stats mean and var (what checkpoint conversion maps to weight, bias, running_mean, running_var).
    """

    bn_group_size: int = 0
    dtype: Dtype = jnp.float32
    momentum: float = 0.1
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, normalize: jax.Array | None = None) -> jax.Array:
        """Normalize x; or, given `normalize` (B, ..., C), normalize that array with the statistics of x instead.
        Normalizing a per-image average of x's pixels (a transition's 2×2 pooling) so gives the average of the
        normalized x: the normalization is affine per channel within each group."""
        features = x.shape[-1]
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        if train:
            mean, var = group_statistics(x, group_count(x.shape[0], self.bn_group_size, "bn_group_size"))
            if not self.is_initializing():
                count = x.size // (mean.shape[0] * features)
                unbiased = var * (count / max(count - 1, 1))
                m = self.momentum
                running_mean.value = (1 - m) * running_mean.value + m * jnp.mean(mean, axis=0)
                running_var.value = (1 - m) * running_var.value + m * jnp.mean(unbiased, axis=0)
        else:
            mean, var = running_mean.value[None], running_var.value[None]
        y = x if normalize is None else normalize
        groups = mean.shape[0]
        # Each group's statistics over its images: (groups, 1, ..., 1, C) against y as (groups, B / groups, ..., C).
        stats_shape = (groups,) + (1,) * (y.ndim - 1) + (features,)
        mean, multiplier = mean.reshape(stats_shape), (jax.lax.rsqrt(var + self.epsilon) * scale).reshape(stats_shape)
        y = (y.reshape(groups, -1, *y.shape[1:]) - mean) * multiplier + bias
        return y.reshape(-1, *y.shape[2:]).astype(self.dtype)


class PatchConv(nn.Module):
    """`nn.Conv` with kernel = stride = `patch` and VALID padding (same parameters and initialization), computed as
    space-to-depth and a 1×1 convolution. cuDNN runs ViT's 16×16 convolution of 3 channels as an implicit GEMM far
    below the bf16 peak; a 1×1 convolution of the 768-channel patches is a plain GEMM. As a matmul (einsum) it
    would be as fast, but XLA then lays the tokens out batch-minor and every transformer block pays for transposes
    (the measurements: BENCHMARKS.md, training throughput)."""

    features: int
    patch: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        p = self.patch
        kernel = self.param("kernel", conv_init, (p, p, channels, self.features), jnp.float32)
        bias = self.param("bias", conv_bias_init(p * p * channels), (self.features,), jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        rows, cols = height // p, width // p  # rows and columns past the last whole patch are dropped, as by VALID
        patches = x[:, : rows * p, : cols * p].reshape(batch, rows, p, cols, p, channels)
        patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, rows, cols, p * p * channels)
        kernel = kernel.reshape(1, 1, p * p * channels, self.features)
        dimensions = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(patches, kernel, (1, 1), "VALID", dimension_numbers=dimensions) + bias


class PatchEmbed(nn.Module):
    """ViT's patchify-and-project convolution (kernel = stride = patch)."""

    embed_dim: int
    patch_size: int = 16
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        del train
        return PatchConv(self.embed_dim, self.patch_size, self.dtype, name="proj")(x)


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample with probability `rate` (rng 'dropout')."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if not train or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / keep, 0).astype(x.dtype)


class Mlp(nn.Module):
    hidden: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        dim = x.shape[-1]
        x = nn.gelu(Dense(self.hidden, "fc1", dtype=self.dtype)(x), approximate=False)
        x = Dropout(self.dropout, deterministic=not train)(x)
        x = Dense(dim, "fc2", dtype=self.dtype)(x)
        return Dropout(self.dropout, deterministic=not train)(x)


ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn")


def attention_implementation(choice: str, dtype: Dtype) -> str:
    """'auto' picks cuDNN's fused (flash) attention on GPU in 16-bit compute (its only dtypes), else XLA's."""
    check_choice("attention implementation", choice, ATTENTION_IMPLEMENTATIONS)
    if choice == "auto":
        return "cudnn" if jax.default_backend() == "gpu" and jnp.dtype(dtype).itemsize == 2 else "xla"
    return choice


def _cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """cuDNN's fused attention on (B, N, heads, head_dim). It refuses some shapes, so both are zero-padded: tokens
    to a multiple of 8 (it refuses 197; `bench/attention_padding.py`) with the padding masked out as keys, and the
    head dim to a multiple of 8 (SoT-Tiny's 60, SoT-Base's 66) with the softmax scale of the true head dim."""
    batch, tokens, _, head_dim = q.shape
    padded_tokens, padded_dim = -(-tokens // 8) * 8, -(-head_dim // 8) * 8
    pad = lambda t: jnp.pad(t, ((0, 0), (0, padded_tokens - tokens), (0, 0), (0, padded_dim - head_dim)))  # noqa: E731
    lengths = jnp.full((batch,), tokens, jnp.int32)
    out = jax.nn.dot_product_attention(
        pad(q), pad(k), pad(v), scale=head_dim**-0.5, query_seq_lengths=lengths, key_value_seq_lengths=lengths,
        implementation="cudnn",
    )  # fmt: skip
    return out[:, :tokens, :, :head_dim]


class Attention(nn.Module):
    """Multi-head self-attention through `jax.nn.dot_product_attention` (see `attention_implementation`)."""

    num_heads: int
    qkv_bias: bool
    dtype: Dtype = jnp.float32
    implementation: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, tokens, dim = x.shape
        qkv = Dense(3 * dim, "qkv", use_bias=self.qkv_bias, dtype=self.dtype)(x)
        q, k, v = jnp.moveaxis(qkv.reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads), 2, 0)
        if attention_implementation(self.implementation, self.dtype) == "cudnn":
            x = _cudnn_attention(q, k, v)
        else:
            x = jax.nn.dot_product_attention(q, k, v, implementation="xla")
        x = x.reshape(batch, tokens, dim)
        return Dense(dim, "proj", dtype=self.dtype)(x)


class Block(nn.Module):
    """Pre-norm transformer block; LV-ViT divides each residual branch by `skip_lam`.

    With `pooled_length`, HVT's downsampling follows the residuals: max-pool the token axis (kernel 3,
    stride 2, no padding) and add a new learnable position embedding of the pooled length.
    """

    num_heads: int
    mlp_hidden: int
    qkv_bias: bool
    layer_norm_eps: float
    drop_path: float = 0.0
    dropout: float = 0.0
    skip_lam: float = 1.0
    pooled_length: int | None = None
    dtype: Dtype = jnp.float32
    attention: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = lambda name: nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype, name=name)  # noqa: E731
        drop_path = DropPath(self.drop_path)
        y = Attention(self.num_heads, self.qkv_bias, self.dtype, self.attention, name="attn")(norm("norm1")(x))
        y = Dropout(self.dropout, deterministic=not train)(y)
        x = x + drop_path(y, train) / self.skip_lam
        y = Mlp(self.mlp_hidden, self.dropout, self.dtype, name="mlp")(norm("norm2")(x), train)
        x = x + drop_path(y, train) / self.skip_lam
        if self.pooled_length is not None:
            x = nn.max_pool(x, window_shape=(3,), strides=(2,), padding="VALID")
            x = x + self.param("pos_embed", dense_init, (1, self.pooled_length, x.shape[-1]))
        return x


REMAT_POLICIES = ("nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable")


def remat_policy(name: str | None) -> Any:
    """The `jax.checkpoint_policies` policy that block rematerialization `name` stands for (None: no remat)."""
    if name is not None and name not in REMAT_POLICIES:
        raise UserError(f"unknown remat policy {name!r}; valid: None, {', '.join(REMAT_POLICIES)}")
    return None if name is None else getattr(jax.checkpoint_policies, name)


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """The linear stochastic-depth rule of timm/DeiT: linspace(0, rate, depth)."""
    return [float(r) for r in np.linspace(0.0, rate, depth)]


def sinusoidal_position_embedding(num_positions: int, dim: int) -> np.ndarray:
    """PE[p, 2i] = sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos(p / 10000^(2i/D)); shape (1, num_positions, dim)."""
    positions = np.arange(num_positions, dtype=np.float64)[:, None]
    exponents = 2 * (np.arange(dim) // 2) / dim
    angles = positions / np.power(10000.0, exponents)[None, :]
    angles[:, 0::2], angles[:, 1::2] = np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])
    return angles[None].astype(np.float32)


def token_grid(img_size: int | Sequence[int], stride: int, model: str) -> tuple[int, int]:
    """The (rows, cols) of the token grid for an image size, with a clear error when the stride does not divide."""
    height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if height % stride or width % stride or height <= 0 or width <= 0:
        raise UserError(f"{model}: image size {height}x{width} must be positive and divisible by its stride {stride}")
    return height // stride, width // stride


def check_images(images: jax.Array, img_size: int | Sequence[int], model: str) -> None:
    height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if images.ndim != 4 or images.shape[1:3] != (height, width):
        raise ValueError(
            f"{model} was built for NHWC images of {height}x{width}, got shape {tuple(images.shape)}; "
            f"pass img_size=... to create_model for another size"
        )


def transformer_blocks(
    x: jax.Array,
    *,
    depth: int,
    num_heads: int,
    mlp_hidden: int,
    qkv_bias: bool,
    layer_norm_eps: float,
    drop_path_rate: float,
    train: bool,
    dtype: Dtype,
    skip_lam: float = 1.0,
    pooled_lengths: Sequence[int | None] | None = None,
    attention: str = "auto",
    remat: str | None = None,
) -> jax.Array:
    """`depth` Blocks named blocks_0, blocks_1, … with linearly rising drop path.

    Call it from a compact method: Flax binds the blocks to the calling module. `pooled_lengths[i]` makes block
    i an HVT pooling block. `remat` (a `REMAT_POLICIES` name) keeps only what that policy saves of each block's
    forward for the backward pass and recomputes the rest: less memory per image, more compute.
    """
    block_class = Block if remat is None else nn.remat(Block, policy=remat_policy(remat), static_argnums=(2,))
    for i, rate in enumerate(drop_path_rates(drop_path_rate, depth)):
        pooled = None if pooled_lengths is None else pooled_lengths[i]
        block = block_class(
            num_heads,
            mlp_hidden,
            qkv_bias,
            layer_norm_eps,
            rate,
            skip_lam=skip_lam,
            pooled_length=pooled,
            dtype=dtype,
            attention=attention,
            name=f"blocks_{i}",
        )
        x = block(x, train)
    return x
