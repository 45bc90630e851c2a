"""`brackets`: a generated acceptability corpus (a CoLA stand-in that needs no download), as a TFDS dataset
prepared on first use (its builder is `tfds_builders.Brackets`).

A sentence is 4–16 space-separated tokens over two bracket pairs `( ) [ ]` and six filler words. Label 1
(acceptable): every bracket is closed by its partner, properly nested. Label 0 (unacceptable): a well-formed
sentence after one edit that breaks this (swapping two adjacent tokens, deleting a bracket, or putting another
bracket in a bracket's place). Fixed seed; 8,000 `train` and 1,000 `validation` sentences, half of each class in
each split, no sentence twice in the corpus. (Sized so that a 2-layer BERT learns it on a CPU in minutes: with four
pairs and up to 40 tokens it stayed near chance after 1,600 steps.) `vocab_file` writes the WordPiece vocabulary
that covers it, for a small BERT trained from scratch:

    tokenizer = tokenization.load_tokenizer(brackets.vocab_file(workdir))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BRACKETS_NAME = "brackets"
PAIRS = (("(", ")"), ("[", "]"))
WORDS = ("the", "cat", "dog", "sat", "ran", "far")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MIN_LENGTH, MAX_LENGTH = 4, 16
SIZES = {"train": 8000, "validation": 1000}
SEED = 0

_OPENS = {open_: close for open_, close in PAIRS}
_BRACKETS = tuple(b for pair in PAIRS for b in pair)


def well_formed(tokens: list[str]) -> bool:
    """Every bracket closed by its partner, properly nested (filler words ignored)."""
    stack = []
    for token in tokens:
        if token in _OPENS:
            stack.append(_OPENS[token])
        elif token in _BRACKETS and (not stack or stack.pop() != token):
            return False
    return not stack


def _well_formed_sentence(rng: np.random.Generator, length: int) -> list[str]:
    pairs = int(rng.integers(1, length // 2 + 1))
    brackets, stack, opens_left = [], [], pairs
    while opens_left or stack:
        if opens_left and (not stack or rng.random() < 0.5):
            open_, close = PAIRS[rng.integers(len(PAIRS))]
            brackets.append(open_)
            stack.append(close)
            opens_left -= 1
        else:
            brackets.append(stack.pop())
    is_word = np.zeros(length, bool)
    is_word[rng.choice(length, length - 2 * pairs, replace=False)] = True
    fill = iter(brackets)
    return [WORDS[rng.integers(len(WORDS))] if word else next(fill) for word in is_word]


def _corrupted_sentence(rng: np.random.Generator) -> list[str]:
    """A well-formed sentence after one edit that breaks it (retried until it does)."""
    while True:
        edit = ("swap", "delete", "substitute")[rng.integers(3)]
        length = int(rng.integers(MIN_LENGTH + (edit == "delete"), MAX_LENGTH + 1))
        tokens = _well_formed_sentence(rng, length)
        positions = [i for i, token in enumerate(tokens) if token in _BRACKETS]
        at = positions[rng.integers(len(positions))]
        if edit == "swap":
            other = at + 1 if at + 1 < length and (at == 0 or rng.random() < 0.5) else at - 1
            tokens[at], tokens[other] = tokens[other], tokens[at]
        elif edit == "delete":
            del tokens[at]
        else:
            tokens[at] = _BRACKETS[rng.choice([i for i, b in enumerate(_BRACKETS) if b != tokens[at]])]
        if not well_formed(tokens):
            return tokens


def generate(sizes: dict[str, int] | None = None, seed: int = SEED) -> dict[str, list[tuple[str, int]]]:
    """Per split, its (sentence, label) pairs: half of each label, in a shuffled order, none repeated across the
    splits (generated in the order of `sizes`, default `SIZES`)."""
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    splits = {}
    for split, size in (sizes or SIZES).items():
        examples = []
        for label in (1, 0):
            made = 0
            while made < size // 2 + (label == 1) * (size % 2):
                if label:
                    tokens = _well_formed_sentence(rng, int(rng.integers(MIN_LENGTH, MAX_LENGTH + 1)))
                else:
                    tokens = _corrupted_sentence(rng)
                sentence = " ".join(tokens)
                if sentence not in seen:
                    seen.add(sentence)
                    examples.append((sentence, label))
                    made += 1
        splits[split] = [examples[i] for i in rng.permutation(len(examples))]
    return splits


def vocab_file(directory: str) -> str:
    """Write `directory/vocab.txt`, the WordPiece vocabulary of the corpus (BERT's special tokens, the brackets,
    the words), and return its path."""
    path = Path(directory) / "vocab.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{token}\n" for token in (*SPECIAL_TOKENS, *_BRACKETS, *WORDS)), encoding="utf-8")
    return str(path)
