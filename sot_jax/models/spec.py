"""What the registry knows about each model name: `ModelSpec` (vision), `TextSpec` (text)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model: its trunk, stem and default head, and how its parameters are named in PyTorch.

    `stem(embed_dim, dtype, **options)` builds the stem; `stem_options` names the `create_model` options it takes
    as keywords (`factory.STEM_OPTIONS`; the BatchNorm stems: bn_group_size), which other models ignore.

    `torch_renames` maps a dotted Flax path prefix (after `blocks_3` -> `blocks.3`) to the official PyTorch key
    prefix; `torch_ignored` lists official keys that hold no trainable state here (e.g. SoT's fixed sinusoid).
    """

    family: str
    stem: Callable[..., nn.Module]
    stride: int
    backbone: dict[str, Any]
    head: dict[str, Any]
    stem_options: tuple[str, ...] = ()
    torch_renames: tuple[tuple[str, str], ...] = ()
    torch_ignored: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class TextSpec:
    """A registered text model: its family, sizes and default head."""

    family: str
    sizes: dict[str, int]
    head: str
