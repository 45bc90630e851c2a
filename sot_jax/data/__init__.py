"""The input side of training: sources (`sources`: TFDS, image folders; `text`: GLUE, whose tasks `glue` lists, and
the embedded `brackets`), the Grain image pipeline (`pipeline`) and its PIL transforms (`transforms`,
`randaugment`, `label_maps`), the tokenizers (`tokenization`) and text batches (`text`), and the embedded datasets
(`digits`, `brackets`; their TFDS builders are in `tfds_builders`).

`train_batches` and `eval_batches` give a trainer config's batches of either kind, as numpy arrays per process;
`tokenizer` the text config's tokenizer, `use_checkpoint_classes` and `checkpoint_record` what a text checkpoint
brings and keeps.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np

from sot_jax.data import brackets, digits, pipeline, source_base, sources, text, tokenization, transforms
from sot_jax.errors import UserError, check_choice

__all__ = [
    "brackets", "digits", "eval_batches", "pipeline", "sources", "text", "tokenization", "train_batches", "transforms"
]


@functools.cache
def _load_tokenizer(vocab: str, lower_case: bool | None, gpt_format: str) -> tokenization.Tokenizer:
    tokenizer = tokenization.load_tokenizer(vocab, lower_case)
    return tokenization.with_gpt1_tokens(tokenizer) if gpt_format == "gpt1" else tokenizer


def tokenizer(source: text.TextSource, config: Any, model: Any = None) -> tokenization.Tokenizer:
    """`config.vocab`'s tokenizer with `config.input.lower_case` (None: the casing saved with the vocabulary) and,
    for GPT, `config.input.gpt_format`; one per vocabulary, casing and format (the source caches encodings per
    tokenizer); the embedded `brackets` task brings its own vocabulary. With `model`: a vocabulary with ids beyond
    the model's embedding table is an error."""
    vocab = config.get("vocab", "")
    if not vocab:
        if source.name != brackets.BRACKETS_NAME:
            raise UserError(
                f"{source.name} needs a vocabulary: init_from a converted checkpoint (it keeps its own), or vocab=PATH "
                "(the model's vocab.txt, or a folder with vocab.json + merges.txt or tokenizer.json)"
            )
        vocab = str(brackets.vocab_file(source.builder.data_dir))
    loaded = _load_tokenizer(vocab, config.input.get("lower_case"), _gpt_format(config))
    table = getattr(model, "encoder_config", {}).get("vocab_size")
    if table is not None and loaded.vocab_size > table:
        raise UserError(
            f"the vocabulary {vocab} has {loaded.vocab_size} entries but the model's vocab_size is {table}: use the "
            "checkpoint's own vocabulary (vocab, or init_from a converted checkpoint) or set model.vocab_size"
        )
    return loaded


def use_checkpoint_classes(source: source_base.Source, metadata: dict[str, Any] | None) -> None:
    """A text source labels its examples in a checkpoint's class order when the checkpoint has a trained
    classifier with class names (a converted HF model's id2label, a fine-tuned run's): MNLI's order differs
    between TFDS and HF, for instance."""
    names = (metadata or {}).get("label_names")
    if names and isinstance(source, text.TextSource) and not metadata.get("fresh"):
        if len(names) == source.num_classes:
            source.use_label_names(names)


def checkpoint_record(source: source_base.Source, config: Any) -> dict[str, Any]:
    """What a text run's checkpoints record to be used again (`checkpoints.resolve_init_from`): the class names in
    the model's order, the vocabulary and the casing it was trained with."""
    if not isinstance(source, text.TextSource):
        return {}
    used = tokenizer(source, config)
    return {"label_names": source.label_names, "vocab": used.source, "lower_case": used.lower_case,
            "gpt_format": _gpt_format(config)}  # fmt: skip


def _gpt_format(config: Any) -> str:
    """`config.input.gpt_format`, "hf" when unset (checked)."""
    gpt_format = config.input.get("gpt_format") or "hf"
    check_choice("input.gpt_format", gpt_format, tokenization.GPT_FORMATS)
    return gpt_format


def _is_gpt(model: Any) -> bool:
    """GPT gets no token types: HF's GPT adds the token embedding of any type ids it is given."""
    return getattr(model, "family", None) in ("gpt", "gpt2")


def _for_model(batches: Iterator[dict[str, np.ndarray]], model: Any) -> Iterator[dict[str, np.ndarray]]:
    if not _is_gpt(model):
        return batches
    return ({k: v for k, v in batch.items() if k != "token_type_ids"} for batch in batches)


def _process() -> dict[str, int]:
    """This process's shard (Grain's ShardByJaxProcess): its contiguous slice of every global batch."""
    shard = grain.sharding.ShardByJaxProcess()
    return {"process_index": shard.shard_index, "process_count": shard.shard_count}


def train_batches(source: source_base.Source, config: Any, model: Any, start_step: int) -> pipeline.TrainBatches:
    """This process's training batches from `start_step` on, images or text depending on the source."""
    process = _process()
    if isinstance(source, text.TextSource):
        return text.text_train_batches(
            source, tokenizer(source, config, model), max_seq_length=config.input.max_seq_length, seed=config.seed,
            global_batch=config.batch_size, start_step=start_step, split=config.input.train_split,
            token_types=not _is_gpt(model), **process,
        )  # fmt: skip
    return pipeline.train_batches(
        source, config.input, image_size=model.img_size, seed=config.seed, global_batch=config.batch_size,
        start_step=start_step, group_size=config.aug.mix_group_size, token_grid=model.grid, **process,
    )  # fmt: skip


def eval_batches(
    source: source_base.Source, split: str, config: Any, model: Any, multi_label: bool = False
) -> Iterator[dict[str, np.ndarray]]:
    """This process's slices of every example of `split` once, padded to whole global batches (`mask`)."""
    process = _process()
    global_batch = config.eval_batch_size or config.batch_size
    if isinstance(source, text.TextSource):
        batches = text.text_eval_batches(
            source, split, tokenizer(source, config, model), max_seq_length=config.input.max_seq_length,
            global_batch=global_batch, **process,
        )  # fmt: skip
        return _for_model(batches, model)
    return pipeline.eval_batches(
        source, split, image_size=model.img_size, crop_pct=config.input.eval_crop_pct, global_batch=global_batch,
        multi_label=multi_label, skip_bad_images=config.input.skip_bad_images,
        threads=pipeline.resolve_workers(config.input.workers), **process,
    )  # fmt: skip
