"""What the registry knows about each model name."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from sot_jax.models.layers import Dtype


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model: its trunk, stem and default head, and how its parameters are named in PyTorch.

    `torch_renames` maps a dotted Flax path prefix (after `blocks_3` -> `blocks.3`) to the official PyTorch key
    prefix; `torch_ignored` lists official keys that hold no trainable state here (e.g. SoT's fixed sinusoid).
    """

    family: str
    stem: Callable[[int, Dtype], nn.Module]
    stride: int
    backbone: dict[str, Any]
    head: dict[str, Any]
    torch_renames: tuple[tuple[str, str], ...] = ()
    torch_ignored: tuple[str, ...] = ()
