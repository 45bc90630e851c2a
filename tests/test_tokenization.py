"""Tokenizers on realistic vocabularies: WordPiece (cased and uncased) and byte-level BPE (RoBERTa, GPT-2) trained
here with `tokenizers`' trainers on the Python standard library's docstrings, saved as transformers saves them, and
compared with transformers' tokenizers on other modules' docstrings; the saved casing, the unknown-token check and
`copy_vocabulary`; and toy vocabularies for each special case (accents, unknown words, truncation ties, GPT-1's
word ends, `tokenizer.json`)."""

import importlib
import inspect
import itertools
import json
import shutil

import numpy as np
import pytest
from conftest import assert_same

from sot_jax.data import tokenization
from sot_jax.data.tokenization import encode, load_tokenizer, truncated_lengths
from sot_jax.errors import UserError

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

TRAIN_MODULES = (
    "argparse", "ast", "asyncio.tasks", "calendar", "collections", "configparser", "contextlib", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "doctest", "email.message", "enum", "functools", "http.client", "inspect",
    "itertools", "json", "logging", "optparse", "os", "pathlib", "pdb", "pickle", "random", "re", "shutil", "socket",
    "statistics", "string", "subprocess", "tarfile", "textwrap", "threading", "typing", "unittest.case",
    "urllib.parse", "urllib.request", "xml.etree.ElementTree", "zipfile",
)  # fmt: skip
HELD_OUT_MODULES = (
    "cmath", "copy", "filecmp", "fnmatch", "ftplib", "glob", "graphlib", "hashlib", "hmac", "imaplib", "ipaddress",
    "mailbox", "netrc", "numbers", "plistlib", "poplib", "pprint", "queue", "reprlib", "sched", "secrets",
    "selectors", "smtplib", "sqlite3", "tempfile", "uuid", "wave", "weakref",
)  # fmt: skip
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB_SIZE = 3000


def docstrings(module_names):
    """The paragraphs (over 40 characters, one line each) of the docstrings of the modules, their public classes
    and functions, and the classes' methods."""
    paragraphs = []
    for name in module_names:
        module = importlib.import_module(name)
        public = [
            value for key, value in vars(module).items()
            if not key.startswith("_") and getattr(value, "__module__", None) == name
            and (inspect.isclass(value) or inspect.isfunction(value))
        ]  # fmt: skip
        methods = [
            value for cls in public if inspect.isclass(cls)
            for key, value in vars(cls).items() if not key.startswith("_") and inspect.isfunction(value)
        ]  # fmt: skip
        for item in [module, *public, *methods]:
            doc = inspect.getdoc(item) or ""
            paragraphs += [" ".join(p.split()) for p in doc.split("\n\n") if len(p) > 40]
    return paragraphs


@pytest.fixture(scope="module")
def corpus():
    train, held_out = docstrings(TRAIN_MODULES), docstrings(HELD_OUT_MODULES)
    assert sum(map(len, train)) > 200_000 and len(held_out) > 300
    return train, held_out[:300]


@pytest.fixture(autouse=True, scope="module")
def quiet_transformers():
    """transformers' Python tokenizers warn on every truncated pair."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    yield
    transformers.logging.set_verbosity(verbosity)


@pytest.fixture(scope="module")
def wordpiece_dirs(corpus, tmp_path_factory):
    """A cased and an uncased BERT vocabulary, saved as transformers saves them (vocab.txt, tokenizer.json,
    tokenizer_config.json)."""
    from tokenizers import models, normalizers, pre_tokenizers, trainers

    dirs = {}
    for name, lower_case in (("cased", False), ("uncased", True)):
        backend = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
        backend.normalizer = normalizers.BertNormalizer(lowercase=lower_case)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIALS)
        backend.train_from_iterator(corpus[0], trainer)
        dirs[name] = tmp_path_factory.mktemp(name)
        vocab_txt = dirs[name] / "vocab.txt"
        vocab = backend.get_vocab()
        vocab_txt.write_text("".join(f"{t}\n" for t in sorted(vocab, key=vocab.get)), encoding="utf-8")
        # transformers 5's BertTokenizer takes `vocab` (it ignores `vocab_file`).
        transformers.BertTokenizer(vocab=str(vocab_txt), do_lower_case=lower_case).save_pretrained(dirs[name])
    return dirs


@pytest.fixture(scope="module")
def bpe_dirs(corpus, tmp_path_factory):
    """Byte-level BPE vocabularies as vocab.json + merges.txt: RoBERTa's (with <s>, <pad>, </s>, <unk>, <mask>)
    and GPT-2's (<|endoftext|> only)."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    dirs = {}
    for kind, specials in (("roberta", ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]), ("gpt2", ["<|endoftext|>"])):
        backend = tokenizers.Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=VOCAB_SIZE, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
        backend.train_from_iterator(corpus[0], trainer)
        dirs[kind] = tmp_path_factory.mktemp(kind)
        backend.model.save(str(dirs[kind]))
    return dirs


def hf_encode(hf, texts_a, texts_b, max_length):
    out = hf(
        texts_a, texts_b, padding="max_length", truncation="longest_first", max_length=max_length,
        return_attention_mask=True, return_token_type_ids=True,
    )  # fmt: skip
    return {k: np.array(out[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}


def odd_tie_rows(tokenizer, texts_a, texts_b, max_length):
    """Rows where HF's Rust truncation may keep the extra token in the second text instead of the first (see
    `tokenization`'s docstring)."""
    budget = max_length - tokenizer.num_special_tokens(True)
    lengths_a = [len(e.ids) for e in tokenizer.backend.encode_batch(texts_a, add_special_tokens=False)]
    lengths_b = [len(e.ids) for e in tokenizer.backend.encode_batch(texts_b, add_special_tokens=False)]
    return {
        row for row, (la, lb) in enumerate(zip(lengths_a, lengths_b, strict=True))
        if la + lb > budget and min(la, lb) > budget // 2 and budget % 2
    }  # fmt: skip


def input_ids(tokenizer, texts, texts_b=None):
    return tokenization.encode(tokenizer, texts, texts_b, 64)["input_ids"]


def unknown_rate(tokenizer, arrays):
    return tokenization.unknown_rate(tokenizer, arrays["input_ids"], arrays["attention_mask"])


def assert_matches(ours, hf, texts, max_lengths, keys, python=False):
    """Our `encode` against a transformers tokenizer, singles and pairs (a text with the next one); `python`: a
    Python tokenizer, which truncates pairs as we do on odd-budget ties too."""
    texts_b = texts[1:] + texts[:1]
    ties_seen = 0
    for max_length in max_lengths:
        single = tokenization.encode(ours, texts, None, max_length)
        pair = tokenization.encode(ours, texts, texts_b, max_length)
        expected_single = hf_encode(hf, texts, None, max_length)
        expected_pair = hf_encode(hf, texts, texts_b, max_length)
        ties = set() if python else odd_tie_rows(ours, texts, texts_b, max_length)
        ties_seen += len(ties)
        rows = [row for row in range(len(texts)) if row not in ties]
        for key in keys:
            np.testing.assert_array_equal(single[key], expected_single[key], err_msg=f"{key} {max_length}")
            np.testing.assert_array_equal(pair[key][rows], expected_pair[key][rows], err_msg=f"{key} {max_length}")
    return ties_seen


# --- parity with transformers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cased", "uncased"])
def test_wordpiece_matches_transformers_with_the_saved_casing(wordpiece_dirs, corpus, name):
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    folder, texts = wordpiece_dirs[name], corpus[1]
    assert sorted(p.name for p in folder.iterdir()) == ["tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    ours = tokenization.load_tokenizer(str(folder))  # the casing saved in tokenizer_config.json
    assert (ours.kind, ours.lower_case, ours.unk_id, ours.vocab_size) == ("wordpiece", name == "uncased", 1, VOCAB_SIZE)
    assert ours.source == str(folder / "vocab.txt")
    keys = ("input_ids", "attention_mask", "token_type_ids")
    fast = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert assert_matches(ours, fast, texts, (128, 34, 17), keys)  # the documented difference was exercised
    python = BertTokenizerLegacy(vocab_file=str(folder / "vocab.txt"), do_lower_case=ours.lower_case)
    assert_matches(ours, python, texts[:100], (34,), keys, python=True)
    # Each place the casing can be saved, alone: tokenizer.json's normalizer, else the vocabulary's entries.
    for kept in ("tokenizer.json", "vocab.txt"):
        alone = folder.parent / f"{name}-{kept}"
        alone.mkdir(exist_ok=True)
        shutil.copy(folder / kept, alone / kept)
        again = tokenization.load_tokenizer(str(alone))
        assert again.lower_case == ours.lower_case, kept
        np.testing.assert_array_equal(input_ids(again, texts), input_ids(ours, texts))


@pytest.mark.parametrize("kind", ["roberta", "gpt2"])
def test_byte_level_bpe_matches_transformers(bpe_dirs, corpus, kind, tmp_path):
    folder, texts = bpe_dirs[kind], corpus[1]
    ours = tokenization.load_tokenizer(str(folder))
    assert (ours.kind, ours.lower_case, ours.unk_id, ours.vocab_size) == (kind, False, None, VOCAB_SIZE)
    if kind == "roberta":
        hf = transformers.RobertaTokenizer.from_pretrained(str(folder))
    else:
        hf = transformers.GPT2Tokenizer.from_pretrained(str(folder))
        hf.pad_token = "<|endoftext|>"  # GPT-2 has no padding token; ours pads with this one
    assert ours.pad_id == hf.pad_token_id
    assert assert_matches(ours, hf, texts, (128, 37, 17), ("input_ids", "attention_mask"))
    # transformers 5 saves tokenizer.json (no vocab.json): the same tokenizer.
    hf.save_pretrained(tmp_path / "saved")
    saved = tokenization.load_tokenizer(str(tmp_path / "saved"))
    assert (saved.kind, saved.lower_case) == (kind, False)
    np.testing.assert_array_equal(input_ids(saved, texts, texts[::-1]), input_ids(ours, texts, texts[::-1]))
    # A lower-casing normalizer inside a Sequence is honoured, as the tokenizer.json's own tokenizer does.
    content = json.loads((tmp_path / "saved" / "tokenizer.json").read_text(encoding="utf-8"))
    content["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}]}
    content["padding"] = content["truncation"] = None  # transformers saves its last call's
    (tmp_path / "lowered.json").write_text(json.dumps(content), encoding="utf-8")
    lowered = tokenization.load_tokenizer(str(tmp_path / "lowered.json"))
    reference = tokenizers.Tokenizer.from_file(str(tmp_path / "lowered.json"))
    assert lowered.lower_case
    ids = [e.ids for e in lowered.backend.encode_batch(texts, add_special_tokens=False)]
    assert ids == [e.ids for e in reference.encode_batch(texts, add_special_tokens=False)]


# --- casing, the unknown-token check, the vocabulary files ------------------------------------------------------


def test_a_casing_that_does_not_fit_the_vocabulary_is_stopped(wordpiece_dirs, bpe_dirs, corpus, tmp_path):
    texts = corpus[1]
    uncased = tokenization.load_tokenizer(str(wordpiece_dirs["uncased"]))
    arrays = tokenization.encode(uncased, texts, None, 64)
    assert uncased.lower_case and unknown_rate(uncased, arrays) < 0.005
    tokenization.check_unknown_rate(uncased, arrays, "docstrings")

    forced = tokenization.load_tokenizer(str(wordpiece_dirs["uncased"]), lower_case=False)
    arrays = tokenization.encode(forced, texts, None, 64)
    rate = unknown_rate(forced, arrays)
    assert rate > 0.05  # every word with a capital letter is [UNK]
    with pytest.raises(UserError) as raised:
        tokenization.check_unknown_rate(forced, arrays, "docstrings:train")
    message = str(raised.value)
    assert "\n" not in message and f"{rate:.1%} of the tokens of docstrings:train are [UNK]" in message
    assert "(lower_case False)" in message and str(wordpiece_dirs["uncased"] / "vocab.txt") in message
    assert "--config.input.lower_case=True" in message and "--config.vocab" in message
    tokenization.check_unknown_rate(forced, arrays, "docstrings:train", limit=rate)
    # tokenizer_config.json's do_lower_case comes first: the same mismatch, saved.
    shutil.copytree(wordpiece_dirs["uncased"], tmp_path / "saved")
    (tmp_path / "saved" / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}), encoding="utf-8")
    saved = tokenization.load_tokenizer(str(tmp_path / "saved" / "vocab.txt"))
    assert not saved.lower_case
    with pytest.raises(UserError, match=r"set --config.input.lower_case=True, or --config.vocab"):
        tokenization.check_unknown_rate(saved, tokenization.encode(saved, texts, None, 64), "docstrings:train")

    cased = tokenization.load_tokenizer(str(wordpiece_dirs["cased"]))
    tokenization.check_unknown_rate(cased, tokenization.encode(cased, texts, texts[::-1], 64), "docstrings")
    # Special tokens and padding are not counted: all-[UNK] text is a rate of 1 whatever the length.
    unknown = tokenization.encode(cased, ["\u2603 \u2603"], ["\u2603"], 16)
    assert unknown_rate(cased, unknown) == 1.0
    roberta = tokenization.load_tokenizer(str(bpe_dirs["roberta"]))  # byte-level BPE: nothing is unknown
    arrays = tokenization.encode(roberta, ["\u2603 <unk>"], None, 16)
    assert unknown_rate(roberta, arrays) == 0.0


def test_copy_vocabulary_copies_the_tokenizer_files(wordpiece_dirs, tmp_path):
    source = wordpiece_dirs["uncased"]
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"")
    shutil.copytree(source, tmp_path / "hf")
    (tmp_path / "hf" / "special_tokens_map.json").write_text("{}", encoding="utf-8")
    (tmp_path / "hf" / "config.json").write_text("{}", encoding="utf-8")
    names = tokenization.copy_vocabulary(tmp_path / "hf", tmp_path / "out" / "vocab")
    assert names == ["vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
    assert sorted(p.name for p in (tmp_path / "out" / "vocab").iterdir()) == sorted(names)
    copied = tokenization.load_tokenizer(str(tmp_path / "out" / "vocab"))
    assert copied.lower_case and copied.vocab_size == VOCAB_SIZE
    assert tokenization.copy_vocabulary(tmp_path / "hf", tmp_path / "hf") == names  # in place: nothing to do
    assert tokenization.copy_vocabulary(tmp_path / "weights", tmp_path / "none") == []
    assert not (tmp_path / "none").exists()


# --- toy vocabularies: each special case against transformers ----------------------------------------------------

WORDPIECE_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "The", "quick", "brown", "fox", "jump", "##s", "##ed",
    "over", "lazy", "dog", "cafe", "Café", "un", "##want", "##ing", "runn", "a", "A", "b", ".", ",", "!", "?", "中",
    "##x", "x",
]  # fmt: skip
WORDPIECE_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Café unwanted, running!",
    "中A b ?",
    "xxx unknownword x",
    "",
    "  the\tdog  ",
    "CAFÉ Cafe café",
    "a [MASK] b",
]
BPE_MERGES = ["Ġ t", "h e", "Ġt he", "Ġ c", "a t", "Ġc at", "Ġ s", "Ġs at", "c at", "t he"]
BPE_TEXTS = ["the cat sat", "The cat", " the  cat ", "héllo wörld", "cat\nthe sat sat", "", "catcat the"]
GPT_MERGES = ["t h", "th e</w>", "c a", "ca t</w>", "s a", "sa t</w>", "d o", "do g</w>"]
GPT_TEXTS = ["The cat sat.", "the zebra!", "Éclair dog", "42 cats", "", "dog, cat; the"]


def pairs_of(texts):
    return [texts[i] for i in range(len(texts))], [texts[(i * 3 + 1) % len(texts)] for i in range(len(texts))]


@pytest.fixture(scope="module")
def vocab_dirs(tmp_path_factory):
    from tokenizers import pre_tokenizers

    root = tmp_path_factory.mktemp("vocabs")
    (root / "wordpiece").mkdir()
    (root / "wordpiece" / "vocab.txt").write_text("".join(f"{t}\n" for t in WORDPIECE_VOCAB), encoding="utf-8")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merged = list(dict.fromkeys(a + b for a, b in (m.split() for m in BPE_MERGES)))
    byte_level = {
        "roberta": ["<s>", "<pad>", "</s>", "<unk>", *alphabet, *merged, "<mask>"],
        "gpt2": [*alphabet, *merged, "<|endoftext|>"],
    }
    for name, vocab in byte_level.items():
        (root / name).mkdir()
        (root / name / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
        (root / name / "merges.txt").write_text("#version: 0.2\n" + "\n".join(BPE_MERGES) + "\n", encoding="utf-8")
    letters = "abcdefghijklmnopqrstuvwxyz.,!?;"
    gpt_merged = list(dict.fromkeys(a + b for a, b in (m.split() for m in GPT_MERGES)))
    gpt_vocab = ["<unk>", *letters, *(c + "</w>" for c in letters), *gpt_merged]
    (root / "gpt").mkdir()
    (root / "gpt" / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(gpt_vocab)}), encoding="utf-8")
    (root / "gpt" / "merges.txt").write_text("#version: 0.2\n" + "\n".join(GPT_MERGES) + "\n", encoding="utf-8")
    return root


# --- tokenizers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lower_case", [False, True])
def test_wordpiece_matches_bert_tokenizers(vocab_dirs, lower_case):
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    vocab = str(vocab_dirs / "wordpiece" / "vocab.txt")
    ours = load_tokenizer(vocab, lower_case=lower_case)
    assert ours.kind == "wordpiece" and ours.pad_id == 0 and ours.vocab_size == len(WORDPIECE_VOCAB)
    fast = transformers.BertTokenizerFast.from_pretrained(str(vocab_dirs / "wordpiece"), do_lower_case=lower_case)
    python = BertTokenizerLegacy(vocab_file=vocab, do_lower_case=lower_case)
    texts_a, texts_b = pairs_of(WORDPIECE_TEXTS)
    for max_length in (32, 16, 10, 8):
        for reference in (fast, python):
            assert_same(encode(ours, texts_a, None, max_length), hf_encode(reference, texts_a, None, max_length))
        encoded = encode(ours, texts_a, texts_b, max_length)
        assert_same(encoded, hf_encode(python, texts_a, texts_b, max_length))
        ties = odd_tie_rows(ours, texts_a, texts_b, max_length)
        rows = [i for i in range(len(texts_a)) if i not in ties]
        assert_same(encoded, hf_encode(fast, texts_a, texts_b, max_length), rows=rows)
        assert all(v.dtype == np.int32 and v.shape == (len(texts_a), max_length) for v in encoded.values())
    assert odd_tie_rows(ours, texts_a, texts_b, 10)  # the documented difference was exercised
    if not lower_case:  # the backend alone adds the same special tokens
        a, b = "The quick fox", "jumps over"
        mask = encode(ours, [a], [b], 32)["attention_mask"][0] == 1
        assert ours.backend.encode(a, b).ids == encode(ours, [a], [b], 32)["input_ids"][0][mask].tolist()


def test_pair_truncation_is_longest_first_one_token_at_a_time():
    def one_at_a_time(a, b, budget):
        while a + b > budget:
            if a > b:
                a -= 1
            else:
                b -= 1
        return a, b

    for a, b, budget in itertools.product(range(12), range(12), range(2, 20)):
        assert truncated_lengths(a, b, budget) == one_at_a_time(a, b, budget), (a, b, budget)


@pytest.mark.parametrize("kind", ["roberta", "gpt2"])
def test_byte_level_bpe_matches_roberta_and_gpt2(vocab_dirs, kind):
    ours = load_tokenizer(str(vocab_dirs / kind))
    assert ours.kind == kind
    if kind == "roberta":
        hf = transformers.RobertaTokenizerFast.from_pretrained(str(vocab_dirs / kind))
        assert ours.pad_id == hf.pad_token_id == 1
    else:
        hf = transformers.GPT2TokenizerFast.from_pretrained(str(vocab_dirs / kind))
        hf.pad_token = "<|endoftext|>"  # GPT-2 has no padding token; ours pads with this one too
        assert ours.pad_id == hf.pad_token_id
    texts_a, texts_b = pairs_of(BPE_TEXTS)
    for max_length in (24, 10, 7):
        keys = ("input_ids", "attention_mask")
        assert_same(encode(ours, texts_a, None, max_length), hf_encode(hf, texts_a, None, max_length), keys)
        encoded = encode(ours, texts_a, texts_b, max_length)
        rows = [i for i in range(len(texts_a)) if i not in odd_tie_rows(ours, texts_a, texts_b, max_length)]
        assert_same(encoded, hf_encode(hf, texts_a, texts_b, max_length), keys, rows=rows)
        assert not encoded["token_type_ids"].any()  # one token type (RoBERTa) or none (GPT-2)
    upper = encode(load_tokenizer(str(vocab_dirs / kind), lower_case=True), ["THE CAT"], None, 8)
    np.testing.assert_array_equal(upper["input_ids"], encode(ours, ["the cat"], None, 8)["input_ids"])


def test_gpt1_bpe_matches_openai_gpt_tokenizer(vocab_dirs):
    ours = load_tokenizer(str(vocab_dirs / "gpt"))
    assert ours.kind == "gpt" and ours.pad_id == 0
    hf = transformers.OpenAIGPTTokenizer.from_pretrained(str(vocab_dirs / "gpt"))
    hf.pad_token = "<unk>"
    texts_a, texts_b = pairs_of(GPT_TEXTS)
    for max_length in (24, 9):
        keys = ("input_ids", "attention_mask")
        assert_same(encode(ours, texts_a, None, max_length), hf_encode(hf, texts_a, None, max_length), keys)
        rows = [i for i in range(len(texts_a)) if i not in odd_tie_rows(ours, texts_a, texts_b, max_length)]
        encoded = encode(ours, texts_a, texts_b, max_length)
        assert_same(encoded, hf_encode(hf, texts_a, texts_b, max_length), keys, rows=rows)


def test_tokenizer_json_from_save_pretrained_loads_the_same(vocab_dirs, tmp_path):
    for kind in ("wordpiece", "roberta"):
        hf_class = transformers.BertTokenizerFast if kind == "wordpiece" else transformers.RobertaTokenizerFast
        hf_class.from_pretrained(str(vocab_dirs / kind)).save_pretrained(str(tmp_path / kind))
        assert not (tmp_path / kind / "vocab.txt").exists()  # transformers 5 writes tokenizer.json only
        for lower_case in (False, True):
            texts = WORDPIECE_TEXTS if kind == "wordpiece" else BPE_TEXTS
            saved = encode(load_tokenizer(str(tmp_path / kind), lower_case), texts, texts[::-1], 16)
            original = encode(load_tokenizer(str(vocab_dirs / kind), lower_case), texts, texts[::-1], 16)
            assert_same(saved, original)


def test_tokenizer_errors_name_what_is_expected(vocab_dirs, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_tokenizer(str(tmp_path / "nowhere"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "vocab.json").write_text("{}")
    with pytest.raises(UserError, match=r"none of vocab.json \+ merges.txt .* it holds: vocab.json"):
        load_tokenizer(str(tmp_path / "half"))
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(UserError, match=r"lacks \[CLS\], \[SEP\]"):
        load_tokenizer(str(tmp_path / "vocab.txt"))
    tokenizer = load_tokenizer(str(vocab_dirs / "wordpiece"))
    with pytest.raises(UserError, match="no room"):
        encode(tokenizer, ["a"], ["b"], max_seq_length=4)
