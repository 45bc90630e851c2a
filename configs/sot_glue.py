r"""SoT on language transformers: GLUE fine-tuning with the SoT text head (SPEC §10), and the embedded text demo.

    python -m sot_jax.convert --model bert_base_sot --checkpoint HF_DIR --output ckpt/bert_base_sot   # once
    python -m sot_jax.main --config=configs/sot_glue.py:bert_base_sot,cola --workdir=DIR \
        --config.init_from=ckpt/bert_base_sot --config.data_dir=DATA
    python -m sot_jax.glue --model=bert_base_sot --init_from=ckpt/bert_base_sot --tasks=cola,rte,mnli,qnli \
        --seeds=42,43,44 --workdir=runs/glue --config.data_dir=DATA                     # the paper's table

VARIANT is `MODEL,TASK` (or `MODEL,TASK,test`, below): MODEL one of bert_base, bert_large, roberta_base,
roberta_large, gpt, gpt2 (the baseline heads of HF's *ForSequenceClassification) or the same with `_sot` (the
official SoT text head); TASK one of cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli (TFDS `glue/TASK`, prepared
once with `python -m sot_jax.prepare glue/TASK --data_dir=DATA`). HF_DIR is what `save_pretrained` writes (e.g.
bert-base-cased); the converted checkpoint keeps its vocabulary and casing, its architecture and its class names, and
`init_from` brings all of them (the run prints what it took; `--config.vocab` and `--config.input.lower_case` override
the tokenizer; a config value that contradicts the checkpoint's architecture stops the run). The SoT head and
anything else the pretrained checkpoint lacks start from `--config.seed`.

Recipe (the official BERT command with transformers 2.2.1's run_glue defaults): batch 32, max_seq_length 128,
lr 2e-5 (QNLI 3e-5), 10 epochs, AdamW eps 1e-8 without weight decay, no warmup, linear decay to 0 per step,
gradient clipping at 1.0, seed 42. The head per task, `MGCrP_q / MGCrP_k / MGCrP_dp` of the official README
(`cokezrr/transformers` 794889f) as `model.sot_q / sot_k / head_dropout`: MNLI 112/48/0.7, QNLI 112/48/0.5, RTE
56/32/0.8, CoLA 96/48/0.5; the other tasks (no official setting) keep the file's default 56/32/0.8. The official
command also passed `--do_lower_case` with bert-base-cased: here the casing saved with the vocabulary is used
(cased for bert-base-cased); `--config.input.lower_case=True` reproduces the official text exactly.
Metrics are GLUE's, logged as `val_<metric>`: CoLA mcc, SST-2/MNLI/QNLI/RTE/WNLI top1 (accuracy), MRPC and QQP f1
and top1, STS-B pearson and spearman (a regression: one output, MSE loss); `val_glue` is the task's GLUE score (the
mean of its metrics) and ranks the best weights (MNLI: matched; `val_mismatched_*` too). Evaluation every
`eval_every_steps`, per task from the dev set's size so that it stays near a tenth of the training time (MNLI's
split measured in BENCHMARKS.md); it writes no training state, only the best weights when `val_glue` improves
(`WORKDIR/best`); the run ends with the final and the best dev score.
Published dev scores, baseline -> +SoT (CoLA MCC / RTE acc. / MNLI / QNLI): BERT-base 54.82/67.15/83.47/90.11 ->
58.03/69.31/84.20/90.78; BERT-large 60.63/73.65/85.90/91.82 -> 61.82/75.09/86.46/92.37; RoBERTa-base 61.58/77.60/
87.50/92.70 -> 65.28/80.50/87.90/93.10; GPT 54.32/63.17/82.10/86.36 -> 57.25/65.35/82.41/87.13; most likely the best
dev checkpoint of one seed. RTE moves by about ±2 points between seeds: `python -m sot_jax.glue` trains each task ×
seed and tabulates mean ± std beside these numbers.
GPT inputs (`input.gpt_format`): "hf" by default, HF's GPT2ForSequenceClassification input (a pair is the two texts
concatenated, no special tokens; the class token is the last real token), which a converted HF fine-tuned GPT
expects and which needs no new weights; "gpt1" is the GPT-1 paper's fine-tuning format (`_start_ a _delimiter_ b
_classify_`, three embeddings added to the pretrained table and learned from the seed), the paper's own. The SoT
paper does not say which its GPT runs used (no code was released for them).
Precision: `model.dtype` is bfloat16 (parameters, the head's covariance and svPN stay float32);
`--config.model.dtype=float32` is the official fp32. On the brackets demo (from scratch, 1,250 steps; 2-core CPU,
2026-12-06: `python -m sot_jax.sweep --config=configs/sot_glue.py:demo --workdir=W --grid=model.dtype=float32,bfloat16
--seeds=1,2,3`) the final dev MCC was 73.2 ± 16.1 in float32 (seeds: 75.8, 87.7, 56.0) and 64.8 ± 14.5 in bfloat16
(71.5, 74.7, 48.1), Welch p = 0.54: the seeds moved the score more than the precision did, so 3 seeds show no
difference (the demo itself runs float32). Fine-tuning a pretrained model has not been compared.
Hardware: one GPU, minutes (CoLA, RTE) to hours (MNLI, QQP) per run.

`MODEL,TASK,test` evaluates `--config.init_from=RUN_DIR` on the task's test split(s) and writes the GLUE server's
submission files into `--workdir` (CoLA.tsv, ..., MNLI-m.tsv and MNLI-mm.tsv, and AX.tsv from an MNLI model).

`demo`: `python -m sot_jax.main --config=configs/sot_glue.py:demo --workdir=/tmp/brackets` trains a 2-layer BERT
with the SoT text head from scratch on the embedded `brackets` task (well-formed vs corrupted bracket sequences,
its own WordPiece vocabulary, no download): 1,250 steps, 91.7% validation accuracy, MCC 84.6, in about a minute on
a 2-core CPU.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from sot_jax import recipes
from sot_jax.data.glue import GLUE_TASKS
from sot_jax.models.text import OPTION_TYPES

MODELS = ("bert_base", "bert_large", "roberta_base", "roberta_large", "gpt", "gpt2")
TASKS = tuple(task for task in GLUE_TASKS if task != "ax")  # AX is predicted by an MNLI model
# The official README's MGCrP_q, MGCrP_k, MGCrP_dp per task.
OFFICIAL_HEADS = {"mnli": (112, 48, 0.7), "qnli": (112, 48, 0.5), "rte": (56, 32, 0.8), "cola": (96, 48, 0.5)}
# Steps between evaluations, from the dev set's size: an evaluation (forward at batch 256) costs about a sixth of a
# training step per example, and these keep it at most about a tenth of the training time (MNLI: 5%, BENCHMARKS).
EVAL_EVERY = {"cola": 100, "sst2": 100, "mrpc": 50, "stsb": 200, "qqp": 4000, "mnli": 2000, "qnli": 500, "rte": 50,
              "wnli": 50}  # fmt: skip


def glue_eval(task: str, split: str, **keys) -> ml_collections.ConfigDict:
    """An eval set of GLUE's metrics for the task, its GLUE score, and the accuracy of a classification."""
    metrics = GLUE_TASKS[task].metrics
    accuracy = () if GLUE_TASKS[task].regression or "top1" in metrics else ("top1",)
    return recipes.eval_set(f"glue/{task}", split, metrics=(*accuracy, *metrics, "glue"), **keys)


def get_config(variant: str = "bert_base_sot,cola"):
    config = recipes.base_config()
    config.model = ml_collections.ConfigDict({"name": "bert_base_sot", "dtype": "bfloat16"})
    for key, kind in OPTION_TYPES.items():
        config.model[key] = placeholder(kind)
    # vocab.txt, or a folder with vocab.json + merges.txt or tokenizer.json; empty: init_from's, else the dataset's
    config.vocab = ""
    config.input.max_seq_length = 128
    config.input.lower_case = placeholder(bool)  # None: the casing saved with the vocabulary
    # GPT's inputs: "hf" (the texts concatenated, as HF's GPT2ForSequenceClassification) or "gpt1" (the GPT-1
    # paper's start, delimiter and extract tokens, added to the vocabulary); empty: init_from's, else "hf"
    config.input.gpt_format = ""
    config.aug = ml_collections.ConfigDict(
        {"random_erasing": 0.0, "mixup": 0.0, "cutmix": 0.0, "mix_switch_prob": 0.5, "mix_token": False,
         "label_smoothing": 0.0}
    )  # fmt: skip
    config.batch_size, config.lr, config.seed = 32, 2e-5, 42
    config.eval_batch_size = 256
    config.optim.update(
        {"schedule": "linear", "weight_decay": 0.0, "grad_clip_norm": 1.0, "num_epochs": 10, "warmup_epochs": 0,
         "cooldown_epochs": 0, "ema_decay": 0.0}
    )  # fmt: skip
    config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps = 50, 100, 1000
    config.keep_checkpoints = 1  # resumable state only; the best weights are kept apart (WORKDIR/best)
    if variant == "demo":
        config.dataset = "brackets"
        config.model.update({"name": "bert_base_sot", "dtype": "float32", "hidden_size": 64, "num_layers": 2,
                             "num_heads": 4, "intermediate_size": 128, "max_position_embeddings": 64})  # fmt: skip
        config.input.max_seq_length = 24
        config.batch_size, config.lr = 64, 1e-3
        config.optim.num_epochs, config.optim.warmup_epochs = 10, 1
        config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps = 25, 100, 100
        config.evals = ml_collections.ConfigDict({"val": recipes.eval_set(metrics=("top1", "mcc", "glue"))})
        config.best_metric = "val_glue"
        return config
    model, task, *mode = variant.split(",")
    if model.removesuffix("_sot") not in MODELS or task not in TASKS or mode not in ([], ["test"]):
        choices = [f"{m}{s},{t}" for m in MODELS for s in ("", "_sot") for t in TASKS]
        raise recipes.unknown_variant(variant, ("demo", *choices[:4], "... (MODEL[_sot],TASK[,test])"))
    config.model.name = model
    config.dataset = f"glue/{task}"
    if model.endswith("_sot"):
        config.model.sot_q, config.model.sot_k, config.model.head_dropout = OFFICIAL_HEADS.get(task, (56, 32, 0.8))
    config.lr = 3e-5 if task == "qnli" else 2e-5
    config.eval_every_steps = EVAL_EVERY[task]
    glue = GLUE_TASKS[task]
    if mode:  # the GLUE server's files from a fine-tuned run
        config.eval_only = True
        names = ("test", "test_mismatched")[: len(glue.test_splits)]
        sets = {
            name: glue_eval(task, split, submission=file)
            for name, split, file in zip(names, glue.test_splits, glue.submission_files, strict=True)
        }
        if task == "mnli":
            sets["ax"] = glue_eval("ax", "test", submission="AX.tsv")
        for entry in sets.values():
            entry.metrics = ()  # hidden labels
        config.evals = ml_collections.ConfigDict(sets)
        return config
    names = ("val", "val_mismatched")[: len(glue.eval_splits)]
    sets = {name: glue_eval(task, split) for name, split in zip(names, glue.eval_splits, strict=True)}
    config.evals = ml_collections.ConfigDict(sets)
    config.best_metric = "val_glue"
    return config
