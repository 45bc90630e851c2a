"""Text data: tokenizer parity with transformers on toy vocabularies, encoding, the Matthews correlation, the
embedded `brackets` corpus, text training/evaluation batches, and GLUE sources under TFDS's mocked data."""

import itertools
import json

import numpy as np
import pytest
from conftest import write_glue

from sot_jax.data import brackets, text
from sot_jax.data.sources import DatasetNotReadyError
from sot_jax.data.tokenization import encode, load_tokenizer, truncated_lengths
from sot_jax.errors import UserError

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

# --- toy vocabularies ------------------------------------------------------------------------------------------

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


@pytest.fixture(autouse=True, scope="module")
def quiet_transformers():
    """transformers' Python tokenizers warn on every truncated pair."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    yield
    transformers.logging.set_verbosity(verbosity)


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


def hf_encode(hf, texts_a, texts_b, max_length):
    out = hf(
        texts_a, texts_b, padding="max_length", truncation="longest_first", max_length=max_length,
        return_attention_mask=True, return_token_type_ids=True,
    )  # fmt: skip
    return {k: np.array(out[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}


def odd_tie_rows(tokenizer, texts_a, texts_b, max_length):
    """Rows where HF's Rust truncation may keep the extra token in the second text instead of the first."""
    budget = max_length - tokenizer.num_special_tokens(True)
    rows = []
    for i, (a, b) in enumerate(zip(texts_a, texts_b, strict=True)):
        la = len(tokenizer.backend.encode(a, add_special_tokens=False).ids)
        lb = len(tokenizer.backend.encode(b, add_special_tokens=False).ids)
        if la + lb > budget and min(la, lb) > budget // 2 and budget % 2:
            rows.append(i)
    return rows


def assert_same(ours, theirs, keys=("input_ids", "attention_mask", "token_type_ids"), rows=None):
    for key in keys:
        a, b = ours[key], theirs[key]
        if rows is not None:
            a, b = a[rows], b[rows]
        np.testing.assert_array_equal(a, b, err_msg=key)


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


# --- the brackets corpus ---------------------------------------------------------------------------------------


def nested_correctly(sentence):
    """An independent checker: brackets as a string, matched pairs removed until none is left."""
    kept = "".join(c for c in sentence.split() if c in "()[]{}<>")
    while True:
        shorter = kept
        for pair in ("()", "[]", "{}", "<>"):
            shorter = shorter.replace(pair, "")
        if shorter == kept:
            return not kept
        kept = shorter


@pytest.fixture(scope="module")
def brackets_source(tmp_path_factory):
    return text.get_text_source("brackets", str(tmp_path_factory.mktemp("brackets_tfds")))


@pytest.fixture(scope="module")
def brackets_tokenizer(tmp_path_factory):
    return load_tokenizer(brackets.vocab_file(str(tmp_path_factory.mktemp("brackets_vocab"))))


def test_brackets_corpus_is_balanced_and_labelled_correctly(brackets_source, brackets_tokenizer):
    assert brackets_source.num_classes == 2 and brackets_source.task.metrics == ("mcc",)
    assert brackets_source.eval_split == "validation"
    seen = set()
    for split, size in (("train", 8000), ("validation", 1000)):
        assert brackets_source.num_examples(split) == size
        sentences, second, labels = brackets_source.texts(split)
        assert second is None and len(sentences) == size
        assert np.bincount(labels).tolist() == [size // 2, size // 2]
        assert [int(nested_correctly(s)) for s in sentences] == labels.tolist()
        assert all(4 <= len(s.split()) <= 16 for s in sentences)
        assert seen.isdisjoint(sentences) and len(set(sentences)) == size
        seen.update(sentences)
        encoded = brackets_source.encoded(split, brackets_tokenizer, 48)
        assert not (encoded["input_ids"] == 1).any()  # the vocabulary covers the corpus ([UNK] is 1)
        lengths = encoded["attention_mask"].sum(1)
        np.testing.assert_array_equal(lengths, [len(s.split()) + 2 for s in sentences])
    assert brackets.generate({"validation": 10}, seed=3) == brackets.generate({"validation": 10}, seed=3)


# --- batches ---------------------------------------------------------------------------------------------------


def test_text_training_order_is_deterministic_resumable_and_process_independent(brackets_source, brackets_tokenizer):
    kwargs = dict(max_seq_length=48, seed=7, global_batch=1280)  # 6 steps an epoch, 320 examples left out

    def stream(start=0, index=0, count=1):
        return text.text_train_batches(
            brackets_source, brackets_tokenizer, start_step=start, process_index=index, process_count=count, **kwargs
        )

    reference = list(itertools.islice(stream(), 9))
    assert set(reference[0]) == {"input_ids", "attention_mask", "token_type_ids", "label"}
    assert reference[0]["input_ids"].shape == (1280, 48) and reference[0]["label"].dtype == np.int32
    for a, b in zip(reference, itertools.islice(stream(), 9), strict=True):
        assert_same(a, b, ("input_ids", "label"))
    for a, b in zip(reference[5:], itertools.islice(stream(start=5), 4), strict=True):
        assert_same(a, b, ("input_ids", "attention_mask", "label"))
    for count in (2, 4):
        slices = [list(itertools.islice(stream(start=4, index=i, count=count), 3)) for i in range(count)]
        for step in range(3):
            joined = {k: np.concatenate([s[step][k] for s in slices]) for k in reference[0]}
            assert_same(joined, reference[4 + step], ("input_ids", "attention_mask", "token_type_ids", "label"))
    first_epoch = np.concatenate([b["input_ids"] for b in reference[:6]])
    assert len(np.unique(first_epoch, axis=0)) == 7680  # each example at most once an epoch
    assert not np.array_equal(reference[0]["input_ids"], reference[6]["input_ids"])  # a new epoch reshuffles
    with pytest.raises(UserError, match="larger than the 8000 examples"):
        text.text_train_batches(brackets_source, brackets_tokenizer, **{**kwargs, "global_batch": 8192}, start_step=0)


def test_text_evaluation_sees_every_example_once_with_padding(brackets_source, brackets_tokenizer):
    encoded = brackets_source.encoded("validation", brackets_tokenizer, 48)
    for global_batch, processes in ((64, 1), (64, 2), (4096, 4)):
        local = global_batch // processes
        per_process = [
            list(
                text.text_eval_batches(
                    brackets_source, "validation", brackets_tokenizer, max_seq_length=48, global_batch=global_batch,
                    process_index=i, process_count=processes,
                )
            )
            for i in range(processes)
        ]  # fmt: skip
        assert len({len(batches) for batches in per_process}) == 1
        steps = [
            {k: np.concatenate([batches[step][k] for batches in per_process]) for k in per_process[0][0]}
            for step in range(len(per_process[0]))
        ]
        assert all(b["input_ids"].shape == (local, 48) for batches in per_process for b in batches)
        whole = {k: np.concatenate([s[k] for s in steps]) for k in steps[0]}
        real = whole["mask"] == 1
        assert real.sum() == 1000 and real[:1000].all()
        assert_same({k: v[real] for k, v in whole.items()}, encoded, ("input_ids", "attention_mask", "label"))
        assert (whole["attention_mask"][~real].sum(1) > 0).all() and not whole["label"][~real].any()


# --- GLUE as TFDS lays it out, with generated sentences -----------------------------------------------------------

GLUE_EXAMPLES = 24


GLUE_SPLITS = {
    "cola": ("train", "validation", "test"), "rte": ("train", "validation"), "stsb": ("train", "validation"),
    "mnli": ("train", "validation_matched", "validation_mismatched", "test_matched"), "ax": ("test",),
}  # fmt: skip


@pytest.fixture(scope="module")
def glue_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("glue"))
    write_glue(root, GLUE_SPLITS, brackets.WORDS, GLUE_EXAMPLES)  # the vocabulary of `brackets_tokenizer`
    return root


@pytest.mark.parametrize("task", ["cola", "rte"])
def test_glue_sources_map_features_and_batch(glue_data, brackets_tokenizer, task):
    source = text.get_text_source(f"glue/{task}", glue_data)
    assert isinstance(source, text.GlueSource) and source.name == f"glue/{task}"
    assert source.num_classes == 2 and source.eval_split == "validation"
    assert source.num_examples("validation") == GLUE_EXAMPLES
    first, second, labels = source.texts("validation")
    assert len(first) == GLUE_EXAMPLES and set(labels.tolist()) <= {0, 1} and all(isinstance(t, str) for t in first)
    if task == "cola":
        assert source.text_features == ("sentence",) and source.task.metrics == ("mcc",) and second is None
    else:
        assert source.text_features == ("sentence1", "sentence2") and source.task.metrics == ("top1",)
        assert len(second) == GLUE_EXAMPLES
    batch = next(
        text.text_train_batches(source, brackets_tokenizer, max_seq_length=16, seed=0, global_batch=8, start_step=0)
    )
    assert batch["input_ids"].shape == (8, 16) and (batch["input_ids"][:, 0] == 2).all()  # [CLS]
    assert batch["token_type_ids"].any() == (task == "rte")  # the second text has token type 1
    evaluated = list(
        text.text_eval_batches(source, "validation", brackets_tokenizer, max_seq_length=16, global_batch=10)
    )
    assert len(evaluated) == 3 and sum(int(b["mask"].sum()) for b in evaluated) == GLUE_EXAMPLES
    with pytest.raises(UserError, match="has no split 'validation_matched'; splits: train, validation"):
        source.num_examples("validation_matched")


def test_glue_regression_test_splits_and_class_order(glue_data, brackets_tokenizer):
    """STS-B is a regression (one output, float scores); a test split's hidden labels cannot be trained on; MNLI's
    labels follow a checkpoint's class names (TFDS: entailment, neutral, contradiction; HF's GLUE processors:
    contradiction, entailment, neutral), and back for the submission files."""
    stsb = text.get_text_source("glue/stsb", glue_data)
    assert stsb.regression and stsb.num_classes == 1 and stsb.label_names == []
    batch = next(text.text_train_batches(stsb, brackets_tokenizer, max_seq_length=16, seed=0, global_batch=8,
                                         start_step=0))  # fmt: skip
    assert batch["label"].dtype == np.float32 and ((batch["label"] >= 0) & (batch["label"] <= 5)).all()
    assert not np.allclose(batch["label"], np.round(batch["label"]))  # scores, not classes
    cola = text.get_text_source("glue/cola", glue_data)
    assert cola.has_labels("train") and not cola.has_labels("test")
    np.testing.assert_array_equal(cola.indices("test"), np.arange(100, 100 + GLUE_EXAMPLES))
    with pytest.raises(UserError, match=r"glue/cola:test has no labels \(GLUE's test labels are hidden\)"):
        text.text_train_batches(cola, brackets_tokenizer, max_seq_length=16, seed=0, global_batch=8, start_step=0,
                                split="test")  # fmt: skip
    mnli = text.get_text_source("glue/mnli", glue_data)
    assert mnli.eval_split == "validation_matched" and mnli.label_names == ["entailment", "neutral", "contradiction"]
    tfds_labels = mnli.labels("validation_matched").copy()
    hf_order = ["contradiction", "entailment", "neutral"]
    reordered = text.get_text_source("glue/mnli", glue_data)
    reordered.use_label_names([n.upper() for n in hf_order])  # case is ignored
    np.testing.assert_array_equal(reordered.labels("validation_matched"), [(1, 2, 0)[c] for c in tfds_labels])
    np.testing.assert_array_equal(reordered.dataset_class(reordered.labels("validation_matched")), tfds_labels)
    with pytest.raises(UserError, match=r"init_from's classes \(yes, no, maybe\) are not glue/mnli's"):
        text.get_text_source("glue/mnli", glue_data).use_label_names(["yes", "no", "maybe"])


def test_glue_errors_say_what_to_do(tmp_path):
    with pytest.raises(DatasetNotReadyError, match=f"python -m sot_jax.prepare glue/cola --data_dir={tmp_path}"):
        text.get_text_source("glue/cola", str(tmp_path))
    with pytest.raises(UserError, match="unknown GLUE task 'boolq'; choose one of cola, sst2, mrpc, stsb, qqp"):
        text.get_text_source("glue/boolq", str(tmp_path))
    with pytest.raises(UserError, match="choose one of glue/cola, .*, brackets"):
        text.get_text_source("imdb", str(tmp_path))
    assert text.GLUE_TASKS["mnli"].eval_splits == ("validation_matched", "validation_mismatched")
    assert text.GLUE_TASKS["qnli"].text_features == ("question", "sentence")
