"""HF checkpoints -> the text models (`text.TextModel`): `from_hf` reads a `save_pretrained` directory (config.json,
safetensors or PyTorch weights, sharded or not), tells the family from them, maps HF's keys and layouts to Flax
variables, and keeps config.json's class names. The vision models' PyTorch checkpoints: `torch_conversion.py`.

    model, variables, metadata = from_hf("dir/written/by/save_pretrained", "bert_base_sot")
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from sot_jax.errors import UserError
from sot_jax.models import bert, gpt, text_heads
from sot_jax.models.registry import TEXT_MODELS, get_text_spec
from sot_jax.models.text import BERT_FAMILIES, TRUNK_OPTIONS, VISION_HEADS, TextModel, create_text_model

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
