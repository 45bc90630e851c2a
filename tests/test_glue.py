"""GLUE as the paper ran it: the task variants with their official heads and metrics, the submission files of a
test-split evaluation, and `python -m sot_jax.glue` (a fake trainer for the table, the real demo for the command)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, load_config, write_glue

from sot_jax import checkpoints, evaluate, experiment, glue, recipes
from sot_jax.data import brackets, text, tokenization
from sot_jax.errors import UserError
from sot_jax.models import create_text_model

TINY_TEXT = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 48}


def test_every_glue_task_has_its_official_head_metrics_and_ranking():
    expected_heads = {"mnli": (112, 48, 0.7), "qnli": (112, 48, 0.5), "rte": (56, 32, 0.8), "cola": (96, 48, 0.5)}
    for task in glue.TASKS:
        config = load_config("configs/sot_glue.py", f"bert_base_sot,{task}")
        model = config.model
        assert (model.sot_q, model.sot_k, model.head_dropout) == expected_heads.get(task, (56, 32, 0.8)), task
        assert recipes.best_metric(config) == "val_glue"
        metrics = tuple(config.evals.val.metrics)
        assert metrics[-1] == "glue" and "top5" not in metrics
        assert config.lr == (3e-5 if task == "qnli" else 2e-5)
        baseline = load_config("configs/sot_glue.py", f"bert_base,{task}")
        assert baseline.model.sot_q is None and baseline.model.head_dropout is None  # HF's head and dropout
    assert load_config("configs/sot_glue.py", "bert_base_sot,stsb").evals.val.metrics == ("pearson", "spearman", "glue")
    assert load_config("configs/sot_glue.py", "bert_base_sot,mrpc").evals.val.metrics == ("f1", "top1", "glue")
    assert set(load_config("configs/sot_glue.py", "bert_base_sot,mnli").evals) == {"val", "val_mismatched"}
    test = load_config("configs/sot_glue.py", "roberta_base_sot,mnli,test")
    assert test.eval_only and {k: (v.split, v.submission) for k, v in test.evals.items()} == {
        "test": ("test_matched", "MNLI-m.tsv"), "test_mismatched": ("test_mismatched", "MNLI-mm.tsv"),
        "ax": ("test", "AX.tsv"),
    }  # fmt: skip
    for variant, message in (("bert_base_sot,boolq", "unknown config variant 'bert_base_sot,boolq'"),
                             ("bert_base_sot,cola,dev", "unknown config variant")):  # fmt: skip
        with pytest.raises(UserError, match=message):
            load_config("configs/sot_glue.py", variant)


@pytest.fixture(scope="module")
def mnli_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("glue"))
    splits = {"mnli": ("train", "validation_matched", "test_matched", "test_mismatched"), "ax": ("test",)}
    write_glue(root, splits, brackets.WORDS, 20)
    return root


def test_a_test_split_evaluation_writes_the_glue_server_files_in_the_checkpoints_class_order(mnli_data, tmp_path):
    """An MNLI model whose classes are in HF's order (contradiction, entailment, neutral): the files name each
    example's predicted class by GLUE's label name, whatever the model's order, under the example's `idx`."""
    vocab = brackets.vocab_file(str(tmp_path / "vocab"))
    options = {**TINY_TEXT, "vocab_size": 15, "max_position_embeddings": 32}
    model = create_text_model("bert_base_sot", 3, **options)
    ids = jnp.zeros((2, 16), jnp.int32)
    variables = jax.jit(lambda key: model.init({"params": key}, ids, train=False))(jax.random.key(3))
    hf_order = ["contradiction", "entailment", "neutral"]
    metadata = {"model": "bert_base_sot", "num_classes": 3, "overrides": options, "label_names": hf_order}
    checkpoints.save_model(tmp_path / "ckpt", variables, metadata)
    config = load_config("configs/sot_glue.py", "bert_base_sot,mnli,test")
    config.update({"data_dir": mnli_data, "init_from": str(tmp_path / "ckpt"), "vocab": vocab})
    config.input.max_seq_length, config.model.dtype = 16, "float32"
    with pytest.raises(UserError, match="--workdir is required: the submission files"):
        evaluate.evaluate_checkpoint(experiment.build(config))
    results = evaluate.evaluate_checkpoint(experiment.build(config), str(tmp_path / "out"))
    assert results == {}  # hidden labels: no metrics
    tokenizer = tokenization.load_tokenizer(vocab)
    for name, dataset, split in (("MNLI-m.tsv", "mnli", "test_matched"), ("MNLI-mm.tsv", "mnli", "test_mismatched"),
                                 ("AX.tsv", "ax", "test")):  # fmt: skip
        lines = (tmp_path / "out" / name).read_text().splitlines()
        assert lines[0] == "index\tprediction" and len(lines) == 21
        source = text.get_text_source(f"glue/{dataset}", mnli_data)
        first, second, _ = source.texts(split)
        arrays = tokenization.encode(tokenizer, first, second, 16)
        logits = model.apply(variables, arrays["input_ids"], arrays["attention_mask"], arrays["token_type_ids"])
        expected = [f"{100 + i}\t{hf_order[c]}" for i, c in enumerate(np.argmax(logits, axis=-1))]
        assert lines[1:] == expected, name


class FakeTrainer:
    """Stands in for `python -m sot_jax.main`: logs val_glue (and MNLI's mismatched score) by task and seed."""

    def __init__(self):
        self.calls = []

    def __call__(self, command):
        self.calls.append(command)
        workdir = Path(next(a.split("=", 1)[1] for a in command if a.startswith("--workdir=")))
        task = workdir.parent.name
        seed = int(next(a.split("=", 1)[1] for a in command if a.startswith("--config.seed=")))
        value = {"cola": 50.0, "mnli": 80.0}[task] + seed
        with (workdir / "metrics.jsonl").open("a") as f:
            for step, score in ((10, value + 1), (20, value)):  # the best is not the final
                f.write(json.dumps({"step": step, "val_glue": score, "val_mismatched_glue": score - 2}) + "\n")
        (workdir / "final.json").write_text(json.dumps({"step": 20}))
        return 0


def test_the_table_has_every_seed_mean_and_std_the_glue_average_and_the_paper(tmp_path, capsys):
    args = ["--model=bert_base_sot", "--init_from=ckpt", "--tasks=cola,mnli", "--seeds=1,3", f"--workdir={tmp_path}"]
    trainer = FakeTrainer()
    assert glue.main(args, launch=trainer) == 0
    assert len(trainer.calls) == 4
    command = trainer.calls[0]
    assert command[3] == f"--config={glue.CONFIG}:bert_base_sot,cola"
    assert f"--config.init_from={Path('ckpt').absolute()}" in command and command[-1] == "--config.seed=1"
    summary = json.loads((tmp_path / "glue_table.json").read_text())
    rows = summary["tasks"]
    assert list(rows) == ["cola", "mnli-m", "mnli-mm"]
    assert rows["cola"]["final"]["mean"] == 52.0 and rows["cola"]["final"]["std"] == pytest.approx(np.std([51, 53],
                                                                                                     ddof=1))
    assert rows["cola"]["best"]["mean"] == 53.0 and rows["cola"]["paper"] == 58.03  # SPEC §10
    assert rows["mnli-mm"]["final"]["mean"] == 80.0 and rows["mnli-m"]["paper"] == 84.20
    assert summary["average"]["final"] == pytest.approx((52.0 + (82.0 + 80.0) / 2) / 2)  # MNLI counts once
    table = (tmp_path / "glue_table.md").read_text()
    assert "| cola | 2 | 52.00 ± 1.41 | 53.00 ± 1.41 | 58.03 | 1: 51.00 / 52.00; 3: 53.00 / 54.00 |" in table
    assert capsys.readouterr().out.endswith(table)
    assert glue.main(args, launch=trainer) == 0 and len(trainer.calls) == 4  # finished runs are skipped


@pytest.mark.parametrize(
    "args,message",
    [
        (["--tasks=cola,boolq", "--init_from=x"], "unknown GLUE task 'boolq'; choose from cola, sst2, mrpc, stsb"),
        (["--tasks=cola"], "--init_from is required"),
        (["--tasks=demo", "--init_from=x"], "--tasks=demo trains from scratch"),
        (["--tasks=cola", "--init_from=x", "--model=bert_huge"], "unknown config variant 'bert_huge,cola'"),
        (["--tasks=cola", "--init_from=x", "--seeds=1,a"], "--seeds '1,a': expected comma-separated integers"),
    ],
)
def test_bad_glue_commands_end_with_one_error_line(tmp_path, capsys, args, message):
    assert glue.main([*args, f"--workdir={tmp_path}"], launch=FakeTrainer()) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and re.search(message, error[0]), error


@pytest.mark.slow
def test_the_demo_table_in_one_command_and_again_without_training(tmp_path):
    """`python -m sot_jax.glue --tasks=demo --seeds=1,2` at a tiny size: both table files with two seeds; the same
    command again trains nothing."""
    command = [
        sys.executable, "-m", "sot_jax.glue", "--tasks=demo", "--seeds=1,2", f"--workdir={tmp_path / 'w'}",
        f"--config.data_dir={tmp_path / 'data'}", "--config.total_steps=4", "--config.eval_every_steps=2",
        "--config.checkpoint_every_steps=4", "--config.batch_size=16", "--config.input.max_seq_length=16",
        *(f"--config.model.{k}={v}" for k, v in TINY_TEXT.items()),
    ]  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    summary = json.loads((tmp_path / "w" / "glue_table.json").read_text())
    demo = summary["tasks"]["demo"]
    assert demo["final"]["n"] == 2 and set(demo["seeds"]) == {"1", "2"} and np.isfinite(demo["final"]["std"])
    assert summary["average"]["final"] == pytest.approx(demo["final"]["mean"])
    table = (tmp_path / "w" / "glue_table.md").read_text()
    assert "| demo | 2 |" in table and first.stdout.endswith(table)
    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0 and "seed 1:" not in again.stdout and again.stdout.endswith(table)
