"""Model checkpoints on disk: Orbax-saved Flax variables plus a small JSON describing the model.

A model checkpoint directory (what `python -m sot_jax.convert` writes, and what `init_from` reads) holds
`variables/` (Orbax StandardCheckpointer: {"params": ..., "batch_stats": ...}) and `sot_jax.json`
({"model": name, "num_classes": n, "overrides": {...}}).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from sot_jax import models

METADATA_FILE = "sot_jax.json"
VARIABLES_DIR = "variables"


def save_model(directory: str | os.PathLike, variables: dict[str, Any], metadata: dict[str, Any]) -> Path:
    """Write a model checkpoint atomically: into a temporary sibling first, renamed into place when complete.

    Refuses to touch an existing non-empty directory, so nothing already there is lost.
    """
    directory = Path(directory).absolute()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise FileExistsError(f"{directory} already exists and is not empty; choose a new output directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(staging / VARIABLES_DIR, variables)
        checkpointer.wait_until_finished()
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=1))
        if directory.exists():
            directory.rmdir()
        staging.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def load_model(directory: str | os.PathLike, **overrides: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Read a model checkpoint: returns (model, variables, metadata); `overrides` go to `create_model`."""
    directory = Path(directory).absolute()
    metadata_path = directory / METADATA_FILE
    if not metadata_path.is_file():
        raise ValueError(f"{directory} is not a sot_jax model checkpoint (no {METADATA_FILE})")
    try:
        metadata = json.loads(metadata_path.read_text())
        name, num_classes = metadata["model"], int(metadata["num_classes"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"corrupt checkpoint metadata {metadata_path}: {e}") from e
    model = models.create_model(name, num_classes=num_classes, **{**metadata.get("overrides", {}), **overrides})
    try:
        variables = ocp.StandardCheckpointer().restore(directory / VARIABLES_DIR)
    except Exception as e:  # Orbax raises many types for unreadable data
        raise ValueError(f"cannot read the variables of checkpoint {directory}: {e}") from e
    return model, variables, metadata
