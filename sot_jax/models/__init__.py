"""The model registry.

    from sot_jax import models
    models.list_models()
    model = models.create_model("sot_small", num_classes=1000, head="mgcrp", svpn="gram_eigh", dtype=jnp.bfloat16)
    variables = model.init({"params": rng}, images, train=False)   # images: float32 NHWC, normalized
    logits = model.apply(variables, images, train=False)          # (B, num_classes): the official eval output
    variables = models.from_torch("sot_small", state_dict)         # official PyTorch keys -> Flax variables

Training: `model.apply(variables, images, train=True, rngs={"dropout": key}, mutable=["batch_stats"])`
(the SoT and LV-ViT stems hold BatchNorm statistics). It returns logits, except for the `sum_loss` fusion and
the LV-ViT `token_label` head, which return the pair (class-token logits, other logits); see
`heads.ClassifierHead`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from sot_jax.models import deit, hvt, lvvit, sot
from sot_jax.models.layers import attention_implementation, remat_policy
from sot_jax.models.spec import ModelSpec
from sot_jax.models.vision_transformer import VisionTransformer, hvt_pooled_lengths

_REGISTRY: dict[str, ModelSpec] = {**deit.MODELS, **sot.MODELS, **hvt.MODELS, **lvvit.MODELS}

# create_model's keyword overrides: backbone fields, and head fields under user-facing names.
BACKBONE_OVERRIDES = (
    "img_size",
    "drop_path_rate",
    "dropout",
    "dtype",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_hidden",
    "pool_block_width",
    "attention",
    "remat",
)
HEAD_OVERRIDES = {
    "head": "representation",
    "fusion": "fusion",
    "svpn": "svpn_method",
    "svpn_alpha": "svpn_alpha",
    "wr_dim": "wr_dim",
    "mgcrp_heads": "num_heads",
    "head_dropout": "dropout",
    "gem_groups": "gem_groups",
    "gem_positive": "gem_positive",
}


def list_models() -> list[str]:
    """Every registered model name, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int = 1000, **overrides: Any) -> VisionTransformer:
    """Build a registered model. Overrides: img_size, drop_path_rate, dropout, dtype (compute dtype; parameters
    stay float32), attention ("auto", "xla" or "cudnn"), remat (None or a `layers.REMAT_POLICIES` name: recompute
    inside each transformer block in the backward pass, for larger batches), the trunk's embed_dim, depth,
    num_heads, mlp_hidden (and HVT's pool_block_width), and for the head: head, fusion, svpn, svpn_alpha, wr_dim,
    mgcrp_heads, head_dropout, gem_groups (ggem; default the backbone's attention heads), gem_positive."""
    spec = get_spec(name)
    unknown = set(overrides) - set(BACKBONE_OVERRIDES) - set(HEAD_OVERRIDES)
    if unknown:
        valid = ", ".join((*BACKBONE_OVERRIDES, *HEAD_OVERRIDES))
        raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))} for {name}; valid: {valid}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    backbone = {**spec.backbone, **{k: v for k, v in overrides.items() if k in BACKBONE_OVERRIDES}}
    if backbone["embed_dim"] % backbone["num_heads"]:
        raise ValueError(f"embed_dim {backbone['embed_dim']} is not divisible by num_heads {backbone['num_heads']}")
    head = {**spec.head, "gem_groups": backbone["num_heads"]}
    head.update({HEAD_OVERRIDES[k]: v for k, v in overrides.items() if k in HEAD_OVERRIDES})
    dtype = backbone.get("dtype", jnp.float32)
    model = VisionTransformer(
        model_name=name,
        stem=spec.stem(backbone["embed_dim"], dtype),
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


# ---------------------------------------------------------------------------------------------------------------
# PyTorch checkpoint conversion

_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_IGNORED_SUFFIXES = ("num_batches_tracked",)


def torch_key(path: tuple[str, ...], renames: tuple[tuple[str, str], ...] = ()) -> str:
    """The official PyTorch key of a Flax variable path (collection excluded), e.g. blocks_0/attn/qkv/kernel ->
    blocks.0.attn.qkv.weight; `renames` maps dotted Flax prefixes to PyTorch prefixes."""
    *modules, leaf = path
    dotted = ".".join([*modules, _LEAF_TO_TORCH.get(leaf, leaf)])
    dotted = re.sub(r"_(\d+)(?=\.|$)", r".\1", dotted)
    for flax_prefix, torch_prefix in renames:
        if dotted == flax_prefix or dotted.startswith(flax_prefix + "."):
            return torch_prefix + dotted[len(flax_prefix) :]
    return dotted


def _to_flax_layout(leaf: str, value: np.ndarray) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 2:  # Linear: (out, in) -> (in, out)
        return value.T
    if leaf == "kernel" and value.ndim == 4:  # Conv: (out, in, kh, kw) -> (kh, kw, in, out)
        return value.transpose(2, 3, 1, 0)
    return value


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


def convert_variables(
    abstract_variables: Any,
    state_dict: Mapping[str, Any],
    renames: tuple[tuple[str, str], ...] = (),
    ignored: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Fill a module's variable tree (shapes from `jax.eval_shape(model.init, ...)`) from a PyTorch state_dict.

    Every variable must find its key (`torch_key`) with the right shape, and every state_dict key must be used
    or listed in `ignored`; otherwise a ValueError names each missing, unexpected and mis-shaped key.
    """
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract_variables))
    converted, missing, mis_shaped, used = {}, [], [], set()
    for path, expected in flat.items():
        key = torch_key(path[1:], renames)
        if key not in state_dict:
            missing.append(key)
            continue
        used.add(key)
        value = _to_flax_layout(path[-1], _as_numpy(state_dict[key]))
        if value.shape != tuple(expected.shape):
            mis_shaped.append(f"{key}: checkpoint {tuple(np.shape(state_dict[key]))}, model needs {expected.shape}")
            continue
        converted[path] = value
    unexpected = [k for k in state_dict if k not in used and k not in ignored and not k.endswith(_IGNORED_SUFFIXES)]
    problems = []
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
        if keys:
            problems.append(f"{len(keys)} {title} key(s): " + "; ".join(keys[:20]) + (" …" if len(keys) > 20 else ""))
    if problems:
        raise ValueError(" | ".join(problems))
    return flax.traverse_util.unflatten_dict(converted)


def unused_official_keys(fusion: str, renames: tuple[tuple[str, str], ...] = ()) -> tuple[str, ...]:
    """The official Classifier builds cls_fc even for fusions that never call it."""
    if fusion not in ("concat", "aggre_all"):
        return ()
    return tuple(torch_key(("classifier", "cls_fc", leaf), renames) for leaf in ("kernel", "bias"))


def infer_num_classes(name: str, state_dict: Mapping[str, Any]) -> int:
    spec = get_spec(name)
    for path in (("classifier", "cls_fc", "kernel"), ("classifier", "visual_fc", "kernel")):
        key = torch_key(path, spec.torch_renames)
        if key in state_dict:
            return int(np.shape(state_dict[key])[0])
    raise ValueError(f"cannot tell the number of classes: the checkpoint has no classifier weight for {name}")


def abstract_variables(model: VisionTransformer) -> Any:
    """The variable tree of `model` as shapes, without computing anything."""
    rows, cols = model.grid
    images = jax.ShapeDtypeStruct((1, rows * model.stride, cols * model.stride, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x), images)


def from_torch(
    name: str, state_dict: Mapping[str, Any], num_classes: int | None = None, **overrides: Any
) -> dict[str, Any]:
    """Convert an official PyTorch state_dict (tensors or arrays) into the Flax variables of model `name`.

    `num_classes` defaults to the checkpoint's; `overrides` go to `create_model` (e.g. img_size). Any missing,
    unexpected or mis-shaped key raises a ValueError naming it.
    """
    spec = get_spec(name)
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if num_classes is None:
        num_classes = infer_num_classes(name, state_dict)
    model = create_model(name, num_classes=num_classes, **overrides)
    ignored = spec.torch_ignored + unused_official_keys(model.head.get("fusion", ""), spec.torch_renames)
    try:
        return convert_variables(abstract_variables(model), state_dict, spec.torch_renames, ignored)
    except ValueError as e:
        raise ValueError(f"checkpoint does not fit {name} (num_classes={num_classes}): {e}") from None
