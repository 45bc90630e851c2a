"""BERT-family encoders as HF transformers' PyTorch `BertModel` / `RobertaModel` compute them, and their heads.

One encoder serves BERT, SpanBERT (plain BERT weights) and RoBERTa: word + position + token-type embeddings ->
LayerNorm -> post-LN blocks (self-attention with a padding mask, then GELU MLP). RoBERTa differs only in its
position ids, `pad_token_id + cumsum(input_ids != pad_token_id)` on real tokens and `pad_token_id` on padding
(HF's `create_position_ids_from_input_ids`), and in its classification head.

Flax names map to HF's through `hf_module_key` and `HEAD_KEYS`, so `hf_conversion.from_hf` reads `save_pretrained`
checkpoints.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sot_jax.errors import UserError
from sot_jax.models.dropout import Dropout
from sot_jax.models.layers import Dtype
from sot_jax.models.text_layers import attend, dense, embedding_lookup, embedding_table, feed_forward, layer_norm

POSITION_IDS = ("absolute", "roberta")


class BertEmbeddings(nn.Module):
    vocab_size: int
    hidden_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    position_ids: str = "absolute"
    pad_token_id: int = 0
    dropout: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array | None, train: bool) -> jax.Array:
        length = input_ids.shape[1]
        if self.position_ids == "roberta":
            if self.pad_token_id + length >= self.max_position_embeddings:
                raise UserError(
                    f"RoBERTa reads {length} tokens at positions up to {self.pad_token_id + length}, past its "
                    f"{self.max_position_embeddings} position embeddings; use at most "
                    f"{self.max_position_embeddings - self.pad_token_id - 1} tokens"
                )
            real = (input_ids != self.pad_token_id).astype(jnp.int32)
            positions = jnp.cumsum(real, axis=1) * real + self.pad_token_id
        else:
            if length > self.max_position_embeddings:
                raise UserError(f"{length} tokens exceed the {self.max_position_embeddings} position embeddings")
            positions = jnp.arange(length)[None]
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        tables = (
            ("word_embeddings", self.vocab_size, input_ids),
            ("token_type_embeddings", self.type_vocab_size, token_type_ids),
            ("position_embeddings", self.max_position_embeddings, positions),
        )
        x = sum(embedding_lookup(embedding_table(name, n, self.hidden_size), ids) for name, n, ids in tables)
        x = x.astype(self.dtype)
        x = layer_norm(self.layer_norm_eps, "LayerNorm", self.dtype)(x)
        return Dropout(self.dropout, deterministic=not train)(x)


class BertLayer(nn.Module):
    """Post-LN block: x = LN(x + Attn(x)); x = LN(x + MLP(x)). Flax names -> HF in `_LAYER_KEYS`."""

    num_heads: int
    intermediate_size: int
    layer_norm_eps: float
    activation: str = "gelu"
    dropout: float = 0.1
    attention_dropout: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, key_mask: jax.Array, train: bool) -> jax.Array:
        batch, length, dim = x.shape
        drop = Dropout(self.dropout, deterministic=not train)
        split = lambda t: t.reshape(batch, length, self.num_heads, dim // self.num_heads)  # noqa: E731
        q, k, v = (split(dense(dim, name, self.dtype)(x)) for name in ("query", "key", "value"))
        y = attend(self, q, k, v, key_mask, False, self.attention_dropout, train).reshape(batch, length, dim)
        x = layer_norm(self.layer_norm_eps, "attention_norm", self.dtype)(
            x + drop(dense(dim, "attention_dense", self.dtype)(y))
        )
        y = feed_forward(x, self.intermediate_size, self.activation, self.dtype, ("intermediate", "output_dense"))
        return layer_norm(self.layer_norm_eps, "output_norm", self.dtype)(x + drop(y))


class BertEncoder(nn.Module):
    """input_ids (B, L) int, attention_mask (B, L) (1 = real token), token_type_ids (B, L) or None (zeros) ->
    last hidden states (B, L, hidden_size) in `dtype`."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float = 1e-12
    activation: str = "gelu"
    position_ids: str = "absolute"  # POSITION_IDS: "roberta" for RoBERTa
    pad_token_id: int = 0
    dropout: float = 0.1
    attention_dropout: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array, token_type_ids: jax.Array | None, train: bool
    ) -> jax.Array:
        x = BertEmbeddings(
            self.vocab_size,
            self.hidden_size,
            self.max_position_embeddings,
            self.type_vocab_size,
            self.layer_norm_eps,
            self.position_ids,
            self.pad_token_id,
            self.dropout,
            self.dtype,
            name="embeddings",
        )(input_ids, token_type_ids, train)
        key_mask = attention_mask.astype(bool)
        for i in range(self.num_layers):
            x = BertLayer(
                self.num_heads,
                self.intermediate_size,
                self.layer_norm_eps,
                self.activation,
                self.dropout,
                self.attention_dropout,
                self.dtype,
                name=f"layer_{i}",
            )(x, key_mask, train)
        return x


class BertPoolerHead(nn.Module):
    """HF `BertForSequenceClassification`: tanh(pooler(x[:, 0])) -> dropout -> classifier."""

    num_classes: int
    dropout: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        pooled = jnp.tanh(dense(x.shape[-1], "pooler", self.dtype)(x[:, 0]))
        pooled = Dropout(self.dropout, deterministic=not train)(pooled)
        return dense(self.num_classes, "classifier", self.dtype)(pooled)


class RobertaClassificationHead(nn.Module):
    """HF `RobertaForSequenceClassification`: x[:, 0] -> dropout -> dense -> tanh -> dropout -> out_proj."""

    num_classes: int
    dropout: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        drop = Dropout(self.dropout, deterministic=not train)
        y = jnp.tanh(dense(x.shape[-1], "dense", self.dtype)(drop(x[:, 0])))
        return dense(self.num_classes, "out_proj", self.dtype)(drop(y))


# Flax module names inside layer_i -> HF names inside encoder.layer.i.
_LAYER_KEYS = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_dense": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense",
    "output_dense": "output.dense",
    "output_norm": "output.LayerNorm",
}
# The heads' Flax modules -> HF module keys (base-model prefix stripped: `bert.pooler.dense` -> `pooler.dense`).
HEAD_KEYS = {
    "pooler": {("pooler",): "pooler.dense", ("classifier",): "classifier"},
    "roberta_head": {("dense",): "classifier.dense", ("out_proj",): "classifier.out_proj"},
}


def hf_module_key(path: tuple[str, ...]) -> str:
    """The HF module key (base-model prefix stripped) of an encoder module path, e.g. ("layer_3", "query") ->
    "encoder.layer.3.attention.self.query"."""
    if path[0].startswith("layer_"):
        return f"encoder.layer.{path[0].removeprefix('layer_')}.{_LAYER_KEYS[path[1]]}"
    return ".".join(path)
