"""Language transformers with the SoT text head: `TextModel` (a BERT or GPT encoder and a head) and its creation:
`create_text_model` builds one by name with checked options (`TEXT_OPTIONS`, typed by `OPTION_TYPES`), and
`inherit_architecture` completes a fine-tuning config with a checkpoint's architecture. HF checkpoints become these
models through `hf_conversion.from_hf`.

    model = create_text_model("bert_base_sot", num_classes=2)
    variables = model.init({"params": key}, input_ids, attention_mask=mask, token_type_ids=types, train=False)
    logits = model.apply(variables, input_ids, attention_mask=mask, token_type_ids=types, train=False)  # float32
    hidden = model.apply(variables, input_ids, attention_mask=mask, method="encode")  # (B, L, hidden_size)

Training: `apply(..., train=True, rngs={"dropout": key}, mutable=["batch_stats"])` returns (logits, updates); only
the SoT text head holds batch statistics. `attention_mask` is 1 on real tokens (None: all real);
`token_type_ids` None means zeros (BERT) or nothing (GPT; HF adds the token embedding of given type ids).

Names (`registry.TEXT_MODELS`): bert_base, bert_large (also SpanBERT weights), roberta_base, roberta_large, gpt
(OpenAI GPT-1), gpt2, each with the family's HF baseline head, and each with `_sot` for the SoT text head
(`text_heads.SoTTextHead`).
Heads (`head=`): the family's baseline ("pooler": `BertForSequenceClassification`; "roberta_head":
`RobertaForSequenceClassification`; "score": `GPT2ForSequenceClassification`), "sot_text", or a vision head
(`heads.ClassifierHead`: cls, gap, gem, ggem, gcp, mgcrp, with its options) over the final hidden states.

GPT has no class token. For the SoT and vision heads the class token is the last real token (where GPT's baseline
reads its logits) and the word tokens are every other position, the padding included unless `mask_padding`
(the same rule as the official BERT head, whose word tokens are all positions after [CLS]). `mask_padding=True`
makes the SoT text head count real tokens only; the vision heads cannot exclude padding (they pool every
position) and refuse it.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sot_jax import ops
from sot_jax.errors import UserError, check_choice, check_rate
from sot_jax.models import bert, gpt, text_heads
from sot_jax.models.heads import POOLINGS, ClassifierHead, check_head_options
from sot_jax.models.layers import Dtype
from sot_jax.models.registry import BASELINE_HEADS, TEXT_MODELS, get_text_spec
from sot_jax.models.text_layers import check_activation

BERT_FAMILIES = ("bert", "roberta")
VISION_HEADS = ("cls", *POOLINGS)

# Per family: the trunk defaults (HF's configs of bert-base-cased, the SoT recipe's model; roberta-base; openai-gpt;
# gpt2), which every name shares apart from the sizes.
_TRUNK_DEFAULTS: dict[str, dict[str, Any]] = {
    "bert": {
        "vocab_size": 28996, "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "activation": "gelu", "pad_token_id": 0, "dropout": 0.1, "attention_dropout": 0.1,
    },
    "roberta": {
        "vocab_size": 50265, "max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-5,
        "activation": "gelu", "pad_token_id": 1, "dropout": 0.1, "attention_dropout": 0.1,
    },
    "gpt": {
        "vocab_size": 40478, "max_position_embeddings": 512, "layer_norm_eps": 1e-5, "activation": "gelu_new",
        "dropout": 0.1, "attention_dropout": 0.1, "embedding_dropout": 0.1,
    },
    "gpt2": {
        "vocab_size": 50257, "max_position_embeddings": 1024, "layer_norm_eps": 1e-5, "activation": "gelu_new",
        "dropout": 0.1, "attention_dropout": 0.1, "embedding_dropout": 0.1,
    },
}  # fmt: skip
_SIZE_OPTIONS = ("hidden_size", "num_layers", "num_heads", "intermediate_size")
# create_text_model's keywords. The trunk's apply to the families whose defaults name them.
TRUNK_OPTIONS = (
    *_SIZE_OPTIONS, "vocab_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "activation",
    "pad_token_id", "dropout", "attention_dropout", "embedding_dropout",
)  # fmt: skip
SOT_TEXT_OPTIONS = ("svpn", "svpn_alpha", "sot_q", "sot_k")
VISION_HEAD_OPTIONS = ("fusion", "svpn", "svpn_alpha", "wr_dim", "mgcrp_heads", "gem_groups", "gem_positive")
TEXT_OPTIONS = tuple(
    dict.fromkeys(
        (*TRUNK_OPTIONS, "head", "head_dropout", "mask_padding", *SOT_TEXT_OPTIONS, *VISION_HEAD_OPTIONS, "dtype")
    )
)
# The type of each option but dtype (the trainer's config schema: `configs/sot_glue.py`).
OPTION_TYPES: dict[str, type] = {
    **dict.fromkeys((*_SIZE_OPTIONS, "vocab_size", "max_position_embeddings", "type_vocab_size", "pad_token_id"), int),
    **dict.fromkeys(("layer_norm_eps", "dropout", "attention_dropout", "embedding_dropout", "head_dropout"), float),
    "activation": str, "head": str, "mask_padding": bool, "svpn": str, "svpn_alpha": float, "sot_q": int,
    "sot_k": int, "fusion": str, "wr_dim": int, "mgcrp_heads": int, "gem_groups": int, "gem_positive": str,
}  # fmt: skip


def class_token_first(x: jax.Array, attention_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """GPT: move each sequence's last real token to position 0 and keep the other positions in order, for the
    heads that read a class token at 0 and word tokens after it. Returns the reordered tokens and mask."""
    last = gpt.last_token_index(attention_mask)[:, None]
    others = jnp.arange(x.shape[1] - 1)[None]
    order = jnp.concatenate([last, jnp.where(others < last, others, others + 1)], axis=1)
    return jnp.take_along_axis(x, order[..., None], axis=1), jnp.take_along_axis(attention_mask, order, axis=1)


class TextModel(nn.Module):
    """A text encoder (`bert.BertEncoder` or `gpt.GPTEncoder`, under `encoder`) and a head (under `classifier`).

    `__call__` returns float32 logits (B, num_classes) (for a vision head with fusion `sum_loss`, training returns
    `heads.PairedLogits`); `encode` returns the final hidden states (B, L, hidden_size).
    """

    model_name: str
    family: str
    num_classes: int
    encoder_config: dict[str, Any]
    head: str
    head_config: dict[str, Any]
    mask_padding: bool = False
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        if self.family in BERT_FAMILIES:
            self.encoder = bert.BertEncoder(**self.encoder_config, dtype=self.dtype)
        else:
            self.encoder = gpt.GPTEncoder(self.family, **self.encoder_config, dtype=self.dtype)
        config = {"num_classes": self.num_classes, "dtype": self.dtype, **self.head_config}
        if self.head == "pooler":
            self.classifier = bert.BertPoolerHead(**config)
        elif self.head == "roberta_head":
            self.classifier = bert.RobertaClassificationHead(**config)
        elif self.head == "score":
            self.classifier = gpt.LastTokenScore(**config)
        elif self.head == "sot_text":
            self.classifier = text_heads.SoTTextHead(**config)
        else:
            self.classifier = ClassifierHead(head=self.head, **config)

    def encode(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        return self.encoder(input_ids, attention_mask, token_type_ids, train)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        train: bool = False,
    ) -> Any:
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        x = self.encoder(input_ids, attention_mask, token_type_ids, train)
        if self.head == "score":
            logits = self.classifier(x, attention_mask, train)
        elif self.head in ("pooler", "roberta_head"):
            logits = self.classifier(x, train)
        else:
            if self.family not in BERT_FAMILIES:
                x, attention_mask = class_token_first(x, attention_mask)
            if self.head == "sot_text":
                word_mask = attention_mask[:, 1:] if self.mask_padding else jnp.ones_like(attention_mask[:, 1:])
                logits = self.classifier(x, word_mask, train)
            else:
                logits = self.classifier(x, train)
        return jax.tree.map(lambda t: t.astype(jnp.float32), logits)


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")


def _head_config(head: str, trunk: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The head module's fields from create_text_model's head options (validated)."""
    applies = {"sot_text": SOT_TEXT_OPTIONS, "vision": VISION_HEAD_OPTIONS}
    kind = head if head == "sot_text" else "vision" if head in VISION_HEADS else "baseline"
    for option in set(SOT_TEXT_OPTIONS + VISION_HEAD_OPTIONS) & set(options):
        if option not in applies.get(kind, ()):
            raise UserError(f"option {option} does not apply to head {head!r}")
    if options.get("mask_padding") and kind == "vision":
        raise UserError(
            f"mask_padding=True: the vision head {head!r} pools every position, padding included; use head "
            f"'sot_text' or mask_padding=False"
        )
    default_dropout = {"pooler": trunk["dropout"], "roberta_head": trunk["dropout"], "sot_text": 0.8}.get(head, 0.0)
    dropout = options.get("head_dropout", default_dropout)
    check_rate("head_dropout", dropout)
    if "svpn" in options:
        check_choice("svpn method", options["svpn"], ops.SVPN_METHODS)
    alpha = options.get("svpn_alpha", 0.5)
    if not isinstance(alpha, int | float) or not 0.0 < alpha <= 1.0:
        raise UserError(f"svpn_alpha must be in (0, 1], got {alpha!r}")
    if kind == "baseline":
        return {"dropout": dropout}
    if kind == "sot_text":
        q, k = options.get("sot_q", 56), options.get("sot_k", 32)
        _positive_int("sot_q", q)
        _positive_int("sot_k", k)
        config = {"q": q, "k": k, "svpn_alpha": alpha, "dropout": dropout}
        return config | ({"svpn": options["svpn"]} if "svpn" in options else {})
    config = {k: options[k] for k in VISION_HEAD_OPTIONS if k in options}
    config = {"gem_groups": trunk["num_heads"], **config, "head_dropout": dropout}
    check_head_options({"head": head, **config}, has_cls_token=True)
    return config


def create_text_model(name: str, num_classes: int = 2, **overrides: Any) -> TextModel:
    """Build a text model by name (`registry.TEXT_MODELS`). Overrides:

    head (the family's baseline, "sot_text", or a vision head: cls, gap, gem, ggem, gcp, mgcrp), head_dropout
    (default: the trunk's dropout for pooler/roberta_head as HF, 0.8 for sot_text, else 0), mask_padding (sot_text
    counts real tokens only), svpn / svpn_alpha / sot_q / sot_k (sot_text; the official MGCrP_q, MGCrP_k), the
    vision head's fusion, svpn, svpn_alpha, wr_dim, mgcrp_heads, gem_groups, gem_positive, dtype (compute dtype;
    parameters stay float32),
    and the trunk's hidden_size, num_layers, num_heads, intermediate_size, vocab_size, max_position_embeddings,
    layer_norm_eps, activation (text_layers.ACTIVATIONS), dropout, attention_dropout, plus type_vocab_size and
    pad_token_id (BERT, RoBERTa) or embedding_dropout (GPT). A bad name or value raises `UserError`.
    """
    spec = get_text_spec(name)
    trunk = {**_TRUNK_DEFAULTS[spec.family], **spec.sizes}
    valid = tuple(o for o in TEXT_OPTIONS if o not in TRUNK_OPTIONS or o in trunk)
    unknown = set(overrides) - set(valid)
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(sorted(unknown))} for {name}; valid: {', '.join(valid)}")
    _positive_int("num_classes", num_classes)
    trunk.update({k: v for k, v in overrides.items() if k in TRUNK_OPTIONS})
    for option in (*_SIZE_OPTIONS, "vocab_size", "max_position_embeddings", "type_vocab_size"):
        if option in trunk:
            _positive_int(option, trunk[option])
    for option in ("dropout", "attention_dropout", "embedding_dropout"):
        if option in trunk:
            check_rate(option, trunk[option])
    if not isinstance(trunk["layer_norm_eps"], int | float) or trunk["layer_norm_eps"] <= 0:
        raise UserError(f"layer_norm_eps must be a positive number, got {trunk['layer_norm_eps']!r}")
    if not isinstance(trunk.get("pad_token_id", 0), int) or trunk.get("pad_token_id", 0) < 0:
        raise UserError(f"pad_token_id must be a non-negative integer, got {trunk['pad_token_id']!r}")
    if trunk["hidden_size"] % trunk["num_heads"]:
        raise UserError(f"hidden_size {trunk['hidden_size']} is not divisible by num_heads {trunk['num_heads']}")
    check_activation(trunk["activation"])
    if spec.family in BERT_FAMILIES:
        trunk["position_ids"] = "roberta" if spec.family == "roberta" else "absolute"
    head = overrides.get("head", spec.head)
    check_choice(f"head for {spec.family}", head, (BASELINE_HEADS[spec.family], "sot_text", *VISION_HEADS))
    mask_padding = overrides.get("mask_padding", False)
    if not isinstance(mask_padding, bool):
        raise UserError(f"mask_padding must be True or False, got {mask_padding!r}")
    head_config = _head_config(head, trunk, overrides)
    return TextModel(
        model_name=name,
        family=spec.family,
        num_classes=num_classes,
        encoder_config=trunk,
        head=head,
        head_config=head_config,
        mask_padding=mask_padding,
        dtype=overrides.get("dtype", jnp.float32),
    )


# Trunk options that fix the pretrained weights' meaning (a fine-tuning config may not change them); the dropout
# rates are inherited too but may be set.
ARCHITECTURE_OPTIONS = (
    *_SIZE_OPTIONS, "vocab_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "activation",
    "pad_token_id",
)  # fmt: skip


def inherit_architecture(
    name: str, options: dict[str, Any], checkpoint: dict[str, Any], added_tokens: int = 0
) -> dict[str, Any]:
    """`options` for fine-tuning text model `name` from a checkpoint whose metadata (`sot_jax.json`, or a training
    run's) is `checkpoint`: its trunk options (sizes, vocabulary plus `added_tokens`, eps, activation, positions,
    dropout rates) where `options` leave them unset. An architecture option set to another value, or a checkpoint
    of another family, raises one `UserError`."""
    spec = get_text_spec(name)
    source = checkpoint.get("model", "?")
    family = TEXT_MODELS[source].family if source in TEXT_MODELS else None
    if family != spec.family:
        same = ", ".join(n for n, s in TEXT_MODELS.items() if s.family == family)
        hint = f"; set model.name to one of {same}" if same else ""
        raise UserError(f"init_from holds a {family or 'vision'} model ({source}), not a {spec.family} one{hint}")
    saved = {k: v for k, v in checkpoint.get("overrides", {}).items() if k in TRUNK_OPTIONS}
    if added_tokens and "vocab_size" in saved:
        saved["vocab_size"] += added_tokens
    contradicting = [
        f"model.{k}={options[k]!r} (the checkpoint's: {saved[k]!r})"
        for k in ARCHITECTURE_OPTIONS
        if k in saved and options.get(k) is not None and options[k] != saved[k]
    ]
    if contradicting:
        raise UserError(
            f"the config contradicts init_from's architecture: {', '.join(contradicting)}; leave these unset"
        )
    return {**saved, **options}
