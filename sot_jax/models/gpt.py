"""OpenAI GPT (GPT-1) and GPT-2 decoders as HF transformers' PyTorch `OpenAIGPTModel` / `GPT2Model` compute them,
and HF's sequence-classification head for both.

GPT-1: token + learned position embeddings -> dropout -> post-LN blocks (h = LN(x + Attn(x)); LN(h + MLP(h))),
no final LayerNorm. GPT-2: the same embeddings -> pre-LN blocks (x + Attn(LN(x)); x + MLP(LN(x))) -> final `ln_f`.
Attention is causal and masks padding keys; position ids are 0..L-1 whatever the padding (as HF without explicit
position ids). Both use HF's `gelu_new` (tanh approximation) by default: HF's OpenAIGPT maps its `afn="gelu"` to
`gelu_new`. HF quirk kept: `token_type_ids`, when given, are embedded with the *token* embedding and added, so
pass None unless you mean that. HF stores these layers as `Conv1D` with (in, out) weights, Flax's kernel layout.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sot_jax.errors import UserError
from sot_jax.models.dropout import Dropout
from sot_jax.models.layers import Dtype
from sot_jax.models.text_layers import attend, dense, embedding_lookup, embedding_table, feed_forward, layer_norm

STYLES = ("gpt", "gpt2")


class GPTBlock(nn.Module):
    """One block; `pre_norm` picks GPT-2's layout. Flax names -> HF in `_BLOCK_KEYS`."""

    num_heads: int
    intermediate_size: int
    layer_norm_eps: float
    pre_norm: bool
    activation: str = "gelu_new"
    dropout: float = 0.1
    attention_dropout: float = 0.1
    dtype: Dtype = jnp.float32

    def attention(self, x: jax.Array, key_mask: jax.Array, train: bool) -> jax.Array:
        batch, length, dim = x.shape
        qkv = dense(3 * dim, "c_attn", self.dtype)(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
        y = attend(self, qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], key_mask, True, self.attention_dropout, train)
        y = dense(dim, "attn_proj", self.dtype)(y.reshape(batch, length, dim))
        return Dropout(self.dropout, deterministic=not train)(y)

    def mlp(self, x: jax.Array, train: bool) -> jax.Array:
        y = feed_forward(x, self.intermediate_size, self.activation, self.dtype, ("c_fc", "mlp_proj"))
        return Dropout(self.dropout, deterministic=not train)(y)

    @nn.compact
    def __call__(self, x: jax.Array, key_mask: jax.Array, train: bool) -> jax.Array:
        ln_1 = layer_norm(self.layer_norm_eps, "ln_1", self.dtype)
        ln_2 = layer_norm(self.layer_norm_eps, "ln_2", self.dtype)
        if self.pre_norm:
            x = x + self.attention(ln_1(x), key_mask, train)
            return x + self.mlp(ln_2(x), train)
        x = ln_1(x + self.attention(x, key_mask, train))
        return ln_2(x + self.mlp(x, train))


class GPTEncoder(nn.Module):
    """input_ids (B, L) int, attention_mask (B, L) (1 = real token), token_type_ids (see the module docstring) ->
    last hidden states (B, L, hidden_size) in `dtype`. `style` "gpt" (GPT-1) or "gpt2" sets the layout and names."""

    style: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    layer_norm_eps: float = 1e-5
    activation: str = "gelu_new"
    dropout: float = 0.1
    attention_dropout: float = 0.1
    embedding_dropout: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array, token_type_ids: jax.Array | None, train: bool
    ) -> jax.Array:
        length = input_ids.shape[1]
        if length > self.max_position_embeddings:
            raise UserError(f"{length} tokens exceed the {self.max_position_embeddings} position embeddings")
        gpt2 = self.style == "gpt2"
        width = self.hidden_size
        tokens = embedding_table("wte" if gpt2 else "tokens_embed", self.vocab_size, width)
        positions = embedding_table("wpe" if gpt2 else "positions_embed", self.max_position_embeddings, width)
        x = embedding_lookup(tokens, input_ids) + embedding_lookup(positions, jnp.arange(length)[None])
        if token_type_ids is not None:
            x = x + embedding_lookup(tokens, token_type_ids)
        x = x.astype(self.dtype)
        x = Dropout(self.embedding_dropout, deterministic=not train)(x)
        key_mask = attention_mask.astype(bool)
        for i in range(self.num_layers):
            x = GPTBlock(
                self.num_heads,
                self.intermediate_size,
                self.layer_norm_eps,
                gpt2,
                self.activation,
                self.dropout,
                self.attention_dropout,
                self.dtype,
                name=f"h_{i}",
            )(x, key_mask, train)
        if gpt2:
            x = layer_norm(self.layer_norm_eps, "ln_f", self.dtype)(x)
        return x


def last_token_index(attention_mask: jax.Array) -> jax.Array:
    """(B,) index of the last position where the mask is 1 (0 when none is): HF's rightmost non-pad token."""
    return jnp.max(jnp.arange(attention_mask.shape[1]) * (attention_mask != 0), axis=1)


class LastTokenScore(nn.Module):
    """HF `GPT2ForSequenceClassification` / `OpenAIGPTForSequenceClassification`: a bias-free `score` Linear at
    the last real token. HF finds that token by `input_ids != pad_token_id`; here the attention mask says it."""

    num_classes: int
    dropout: float = 0.0  # HF has none; `head_dropout` adds it before `score`
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, attention_mask: jax.Array, train: bool) -> jax.Array:
        last = x[jnp.arange(x.shape[0]), last_token_index(attention_mask)]
        last = Dropout(self.dropout, deterministic=not train)(last)
        return dense(self.num_classes, "score", self.dtype, use_bias=False)(last)


# Flax module names inside h_i -> HF names inside h.i.
_BLOCK_KEYS = {"c_attn": "attn.c_attn", "attn_proj": "attn.c_proj", "c_fc": "mlp.c_fc", "mlp_proj": "mlp.c_proj"}
HEAD_KEYS = {"score": {("score",): "score"}}


def hf_module_key(path: tuple[str, ...]) -> str:
    """The HF module key (prefix `transformer.` stripped) of an encoder module path, e.g. ("h_0", "c_fc") ->
    "h.0.mlp.c_fc"."""
    if path[0].startswith("h_"):
        return f"h.{path[0].removeprefix('h_')}.{_BLOCK_KEYS.get(path[1], path[1])}"
    return ".".join(path)
