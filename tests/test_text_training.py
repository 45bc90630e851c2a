"""Text models through the trainer: the embedded demo, exact resume, MCC, and fine-tuning a converted HF model."""

import json
import os
import signal

import numpy as np
import pytest
from conftest import load_config
from test_train import assert_trees_close

from sot_jax import checkpoints, convert, data, evaluate, recipes, train

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


def test_the_text_demo_trains_resumes_exactly_and_reports_mcc(text_config, tmp_path, capsys):
    config = text_config()
    uninterrupted = train.train_and_evaluate(config, tmp_path / "a")
    assert "val_mcc: final" in capsys.readouterr().out  # the final and the best dev score

    def interrupt(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    assert int(train.train_and_evaluate(config, tmp_path / "b", after_step=interrupt).step) == 2
    resumed = train.train_and_evaluate(config, tmp_path / "b")
    assert_trees_close(uninterrupted.params, resumed.params)  # exact: tolerances 0
    assert_trees_close(uninterrupted.batch_stats, resumed.batch_stats)  # the SoT text head's BatchNorm
    rows = [json.loads(r) for r in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_mcc" in r]
    assert [r["step"] for r in evals] == [3, 6] and all(-100 <= r["val_mcc"] <= 100 for r in evals)
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)


def test_a_converted_hf_bert_fine_tunes_and_evaluates(text_config, tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.BertConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
        max_position_embeddings=64,
    )  # fmt: skip
    hf = transformers.BertModel(hf_config)
    hf.save_pretrained(tmp_path / "hf")
    convert.main(["--model", "bert_base_sot", "--checkpoint", str(tmp_path / "hf"), "--output", str(tmp_path / "ckpt")])
    _, converted, _ = checkpoints.load_model(tmp_path / "ckpt")
    config = text_config(init_from=str(tmp_path / "ckpt"), total_steps=1)
    config.model.update({**TINY_TEXT, "vocab_size": 40, "max_position_embeddings": 64})
    config.lr = 1e-12  # one step that leaves the weights as loaded
    state = train.train_and_evaluate(config, tmp_path / "run")
    word_embeddings = state.params["encoder"]["embeddings"]["word_embeddings"]["embedding"]
    np.testing.assert_allclose(
        word_embeddings, converted["params"]["encoder"]["embeddings"]["word_embeddings"]["embedding"], atol=1e-6
    )
    config = text_config(init_from=str(tmp_path / "run"), eval_only=True)
    config.model.update({"vocab_size": 40, "max_position_embeddings": 64})
    results = evaluate.evaluate_checkpoint(config)
    assert {"val_top1", "val_mcc"} <= set(results)


def test_glue_without_a_vocabulary_or_prepared_data_says_what_to_do(text_config, tmp_path):
    config = load_config("configs/sot_glue.py", "bert_base_sot,cola")
    config.data_dir = str(tmp_path)
    with pytest.raises(ValueError, match=r"dataset 'glue/cola' is not prepared .*python -m sot_jax.prepare glue/cola"):
        train.train_and_evaluate(config, tmp_path / "run")
    with pytest.raises(ValueError, match="unknown config variant 'bert_huge,cola'"):
        load_config("configs/sot_glue.py", "bert_huge,cola")


@pytest.mark.parametrize("name", ["roberta_base_sot", "gpt2_sot", "gpt"])
def test_roberta_and_gpt_train_through_the_trainer(text_config, tmp_path, name):
    """The other families on the embedded task (GPT gets no token types; RoBERTa's padding id is the vocabulary's)."""
    config = text_config(total_steps=2, eval_every_steps=2, checkpoint_every_steps=2)
    config.model.update({"name": name, "max_position_embeddings": 64})
    if name.startswith("roberta"):
        config.model.pad_token_id = 0  # the brackets vocabulary's [PAD]
    state = train.train_and_evaluate(config, tmp_path)
    assert int(state.step) == 2
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r) and "val_mcc" in rows[-1]
    source = data.sources.get_source(config.dataset, config.data_dir)
    batch = next(data.train_batches(source, config, recipes.build_model(config.model, 2), 0))
    assert ("token_type_ids" in batch) == name.startswith("roberta")
