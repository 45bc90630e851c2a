"""Text models through the trainer: the embedded demo, exact resume, MCC, and fine-tuning a converted HF model."""

import json
import os
import signal
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from conftest import assert_trees_close, load_config, write_glue

from sot_jax import checkpoints, convert, evaluate, experiment, train
from sot_jax.data import brackets
from sot_jax.errors import UserError

TINY_TEXT = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 48}


@pytest.fixture
def text_config(tmp_path_factory):
    data_dir = str(tmp_path_factory.getbasetemp() / "text_tfds")

    def make(**changes):
        config = load_config("configs/sot_glue.py", "demo")
        config.data_dir = data_dir
        config.model.update(TINY_TEXT)
        config.batch_size, config.total_steps, config.log_every_steps = 16, 6, 1
        config.eval_every_steps = config.checkpoint_every_steps = 3
        config.eval_batch_size = 256
        config.input.max_seq_length = 24
        for key, value in changes.items():
            config[key] = value
        return config

    return make


@pytest.mark.slow
def test_the_text_demo_trains_resumes_exactly_and_reports_mcc(text_config, tmp_path, capsys):
    config = text_config()
    uninterrupted = train.train_and_evaluate(experiment.build(config), tmp_path / "a")
    assert "val_glue: final" in capsys.readouterr().out  # the final and the best dev score (CoLA's: the MCC)

    def interrupt(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    assert int(train.train_and_evaluate(experiment.build(config), tmp_path / "b", after_step=interrupt).step) == 2
    resumed = train.train_and_evaluate(experiment.build(config), tmp_path / "b")
    assert_trees_close(uninterrupted.params, resumed.params)  # exact: tolerances 0
    assert_trees_close(uninterrupted.batch_stats, resumed.batch_stats)  # the SoT text head's BatchNorm
    rows = [json.loads(r) for r in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_mcc" in r]
    assert [r["step"] for r in evals] == [3, 6] and all(-100 <= r["val_mcc"] <= 100 for r in evals)
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)


@pytest.mark.slow
def test_an_uncased_hf_bert_fine_tunes_with_its_own_tokenizer_architecture_and_seeded_head(tmp_path, capsys):
    """A random-weight HF BERT saved with an uncased tokenizer and a non-default architecture converts; fine-tuning
    it on capitalized GLUE text takes the architecture, vocabulary and casing from the checkpoint (and says so),
    tokenizes as transformers does, and starts the SoT head from the seed (two seeds: the same encoder, other
    heads). A casing that does not fit, a contradicting size and a vocabulary larger than the model stop the run."""
    transformers = pytest.importorskip("transformers")
    hf_dir = tmp_path / "hf"
    vocab = Path(brackets.vocab_file(str(hf_dir))).read_text().split()  # lower-case words: an uncased vocabulary
    saved = {"do_lower_case": True, "tokenizer_class": "BertTokenizer"}
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(saved))
    hf_config = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
        max_position_embeddings=40, layer_norm_eps=1e-7, hidden_act="gelu_new",
    )  # fmt: skip
    transformers.BertModel(hf_config).save_pretrained(hf_dir)
    convert.main(["--model", "bert_base_sot", "--checkpoint", str(hf_dir), "--output", str(tmp_path / "ckpt")])
    _, converted, _ = checkpoints.load_model(tmp_path / "ckpt")
    data_dir = str(tmp_path / "data")
    write_glue(data_dir, {"cola": ("train", "validation")}, [w.capitalize() for w in brackets.WORDS], 32)

    def glue_config(**changes):
        config = load_config("configs/sot_glue.py", "bert_base_sot,cola")
        config.update({"data_dir": data_dir, "init_from": str(tmp_path / "ckpt"), "batch_size": 16,
                       "total_steps": 1, "eval_batch_size": 32, "lr": 1e-12, **changes})  # fmt: skip
        config.input.max_seq_length = 16
        config.model.dtype = "float32"
        return config

    runs = {seed: experiment.build(glue_config(seed=seed)) for seed in (1, 2)}
    states = {seed: train.train_and_evaluate(run, tmp_path / f"run{seed}") for seed, run in runs.items()}
    said = capsys.readouterr().out
    assert "vocab_size 15" in said and "layer_norm_eps 1e-07" in said and "activation gelu_new" in said
    assert f"vocab {tmp_path / 'ckpt' / 'tokenizer'}" in said
    encoder = converted["params"]["encoder"]
    for state in states.values():
        assert_trees_close(state.params["encoder"], encoder, rtol=0, atol=1e-6)  # lr 1e-12: as loaded
    heads = [state.params["classifier"]["conv_a"]["kernel"] for state in states.values()]
    assert not np.allclose(heads[0], heads[1])  # the head starts from the seed
    assert heads[0].shape == (32, 96)  # CoLA's official head: MGCrP_q 96, MGCrP_k 48

    config = glue_config()
    resolved = experiment.build(config)
    source, ours = resolved.source, resolved.tokenizer
    assert ours.lower_case and Path(ours.source).parent == tmp_path / "ckpt" / "tokenizer"
    first, _, _ = source.texts("train")
    assert any(c.isupper() for c in first[0])
    theirs = transformers.AutoTokenizer.from_pretrained(hf_dir)(first, padding="max_length", max_length=16)
    np.testing.assert_array_equal(source.encoded("train", ours, 16)["input_ids"], theirs["input_ids"])

    with pytest.raises(UserError, match=r"are \[UNK\] .*lower_case False.*set --config.input.lower_case=True"):
        cased = glue_config(input=ml_collections.ConfigDict({**config.input, "lower_case": False}))
        train.train_and_evaluate(experiment.build(cased), tmp_path / "cased")
    contradicting = glue_config()
    contradicting.model.hidden_size = 64
    with pytest.raises(UserError, match="contradicts init_from's architecture: model.hidden_size=64 .*32"):
        train.train_and_evaluate(experiment.build(contradicting), tmp_path / "wider")
    (tmp_path / "big_vocab.txt").write_text("\n".join([*vocab, *(f"w{i}" for i in range(30))]) + "\n")
    with pytest.raises(UserError, match="has 45 entries but the model's vocab_size is 15"):
        train.train_and_evaluate(experiment.build(glue_config(vocab=str(tmp_path / "big_vocab.txt"))), tmp_path / "big")
    evaluation = glue_config(init_from=str(tmp_path / "run1"), eval_only=True)
    results = evaluate.evaluate_checkpoint(experiment.build(evaluation))
    assert {"val_top1", "val_mcc", "val_glue"} == set(results)
    exported = checkpoints.export_model(str(tmp_path / "run1"), str(tmp_path / "exported"))  # brings its tokenizer
    metadata = checkpoints.read_metadata(str(exported))
    assert metadata["lower_case"] is True and metadata["label_names"] == ["unacceptable", "acceptable"]
    assert Path(metadata["vocab"]) == exported / "tokenizer" and (exported / "tokenizer" / "vocab.txt").is_file()


def test_glue_without_a_vocabulary_or_prepared_data_says_what_to_do(text_config, tmp_path):
    config = load_config("configs/sot_glue.py", "bert_base_sot,cola")
    config.data_dir = str(tmp_path)
    with pytest.raises(ValueError, match=r"dataset 'glue/cola' is not prepared .*python -m sot_jax.prepare glue/cola"):
        train.train_and_evaluate(experiment.build(config), tmp_path / "run")
    with pytest.raises(ValueError, match="unknown config variant 'bert_huge,cola'"):
        load_config("configs/sot_glue.py", "bert_huge,cola")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["roberta_base_sot", "gpt2_sot", "gpt"])
def test_roberta_and_gpt_train_through_the_trainer(text_config, tmp_path, name):
    """The other families on the embedded task (GPT gets no token types; RoBERTa's padding id is the vocabulary's)."""
    config = text_config(total_steps=2, eval_every_steps=2, checkpoint_every_steps=2)
    config.model.update({"name": name, "max_position_embeddings": 64})
    if name.startswith("roberta"):
        config.model.pad_token_id = 0  # the brackets vocabulary's [PAD]
    state = train.train_and_evaluate(experiment.build(config), tmp_path)
    assert int(state.step) == 2
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r) and "val_mcc" in rows[-1]
    batch = next(experiment.build(config).train_batches(0))
    assert ("token_type_ids" in batch) == name.startswith("roberta")


@pytest.mark.slow
def test_gpt_in_the_gpt1_papers_format_adds_three_learned_tokens(tmp_path, capsys):
    """`input.gpt_format=gpt1`: `_start_ a _delimiter_ b _classify_` (ids as transformers' tokenizer gives them
    with the three tokens added), and fine-tuning a converted GPT-2 grows its token table by three rows that start
    from the seed while the pretrained rows load as they were; the format is recorded for the run's evaluation."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from sot_jax.data import tokenization

    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    backend.train_from_iterator([" ".join(brackets.WORDS) + " ( ) [ ]"] * 20, trainer)
    backend.model.save(str(hf_dir))  # vocab.json + merges.txt
    ours = tokenization.with_gpt1_tokens(tokenization.load_tokenizer(str(hf_dir)))
    reference = transformers.GPT2Tokenizer(str(hf_dir / "vocab.json"), str(hf_dir / "merges.txt"))
    reference.add_special_tokens({"additional_special_tokens": list(tokenization.GPT1_TOKENS)})
    start, delimiter, extract = reference.convert_tokens_to_ids(list(tokenization.GPT1_TOKENS))
    a, b = "the cat ( sat )", "dog [ far ]"
    encoded = tokenization.encode(ours, [a], [b], 24)
    expected = [start, *reference(a)["input_ids"], delimiter, *reference(b)["input_ids"], extract]
    assert encoded["input_ids"][0, : len(expected)].tolist() == expected
    assert encoded["attention_mask"][0].sum() == len(expected) and ours.vocab_size == start + 3
    with pytest.raises(UserError, match="input.gpt_format=gpt1 applies to GPT vocabularies"):
        tokenization.with_gpt1_tokens(tokenization.load_tokenizer(brackets.vocab_file(str(tmp_path / "wp"))))

    hf_config = transformers.GPT2Config(vocab_size=start, n_embd=32, n_layer=1, n_head=2, n_positions=32)
    transformers.GPT2Model(hf_config).save_pretrained(hf_dir)
    convert.main(["--model", "gpt2_sot", "--checkpoint", str(hf_dir), "--output", str(tmp_path / "ckpt")])
    _, converted, _ = checkpoints.load_model(tmp_path / "ckpt")
    data_dir = str(tmp_path / "data")
    write_glue(data_dir, {"rte": ("train", "validation")}, brackets.WORDS, 32)
    config = load_config("configs/sot_glue.py", "gpt2_sot,rte")
    config.update({"data_dir": data_dir, "init_from": str(tmp_path / "ckpt"), "batch_size": 16, "total_steps": 1,
                   "eval_batch_size": 32, "lr": 1e-12})  # fmt: skip
    config.input.max_seq_length, config.input.gpt_format, config.model.dtype = 24, "gpt1", "float32"
    state = train.train_and_evaluate(experiment.build(config), tmp_path / "run")
    assert f"vocab_size {start + 3}" in capsys.readouterr().out
    table = np.asarray(state.params["encoder"]["wte"]["embedding"])
    pretrained = np.asarray(converted["params"]["encoder"]["wte"]["embedding"])
    assert table.shape == (start + 3, 32)
    np.testing.assert_allclose(table[:start], pretrained, atol=1e-6)
    assert 0.005 < table[start:].std() < 0.05  # N(0, 0.02) from the seed, not zeros nor a copy
    evaluation = load_config("configs/sot_glue.py", "gpt2_sot,rte")
    evaluation.update({"data_dir": data_dir, "init_from": str(tmp_path / "run"), "eval_only": True})
    evaluation.input.max_seq_length = 24
    assert checkpoints.resolve_init_from(evaluation)[0].input.gpt_format == "gpt1"  # the run's format
    assert "val_top1" in evaluate.evaluate_checkpoint(experiment.build(evaluation))
