"""Tokenizers for the text models, built from vocabulary files, and `encode` (special tokens, pair truncation,
padding to a static length); the checks that keep a checkpoint's tokenizer what it was trained with.

    tokenizer = load_tokenizer("dir/of/bert-base-uncased")  # vocab.txt, vocab.json+merges.txt or tokenizer.json;
    arrays = encode(tokenizer, first_texts, second_texts, max_seq_length=128)  # casing as saved with them
    check_unknown_rate(tokenizer, arrays, "glue/cola:train")  # stops on a casing that does not fit the vocabulary

Tokenizers (HF `tokenizers`, built here from the vocabulary files so that `lower_case` can override the casing, as
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

Casing: left unset, it is the one saved with the vocabulary (`tokenizer_config.json`'s `do_lower_case`, else
`tokenizer.json`'s normalizer, else, for WordPiece, uncased when no vocabulary entry has an upper-case letter), as
transformers' `from_pretrained` does: an uncased vocabulary fed cased text turns every capitalised word into
`[UNK]` without any error. Because a wrong casing (or vocabulary) is silent, `check_unknown_rate` stops a run whose
batches hold more unknown tokens than a few percent. `copy_vocabulary` keeps a checkpoint's tokenizer files beside
the converted weights, so that one path names both.

Truncation of a pair is longest-first one token at a time with ties cut from the second text, as transformers
2.2.1 (the SoT code), the original BERT and transformers' Python tokenizers do. HF's Rust tokenizers differ in one
case: an odd token budget with both texts longer than half of it, where they give the extra token to the longer
text (the second on ties), not the first. Every sequence is padded to `max_seq_length` (static shapes).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sot_jax.errors import UserError

if TYPE_CHECKING:
    import tokenizers

TOKENIZER_KINDS = ("wordpiece", "roberta", "gpt2", "gpt")
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
GPT_SPECIALS = ("<|endoftext|>", "<unk>")
# What transformers' `save_pretrained` may write for a tokenizer (`copy_vocabulary`).
TOKENIZER_FILES = (
    "vocab.txt", "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"
)  # fmt: skip
# A WordPiece special token such as [CLS] or [unused0]: not text, so not a hint of the vocabulary's casing.
_BRACKETED_TOKEN = re.compile(r"\[[^\[\]\s]+\]")
# A template lists its pieces: "a" or "b" (a text, with its token type), or a special token id (with its type).
Template = tuple[tuple[str | int, int], ...]


@dataclasses.dataclass(frozen=True, eq=False)
class Tokenizer:
    """A `tokenizers.Tokenizer` (`backend`, whose own `encode(a, b)` adds the same special tokens) and what
    `encode` needs besides: the kind (see the module docstring), the padding id and the special-token templates;
    and what the unknown-token check reports: the casing applied, the unknown token and the vocabulary's path."""

    backend: tokenizers.Tokenizer
    kind: str
    pad_id: int
    vocab_size: int  # the largest id + 1: a model's vocab_size
    single: Template
    pair: Template
    lower_case: bool  # the text is lower-cased first (always for GPT-1)
    unk_id: int | None  # [UNK] or <unk>; None for byte-level BPE, which has no unknown tokens
    source: str  # the vocabulary file or folder it was built from

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


def _lowercases(normalizer: dict | None) -> bool:
    """Whether a `tokenizer.json` normalizer lower-cases: BertNormalizer's `lowercase`, or `Lowercase`, also inside
    a Sequence."""
    if not normalizer:
        return False
    if normalizer.get("type") == "Sequence":
        return any(_lowercases(inner) for inner in normalizer.get("normalizers", []))
    return normalizer.get("type") == "Lowercase" or (
        normalizer.get("type") == "BertNormalizer" and bool(normalizer.get("lowercase"))
    )


def _saved_casing(folder: Path, tokenizer_json: dict | None) -> bool | None:
    """The casing saved with a vocabulary in `folder`: `tokenizer_config.json`'s `do_lower_case`, else the normalizer
    of `tokenizer_json` (the one loaded) or of `folder/tokenizer.json`; None when neither is there."""
    if (folder / "tokenizer_config.json").is_file():
        saved = _read_json(folder / "tokenizer_config.json").get("do_lower_case")
        if isinstance(saved, bool):
            return saved
    if tokenizer_json is None and (folder / "tokenizer.json").is_file():
        tokenizer_json = _read_json(folder / "tokenizer.json")
    return None if tokenizer_json is None else _lowercases(tokenizer_json.get("normalizer"))


def _template_string(template: Template, id_to_token: dict[int, str]) -> str:
    pieces = []
    for piece, type_id in template:
        name = {"a": "$A", "b": "$B"}.get(piece) if isinstance(piece, str) else id_to_token[piece]
        pieces.append(f"{name}:{type_id}")
    return " ".join(pieces)


def _finish(
    backend: tokenizers.Tokenizer, kind: str, vocab: dict[str, int], pad: str | None, single: Template,
    pair: Template, specials: Sequence[str], lower_case: bool, unk: str | None, source: str,
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
    unk_id = vocab[unk] if unk is not None else None
    return Tokenizer(backend, kind, pad_id, max(vocab.values()) + 1, single, pair, lower_case, unk_id, source)


def _wordpiece(vocab: dict[str, int], lower_case: bool | None, where: str) -> Tokenizer:
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece

    missing = [token for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if token not in vocab]
    if missing:
        raise UserError(f"{where}: the WordPiece vocabulary lacks {', '.join(missing)} (BERT's special tokens)")
    if lower_case is None:  # no casing saved: uncased as BERT's uncased vocabularies, when lower-casing changes none
        lower_case = all(token == token.lower() for token in vocab if not _BRACKETED_TOKEN.fullmatch(token))
    backend = Backend(WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=lower_case)  # strips accents when lower-casing
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    single = ((cls, 0), ("a", 0), (sep, 0))
    pair = ((cls, 0), ("a", 0), (sep, 0), ("b", 1), (sep, 1))
    return _finish(backend, "wordpiece", vocab, "[PAD]", single, pair, BERT_SPECIALS, lower_case, "[UNK]", where)


def _bpe(vocab: dict[str, int], merges: list[tuple[str, str]], lower_case: bool | None, where: str) -> Tokenizer:
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
        single, pair = (("a", 0),), (("a", 0), ("b", 0))
        return _finish(backend, "gpt", vocab, "<unk>", single, pair, ("<unk>",), True, "<unk>", where)
    backend = Backend(BPE(vocab, merges))  # byte-level: GPT-2 and RoBERTa, as HF's tokenizers (no unk)
    lower_case = bool(lower_case)  # cased unless saved or asked otherwise
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
        return _finish(backend, "roberta", vocab, "<pad>", single, pair, ROBERTA_SPECIALS, lower_case, None, where)
    pad = next((token for token in GPT_SPECIALS if token in vocab), None)
    single, pair = (("a", 0),), (("a", 0), ("b", 0))
    return _finish(backend, "gpt2", vocab, pad, single, pair, GPT_SPECIALS, lower_case, None, where)


def _from_tokenizer_json(path: Path, lower_case: bool | None) -> Tokenizer:
    """The vocabulary (and merges) of a `tokenizer.json` (what transformers 5's `save_pretrained` writes), rebuilt
    as the matching kind, so that `lower_case` can override the casing it saved."""
    content = _read_json(path)
    if lower_case is None:
        lower_case = _saved_casing(path.parent, content)
    model = content.get("model") or {}
    if model.get("type") == "WordPiece":
        return _wordpiece(model["vocab"], lower_case, str(path))
    if model.get("type") == "BPE":
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
        return _bpe(model["vocab"], merges, lower_case, str(path))
    raise UserError(f"{path}: tokenizer model {model.get('type')!r} is not supported; choose WordPiece or BPE")


def load_tokenizer(vocab: str, lower_case: bool | None = None) -> Tokenizer:
    """The tokenizer of a `vocab.txt` file (WordPiece), or of a directory holding `vocab.json` + `merges.txt`
    (BPE: RoBERTa, GPT-2 or GPT-1, told apart by their vocabularies), a `vocab.txt`, or a `tokenizer.json` (in
    that order of preference). `lower_case`: lower-case the text first (WordPiece also strips accents); None: the
    casing saved with the vocabulary (see the module docstring), else cased."""
    path = Path(vocab)
    if path.is_dir():
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            casing = _saved_casing(path, None) if lower_case is None else lower_case
            return _bpe(_read_json(path / "vocab.json"), _read_merges(path / "merges.txt"), casing, str(path))
        if (path / "vocab.txt").is_file():
            path = path / "vocab.txt"
        elif (path / "tokenizer.json").is_file():
            path = path / "tokenizer.json"
        else:
            present = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
            raise UserError(
                f"tokenizer directory {path} holds none of vocab.json + merges.txt (BPE), vocab.txt (WordPiece) or "
                f"tokenizer.json; it holds: {present}"
            )
    elif not path.is_file():
        raise UserError(
            f"tokenizer vocabulary {path} does not exist (give a vocab.txt, or a directory with vocab.json + "
            "merges.txt, vocab.txt or tokenizer.json)"
        )
    if path.name.endswith(".json"):
        return _from_tokenizer_json(path, lower_case)
    casing = _saved_casing(path.parent, None) if lower_case is None else lower_case
    return _wordpiece(_read_vocab_txt(path), casing, str(path))


# The GPT-1 paper's fine-tuning inputs: start, delimiter and extract tokens (HF's run_openai_gpt.py names).
GPT1_TOKENS = ("_start_", "_delimiter_", "_classify_")
GPT_FORMATS = ("hf", "gpt1")


def with_gpt1_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """A GPT tokenizer in the GPT-1 paper's fine-tuning format: `_start_ a _classify_` and
    `_start_ a _delimiter_ b _classify_`, the three tokens added after the vocabulary (ids vocab_size ...
    vocab_size + 2; a pretrained model learns their embeddings from a fresh start). The default "hf" format is HF's
    GPT2ForSequenceClassification input: the texts concatenated, no special tokens."""
    if tokenizer.kind not in ("gpt", "gpt2"):
        raise UserError(f"input.gpt_format=gpt1 applies to GPT vocabularies; {tokenizer.source} is {tokenizer.kind}")
    from tokenizers import AddedToken, processors

    start, delimiter, extract = (tokenizer.vocab_size + i for i in range(len(GPT1_TOKENS)))
    backend = tokenizer.backend
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in GPT1_TOKENS])
    if [backend.token_to_id(t) for t in GPT1_TOKENS] != [start, delimiter, extract]:
        raise UserError(f"{tokenizer.source}: the vocabulary's ids are not contiguous; cannot add the GPT-1 tokens")
    single = ((start, 0), ("a", 0), (extract, 0))
    pair = ((start, 0), ("a", 0), (delimiter, 0), ("b", 0), (extract, 0))
    names = dict(zip((start, delimiter, extract), GPT1_TOKENS, strict=True))
    backend.post_processor = processors.TemplateProcessing(
        single=_template_string(single, names), pair=_template_string(pair, names),
        special_tokens=[(name, i) for i, name in names.items()],
    )  # fmt: skip
    return dataclasses.replace(tokenizer, vocab_size=tokenizer.vocab_size + 3, single=single, pair=pair)


def copy_vocabulary(source_dir: str | Path, target_dir: str | Path) -> list[str]:
    """Copy the tokenizer files of a `save_pretrained` folder (`TOKENIZER_FILES`) into `target_dir`, created when
    there is one; the names copied, [] when `source_dir` holds none (the caller decides what that means)."""
    source, target = Path(source_dir), Path(target_dir)
    names = [name for name in TOKENIZER_FILES if (source / name).is_file()]
    if not names or (target.is_dir() and target.samefile(source)):
        return names
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(source / name, target / name)
    except OSError as e:
        raise UserError(f"cannot copy the tokenizer files of {source} to {target}: {e}") from None
    return names


# --- the unknown-token check ------------------------------------------------------------------------------------


def unknown_rate(tokenizer: Tokenizer, input_ids: np.ndarray, attention_mask: np.ndarray) -> float:
    """The fraction of the attended tokens, less the special tokens `encode` adds, that are the unknown token; 0.0
    for a tokenizer without one (byte-level BPE) or without such tokens."""
    if tokenizer.unk_id is None:
        return 0.0
    added = [piece for piece, _ in (*tokenizer.single, *tokenizer.pair) if isinstance(piece, int)]
    input_ids = np.asarray(input_ids)
    text = (np.asarray(attention_mask) != 0) & ~np.isin(input_ids, added)
    count = int(text.sum())
    return float(np.count_nonzero(input_ids[text] == tokenizer.unk_id) / count) if count else 0.0


def check_unknown_rate(tokenizer: Tokenizer, arrays: dict[str, np.ndarray], where: str, limit: float = 0.05) -> None:
    """Raise a one-line UserError when more than `limit` of the text tokens of `arrays` (`encode`'s) are unknown:
    text cased otherwise than the vocabulary, or another model's vocabulary, would else train silently."""
    rate = unknown_rate(tokenizer, arrays["input_ids"], arrays["attention_mask"])
    if rate <= limit:
        return
    unk = tokenizer.backend.id_to_token(tokenizer.unk_id)
    if tokenizer.kind == "gpt":  # always lower-cased: the casing is not the cause
        fix = "the vocabulary probably does not fit the text: set --config.vocab to the checkpoint's vocabulary"
    else:
        fix = (
            "the text's casing probably does not match the vocabulary: set "
            f"--config.input.lower_case={not tokenizer.lower_case}, or --config.vocab to the checkpoint's vocabulary"
        )
    raise UserError(
        f"{rate:.1%} of the tokens of {where} are {unk} with vocabulary {tokenizer.source} "
        f"(lower_case {tokenizer.lower_case}); {fix}"
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
