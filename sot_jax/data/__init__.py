"""The input side of training: sources (`source_base`: their interface and prepared TFDS; `sources`: every source by
name, TFDS, image folders; `text`: GLUE, whose tasks `glue` lists, and the embedded `brackets`), the Grain image
pipeline (`pipeline`) and its PIL transforms (`transforms`, `randaugment`, `label_maps`), the tokenizers
(`tokenization`) and text batches (`text`), and the embedded datasets (`digits`, `brackets`; their TFDS builders are
in `tfds_builders`).

Every function takes resolved values (image size, crop, batch, tokenizer), never the config or the model:
`experiment.build` resolves them. Here: `model_inputs` (a batch as the model's keyword inputs), `process_shard`
(this process's slice of every global batch), `load_tokenizer` (a text source's tokenizer) and
`use_checkpoint_classes` (a checkpoint's class order for a text source).
"""

from __future__ import annotations

import functools
from typing import Any

import grain

from sot_jax import augment
from sot_jax.data import brackets, digits, pipeline, source_base, sources, text, tokenization, transforms
from sot_jax.errors import UserError, check_choice

__all__ = ["brackets", "digits", "pipeline", "source_base", "sources", "text", "tokenization", "transforms"]

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """A batch's model inputs: ImageNet-normalized `images`, or a text batch's token ids and masks."""
    if "image" in batch:
        return {"images": augment.normalize(batch["image"])}
    return {k: batch[k] for k in TEXT_INPUTS if k in batch}


def process_shard() -> dict[str, int]:
    """This process's shard (Grain's ShardByJaxProcess): its contiguous slice of every global batch."""
    shard = grain.sharding.ShardByJaxProcess()
    return {"process_index": shard.shard_index, "process_count": shard.shard_count}


@functools.cache
def _cached_tokenizer(vocab: str, lower_case: bool | None, gpt_format: str) -> tokenization.Tokenizer:
    tokenizer = tokenization.load_tokenizer(vocab, lower_case)
    return tokenization.with_gpt1_tokens(tokenizer) if gpt_format == "gpt1" else tokenizer


def load_tokenizer(
    source: text.TextSource, vocab: str, lower_case: bool | None, gpt_format: str, vocab_size: int | None = None
) -> tokenization.Tokenizer:
    """`vocab`'s tokenizer with `lower_case` (None: the casing saved with the vocabulary) and the GPT input format
    `gpt_format` ("hf" or "gpt1"); one per vocabulary, casing and format (the source caches encodings per
    tokenizer); the embedded `brackets` task brings its own vocabulary when `vocab` is empty. A vocabulary with ids
    beyond `vocab_size` (the model's embedding table) is an error."""
    check_choice("input.gpt_format", gpt_format, tokenization.GPT_FORMATS)
    if not vocab:
        if source.name != brackets.BRACKETS_NAME:
            raise UserError(
                f"{source.name} needs a vocabulary: init_from a converted checkpoint (it keeps its own), or vocab=PATH "
                "(the model's vocab.txt, or a folder with vocab.json + merges.txt or tokenizer.json)"
            )
        vocab = str(brackets.vocab_file(source.builder.data_dir))
    loaded = _cached_tokenizer(vocab, lower_case, gpt_format)
    if vocab_size is not None and loaded.vocab_size > vocab_size:
        raise UserError(
            f"the vocabulary {vocab} has {loaded.vocab_size} entries but the model's vocab_size is {vocab_size}: use "
            "the checkpoint's own vocabulary (vocab, or init_from a converted checkpoint) or set model.vocab_size"
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
