"""Language transformers with the SoT text head: the text model names, `create_text_model` and `from_hf`.

    model = create_text_model("bert_base_sot", num_classes=2)
    variables = model.init({"params": key}, input_ids, attention_mask=mask, token_type_ids=types, train=False)
    logits = model.apply(variables, input_ids, attention_mask=mask, token_type_ids=types, train=False)  # float32
    hidden = model.apply(variables, input_ids, attention_mask=mask, method="encode")  # (B, L, hidden_size)
    model, variables, metadata = from_hf("dir/written/by/save_pretrained", "bert_base_sot")

Training: `apply(..., train=True, rngs={"dropout": key}, mutable=["batch_stats"])` returns (logits, updates); only
the SoT text head holds batch statistics. `attention_mask` is 1 on real tokens (None: all real);
`token_type_ids` None means zeros (BERT) or nothing (GPT; HF adds the token embedding of given type ids).

Names: bert_base, bert_large (also SpanBERT weights), roberta_base, roberta_large, gpt (OpenAI GPT-1), gpt2, each
with the family's HF baseline head, and each with `_sot` for the SoT text head (`text_heads.SoTTextHead`).
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

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sot_jax import ops
from sot_jax.errors import UserError, check_choice
from sot_jax.models import bert, gpt, text_heads
from sot_jax.models.heads import POOLINGS, ClassifierHead, check_head_options
from sot_jax.models.layers import Dtype

BERT_FAMILIES = ("bert", "roberta")
FAMILIES = (*BERT_FAMILIES, "gpt", "gpt2")
BASELINE_HEADS = {"bert": "pooler", "roberta": "roberta_head", "gpt": "score", "gpt2": "score"}
VISION_HEADS = ("cls", *POOLINGS)

_SIZES = {
    "base": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 3072},
    "large": {"hidden_size": 1024, "num_layers": 24, "num_heads": 16, "intermediate_size": 4096},
}
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


@dataclasses.dataclass(frozen=True)
class TextSpec:
    """A registered text model: its family, sizes and default head."""

    family: str
    sizes: dict[str, int]
    head: str


def _register() -> dict[str, TextSpec]:
    specs = {}
    sizes_of = {"bert": ("base", "large"), "roberta": ("base", "large"), "gpt": (None,), "gpt2": (None,)}
    for family, sizes in sizes_of.items():
        for size in sizes:
            name = family if size is None else f"{family}_{size}"
            specs[name] = TextSpec(family, _SIZES[size or "base"], BASELINE_HEADS[family])
            specs[f"{name}_sot"] = TextSpec(family, _SIZES[size or "base"], "sot_text")
    return specs


TEXT_MODELS: dict[str, TextSpec] = _register()


def get_text_spec(name: str) -> TextSpec:
    if name not in TEXT_MODELS:
        raise UserError(f"unknown text model {name!r}; valid names: {', '.join(TEXT_MODELS)}")
    return TEXT_MODELS[name]


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


def _rate(name: str, value: Any) -> None:
    if not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise UserError(f"{name} must be a dropout rate in [0, 1), got {value!r}")


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
    _rate("head_dropout", dropout)
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
    """Build a text model by name (`TEXT_MODELS`). Overrides:

    head (the family's baseline, "sot_text", or a vision head: cls, gap, gem, ggem, gcp, mgcrp), head_dropout
    (default: the trunk's dropout for pooler/roberta_head as HF, 0.8 for sot_text, else 0), mask_padding (sot_text
    counts real tokens only), svpn / svpn_alpha / sot_q / sot_k (sot_text; the official MGCrP_q, MGCrP_k), the
    vision head's fusion, svpn, svpn_alpha, wr_dim, mgcrp_heads, gem_groups, gem_positive, dtype (compute dtype;
    parameters stay float32),
    and the trunk's hidden_size, num_layers, num_heads, intermediate_size, vocab_size, max_position_embeddings,
    layer_norm_eps, activation (bert.ACTIVATIONS), dropout, attention_dropout, plus type_vocab_size and
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
            _rate(option, trunk[option])
    if not isinstance(trunk["layer_norm_eps"], int | float) or trunk["layer_norm_eps"] <= 0:
        raise UserError(f"layer_norm_eps must be a positive number, got {trunk['layer_norm_eps']!r}")
    if not isinstance(trunk.get("pad_token_id", 0), int) or trunk.get("pad_token_id", 0) < 0:
        raise UserError(f"pad_token_id must be a non-negative integer, got {trunk['pad_token_id']!r}")
    if trunk["hidden_size"] % trunk["num_heads"]:
        raise UserError(f"hidden_size {trunk['hidden_size']} is not divisible by num_heads {trunk['num_heads']}")
    bert.check_activation(trunk["activation"])
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


# ---- from_hf: HF save_pretrained directories -> (model, variables, metadata) ----

_MODEL_TYPES = {"bert": "bert", "roberta": "roberta", "openai-gpt": "gpt", "gpt2": "gpt2"}
_BASE_PREFIX = {"bert": "bert.", "roberta": "roberta.", "gpt": "transformer.", "gpt2": "transformer."}
_DEFAULT_NAME = {"bert": "bert_base", "roberta": "roberta_base", "gpt": "gpt", "gpt2": "gpt2"}
_LEAVES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias", "svpn_start": "weight",
           "mean": "running_mean", "var": "running_var"}  # fmt: skip
# Keys a checkpoint may hold that no model here uses: pretraining heads, buffers, other heads' weights.
_IGNORABLE_PREFIXES = ("cls.", "lm_head.", "multiple_choice_head.", "pooler.", "classifier.", "score.")
_IGNORABLE_SUFFIXES = ("position_ids", ".attn.bias", ".attn.masked_bias", "num_batches_tracked")
# HF config.json -> trunk options, with HF's defaults for keys old configs leave out.
_BERT_CONFIG = {
    "vocab_size": ("vocab_size", None),
    "hidden_size": ("hidden_size", None),
    "num_layers": ("num_hidden_layers", None),
    "num_heads": ("num_attention_heads", None),
    "intermediate_size": ("intermediate_size", None),
    "max_position_embeddings": ("max_position_embeddings", 512),
    "type_vocab_size": ("type_vocab_size", 2),
    "layer_norm_eps": ("layer_norm_eps", 1e-12),
    "activation": ("hidden_act", "gelu"),
    "dropout": ("hidden_dropout_prob", 0.1),
    "attention_dropout": ("attention_probs_dropout_prob", 0.1),
}
_GPT_CONFIG = {
    "vocab_size": ("vocab_size", None), "hidden_size": ("n_embd", None), "num_layers": ("n_layer", None),
    "num_heads": ("n_head", None), "max_position_embeddings": ("n_positions", None),
    "layer_norm_eps": ("layer_norm_epsilon", 1e-5), "dropout": ("resid_pdrop", 0.1),
    "attention_dropout": ("attn_pdrop", 0.1), "embedding_dropout": ("embd_pdrop", 0.1),
}  # fmt: skip
# OpenAI GPT's `afn` names: its "gelu" is the tanh approximation.
_GPT1_ACTIVATIONS = {"gelu": "gelu_new", "relu": "relu", "silu": "silu", "swish": "silu"}
# HF names of the same functions (gelu_fast and gelu_pytorch_tanh are gelu_new's formula).
_ACTIVATION_ALIASES = {"gelu_python": "gelu", "gelu_fast": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "swish": "silu"}


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        raise UserError(f"{directory} is not a HF save_pretrained directory: no config.json")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"cannot parse {path}: {e}") from None


def _weight_files(directory: Path) -> list[Path]:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return [directory / name]
        index = directory / f"{name}.index.json"
        if index.is_file():  # sharded
            return [directory / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    raise UserError(f"{directory} has no model.safetensors or pytorch_model.bin (nor a sharded index of one)")


def _read_weights(directory: Path) -> dict[str, np.ndarray]:
    state: dict[str, np.ndarray] = {}
    for path in _weight_files(directory):
        try:
            if path.suffix == ".safetensors":
                from safetensors.numpy import load_file

                state.update({k: np.asarray(v, np.float32) for k, v in load_file(path).items()})
            else:
                import torch

                loaded = torch.load(path, map_location="cpu", weights_only=True)
                state.update({k: v.detach().float().numpy() for k, v in loaded.items() if v.is_floating_point()})
        except ImportError as e:
            raise UserError(f'reading {path.name} needs {e.name}: pip install -e ".[torch]"') from None
        except Exception as e:  # the readers raise many types for unreadable files
            raise UserError(f"cannot read {path}: {e}") from None
    return state


def _family_from_keys(keys: set[str]) -> str | None:
    """The family the weight names belong to (BERT and RoBERTa share theirs), or None when nothing matches."""
    names = {k.split(".", 1)[1] if k.startswith(tuple(_BASE_PREFIX.values())) else k for k in keys}
    if "wte.weight" in names:
        return "gpt2"
    if "tokens_embed.weight" in names:
        return "gpt"
    if "embeddings.word_embeddings.weight" in names:
        return "roberta" if any(k.startswith("roberta.") for k in keys) else "bert"
    return None


def _detect_family(directory: Path, config: dict[str, Any], keys: set[str]) -> str:
    model_type = config.get("model_type")
    from_keys = _family_from_keys(keys)
    if model_type is None:  # old configs (SpanBERT's) have none: go by the weight names
        if from_keys is None:
            raise UserError(f"{directory}: config.json has no model_type and the weights are not BERT's or GPT's")
        return from_keys
    if model_type not in _MODEL_TYPES:
        raise UserError(f"{directory} holds a {model_type!r} model; supported model_type: {', '.join(_MODEL_TYPES)}")
    family = _MODEL_TYPES[model_type]
    same = {family, from_keys} <= set(BERT_FAMILIES) or from_keys in (None, family)
    if not same:
        raise UserError(f"{directory}: config.json says {model_type} but the weights are a {from_keys} model's")
    return family


def _trunk_from_config(family: str, config: dict[str, Any]) -> dict[str, Any]:
    table = _BERT_CONFIG if family in BERT_FAMILIES else _GPT_CONFIG
    trunk = {}
    for option, (key, default) in table.items():
        value = config.get(key, default)
        if value is None:
            raise UserError(f"config.json lacks {key}")
        trunk[option] = value
    if family in BERT_FAMILIES:
        trunk["pad_token_id"] = config.get("pad_token_id", 1 if family == "roberta" else 0)
        if config.get("position_embedding_type", "absolute") != "absolute" or config.get("is_decoder"):
            raise UserError("only encoder BERT/RoBERTa with absolute position embeddings are supported")
    elif family == "gpt":
        trunk["intermediate_size"] = 4 * trunk["hidden_size"]  # HF's OpenAIGPT MLP is always 4x
        trunk["activation"] = _GPT1_ACTIVATIONS.get(config.get("afn", "gelu"), config.get("afn"))
    else:
        trunk["intermediate_size"] = config.get("n_inner") or 4 * trunk["hidden_size"]
        trunk["activation"] = config.get("activation_function", "gelu_new")
        if not config.get("scale_attn_weights", True) or config.get("scale_attn_by_inverse_layer_idx", False):
            raise UserError("GPT-2 with scale_attn_weights=False or scale_attn_by_inverse_layer_idx is not supported")
    trunk["activation"] = _ACTIVATION_ALIASES.get(trunk["activation"], trunk["activation"])
    return trunk


def _hf_key(family: str, head: str, path: tuple[str, ...]) -> tuple[str, str] | None:
    """(HF module key without the base-model prefix, leaf key) of a variable path (collection excluded), or None for
    a head HF has no weights of (the vision heads)."""
    top, *modules, leaf = path
    if top == "encoder":
        module_key = (bert if family in BERT_FAMILIES else gpt).hf_module_key(tuple(modules))
    else:
        head_keys = {**bert.HEAD_KEYS, **gpt.HEAD_KEYS, "sot_text": text_heads.OFFICIAL_KEYS}.get(head)
        if head_keys is None:
            return None
        module_key = head_keys[tuple(modules)]
    return module_key, f"{module_key}.{_LEAVES[leaf]}"


def _to_flax_layout(value: np.ndarray, leaf: str, transpose: bool) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4 and value.shape[2:] == (1, 1):  # official 1×1 Conv2d -> Dense (in, out)
        return value.reshape(value.shape[:2]).T
    if leaf == "kernel" and transpose:  # torch Linear (out, in); HF's GPT Conv1D is already (in, out)
        return value.T
    return value


def _hf_layout_shape(shape: tuple[int, ...], leaf: str, transpose: bool, hf_ndim: int) -> tuple[int, ...]:
    """The shape a Flax variable of `shape` has in the checkpoint's layout (for error messages)."""
    if leaf == "kernel" and hf_ndim == 4:
        return (shape[1], shape[0], 1, 1)
    return tuple(reversed(shape)) if leaf == "kernel" and transpose else tuple(shape)


# The weight whose rows are the classes, per head.
_CLASSES_KEY = {
    "pooler": "classifier.weight", "roberta_head": "classifier.out_proj.weight", "score": "score.weight",
    "sot_text": "pooler.cls_fc.weight",
}  # fmt: skip


def _infer_num_classes(head: str, state: Mapping[str, np.ndarray], config: dict[str, Any]) -> int:
    key = _CLASSES_KEY.get(head)
    if key in state:
        return int(state[key].shape[0])
    return len(config["id2label"]) if isinstance(config.get("id2label"), dict) else int(config.get("num_labels", 2))


# The official SoT fork's config.json keys for its head (`cokezrr/transformers`, configuration_bert.py).
_OFFICIAL_HEAD_CONFIG = {"MGCrP_q": "sot_q", "MGCrP_k": "sot_k", "MGCrP_dp": "head_dropout"}


def _label_names(config: dict[str, Any]) -> list[str] | None:
    """config.json's class names in index order, or None for HF's placeholders (LABEL_0, ...)."""
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        return None
    try:
        names = [str(id2label[key]) for key in sorted(id2label, key=int)]
    except (TypeError, ValueError):
        return None
    return None if names == [f"LABEL_{i}" for i in range(len(names))] else names


def from_hf(
    hf_dir: str, name: str | None = None, num_classes: int | None = None, **head_options: Any
) -> tuple[TextModel, Any, dict]:
    """Read what HF `save_pretrained` writes (config.json + model.safetensors or pytorch_model.bin, possibly
    sharded) into the model `name` (default: the checkpoint family's baseline model), sized by config.json.

    Accepts the base model (`BertModel`, `RobertaModel`, `OpenAIGPTModel`, `GPT2Model`) or a `*ForSequence
    Classification` (prefixes `bert.`, `roberta.`, `transformer.`), legacy LayerNorm `gamma`/`beta` names, and for
    `*_sot` models the official SoT head's weights (`bert.pooler.cls_fc.weight`, …). A head the checkpoint lacks is
    initialized fresh (seed 0) and listed in metadata["fresh"]; `num_classes` defaults to the checkpoint
    classifier's, else config.json's labels. Pretraining heads, buffers and other heads' weights are skipped and
    listed in metadata["ignored_keys"]. Any other missing, unexpected or mis-shaped key, or a checkpoint of another
    architecture, raises one `UserError` naming them.

    The head's shape: `head_options` (create_text_model's head keywords, e.g. sot_q, sot_k, head_dropout), else
    the official fork's `MGCrP_q`, `MGCrP_k`, `MGCrP_dp` in config.json when it has them (a checkpoint fine-tuned by
    the official code per task), else the model's defaults.

    Returns (model, variables, metadata); metadata {"model", "num_classes", "overrides"} rebuilds the model with
    `create_text_model(metadata["model"], metadata["num_classes"], **metadata["overrides"])`; "label_names" are
    config.json's `id2label` names (None for LABEL_0, ...), "fresh" the head modules initialized here.
    """
    trunk_options = sorted(set(head_options) & set(TRUNK_OPTIONS))
    if trunk_options:
        raise UserError(f"{', '.join(trunk_options)}: a HF checkpoint's architecture comes from its config.json")
    directory = Path(hf_dir)
    config = _read_config(directory)
    state = _read_weights(directory)
    family = _detect_family(directory, config, set(state))
    name = name or _DEFAULT_NAME[family]
    spec = get_text_spec(name)
    if spec.family != family:
        same_family = ", ".join(n for n, s in TEXT_MODELS.items() if s.family == family)
        raise UserError(f"{directory} holds a {family} checkpoint, not {spec.family} ({name}); use {same_family}")
    prefix = _BASE_PREFIX[family]
    legacy = {".gamma": ".weight", ".beta": ".bias"}
    canonical = {}
    for key, value in state.items():
        key = key.removeprefix(prefix)
        for old, new in legacy.items():
            key = key[: -len(old)] + new if key.endswith(old) else key
        canonical[key] = value
    overrides = _trunk_from_config(family, config)
    if family in BERT_FAMILIES and spec.head != "sot_text" and config.get("classifier_dropout") is not None:
        overrides["head_dropout"] = config["classifier_dropout"]
    if spec.head == "sot_text":
        overrides.update({option: config[key] for key, option in _OFFICIAL_HEAD_CONFIG.items() if key in config})
    overrides.update(head_options)
    if num_classes is None:
        num_classes = _infer_num_classes(spec.head, canonical, config)
    model = create_text_model(name, num_classes, **overrides)
    example = jnp.zeros((1, 2), jnp.int32)
    init = lambda key: model.init({"params": key}, example, train=False)  # noqa: E731
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(jax.eval_shape(init, jax.random.key(0))))

    by_module: dict[str, list[tuple[tuple[str, ...], str]]] = {}
    for path in flat:
        keys = _hf_key(family, model.head, path[1:])
        if keys is not None:
            by_module.setdefault(keys[0], []).append((path, keys[1]))
    converted, missing, mis_shaped, fresh, used = {}, [], [], [], set()
    if model.head in VISION_HEADS:  # HF has no weights of these
        fresh.append("classifier")
    for module_key, leaves in by_module.items():
        in_head = leaves[0][0][1] == "classifier"
        if in_head and not any(key in canonical for _, key in leaves):
            fresh.append(module_key)
            continue
        for path, key in leaves:
            if key not in canonical:
                missing.append(key)
                continue
            used.add(key)
            transpose = in_head or family in BERT_FAMILIES
            value = _to_flax_layout(canonical[key], path[-1], transpose)
            if value.shape != flat[path].shape:
                needs = _hf_layout_shape(flat[path].shape, path[-1], transpose, canonical[key].ndim)
                mis_shaped.append(f"{key}: checkpoint {canonical[key].shape}, model needs {needs}")
                continue
            converted[path] = value
    unused = [k for k in canonical if k not in used]
    ignored = [k for k in unused if k.startswith(_IGNORABLE_PREFIXES) or k.endswith(_IGNORABLE_SUFFIXES)]
    unexpected = [k for k in unused if k not in ignored]
    problems = []
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
        if keys:
            problems.append(f"{len(keys)} {title} key(s): " + "; ".join(keys[:20]) + (" …" if len(keys) > 20 else ""))
    if problems:
        raise UserError(f"{directory} does not fit {name} (num_classes={num_classes}): " + " | ".join(problems))
    if fresh:
        variables = flax.traverse_util.flatten_dict(flax.core.unfreeze(jax.jit(init)(jax.random.key(0))))
        variables.update(converted)
    else:
        variables = converted
    metadata = {
        "model": name,
        "num_classes": num_classes,
        "overrides": overrides,
        "source": str(directory.absolute()),
        "model_type": config.get("model_type", family),
        "fresh": fresh,
        "ignored_keys": ignored,
        "label_names": _label_names(config),
    }
    return model, flax.traverse_util.unflatten_dict(variables), metadata
