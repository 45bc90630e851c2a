"""BERT-family encoders as HF transformers' PyTorch `BertModel` / `RobertaModel` compute them, and their heads.

One encoder serves BERT, SpanBERT (plain BERT weights) and RoBERTa: word + position + token-type embeddings ->
LayerNorm -> post-LN blocks (self-attention with a padding mask, then GELU MLP). RoBERTa differs only in its
position ids, `pad_token_id + cumsum(input_ids != pad_token_id)` on real tokens and `pad_token_id` on padding
(HF's `create_position_ids_from_input_ids`), and in its classification head.

Flax names map to HF's through `hf_module_key` and `HEAD_KEYS`, so `text.from_hf` reads `save_pretrained`
checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from sot_jax.errors import UserError
from sot_jax.models.layers import Dtype

# HF initializes Linear and Embedding weights N(0, initializer_range = 0.02), untruncated.
text_init = nn.initializers.normal(0.02)

# Activation names as HF's ACT2FN spells them: "gelu" is the exact (erf) GELU, "gelu_new" the tanh approximation.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
    "silu": nn.silu,
}
POSITION_IDS = ("absolute", "roberta")


def dense(features: int, name: str, dtype: Dtype, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, kernel_init=text_init, dtype=dtype, name=name)


def layer_norm(epsilon: float, name: str, dtype: Dtype) -> nn.LayerNorm:
    # Two-pass variance, as PyTorch computes it: the fast E[x²] - E[x]² loses digits on post-LN residuals.
    return nn.LayerNorm(epsilon, dtype=dtype, use_fast_variance=False, name=name)


def attend(
    module: nn.Module,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_mask: jax.Array,
    causal: bool,
    dropout_rate: float,
    train: bool,
) -> jax.Array:
    """Softmax attention of (B, L, heads, head_dim) q, k, v with scale head_dim^-0.5; `key_mask` (B, L) is True on
    real tokens. Logits and softmax in float32. Queries whose keys are all masked get some average of the values
    (HF's outputs there are arbitrary as well): compare real positions only."""
    mask = key_mask[:, None, None, :]
    if not train or dropout_rate == 0.0:
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation="xla")
    # jax.nn.dot_product_attention has no dropout; HF drops attention probabilities in training.
    length = q.shape[1]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    if causal:
        mask = mask & jnp.tril(jnp.ones((length, length), bool))
    probs = jax.nn.softmax(jnp.where(mask, logits, jnp.finfo(jnp.float32).min), axis=-1)
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


@jax.custom_vjp
def embedding_lookup(table: jax.Array, ids: jax.Array) -> jax.Array:
    """Rows `ids` of `table`; the gradient is one scatter-add that XLA may not fuse with what produces it. (Fused
    into the backward pass's last elementwise ops, the scatter of BERT-base's three embeddings took 130–170 ms of
    a 210 ms step on an H200; alone it takes under 0.5 ms: bench/embedding_backward.py.)"""
    return jnp.take(table, ids, axis=0)


def _lookup_forward(table, ids):
    return jnp.take(table, ids, axis=0), (table, ids)


def _lookup_backward(residuals, grads):
    table, ids = residuals
    grads = jax.lax.optimization_barrier(grads)
    return jnp.zeros(table.shape, jnp.float32).at[ids].add(grads.astype(jnp.float32)).astype(table.dtype), None


embedding_lookup.defvjp(_lookup_forward, _lookup_backward)


def embedding_table(module_name: str, num: int, features: int) -> jax.Array:
    """The (num, features) table of an `nn.Embed` named `module_name` (its `embedding` parameter, HF's init), to
    read with `embedding_lookup`."""
    return nn.Embed(num, features, embedding_init=text_init, name=module_name).embedding


def check_activation(name: str) -> None:
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")


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
        return nn.Dropout(self.dropout, deterministic=not train)(x)


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
        drop = nn.Dropout(self.dropout, deterministic=not train)
        split = lambda t: t.reshape(batch, length, self.num_heads, dim // self.num_heads)  # noqa: E731
        q, k, v = (split(dense(dim, name, self.dtype)(x)) for name in ("query", "key", "value"))
        y = attend(self, q, k, v, key_mask, False, self.attention_dropout, train).reshape(batch, length, dim)
        x = layer_norm(self.layer_norm_eps, "attention_norm", self.dtype)(
            x + drop(dense(dim, "attention_dense", self.dtype)(y))
        )
        y = ACTIVATIONS[self.activation](dense(self.intermediate_size, "intermediate", self.dtype)(x))
        return layer_norm(self.layer_norm_eps, "output_norm", self.dtype)(
            x + drop(dense(dim, "output_dense", self.dtype)(y))
        )


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
        pooled = nn.Dropout(self.dropout, deterministic=not train)(pooled)
        return dense(self.num_classes, "classifier", self.dtype)(pooled)


class RobertaClassificationHead(nn.Module):
    """HF `RobertaForSequenceClassification`: x[:, 0] -> dropout -> dense -> tanh -> dropout -> out_proj."""

    num_classes: int
    dropout: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        drop = nn.Dropout(self.dropout, deterministic=not train)
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
