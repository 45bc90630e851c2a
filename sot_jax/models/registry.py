"""The model registry, one for vision and text: every model name and what it is (`spec.ModelSpec`: the vision
families' tables in `deit.py`, `sot.py`, `hvt.py`, `lvvit.py`; `spec.TextSpec`: the text models' table here).
`factory.create_model` builds either kind by name."""

from __future__ import annotations

from sot_jax.errors import UserError
from sot_jax.models import deit, hvt, lvvit, sot
from sot_jax.models.spec import ModelSpec, TextSpec

_REGISTRY: dict[str, ModelSpec] = {**deit.MODELS, **sot.MODELS, **hvt.MODELS, **lvvit.MODELS}

# Each text family's HF sequence-classification head, its models' default but for the `_sot` names.
BASELINE_HEADS = {"bert": "pooler", "roberta": "roberta_head", "gpt": "score", "gpt2": "score"}
_TEXT_SIZES = {
    "base": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 3072},
    "large": {"hidden_size": 1024, "num_layers": 24, "num_heads": 16, "intermediate_size": 4096},
}


def _text_specs() -> dict[str, TextSpec]:
    specs = {}
    sizes_of = {"bert": ("base", "large"), "roberta": ("base", "large"), "gpt": (None,), "gpt2": (None,)}
    for family, sizes in sizes_of.items():
        for size in sizes:
            name = family if size is None else f"{family}_{size}"
            specs[name] = TextSpec(family, _TEXT_SIZES[size or "base"], BASELINE_HEADS[family])
            specs[f"{name}_sot"] = TextSpec(family, _TEXT_SIZES[size or "base"], "sot_text")
    return specs


TEXT_MODELS: dict[str, TextSpec] = _text_specs()


def list_models() -> list[str]:
    """Every registered model name (vision and text), sorted."""
    return sorted([*_REGISTRY, *TEXT_MODELS])


def get_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        vision, language = ", ".join(sorted(_REGISTRY)), ", ".join(TEXT_MODELS)
        raise UserError(f"unknown model {name!r}; valid names: {vision}; text models: {language}")
    return _REGISTRY[name]


def get_text_spec(name: str) -> TextSpec:
    if name not in TEXT_MODELS:
        raise UserError(f"unknown text model {name!r}; valid names: {', '.join(TEXT_MODELS)}")
    return TEXT_MODELS[name]
