"""A fused Pallas kernel pair for one SoT dense layer: y = Conv3x3(ReLU(Conv1x1(ReLU(x)))), no bias, padding 1.

An experiment kept in bench/ (not the package): correct, and 1.02–1.17× faster than XLA per layer on an H200, but
the whole stem with it was slower than XLA's (BENCHMARKS.md, rounds two and three), so the model has no option for
it. `bench/dense_kernel.py` checks and times it on a GPU; `tests/test_dense_kernel.py` checks it in interpret mode.

`sot_jax.models.sot.DenseLayer` computes this as two cuDNN convolutions with the 32-channel bottleneck written to
and read back from HBM, and `DenseBlock` concatenates after every layer: many small memory-bound kernels. Here the
forward is one kernel and the backward one more; x is read from HBM once per tile by each (the backward reloads
each x chunk a second time, from cache).

Layout. Each image's pixels are a flat axis of H·W rows (NHWC is already pixel-major), so a 3×3 tap (di, dj) is a
shift of the flat axis by di·W + dj; a shift that crosses a row end is masked by the pixel's column, and one that
leaves the image reads zeros. Nothing is padded in HBM except the 16-channel dy of the backward.

Forward (`_forward_kernel`, grid (B, tiles)): a program owns P output pixels [q0, q0 + P). Phase 1 computes the
bottleneck h = ReLU(ReLU(x) @ w1) for [q0 - halo, q0 + P + halo) (halo ≥ W + 1: one image row and one pixel) in
chunks of PC pixels, x loaded in power-of-two channel blocks (176 = 64 + 64 + 32 + 16, no channel masks), and
stores it in a per-program scratch buffer: an extra output of (P + 2·halo) × 32 values per program that is read
back at once, so it lives in L2 (Pallas's Triton lowering has no shared-memory scratch, and a register tensor
cannot be shifted). After a block barrier (bar.sync, which makes the CTA's global writes visible to its other
threads) phase 2 reads the nine shifted windows of that buffer, masks the columns that wrapped, and accumulates
nine (PC × 32) @ (32 × 16) matmuls into the output tile. Pixels outside the image have x = 0, hence h = 0 (no
bias), which is exactly the conv's zero padding. Cost over the ideal: the halo's conv1 is recomputed (≤ 1.5× the
1×1 conv FLOPs, its x rows mostly L2 hits) and the scratch traffic (~64–100 bytes per pixel in bf16).

Backward (`_backward_kernel`, all Pallas, grid (B, tiles)): a program walks its pixels in chunks, recomputes
h_pre = ReLU(x) @ w1 (no halo needed), gathers the nine shifted windows of dy (zero-padded by W + 1 flat pixels on
both sides, so every window is in bounds), and computes dh = Σ dy_shift @ w2[tap]ᵀ, dw2[tap] += hᵀ @ dy_shift,
dh_pre = dh · [h_pre > 0], dx = (dh_pre @ w1ᵀ) · [x > 0], dw1 += ReLU(x)ᵀ @ dh_pre. dx is stored per chunk;
dw1 and dw2 are per-program float32 partial sums (loop carries) reduced by XLA. `backward="xla"` instead
differentiates `dense_layer_reference` with XLA (a fallback should the Pallas backward not compile somewhere).

All matmuls accumulate in float32; the bottleneck is rounded to the input dtype before the second conv, as the
bf16 model does. Float32 dots use full IEEE precision (Triton's default for float32 inputs in Pallas).

Backend: Pallas's Triton lowering (`plt.CompilerParams` selects it explicitly; since jax 0.10 a plain
`pl.pallas_call` on GPU lowers to Mosaic GPU, whose `pl.pallas_call` path is itself deprecated for
`plgpu.kernel`). Triton was chosen because the kernel only needs generic Pallas (pointer loads/stores with
masks, `jnp.dot`, `fori_loop`), which also runs in interpret mode on CPU, so it is testable here; a Mosaic GPU
version (wgmma, TMA, the bottleneck in shared memory) is the way to remove the L2 scratch round trip, but needs
warpgroup-shaped tiles and cannot be checked without a GPU. Triton constraints respected: every block dim is a
power of two ≥ 16, no value slicing or gathers (shifts go through memory), static shapes only.
Checked off-GPU: both kernels lower for "cuda" (`jit(...).trace(...).lower(lowering_platforms=("cuda",))`) and
the emitted Triton IR compiles to sm_90 PTX/cubin with the public Triton 3.3.1 (bf16 and float32, W = 28…112,
C = 64…208, no local-memory spills in the PTX). On an H200 (`bench/dense_kernel.py`) the bf16 forward and dx equal
XLA's bit for bit; the speed gain per layer is small, far from the bandwidth bound (BENCHMARKS.md change 11).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

BOTTLENECK = 32
GROWTH = 16
TAPS = tuple((di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1))


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static tiling for one (H, W, C) shape; hashable, so it can be a custom_vjp nondiff argument."""

    height: int
    width: int
    channels: int
    chunk: int  # PC: pixels per matmul chunk (power of two)
    halo: int  # multiple of chunk, ≥ W + 1
    tile: int  # P: output pixels per forward program, multiple of chunk
    backward_tile: int  # pixels per backward program, multiple of chunk
    channel_block: int  # KC: the most channels per x load (power of two)
    num_warps: int
    interpret: bool
    backward: str

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def channel_blocks(self) -> tuple[tuple[int, int], ...]:
        """(start, size) of each x load: KC-channel blocks, then the binary digits of the rest (176 = 64 + 64 +
        32 + 16), so every block is a power of two and none needs a channel mask (Pallas also rejects static
        slices past the end of a ref)."""
        blocks, start = [], 0
        for size in (self.channel_block, *(1 << i for i in range(self.channel_block.bit_length() - 2, 3, -1))):
            while self.channels - start >= size:
                blocks.append((start, size))
                start += size
        return tuple(blocks)

    @property
    def tiles(self) -> int:
        return -(-self.pixels // self.tile)

    @property
    def backward_tiles(self) -> int:
        return -(-self.pixels // self.backward_tile)

    @property
    def scratch_chunks(self) -> int:
        return (2 * self.halo + self.tile) // self.chunk


def _make_config(
    shape: Sequence[int],
    block_pixels: int | None,
    backward_block_pixels: int | None,
    channel_block: int | None,
    num_warps: int,
    interpret: bool,
    backward: str,
) -> _Config:
    _, height, width, channels = shape
    pixels = height * width
    # Chunks of ≥ W + 1 pixels keep the halo to one chunk per side for small W; 64 rows per dot otherwise.
    chunk = min(64, max(16, _next_pow2(width + 1)))
    halo = _round_up(width + 1, chunk)
    # 4 halos per tile bounds the recomputed halo to 1.5× the tile; no point in tiles larger than the image.
    tile = block_pixels or min(max(4 * halo, 256), _round_up(pixels, chunk))
    backward_tile = backward_block_pixels or min(2048, _round_up(pixels, chunk))
    channel_block = channel_block or 64
    if channels % 16:
        raise ValueError(f"C={channels} channels must be a multiple of 16 (SoT's are 64 + 16k)")
    for name, value in (("block_pixels", tile), ("backward_block_pixels", backward_tile)):
        if value % chunk:
            raise ValueError(f"{name}={value} must be a multiple of the {chunk}-pixel chunk for W={width}")
    if channel_block < 16 or channel_block & (channel_block - 1):
        raise ValueError(f"channel_block={channel_block} must be a power of two ≥ 16")
    if backward not in ("pallas", "xla"):
        raise ValueError(f"backward must be 'pallas' or 'xla', got {backward!r}")
    return _Config(
        height, width, channels, chunk, halo, tile, backward_tile, channel_block, num_warps, interpret, backward
    )


def _column_ok(cols: jax.Array, dj: int, width: int) -> jax.Array:
    """Whether column cols + dj is inside the image (the flat shift by dj did not wrap to another row)."""
    if dj < 0:
        return cols >= -dj
    return cols < width - dj


def _load_x(x_ref, b, start, block: tuple[int, int], rows_ok: jax.Array, cfg: _Config) -> jax.Array:
    """(PC, size) pixels × channels of image b, zero where the pixel is outside the image."""
    c0, size = block
    mask = jnp.broadcast_to(rows_ok[:, None], (cfg.chunk, size))
    return plt.load(x_ref.at[b, pl.ds(start, cfg.chunk), pl.ds(c0, size)], mask=mask, other=0)


def _bottleneck_pre(x_ref, w1_ref, b, start, rows_ok: jax.Array, cfg: _Config) -> jax.Array:
    """ReLU(x) @ w1 for PC pixels from `start`, float32 (PC, 32)."""
    acc = jnp.zeros((cfg.chunk, BOTTLENECK), jnp.float32)
    for c0, size in cfg.channel_blocks:
        xk = jnp.maximum(_load_x(x_ref, b, start, (c0, size), rows_ok, cfg), 0)
        acc += jnp.dot(xk, w1_ref[pl.ds(c0, size), :], preferred_element_type=jnp.float32)
    return acc


def _forward_kernel(x_ref, w1_ref, w2_ref, y_ref, h_ref, *, cfg: _Config):
    b, t = pl.program_id(0), pl.program_id(1)
    q0 = t * cfg.tile
    pc = cfg.chunk

    # Phase 1: bottleneck over the tile and its halo. q0 and halo are multiples of PC, so a chunk is either
    # wholly before the image (all masked) or starts inside/after it: no negative partial windows.
    def phase1(c, carry):
        start = q0 - cfg.halo + c * pc
        pix = start + jnp.arange(pc)
        rows_ok = (pix >= 0) & (pix < cfg.pixels)
        h = jnp.maximum(_bottleneck_pre(x_ref, w1_ref, b, start, rows_ok, cfg), 0)
        h_ref[b, t, pl.ds(c * pc, pc), :] = h.astype(h_ref.dtype)
        return carry

    jax.lax.fori_loop(0, cfg.scratch_chunks, phase1, 0)
    if not cfg.interpret:
        # Phase 2 reads bottleneck rows written by other threads of this program.
        plt.debug_barrier()

    # Phase 2: the nine taps as shifted windows of the scratch buffer.
    def phase2(o, carry):
        pix = q0 + o * pc + jnp.arange(pc)
        cols = pix % cfg.width
        acc = jnp.zeros((pc, GROWTH), jnp.float32)
        for tap, (di, dj) in enumerate(TAPS):
            h = h_ref[b, t, pl.ds(cfg.halo + o * pc + di * cfg.width + dj, pc), :]
            if dj:
                h = jnp.where(_column_ok(cols, dj, cfg.width)[:, None], h, jnp.zeros_like(h))
            acc += jnp.dot(h, w2_ref[pl.ds(tap * BOTTLENECK, BOTTLENECK), :], preferred_element_type=jnp.float32)
        y_ref[b, pl.ds(q0 + o * pc, pc), :] = acc.astype(y_ref.dtype)
        return carry

    jax.lax.fori_loop(0, cfg.tile // pc, phase2, 0)


def _backward_kernel(x_ref, w1_ref, w1t_ref, w2_ref, w2t_ref, dy_ref, dx_ref, dw1_ref, dw2_ref, *, cfg: _Config):
    b, t = pl.program_id(0), pl.program_id(1)
    pc, width = cfg.chunk, cfg.width
    dtype = x_ref.dtype
    contract_rows = (((0,), (0,)), ((), ()))  # aᵀ @ b over the pixel axis

    def body(o, carry):
        dw1, dw2 = carry
        start = t * cfg.backward_tile + o * pc
        pix = start + jnp.arange(pc)
        rows_ok = pix < cfg.pixels
        cols = pix % width
        h_pre = _bottleneck_pre(x_ref, w1_ref, b, start, rows_ok, cfg)
        h = jnp.maximum(h_pre, 0).astype(dtype)
        # y[q] = Σ_tap h[q + off] w2[tap]: pixel p = q + off meets dy[p - off]; dy is padded by W + 1 in front.
        dh = jnp.zeros((pc, BOTTLENECK), jnp.float32)
        new_dw2 = []
        for tap, (di, dj) in enumerate(TAPS):
            dys = dy_ref[b, pl.ds(width + 1 + start - di * width - dj, pc), :]
            if dj:
                dys = jnp.where(_column_ok(cols, -dj, width)[:, None], dys, jnp.zeros_like(dys))
            dh += jnp.dot(dys, w2t_ref[pl.ds(tap * GROWTH, GROWTH), :], preferred_element_type=jnp.float32)
            new_dw2.append(dw2[tap] + jax.lax.dot_general(h, dys, contract_rows, preferred_element_type=jnp.float32))
        dh_pre = jnp.where(h_pre > 0, dh, 0.0).astype(dtype)
        new_dw1 = []
        for k, (c0, size) in enumerate(cfg.channel_blocks):
            xk = _load_x(x_ref, b, start, (c0, size), rows_ok, cfg)
            dxk = jnp.dot(dh_pre, w1t_ref[:, pl.ds(c0, size)], preferred_element_type=jnp.float32)
            dxk = jnp.where(xk > 0, dxk, 0.0).astype(dx_ref.dtype)
            mask = jnp.broadcast_to(rows_ok[:, None], (pc, size))
            plt.store(dx_ref.at[b, pl.ds(start, pc), pl.ds(c0, size)], dxk, mask=mask)
            a = jnp.maximum(xk, 0)
            new_dw1.append(dw1[k] + jax.lax.dot_general(a, dh_pre, contract_rows, preferred_element_type=jnp.float32))
        return tuple(new_dw1), tuple(new_dw2)

    init = (
        tuple(jnp.zeros((size, BOTTLENECK), jnp.float32) for _, size in cfg.channel_blocks),
        tuple(jnp.zeros((BOTTLENECK, GROWTH), jnp.float32) for _ in TAPS),
    )
    dw1, dw2 = jax.lax.fori_loop(0, cfg.backward_tile // pc, body, init)
    for k, (c0, size) in enumerate(cfg.channel_blocks):
        dw1_ref[b, t, pl.ds(c0, size), :] = dw1[k]
    for tap in range(len(TAPS)):
        dw2_ref[b, t, pl.ds(tap * BOTTLENECK, BOTTLENECK), :] = dw2[tap]


def _compiler_params(cfg: _Config) -> plt.CompilerParams:
    # Explicit Triton params select the Triton lowering (the default GPU lowering is Mosaic GPU since jax 0.10).
    return plt.CompilerParams(num_warps=cfg.num_warps, num_stages=1)


def _forward(x: jax.Array, w1: jax.Array, w2: jax.Array, cfg: _Config) -> jax.Array:
    batch = x.shape[0]
    flat = x.reshape(batch, cfg.pixels, cfg.channels)
    y, _ = pl.pallas_call(
        functools.partial(_forward_kernel, cfg=cfg),
        out_shape=(
            jax.ShapeDtypeStruct((batch, cfg.tiles * cfg.tile, GROWTH), x.dtype),
            # Per-program bottleneck scratch (tile + halo); written and read back by the same program.
            jax.ShapeDtypeStruct((batch, cfg.tiles, cfg.scratch_chunks * cfg.chunk, BOTTLENECK), x.dtype),
        ),
        grid=(batch, cfg.tiles),
        compiler_params=_compiler_params(cfg),
        interpret=cfg.interpret,
        name="dense_layer_fwd",
    )(flat, w1, w2.reshape(9 * BOTTLENECK, GROWTH))
    return y[:, : cfg.pixels].reshape(batch, cfg.height, cfg.width, GROWTH)


def _backward_pallas(
    x: jax.Array, w1: jax.Array, w2: jax.Array, dy: jax.Array, cfg: _Config
) -> tuple[jax.Array, jax.Array, jax.Array]:
    batch, width = x.shape[0], cfg.width
    flat = x.reshape(batch, cfg.pixels, cfg.channels)
    # dy zero-padded by W + 1 pixels in front and enough behind that every shifted window is in bounds.
    back = cfg.backward_tiles * cfg.backward_tile - cfg.pixels + width + 1
    dy_flat = jnp.pad(dy.reshape(batch, cfg.pixels, GROWTH).astype(x.dtype), ((0, 0), (width + 1, back), (0, 0)))
    w2f = w2.reshape(9, BOTTLENECK, GROWTH)
    tiles = cfg.backward_tiles
    dx, dw1, dw2 = pl.pallas_call(
        functools.partial(_backward_kernel, cfg=cfg),
        out_shape=(
            jax.ShapeDtypeStruct(flat.shape, x.dtype),
            jax.ShapeDtypeStruct((batch, tiles, cfg.channels, BOTTLENECK), jnp.float32),
            jax.ShapeDtypeStruct((batch, tiles, 9 * BOTTLENECK, GROWTH), jnp.float32),
        ),
        grid=(batch, tiles),
        compiler_params=_compiler_params(cfg),
        interpret=cfg.interpret,
        name="dense_layer_bwd",
    )(
        flat,
        w1,
        w1.T,
        w2f.reshape(9 * BOTTLENECK, GROWTH),
        w2f.transpose(0, 2, 1).reshape(9 * GROWTH, BOTTLENECK),
        dy_flat,
    )
    dw1 = dw1.sum((0, 1)).astype(w1.dtype)
    dw2 = dw2.sum((0, 1)).reshape(3, 3, BOTTLENECK, GROWTH).astype(w2.dtype)
    return dx.reshape(x.shape), dw1, dw2


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _dense_layer(x: jax.Array, w1: jax.Array, w2: jax.Array, cfg: _Config) -> jax.Array:
    return _forward(x, w1, w2, cfg)


def _dense_layer_fwd(x, w1, w2, cfg):
    # Only the inputs are saved: the backward recomputes the bottleneck (2·32 bytes per pixel less HBM).
    return _forward(x, w1, w2, cfg), (x, w1, w2)


def _dense_layer_bwd(cfg, residuals, dy):
    x, w1, w2 = residuals
    if cfg.backward == "xla":
        _, vjp = jax.vjp(dense_layer_reference, x, w1, w2)
        return vjp(dy.astype(x.dtype))
    return _backward_pallas(x, w1, w2, dy, cfg)


_dense_layer.defvjp(_dense_layer_fwd, _dense_layer_bwd)


def dense_layer(
    x: jax.Array,
    w1: jax.Array,
    w2: jax.Array,
    *,
    interpret: bool = False,
    block_pixels: int | None = None,
    backward_block_pixels: int | None = None,
    channel_block: int | None = None,
    num_warps: int = 4,
    backward: str = "pallas",
) -> jax.Array:
    """Conv3x3(ReLU(Conv1x1(ReLU(x)))) of one dense layer with the Pallas kernels; equals `dense_layer_reference`.

    x: (B, H, W, C) in bf16 or float32; w1: (C, 32) (or the (1, 1, C, 32) conv kernel); w2: (3, 3, 32, 16).
    Weights are cast to x.dtype, as the model's `Conv` does. Returns (B, H, W, 16) in x.dtype. The tiling
    arguments default to a choice for the shape (see `_make_config`); `interpret=True` runs on CPU.
    """
    w1 = w1.reshape(x.shape[-1], BOTTLENECK).astype(x.dtype)
    w2 = w2.astype(x.dtype)
    cfg = _make_config(x.shape, block_pixels, backward_block_pixels, channel_block, num_warps, interpret, backward)
    return _dense_layer(x, w1, w2, cfg)


def dense_layer_reference(x: jax.Array, w1: jax.Array, w2: jax.Array) -> jax.Array:
    """The same layer with XLA convolutions, as `sot.DenseLayer` computes it (dtype = x.dtype)."""
    dims = ("NHWC", "HWIO", "NHWC")
    w1 = w1.reshape(1, 1, x.shape[-1], BOTTLENECK).astype(x.dtype)
    h = jax.lax.conv_general_dilated(jax.nn.relu(x), w1, (1, 1), "VALID", dimension_numbers=dims)
    w2 = w2.astype(x.dtype)
    return jax.lax.conv_general_dilated(jax.nn.relu(h), w2, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dims)


def dense_block(
    x: jax.Array, w1s: Sequence[jax.Array], w2s: Sequence[jax.Array], *, impl: str = "xla", **kernel_kwargs
) -> jax.Array:
    """`sot.DenseBlock`: each layer sees the concatenation of x and all earlier outputs; returns it with the last.

    impl "xla" uses `dense_layer_reference`, "pallas" `dense_layer` (kernel_kwargs go to it, e.g. interpret).
    """
    if impl not in ("xla", "pallas"):
        raise ValueError(f"impl must be 'xla' or 'pallas', got {impl!r}")
    features = [x]
    for w1, w2 in zip(w1s, w2s, strict=True):
        inputs = jnp.concatenate(features, axis=-1)
        if impl == "pallas":
            features.append(dense_layer(inputs, w1, w2, **kernel_kwargs))
        else:
            features.append(dense_layer_reference(inputs, w1, w2))
    return jnp.concatenate(features, axis=-1)
