"""The project's error type for problems a user can fix (config, data, checkpoints).

`python -m sot_jax.main` prints a `UserError` as one `error: ...` line and exits non-zero; any other exception
keeps its traceback. It subclasses ValueError, so callers that catch ValueError keep working.
"""

from __future__ import annotations

from typing import Any


class UserError(ValueError):
    """A bad config value, missing or malformed data, or an unusable checkpoint; the message says which."""


def group_count(batch: int, group_size: int, key: str) -> int:
    """How many runs of `group_size` consecutive images a batch splits into (per-GPU Mixup draws, BatchNorm
    statistics): 0, or a batch no larger than the group, is one group; a UserError naming `key` unless it divides."""
    if not group_size or batch <= group_size:
        return 1
    if batch % group_size:
        raise UserError(f"{key} {group_size} does not divide the (micro-)batch of {batch} images")
    return batch // group_size


def check_choice(what: str, value: object, choices: tuple) -> None:
    """Raise a UserError naming `value` and the valid `choices` unless `value` is one of them."""
    if value not in choices:
        raise UserError(f"unknown {what} {value!r}; choose one of {', '.join(map(str, choices))}")


def check_rate(name: str, value: Any) -> None:
    """Raise a UserError naming `name` unless `value` is a dropout rate (a number in [0, 1))."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise UserError(f"{name} must be a dropout rate in [0, 1), got {value!r}")
