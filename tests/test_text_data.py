"""Text data: tokenizer parity with transformers on toy vocabularies, encoding, the Matthews correlation, the
embedded `brackets` corpus, text training/evaluation batches, and GLUE sources under TFDS's mocked data."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from sot_jax.data import brackets, text
from sot_jax.data.sources import DatasetNotReadyError
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
    ours = text.load_tokenizer(vocab, lower_case=lower_case)
    assert ours.kind == "wordpiece" and ours.pad_id == 0 and ours.vocab_size == len(WORDPIECE_VOCAB)
    fast = transformers.BertTokenizerFast.from_pretrained(str(vocab_dirs / "wordpiece"), do_lower_case=lower_case)
    python = BertTokenizerLegacy(vocab_file=vocab, do_lower_case=lower_case)
    texts_a, texts_b = pairs_of(WORDPIECE_TEXTS)
    for max_length in (32, 16, 10, 8):
        for reference in (fast, python):
            assert_same(text.encode(ours, texts_a, None, max_length), hf_encode(reference, texts_a, None, max_length))
        encoded = text.encode(ours, texts_a, texts_b, max_length)
        assert_same(encoded, hf_encode(python, texts_a, texts_b, max_length))
        ties = odd_tie_rows(ours, texts_a, texts_b, max_length)
        rows = [i for i in range(len(texts_a)) if i not in ties]
        assert_same(encoded, hf_encode(fast, texts_a, texts_b, max_length), rows=rows)
        assert all(v.dtype == np.int32 and v.shape == (len(texts_a), max_length) for v in encoded.values())
    assert odd_tie_rows(ours, texts_a, texts_b, 10)  # the documented difference was exercised
    if not lower_case:  # the backend alone adds the same special tokens
        a, b = "The quick fox", "jumps over"
        mask = text.encode(ours, [a], [b], 32)["attention_mask"][0] == 1
        assert ours.backend.encode(a, b).ids == text.encode(ours, [a], [b], 32)["input_ids"][0][mask].tolist()


def test_pair_truncation_is_longest_first_one_token_at_a_time():
    def one_at_a_time(a, b, budget):
        while a + b > budget:
            if a > b:
                a -= 1
            else:
                b -= 1
        return a, b

    for a, b, budget in itertools.product(range(12), range(12), range(2, 20)):
        assert text.truncated_lengths(a, b, budget) == one_at_a_time(a, b, budget), (a, b, budget)


@pytest.mark.parametrize("kind", ["roberta", "gpt2"])
def test_byte_level_bpe_matches_roberta_and_gpt2(vocab_dirs, kind):
    ours = text.load_tokenizer(str(vocab_dirs / kind))
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
        assert_same(text.encode(ours, texts_a, None, max_length), hf_encode(hf, texts_a, None, max_length), keys)
        encoded = text.encode(ours, texts_a, texts_b, max_length)
        rows = [i for i in range(len(texts_a)) if i not in odd_tie_rows(ours, texts_a, texts_b, max_length)]
        assert_same(encoded, hf_encode(hf, texts_a, texts_b, max_length), keys, rows=rows)
        assert not encoded["token_type_ids"].any()  # one token type (RoBERTa) or none (GPT-2)
    upper = text.encode(text.load_tokenizer(str(vocab_dirs / kind), lower_case=True), ["THE CAT"], None, 8)
    np.testing.assert_array_equal(upper["input_ids"], text.encode(ours, ["the cat"], None, 8)["input_ids"])


def test_gpt1_bpe_matches_openai_gpt_tokenizer(vocab_dirs):
    ours = text.load_tokenizer(str(vocab_dirs / "gpt"))
    assert ours.kind == "gpt" and ours.pad_id == 0
    hf = transformers.OpenAIGPTTokenizer.from_pretrained(str(vocab_dirs / "gpt"))
    hf.pad_token = "<unk>"
    texts_a, texts_b = pairs_of(GPT_TEXTS)
    for max_length in (24, 9):
        keys = ("input_ids", "attention_mask")
        assert_same(text.encode(ours, texts_a, None, max_length), hf_encode(hf, texts_a, None, max_length), keys)
        rows = [i for i in range(len(texts_a)) if i not in odd_tie_rows(ours, texts_a, texts_b, max_length)]
        encoded = text.encode(ours, texts_a, texts_b, max_length)
        assert_same(encoded, hf_encode(hf, texts_a, texts_b, max_length), keys, rows=rows)


def test_tokenizer_json_from_save_pretrained_loads_the_same(vocab_dirs, tmp_path):
    for kind in ("wordpiece", "roberta"):
        hf_class = transformers.BertTokenizerFast if kind == "wordpiece" else transformers.RobertaTokenizerFast
        hf_class.from_pretrained(str(vocab_dirs / kind)).save_pretrained(str(tmp_path / kind))
        assert not (tmp_path / kind / "vocab.txt").exists()  # transformers 5 writes tokenizer.json only
        for lower_case in (False, True):
            texts = WORDPIECE_TEXTS if kind == "wordpiece" else BPE_TEXTS
            saved = text.encode(text.load_tokenizer(str(tmp_path / kind), lower_case), texts, texts[::-1], 16)
            original = text.encode(text.load_tokenizer(str(vocab_dirs / kind), lower_case), texts, texts[::-1], 16)
            assert_same(saved, original)


def test_tokenizer_errors_name_what_is_expected(vocab_dirs, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        text.load_tokenizer(str(tmp_path / "nowhere"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "vocab.json").write_text("{}")
    with pytest.raises(UserError, match=r"none of vocab.json \+ merges.txt .* it holds: vocab.json"):
        text.load_tokenizer(str(tmp_path / "half"))
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(UserError, match=r"lacks \[CLS\], \[SEP\]"):
        text.load_tokenizer(str(tmp_path / "vocab.txt"))
    tokenizer = text.load_tokenizer(str(vocab_dirs / "wordpiece"))
    with pytest.raises(UserError, match="no room"):
        text.encode(tokenizer, ["a"], ["b"], max_seq_length=4)


# --- metrics ---------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:A single label was found")
def test_matthews_corrcoef_equals_sklearn():
    from sklearn.metrics import matthews_corrcoef

    rng = np.random.default_rng(0)
    cases = []
    for classes in (2, 3, 5):
        labels = rng.integers(classes, size=200)
        noisy = np.where(rng.random(200) < 0.6, labels, rng.integers(classes, size=200))
        cases += [
            (labels, noisy, classes),
            (labels, labels, classes),
            (labels, rng.integers(classes, size=200), classes),
        ]
    cases += [
        (np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]), 2),  # -1
        (np.array([0, 1, 0, 1]), np.array([1, 1, 1, 1]), 2),  # one predicted class: 0.0
        (np.array([1, 1, 1, 1]), np.array([0, 1, 0, 1]), 2),  # one true class: 0.0
        (np.array([2, 2, 2]), np.array([2, 2, 2]), 3),  # both constant: 0.0
    ]
    for labels, predictions, classes in cases:
        ours = text.matthews_corrcoef(text.confusion_matrix(labels, predictions, classes))
        assert ours == pytest.approx(matthews_corrcoef(labels, predictions), abs=1e-12)
    assert text.matthews_corrcoef(np.zeros((2, 2))) == 0.0
    # Counts whose products overflow int64, against sklearn with sample weights.
    weights = np.array([4e9, 1e9, 2e9, 5e9])
    expected = matthews_corrcoef([0, 0, 1, 1], [0, 1, 0, 1], sample_weight=weights)
    assert text.matthews_corrcoef(np.array([[4e9, 1e9], [2e9, 5e9]], np.int64)) == pytest.approx(expected)
    masked = text.confusion_matrix([0, 1, 1], [0, 1, 0], 2, mask=[1, 1, 0])
    np.testing.assert_array_equal(masked, [[1, 0], [0, 1]])
    assert text.metric_value("accuracy", np.array([[3, 1], [0, 4]])) == 7 / 8
    with pytest.raises(UserError, match="choose one of accuracy, mcc"):
        text.metric_value("f1", masked)


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
    return text.load_tokenizer(brackets.vocab_file(str(tmp_path_factory.mktemp("brackets_vocab"))))


def test_brackets_corpus_is_balanced_and_labelled_correctly(brackets_source, brackets_tokenizer):
    assert brackets_source.num_classes == 2 and brackets_source.metric == "mcc"
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


@pytest.fixture(scope="module")
def glue_data(tmp_path_factory):
    """glue/cola and glue/rte as `python -m sot_jax.prepare` leaves them (ArrayRecord shards under TFDS's names and
    metadata), their examples serialized by TFDS's own features from generated sentences."""
    from tensorflow_datasets.core import file_adapters

    root = str(tmp_path_factory.mktemp("glue"))
    rng = np.random.default_rng(0)
    words = ("the", "cat", "sat", "on", "a", "mat", "dog", "ran")
    for config in ("cola", "rte"):
        builder = tfds.builder(f"glue/{config}", data_dir=root, file_format="array_record")
        features = builder.info.features
        splits = []
        for split in ("train", "validation"):
            examples = []
            for index in range(GLUE_EXAMPLES):
                example = {"idx": index, "label": int(rng.integers(2))}
                for key in features:
                    if key not in example:
                        example[key] = " ".join(rng.choice(words, size=int(rng.integers(3, 8))))
                examples.append((index, features.serialize_example(example)))
            path = Path(builder.data_dir) / f"glue-{split}.array_record-00000-of-00001"
            path.parent.mkdir(parents=True, exist_ok=True)
            file_adapters.ArrayRecordFileAdapter.write_examples(path, iter(examples))
            splits.append(tfds.core.SplitInfo(name=split, shard_lengths=[GLUE_EXAMPLES], num_bytes=0))
        builder.info.set_splits(tfds.core.SplitDict(splits))
        builder.info.write_to_directory(builder.data_dir)
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
        assert source.text_features == ("sentence",) and source.metric == "mcc" and second is None
    else:
        assert source.text_features == ("sentence1", "sentence2") and source.metric == "accuracy"
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


def test_glue_errors_say_what_to_do(tmp_path):
    with pytest.raises(DatasetNotReadyError, match=f"python -m sot_jax.prepare glue/cola --data_dir={tmp_path}"):
        text.get_text_source("glue/cola", str(tmp_path))
    with pytest.raises(UserError, match="unknown GLUE task 'stsb'; choose one of cola, sst2"):
        text.get_text_source("glue/stsb", str(tmp_path))
    with pytest.raises(UserError, match="choose one of glue/cola, .*, brackets"):
        text.get_text_source("imdb", str(tmp_path))
    assert text.GLUE_TASKS["mnli"].eval_splits == ("validation_matched", "validation_mismatched")
    assert text.GLUE_TASKS["qnli"].text_features == ("question", "sentence")
