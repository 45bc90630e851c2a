"""Text data: the embedded `brackets` corpus, text training/evaluation batches, and GLUE sources under TFDS's
mocked data (regression, hidden test labels, a checkpoint's class order)."""

import itertools

import numpy as np
import pytest
from conftest import assert_same, write_glue

from sot_jax.data import brackets, text
from sot_jax.data.source_base import DatasetNotReadyError
from sot_jax.data.tokenization import load_tokenizer
from sot_jax.errors import UserError

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

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
