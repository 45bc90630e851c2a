"""Every checkpoint read and written: model checkpoints, a training run's checkpoints, `init_from`, export.

A model checkpoint directory (what `python -m sot_jax.convert` writes, and what `init_from` reads) holds
`variables/` (Orbax StandardCheckpointer: {"params": ..., "batch_stats": ...}), `sot_jax.json`
({"model": name, "num_classes": n, "overrides": {...}}, and for text models "label_names", "fresh" and "vocab") and
for text models the tokenizer files in `tokenizer/`.
A training run keeps its resumable checkpoints in `workdir/checkpoints/<step>/` (Orbax CheckpointManager: the train
state, a JSON `meta` with the model's name, classes, `create_model` overrides, class names, vocabulary and the
config, and the input position) and its best weights in `workdir/best/<step>/` (`BestWeights`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from sot_jax import models, recipes, sharding
from sot_jax.data import tokenization
from sot_jax.errors import UserError

METADATA_FILE = "sot_jax.json"
VARIABLES_DIR = "variables"
BEST_DIR = "best"
TOKENIZER_DIR = "tokenizer"


def save_model(
    directory: str | os.PathLike, variables: dict[str, Any], metadata: dict[str, Any], vocabulary_from: str = ""
) -> Path:
    """Write a model checkpoint atomically: into a temporary sibling first, renamed into place when complete.
    `vocabulary_from`: a folder whose tokenizer files are kept in `tokenizer/` (metadata "vocab" names it), so
    that fine-tuning from the checkpoint tokenizes as its model was trained.

    Refuses to touch an existing non-empty directory, so nothing already there is lost.
    """
    directory = Path(directory).absolute()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UserError(f"{directory} already exists and is not empty; choose a new output directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(staging / VARIABLES_DIR, variables)
        checkpointer.wait_until_finished()
        if vocabulary_from and tokenization.copy_vocabulary(vocabulary_from, staging / TOKENIZER_DIR):
            metadata = {**metadata, "vocab": TOKENIZER_DIR}
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
        raise UserError(f"{directory} is not a sot_jax model checkpoint (no {METADATA_FILE})")
    try:
        metadata = json.loads(metadata_path.read_text())
        name, num_classes = metadata["model"], int(metadata["num_classes"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"corrupt checkpoint metadata {metadata_path}: {e}") from e
    model = models.create_model(name, num_classes=num_classes, **{**metadata.get("overrides", {}), **overrides})
    try:
        variables = ocp.StandardCheckpointer().restore(directory / VARIABLES_DIR)
    except Exception as e:  # Orbax raises many types for unreadable data
        raise UserError(f"cannot read the variables of checkpoint {directory}: {e}") from e
    return model, variables, metadata


# Training runs


def checkpoint_manager(workdir: Path, keep: int) -> ocp.CheckpointManager:
    """The resumable training state in `workdir/checkpoints/<step>/`: the latest `keep` are kept."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True, create=True)
    return ocp.CheckpointManager(workdir / "checkpoints", options=options, item_names=("state", "meta", "data"))


class BestWeights:
    """The weights that scored best so far by `metric` ("ema_..." metrics: the EMA weights), in
    `workdir/best/<step>/` (params and batch statistics, no optimizer state, and the run's meta with the step and
    score): written only when the metric improves, so that an evaluation costs no write otherwise. `init_from`
    and `export_model` read the directory as a training workdir. Resuming at `start_step` forgets what a lost
    stretch of training beyond it had written, and starts from the best value logged up to it."""

    def __init__(self, workdir: Path, metric: str, meta: dict[str, Any], start_step: int):
        options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=True, create=True)
        self.manager = ocp.CheckpointManager(workdir / BEST_DIR, options=options, item_names=("state", "meta"))
        self.metric, self.meta = metric, meta
        for step in self.manager.all_steps():
            if step > start_step:
                self.manager.delete(step)
        log = workdir / "metrics.jsonl"
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
        values = [row[metric] for row in rows if metric in row and row["step"] <= start_step]
        self.value = max(values) if values else None

    def update(self, step: int, results: dict[str, float], state: Any) -> bool:
        """Write the state's weights if `results` improve on the best so far; returns whether it did."""
        value = results.get(self.metric)
        if value is None or (self.value is not None and value <= self.value):
            return False
        prefix = "ema_" if self.metric.startswith("ema_") else ""
        weights = {"params": getattr(state, f"{prefix}params"), "batch_stats": getattr(state, f"{prefix}batch_stats")}
        meta = {**self.meta, "step": step, "metric": self.metric, "value": value}
        args = ocp.args.Composite(state=ocp.args.StandardSave(weights), meta=ocp.args.JsonSave(meta))
        self.manager.save(step, args=args, force=True)
        self.value = value
        return True

    def wait_until_finished(self) -> None:
        self.manager.wait_until_finished()


def save_args(state: Any, meta: dict[str, Any], batches: Any) -> ocp.args.Composite:
    """A training checkpoint: the state, the run's metadata, and the input iterator's position (Grain's handler;
    `batches.snapshot()` freezes it, since the write is asynchronous)."""
    import grain

    return ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta),
        data=grain.checkpoint.CheckpointSave(batches.snapshot()),
    )  # fmt: skip


def restore_input_position(manager: ocp.CheckpointManager, step: int, batches: Any) -> None:
    """Set `batches` to the input position this process saved in checkpoint `step`. Checkpoints written before
    positions were saved, or by another number of processes, have none for it: `batches` then stays where it was
    made, at the state's step (the same position: batches are a function of the step)."""
    import grain

    saved = f"data/process_{jax.process_index()}-of-{jax.process_count()}.json"  # as Grain's handler names it
    if (Path(manager.directory) / str(step) / saved).is_file():
        manager.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(batches)))


def restore_state(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
    try:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    except Exception as e:  # Orbax raises many types for missing files, bad shapes or corrupt data
        raise UserError(
            f"cannot resume from checkpoint {manager.directory / str(step)}: it is corrupt or was written by a "
            f"different config ({type(e).__name__}: {str(e)[:500]})"
        ) from e
    return restored.state


def read_init_variables(directory: str) -> dict[str, Any]:
    """Variables to start from: a model checkpoint (sot_jax.convert) or a training workdir's latest checkpoint.

    Returns {"params", "batch_stats"} and, from training checkpoints with EMA, "ema_params"/"ema_batch_stats".
    """
    path = Path(directory).absolute()
    if (path / METADATA_FILE).is_file():
        _, variables, _ = load_model(path)
        return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    manager = ocp.CheckpointManager(root, item_handlers=handlers, options=ocp.CheckpointManagerOptions(read_only=True))
    step = manager.latest_step() if root.is_dir() else None
    if step is None:
        raise UserError(f"init_from={directory}: no sot_jax model checkpoint or training checkpoint found there")
    try:
        # Restore onto this machine's devices (replicated), whatever topology wrote the checkpoint.
        replicated = sharding.replicated(sharding.make_mesh())
        metadata = manager.item_metadata(step)["state"]
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated), metadata)
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state
    except Exception as e:
        raise UserError(f"init_from={directory}: cannot read checkpoint {root / str(step)}: {e}") from e
    keys = ("params", "batch_stats", "ema_params", "ema_batch_stats")
    return {k: state[k] for k in keys if state.get(k) is not None}


def read_metadata(directory: str) -> dict[str, Any]:
    """What a checkpoint says about its model: a model checkpoint's `sot_jax.json`, or the `meta` of a training
    workdir's latest checkpoint ({"model", "num_classes", "overrides", ...: "label_names", "vocab", "lower_case"
    where recorded}). A model checkpoint's relative `vocab` is made absolute."""
    path = Path(directory).absolute()
    if (path / METADATA_FILE).is_file():
        try:
            metadata = json.loads((path / METADATA_FILE).read_text())
        except ValueError as e:
            raise UserError(f"corrupt checkpoint metadata {path / METADATA_FILE}: {e}") from None
        if metadata.get("vocab"):
            metadata["vocab"] = str(path / metadata["vocab"])
        return metadata
    step, meta = _latest_meta(path / "checkpoints" if (path / "checkpoints").is_dir() else path)
    if step is None:
        raise UserError(f"init_from={directory}: no sot_jax model checkpoint or training checkpoint found there")
    return meta


def _latest_meta(root: Path) -> tuple[int | None, dict[str, Any]]:
    """(step, meta) of the latest training checkpoint under `root`; (None, {}) when there is none."""
    options = ocp.CheckpointManagerOptions(read_only=True)
    manager = ocp.CheckpointManager(root, item_handlers={"meta": ocp.JsonCheckpointHandler()}, options=options)
    step = manager.latest_step() if root.is_dir() else None
    if step is None:
        return None, {}
    return step, dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)


def resolve_init_from(config: Any) -> tuple[Any, dict[str, Any] | None]:
    """(config, the checkpoint's metadata) for `config.init_from` (None without one). For a text model the config
    comes back completed from the checkpoint: the architecture (`text.inherit_architecture`: a contradicting
    value is an error; `eval_only` takes every model option from the checkpoint, its head's too), and where unset
    the vocabulary and casing the checkpoint was trained with; the run says what it took."""
    if not config.init_from:
        return config, None
    metadata = read_metadata(config.init_from)
    if config.model.name not in models.TEXT_MODELS:
        return config, metadata
    config = config.copy_and_resolve_references()
    options = recipes.model_overrides(config.model)
    if config.eval_only:  # the model the checkpoint holds, head included (the task variant's head may differ)
        saved = metadata.get("overrides", {})
        options = {k: saved.get(k) for k in options if k != "dtype"}
        options = {k: v for k, v in options.items() if v is not None}
        for key in config.model:
            if key not in ("name", "dtype"):
                config.model[key] = options.get(key)
    if not config.input.get("gpt_format") and metadata.get("gpt_format"):
        config.input.gpt_format = metadata["gpt_format"]
    # The GPT-1 format's three tokens join a vocabulary that does not have them yet.
    added = 3 if config.input.get("gpt_format") == "gpt1" and metadata.get("gpt_format") != "gpt1" else 0
    inherited = models.text.inherit_architecture(config.model.name, options, metadata, added)
    taken = {k: v for k, v in inherited.items() if options.get(k) is None}
    for key, value in taken.items():
        config.model[key] = value
    if not config.vocab and metadata.get("vocab"):
        config.vocab = metadata["vocab"]
        taken["vocab"] = config.vocab
    if metadata.get("gpt_format"):
        taken["input.gpt_format"] = config.input.gpt_format
    if config.input.lower_case is None and metadata.get("lower_case") is not None:
        config.input.lower_case = metadata["lower_case"]
        taken["input.lower_case"] = config.input.lower_case
    if taken and jax.process_index() == 0:
        print(f"init_from {config.init_from}: " + ", ".join(f"{k} {v}" for k, v in taken.items()), flush=True)
    return config, metadata


def export_model(workdir: str, output: str, ema: bool = False) -> Path:
    """Write the latest checkpoint of the training run in `workdir` as a model checkpoint (what
    `checkpoints.load_model` reads, for inference or sharing; a text run's class names, casing, GPT input format
    and tokenizer files go with it); `ema` takes the EMA weights."""
    step, meta = _latest_meta(Path(workdir).absolute() / "checkpoints")
    if step is None:
        raise UserError(f"{workdir} holds no training checkpoint")
    variables = read_init_variables(workdir)
    prefix = "ema_" if ema else ""
    if prefix + "params" not in variables:
        raise UserError(f"{workdir} was trained without EMA (ema_decay=0); export without ema")
    if "overrides" in meta:
        overrides = meta["overrides"]
    else:  # written before the config's model keys were flattened
        config = json.loads(meta["config"])
        overrides = {**config["model"]["overrides"], "img_size": config["image_size"]}
    metadata = {"model": meta["model"], "num_classes": meta["num_classes"], "overrides": overrides,
                "source": f"{workdir} step {step}" + (" (EMA)" if ema else "")}  # fmt: skip
    metadata.update({k: meta[k] for k in ("label_names", "lower_case", "gpt_format") if k in meta})
    vocab = Path(meta["vocab"]) if meta.get("vocab") else None  # a text run's tokenizer files go with it
    vocabulary_from = str(vocab if vocab.is_dir() else vocab.parent) if vocab else ""
    exported = {"params": variables[prefix + "params"], "batch_stats": variables.get(prefix + "batch_stats", {})}
    return save_model(output, exported, metadata, vocabulary_from)


# GPT's token embeddings, which the GPT-1 input format extends by its start, delimiter and extract tokens.
GROWING_TABLES = ("encoder/tokens_embed/embedding", "encoder/wte/embedding")


def _more_rows(fresh: Any, loaded: Any) -> bool:
    return fresh.shape[1:] == np.shape(loaded)[1:] and fresh.shape[0] > np.shape(loaded)[0]


def merge_pretrained(fresh: Any, loaded: Any, what: str) -> tuple[Any, list[str]]:
    """Loaded values where shapes agree; the classifier keeps its fresh init when the class count differs, and
    rows a GPT token table has beyond the loaded one (`GROWING_TABLES`) keep theirs. Returns (merged, the keys
    left fresh)."""
    fresh_flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(fresh), sep="/")
    loaded_flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(loaded), sep="/")
    merged, reinitialized, problems = {}, [], []
    for key, value in fresh_flat.items():
        if key in loaded_flat and np.shape(loaded_flat[key]) == value.shape:
            merged[key] = jnp.asarray(loaded_flat[key], value.dtype)
        elif key.endswith(GROWING_TABLES) and key in loaded_flat and _more_rows(value, loaded_flat[key]):
            rows = np.shape(loaded_flat[key])[0]  # the tokens added after the vocabulary keep their fresh init
            merged[key] = value.at[:rows].set(jnp.asarray(loaded_flat[key], value.dtype))
            reinitialized.append(f"{key}[{rows}:]")
        elif key.startswith("classifier/"):
            merged[key] = value
            reinitialized.append(key)
        else:
            found = np.shape(loaded_flat[key]) if key in loaded_flat else "absent"
            problems.append(f"{key} (checkpoint {found}, model {value.shape})")
    if problems:
        raise UserError(f"init_from {what} does not fit the model: " + "; ".join(problems[:20]))
    return flax.traverse_util.unflatten_dict(merged, sep="/"), reinitialized


def pretrained_variables(
    params: Any, batch_stats: Any, directory: str, metadata: dict[str, Any] | None = None
) -> tuple[Any, Any]:
    """(params, batch_stats) of `directory` in the structure of the given fresh ones. The classifier keeps its
    fresh initialization (from the run's seed) where the checkpoint's is for another number of classes, or was
    never trained: a converted checkpoint's `metadata["fresh"]` lists the head modules it initialized itself."""
    loaded = read_init_variables(directory)
    if metadata and metadata.get("fresh"):
        loaded = {k: {n: v for n, v in tree.items() if n != "classifier"} for k, tree in loaded.items()}
    params, reinitialized = merge_pretrained(params, loaded["params"], directory)
    batch_stats, _ = merge_pretrained(batch_stats, loaded.get("batch_stats", {}), directory)
    if reinitialized and jax.process_index() == 0:
        print(f"init_from {directory}: initialized from the seed: {', '.join(reinitialized)}", flush=True)
    return params, batch_stats


def merge_exact(fresh: Any, loaded: Any, what: str) -> Any:
    """`loaded` in the structure of `fresh` (shapes only), refusing a classifier of another shape."""
    merged, reinitialized = merge_pretrained(jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), fresh), loaded, what)
    if reinitialized:
        raise UserError(f"init_from {what}: its classifier does not fit the model's ({', '.join(reinitialized)})")
    return merged
