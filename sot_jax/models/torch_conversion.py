"""Official PyTorch checkpoints -> Flax variables: key names, layouts, and errors naming every bad key."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import flax
import numpy as np

from sot_jax.errors import UserError
from sot_jax.models.factory import abstract_variables, create_model
from sot_jax.models.registry import get_spec

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
        raise UserError(" | ".join(problems))
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
    raise UserError(f"cannot tell the number of classes: the checkpoint has no classifier weight for {name}")


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
        raise UserError(f"checkpoint does not fit {name} (num_classes={num_classes}): {e}") from None
