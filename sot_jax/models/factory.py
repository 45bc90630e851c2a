"""Building a registered model by name: `create_model` (the vision models here, the text models through
`text.create_text_model`) and its options; a built model's inputs and variables as shapes (`example_inputs`,
`abstract_variables`) and its parameter count."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sot_jax.errors import UserError, check_rate
from sot_jax.models import text
from sot_jax.models.heads import HEAD_OPTIONS
from sot_jax.models.layers import attention_implementation, remat_policy
from sot_jax.models.registry import TEXT_MODELS, get_spec
from sot_jax.models.vision_transformer import VisionTransformer, hvt_pooled_lengths

# create_model's keywords and their types: the trunk's options, the stem's (taken by the stems whose
# `ModelSpec.stem_options` name them, ignored by the others), then the head's (`heads.HEAD_OPTIONS`). The trainer's
# `config.model` has a key of the same name and type for each (`recipes.base_config`); dtype is a name there.
BACKBONE_OPTIONS = {
    "img_size": int, "drop_path_rate": float, "dropout": float, "dtype": str, "embed_dim": int, "depth": int,
    "num_heads": int, "mlp_hidden": int, "pool_block_width": int, "attention": str, "remat": str,
}  # fmt: skip
STEM_OPTIONS = {"bn_group_size": int}
OPTION_TYPES = {**BACKBONE_OPTIONS, **STEM_OPTIONS, **HEAD_OPTIONS}
OPTIONS = tuple(OPTION_TYPES)


def create_model(name: str, num_classes: int = 1000, **overrides: Any) -> VisionTransformer | text.TextModel:
    """Build a registered model. Overrides: img_size, drop_path_rate, dropout, dtype (compute dtype; parameters
    stay float32), attention ("auto", "xla" or "cudnn"), remat (None or a `layers.REMAT_POLICIES` name: recompute
    inside each transformer block in the backward pass, for larger batches), the trunk's embed_dim, depth,
    num_heads, mlp_hidden (and HVT's pool_block_width), bn_group_size (SoT's and LV-ViT's stem BatchNorm: 0
    normalizes over the whole batch, > 0 over each run of that many images in training, e.g. one GPU's batch of
    the official runs without SyncBN; models without BatchNorm ignore it), and for the head
    (`heads.ClassifierHead`): head, fusion, svpn, svpn_alpha, wr_dim, mgcrp_heads, head_dropout, gem_groups (ggem;
    default the backbone's attention heads), gem_positive. A bad value raises `UserError` naming it and the valid
    choices. Text model names (`registry.TEXT_MODELS`) go to `text.create_text_model` with its own options."""
    if name in TEXT_MODELS:
        return text.create_text_model(name, num_classes, **overrides)
    spec = get_spec(name)
    unknown = set(overrides) - set(OPTIONS)
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(sorted(unknown))} for {name}; valid: {', '.join(OPTIONS)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    bn_group_size = overrides.get("bn_group_size", 0)
    if not isinstance(bn_group_size, int) or bn_group_size < 0:
        raise UserError(f"bn_group_size must be a non-negative integer, got {bn_group_size!r}")
    for option in ("dropout", "drop_path_rate", "head_dropout"):
        if option in overrides:
            check_rate(option, overrides[option])
    stem_options = {k: v for k, v in overrides.items() if k in spec.stem_options}
    backbone = {**spec.backbone, **{k: v for k, v in overrides.items() if k in BACKBONE_OPTIONS}}
    if backbone["embed_dim"] % backbone["num_heads"]:
        raise UserError(f"embed_dim {backbone['embed_dim']} is not divisible by num_heads {backbone['num_heads']}")
    head = {**spec.head, "gem_groups": backbone["num_heads"]}
    head.update({k: v for k, v in overrides.items() if k in HEAD_OPTIONS})
    dtype = backbone.get("dtype", jnp.float32)
    model = VisionTransformer(
        model_name=name,
        stem=spec.stem(backbone["embed_dim"], dtype, **stem_options),
        stride=spec.stride,
        num_classes=num_classes,
        head=head,
        **backbone,
    )
    attention_implementation(model.attention, dtype)
    remat_policy(model.remat)
    rows, cols = model.grid  # validates img_size (and HVT's pooling) now rather than at the first call
    hvt_pooled_lengths(rows * cols, model.depth, model.pool_block_width)
    return model


def count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def example_inputs(model: VisionTransformer | text.TextModel, batch: int = 1) -> dict[str, jax.ShapeDtypeStruct]:
    """The keyword inputs of `model.init`/`apply` as shapes: `images` (B, H, W, 3) float32 for the vision models;
    `input_ids` and `attention_mask` (B, 8) int32 for the text models (any length up to their position table)."""
    if isinstance(model, text.TextModel):
        tokens = jax.ShapeDtypeStruct((batch, 8), jnp.int32)
        return {"input_ids": tokens, "attention_mask": tokens}
    rows, cols = model.grid
    return {"images": jax.ShapeDtypeStruct((batch, rows * model.stride, cols * model.stride, 3), jnp.float32)}


def abstract_variables(model: VisionTransformer | text.TextModel) -> Any:
    """The variable tree of `model` as shapes, without computing anything."""
    return jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, **x), example_inputs(model))
