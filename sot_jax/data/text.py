"""Text data for the language transformers: tokenizers from vocabulary files, GLUE (and the embedded `brackets`)
as sources, training and evaluation batches of token ids, and the Matthews correlation.

    tokenizer = load_tokenizer("dir/of/bert-base-cased", lower_case=True)  # vocab.txt, vocab.json+merges.txt
    source = get_text_source("glue/cola", data_dir)                        #   or tokenizer.json
    batches = text_train_batches(source, tokenizer, max_seq_length=128, seed=42, global_batch=32, start_step=0)
    score = metric_value(source.metric, confusion_matrix(labels, predictions, source.num_classes))

Tokenizers (HF `tokenizers`, built here from the vocabulary files so that `lower_case` is the caller's choice, as
the SoT recipe's `--do_lower_case` on `bert-base-cased`):
- "wordpiece" (BERT, SpanBERT; a `vocab.txt`): BERT normalizer (accents stripped when lower-casing) and
  pre-tokenizer, `[CLS] a [SEP]` / `[CLS] a [SEP] b [SEP]` with token types 0 / 0…0 1…1; padding `[PAD]`.
- "roberta" (byte-level BPE whose vocabulary holds `<s>` and `</s>`): `<s> a </s>` / `<s> a </s></s> b </s>`,
  token types all 0 (RoBERTa has one type); padding `<pad>` (its id, 1 in RoBERTa, also drives its positions).
- "gpt2" (byte-level BPE without them) and "gpt" (OpenAI GPT-1's BPE, `</w>` word ends, always lower-cased as
  HF's `OpenAIGPTTokenizer`): no special tokens, as HF's tokenizers (a pair is `a` followed by `b`); padding
  `<|endoftext|>` or `<unk>` where the vocabulary has them (else id 0). Their token types are all 0, but a GPT
  model must get `token_type_ids=None`: HF's GPT adds the *token* embedding of given type ids.
For byte-level BPE `lower_case=True` lower-cases the text first; GPT-1 ignores it (always lower-cased).

Truncation of a pair is longest-first one token at a time with ties cut from the second text, as transformers
2.2.1 (the SoT code), the original BERT and transformers' Python tokenizers do. HF's Rust tokenizers differ in one
case: an odd token budget with both texts longer than half of it, where they give the extra token to the longer
text (the second on ties), not the first. Every sequence is padded to `max_seq_length` (static shapes).

Sources are `TextSource`s (a `sources.Source` whose splits are tokenized once, in Python, and cached): GLUE's
classification tasks from TFDS (`glue/cola`, ...; `python -m sot_jax.prepare glue/cola --data_dir=DIR`) and the
embedded `brackets` corpus (`sot_jax.data.brackets`, prepared on first use). Labels follow TFDS's class order
(`source.label_names`; MNLI: entailment, neutral, contradiction, which differs from HF's GLUE processors).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sot_jax.data import brackets, pipeline
from sot_jax.data.sources import Source, TfdsRecords, as_text, tfds_builder
from sot_jax.errors import UserError, check_choice

if TYPE_CHECKING:
    import tokenizers

TOKENIZER_KINDS = ("wordpiece", "roberta", "gpt2", "gpt")
METRICS = ("accuracy", "mcc")
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
GPT_SPECIALS = ("<|endoftext|>", "<unk>")
# A template lists its pieces: "a" or "b" (a text, with its token type), or a special token id (with its type).
Template = tuple[tuple[str | int, int], ...]


@dataclasses.dataclass(frozen=True, eq=False)
class Tokenizer:
    """A `tokenizers.Tokenizer` (`backend`, whose own `encode(a, b)` adds the same special tokens) and what
    `encode` needs besides: the kind (see the module docstring), the padding id and the special-token templates."""

    backend: tokenizers.Tokenizer
    kind: str
    pad_id: int
    vocab_size: int  # the largest id + 1: a model's vocab_size
    single: Template
    pair: Template

    def num_special_tokens(self, pair: bool) -> int:
        return sum(piece not in ("a", "b") for piece, _ in (self.pair if pair else self.single))


# --- tokenizers -----------------------------------------------------------------------------------------------


def _read_vocab_txt(path: Path) -> dict[str, int]:
    # As BERT's load_vocab: one token a line, its id the line number.
    with open(path, encoding="utf-8") as f:
        return {line.rstrip("\n"): index for index, line in enumerate(f)}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def _read_merges(path: Path) -> list[tuple[str, str]]:
    merges = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f):
            line = line.rstrip("\n")
            if (number == 0 and line.startswith("#version")) or not line.strip():
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise UserError(f"{path} line {number + 1}: expected two space-separated symbols, got {line!r}")
            merges.append((parts[0], parts[1]))
    return merges


def _template_string(template: Template, id_to_token: dict[int, str]) -> str:
    pieces = []
    for piece, type_id in template:
        name = {"a": "$A", "b": "$B"}.get(piece) if isinstance(piece, str) else id_to_token[piece]
        pieces.append(f"{name}:{type_id}")
    return " ".join(pieces)


def _finish(
    backend: tokenizers.Tokenizer, kind: str, vocab: dict[str, int], pad: str | None, single: Template,
    pair: Template, specials: Sequence[str],
) -> Tokenizer:  # fmt: skip
    from tokenizers import AddedToken, processors

    present = [token for token in specials if token in vocab]
    # As HF's tokenizers: special tokens written in the text are kept whole.
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in present])
    names = {vocab[token]: token for token in present}
    backend.post_processor = processors.TemplateProcessing(
        single=_template_string(single, names), pair=_template_string(pair, names),
        special_tokens=[(token, vocab[token]) for token in present],
    )  # fmt: skip
    pad_id = vocab[pad] if pad is not None else 0
    return Tokenizer(backend, kind, pad_id, max(vocab.values()) + 1, single, pair)


def _wordpiece(vocab: dict[str, int], lower_case: bool, where: str) -> Tokenizer:
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece

    missing = [token for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if token not in vocab]
    if missing:
        raise UserError(f"{where}: the WordPiece vocabulary lacks {', '.join(missing)} (BERT's special tokens)")
    backend = Backend(WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=lower_case)  # strips accents when lower-casing
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    single = ((cls, 0), ("a", 0), (sep, 0))
    pair = ((cls, 0), ("a", 0), (sep, 0), ("b", 1), (sep, 1))
    return _finish(backend, "wordpiece", vocab, "[PAD]", single, pair, BERT_SPECIALS)


def _bpe(vocab: dict[str, int], merges: list[tuple[str, str]], lower_case: bool, where: str) -> Tokenizer:
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    if any(token.endswith("</w>") for token in vocab):  # OpenAI GPT-1, as HF's OpenAIGPTTokenizer
        if "<unk>" not in vocab:
            raise UserError(f"{where}: a GPT-1 BPE vocabulary (with </w> word ends) needs <unk>")
        backend = Backend(BPE(vocab, merges, unk_token="<unk>", end_of_word_suffix="</w>"))
        backend.normalizer = normalizers.BertNormalizer(lowercase=True)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.BPEDecoder(suffix="</w>")
        return _finish(backend, "gpt", vocab, "<unk>", (("a", 0),), (("a", 0), ("b", 0)), ("<unk>",))
    backend = Backend(BPE(vocab, merges))  # byte-level: GPT-2 and RoBERTa, as HF's tokenizers (no unk)
    if lower_case:
        backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    if "<s>" in vocab and "</s>" in vocab:
        if "<pad>" not in vocab:
            raise UserError(f"{where}: a RoBERTa BPE vocabulary (with <s> and </s>) needs <pad>")
        bos, eos = vocab["<s>"], vocab["</s>"]
        single = ((bos, 0), ("a", 0), (eos, 0))
        pair = ((bos, 0), ("a", 0), (eos, 0), (eos, 0), ("b", 0), (eos, 0))
        return _finish(backend, "roberta", vocab, "<pad>", single, pair, ROBERTA_SPECIALS)
    pad = next((token for token in GPT_SPECIALS if token in vocab), None)
    return _finish(backend, "gpt2", vocab, pad, (("a", 0),), (("a", 0), ("b", 0)), GPT_SPECIALS)


def _from_tokenizer_json(path: Path, lower_case: bool) -> Tokenizer:
    """The vocabulary (and merges) of a `tokenizer.json` (what transformers 5's `save_pretrained` writes), rebuilt
    as the matching kind, so that `lower_case` stays the caller's choice."""
    model = _read_json(path).get("model") or {}
    if model.get("type") == "WordPiece":
        return _wordpiece(model["vocab"], lower_case, str(path))
    if model.get("type") == "BPE":
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
        return _bpe(model["vocab"], merges, lower_case, str(path))
    raise UserError(f"{path}: tokenizer model {model.get('type')!r} is not supported; choose WordPiece or BPE")


def load_tokenizer(vocab: str, lower_case: bool = False) -> Tokenizer:
    """The tokenizer of a `vocab.txt` file (WordPiece), or of a directory holding `vocab.json` + `merges.txt`
    (BPE: RoBERTa, GPT-2 or GPT-1, told apart by their vocabularies), a `vocab.txt`, or a `tokenizer.json` (in
    that order of preference). `lower_case`: lower-case the text first (WordPiece also strips accents)."""
    path = Path(vocab)
    if path.is_dir():
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            json_vocab = _read_json(path / "vocab.json")
            return _bpe(json_vocab, _read_merges(path / "merges.txt"), lower_case, str(path))
        if (path / "vocab.txt").is_file():
            return _wordpiece(_read_vocab_txt(path / "vocab.txt"), lower_case, str(path / "vocab.txt"))
        if (path / "tokenizer.json").is_file():
            return _from_tokenizer_json(path / "tokenizer.json", lower_case)
        present = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
        raise UserError(
            f"tokenizer directory {path} holds none of vocab.json + merges.txt (BPE), vocab.txt (WordPiece) or "
            f"tokenizer.json; it holds: {present}"
        )
    if path.is_file():
        if path.name.endswith(".json"):
            return _from_tokenizer_json(path, lower_case)
        return _wordpiece(_read_vocab_txt(path), lower_case, str(path))
    raise UserError(
        f"tokenizer vocabulary {path} does not exist (give a vocab.txt, or a directory with vocab.json + "
        "merges.txt, vocab.txt or tokenizer.json)"
    )


def truncated_lengths(length_a: int, length_b: int, budget: int) -> tuple[int, int]:
    """The lengths a pair keeps within `budget` tokens: one token at a time from the longer text, from the second
    on ties (transformers 2.2.1's longest_first), in closed form."""
    excess = length_a + length_b - budget
    if excess <= 0:
        return length_a, length_b
    if length_a > length_b and length_a - excess >= length_b:
        return length_a - excess, length_b
    if length_a <= length_b and length_b - excess >= length_a:
        return length_a, length_b - excess
    return (budget + 1) // 2, budget // 2  # both cut to about half, the first keeping any extra token


def encode(
    tokenizer: Tokenizer, texts_a: Sequence[str], texts_b: Sequence[str] | None = None, max_seq_length: int = 128
) -> dict[str, np.ndarray]:
    """`input_ids`, `attention_mask` and `token_type_ids`, int32 (N, max_seq_length): special tokens added,
    truncated (pairs longest-first, see the module docstring) and padded with the tokenizer's `pad_id`."""
    pair = texts_b is not None
    if pair and len(texts_b) != len(texts_a):
        raise UserError(f"encode: {len(texts_a)} first texts but {len(texts_b)} second texts")
    budget = max_seq_length - tokenizer.num_special_tokens(pair)
    if budget < (2 if pair else 1):
        raise UserError(f"max_seq_length {max_seq_length} leaves no room for text after the special tokens")
    backend = tokenizer.backend
    pieces_a = [e.ids for e in backend.encode_batch(list(texts_a), add_special_tokens=False)]
    pieces_b = [e.ids for e in backend.encode_batch(list(texts_b), add_special_tokens=False)] if pair else None
    count = len(pieces_a)
    input_ids = np.full((count, max_seq_length), tokenizer.pad_id, np.int32)
    attention_mask = np.zeros((count, max_seq_length), np.int32)
    token_type_ids = np.zeros((count, max_seq_length), np.int32)
    template = tokenizer.pair if pair else tokenizer.single
    for row in range(count):
        a = pieces_a[row]
        if pair:
            b = pieces_b[row]
            keep_a, keep_b = truncated_lengths(len(a), len(b), budget)
            a, b = a[:keep_a], b[:keep_b]
        else:
            a, b = a[:budget], []
        ids, types = [], []
        for piece, type_id in template:
            tokens = a if piece == "a" else b if piece == "b" else [piece]
            ids += tokens
            types += [type_id] * len(tokens)
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
        token_type_ids[row, : len(ids)] = types
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


# --- sources --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TextTask:
    """A text classification dataset's text features (one, or a pair in order), metric and evaluation splits."""

    text_features: tuple[str, ...]
    metric: str
    eval_splits: tuple[str, ...] = ("validation",)


# GLUE's classification tasks with the TFDS glue builder's feature names (STS-B, a regression, is left out).
GLUE_TASKS = {
    "cola": TextTask(("sentence",), "mcc"),
    "sst2": TextTask(("sentence",), "accuracy"),
    "mrpc": TextTask(("sentence1", "sentence2"), "accuracy"),  # GLUE also reports F1 for MRPC and QQP
    "qqp": TextTask(("question1", "question2"), "accuracy"),
    "mnli": TextTask(("premise", "hypothesis"), "accuracy", ("validation_matched", "validation_mismatched")),
    "qnli": TextTask(("question", "sentence"), "accuracy"),
    "rte": TextTask(("sentence1", "sentence2"), "accuracy"),
    "wnli": TextTask(("sentence1", "sentence2"), "accuracy"),
}
BRACKETS_TASK = TextTask(("sentence",), "mcc")  # an acceptability corpus, scored as CoLA


class TextSource(Source):
    """A TFDS text classification dataset (`text_features` and a ClassLabel `label`). `encoded` tokenizes a split
    once and keeps it (per split, tokenizer and length): GLUE's largest task, MNLI, is 393k pairs."""

    def __init__(self, name: str, data_dir: str | None, task: TextTask, prepare: bool = False):
        check_choice("metric", task.metric, METRICS)
        builder = tfds_builder(name, data_dir, prepare)
        features = builder.info.features
        missing = [f for f in (*task.text_features, "label") if f not in features]
        if missing:
            raise UserError(f"dataset {name!r} has no feature {', '.join(missing)}; it has {', '.join(features)}")
        self.builder, self.name, self.task = builder, name, task
        self.text_features, self.metric = task.text_features, task.metric
        self.num_classes = features["label"].num_classes
        self.label_names: list[str] = list(features["label"].names)
        self.features = frozenset(features) - {"label"}
        self.eval_splits, self.eval_split = task.eval_splits, task.eval_splits[0]
        self._texts: dict[str, tuple[list[str], list[str] | None, np.ndarray]] = {}
        self._encoded: dict[tuple[str, int], tuple[Tokenizer, dict[str, np.ndarray]]] = {}

    def _check_split(self, split: str) -> None:
        splits = self.builder.info.splits
        if splits and split not in splits:  # (a mocked builder without metadata lists no splits)
            raise UserError(f"dataset {self.name!r} has no split {split!r}; splits: {', '.join(splits)}")

    def num_examples(self, split: str) -> int:
        self._check_split(split)
        if split in self.builder.info.splits:
            return self.builder.info.splits[split].num_examples
        return len(self.texts(split)[2])

    def texts(self, split: str) -> tuple[list[str], list[str] | None, np.ndarray]:
        """The split's first texts, second texts (None for single-text tasks) and labels (int64), in stored order."""
        if split not in self._texts:
            self._check_split(split)
            keys = (*self.text_features, "label")
            records = TfdsRecords(str(self.builder.data_dir), split, ())
            rows = [records[i] for i in range(len(records))]
            columns = {k: [row[k] for row in rows] for k in keys}
            first, *second = ([as_text(t) for t in columns[k]] for k in self.text_features)
            self._texts[split] = (first, second[0] if second else None, np.array(columns["label"], np.int64))
        return self._texts[split]

    def labels(self, split: str) -> np.ndarray:
        return self.texts(split)[2]

    def encoded(self, split: str, tokenizer: Tokenizer, max_seq_length: int) -> dict[str, np.ndarray]:
        """`encode` of the split's texts, with `label` int32."""
        key = (split, max_seq_length)
        cached = self._encoded.get(key)
        if cached is None or cached[0] is not tokenizer:
            first, second, labels = self.texts(split)
            arrays = encode(tokenizer, first, second, max_seq_length)
            arrays["label"] = labels.astype(np.int32)
            cached = self._encoded[key] = (tokenizer, arrays)
        return cached[1]


class GlueSource(TextSource):
    """A GLUE classification task from TFDS (`glue/<task>`); see `GLUE_TASKS`."""

    def __init__(self, task: str, data_dir: str | None):
        check_choice("GLUE task", task, tuple(GLUE_TASKS))
        super().__init__(f"glue/{task}", data_dir, GLUE_TASKS[task])


def get_text_source(dataset: str, data_dir: str | None, prepare_embedded: bool = True) -> TextSource:
    """`glue/<task>` (prepared with `python -m sot_jax.prepare`) or `brackets` (embedded, prepared on first use)."""
    if dataset.startswith("glue/"):
        return GlueSource(dataset.removeprefix("glue/"), data_dir or None)
    if dataset == brackets.BRACKETS_NAME:
        return TextSource(dataset, data_dir or None, BRACKETS_TASK, prepare=prepare_embedded)
    choices = ", ".join([*(f"glue/{task}" for task in GLUE_TASKS), brackets.BRACKETS_NAME])
    raise UserError(f"unknown text dataset {dataset!r}; choose one of {choices}")


# --- batches --------------------------------------------------------------------------------------------------


def _local_batch(global_batch: int, process_count: int) -> int:
    if global_batch <= 0 or global_batch % process_count:
        raise UserError(f"batch_size {global_batch} must be a positive multiple of the {process_count} processes")
    return global_batch // process_count


def text_train_batches(
    source: TextSource,
    tokenizer: Tokenizer,
    *,
    max_seq_length: int,
    seed: int,
    global_batch: int,
    start_step: int,
    process_index: int = 0,
    process_count: int = 1,
    split: str = "train",
    token_types: bool = True,
) -> pipeline.TrainBatches:
    """Endless training batches from `start_step` on: each epoch a seed-determined permutation of `split` cut into
    whole global batches (the remainder left out, as the image pipeline), each process its contiguous slice; a
    global batch's examples and order do not depend on the number of processes. Dicts of int32 arrays
    `input_ids`, `attention_mask`, `token_type_ids` (local batch, max_seq_length; left out without
    `token_types`) and `label` (local batch,). The split is tokenized once, here."""
    local = _local_batch(global_batch, process_count)
    arrays = dict(source.encoded(split, tokenizer, max_seq_length))
    if not token_types:
        arrays.pop("token_type_ids")
    count = len(arrays["label"])
    if count < global_batch:
        raise UserError(f"batch_size {global_batch} is larger than the {count} examples of {source.name}:{split}")
    make_batch = _TextTrainBatch(arrays, count // global_batch, seed, global_batch, local, process_index)
    return pipeline.TrainBatches(make_batch, start_step, workers=0)


@dataclasses.dataclass
class _TextTrainBatch:
    """Batch `step` of this process from the tokenized split (`text_train_batches`)."""

    arrays: dict[str, np.ndarray]
    epoch_steps: int
    seed: int
    global_batch: int
    local: int
    process_index: int

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        epoch, step_in_epoch = divmod(int(step), self.epoch_steps)
        order = pipeline.epoch_order(self.seed, epoch, len(self.arrays["label"]))
        start = step_in_epoch * self.global_batch + self.process_index * self.local
        index = order[start : start + self.local]
        return {k: v[index] for k, v in self.arrays.items()}


def text_eval_batches(
    source: TextSource,
    split: str,
    tokenizer: Tokenizer,
    *,
    max_seq_length: int,
    global_batch: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Every example of `split` once, in stored order, in whole global batches (each process its contiguous
    slice of each), as `text_train_batches` plus `mask` int32 (0 on padding). Padding rows repeat the split's
    first example (a valid input: a row without any attended token could give NaN logits) with label 0."""
    local = _local_batch(global_batch, process_count)
    arrays = source.encoded(split, tokenizer, max_seq_length)
    count = len(arrays["label"])
    total = math.ceil(count / global_batch) * global_batch
    mask = (np.arange(total) < count).astype(np.int32)
    index = np.where(mask == 1, np.arange(total), 0)
    return _eval_batches(arrays, index, mask, global_batch, local, process_index)


def _eval_batches(
    arrays: dict[str, np.ndarray], index: np.ndarray, mask: np.ndarray, global_batch: int, local: int,
    process_index: int,
) -> Iterator[dict[str, np.ndarray]]:  # fmt: skip
    for start in range(process_index * local, len(index), global_batch):
        rows, keep = index[start : start + local], mask[start : start + local]
        batch = {k: v[rows] for k, v in arrays.items()}
        batch["label"] = batch["label"] * keep
        batch["mask"] = keep
        yield batch


# --- metrics --------------------------------------------------------------------------------------------------


def confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """C×C counts, rows the true class and columns the predicted one (sklearn's layout); `mask` 0 rows skipped."""
    labels, predictions = np.asarray(labels, np.int64).ravel(), np.asarray(predictions, np.int64).ravel()
    if mask is not None:
        keep = np.asarray(mask).ravel() != 0
        labels, predictions = labels[keep], predictions[keep]
    return np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, num_classes)


def matthews_corrcoef(confusion: np.ndarray) -> float:
    """The Matthews correlation of a C×C confusion matrix (rows true, columns predicted), in Gorodkin's multiclass
    form as sklearn's `matthews_corrcoef`; 0.0 when either marginal is constant (the correlation is undefined)."""
    confusion = np.asarray(confusion, np.float64)  # float: the products overflow int64 for large counts
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"matthews_corrcoef needs a square confusion matrix, got shape {confusion.shape}")
    true_counts, predicted_counts = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, total = np.trace(confusion), confusion.sum()
    covariance = correct * total - true_counts @ predicted_counts
    spread_true = total**2 - true_counts @ true_counts
    spread_predicted = total**2 - predicted_counts @ predicted_counts
    if spread_true * spread_predicted == 0:
        return 0.0
    return float(covariance / math.sqrt(spread_true * spread_predicted))


def metric_value(metric: str, confusion: np.ndarray) -> float:
    """A task's metric ("accuracy" or "mcc") from its confusion matrix."""
    check_choice("metric", metric, METRICS)
    if metric == "mcc":
        return matthews_corrcoef(confusion)
    total = np.asarray(confusion).sum()
    return float(np.trace(confusion) / total) if total else 0.0
