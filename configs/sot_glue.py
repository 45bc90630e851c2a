r"""SoT on language transformers: GLUE fine-tuning with the SoT text head (SPEC §10), and the embedded text demo.

    python -m sot_jax.convert --model bert_base_sot --checkpoint HF_DIR --output ckpt/bert_base_sot   # once
    python -m sot_jax.main --config=configs/sot_glue.py:bert_base_sot,cola --workdir=DIR \
        --config.init_from=ckpt/bert_base_sot --config.vocab=HF_DIR/vocab.txt --config.data_dir=DATA

VARIANT is `MODEL,TASK`: MODEL one of bert_base, bert_large, roberta_base, roberta_large, gpt, gpt2 (the baseline
heads of HF's *ForSequenceClassification) or the same with `_sot` (the official SoT text head); TASK one of cola,
rte, mnli, qnli, sst2 (TFDS `glue/TASK`, `python -m sot_jax.prepare glue/TASK --data_dir=DATA`). HF_DIR is what
`save_pretrained` writes (e.g. bert-base-cased); `--config.vocab` is its `vocab.txt` (WordPiece) or the folder
holding `vocab.json` and `merges.txt` (BPE: RoBERTa, GPT); `--config.input.lower_case=True` as the official
command's `--do_lower_case`.

Recipe (the official BERT command with transformers 2.2.1's run_glue defaults): batch 32, max_seq_length 128,
lr 2e-5 (QNLI 3e-5), 10 epochs, AdamW eps 1e-8 without weight decay, no warmup, linear decay to 0 per step,
gradient clipping at 1.0, seed 42, evaluation on the dev set every 100 steps (the official script saved every 50
and evaluated every checkpoint); `val_mcc` (CoLA) or `val_top1` (accuracy) in metrics.jsonl, and the run ends
with the final and the best dev score. Published dev scores, baseline -> +SoT (CoLA MCC / RTE acc. / MNLI /
QNLI): BERT-base 54.82/67.15/83.47/90.11 -> 58.03/69.31/84.20/90.78; BERT-large 60.63/73.65/85.90/91.82 ->
61.82/75.09/86.46/92.37; RoBERTa-base 61.58/77.60/87.50/92.70 -> 65.28/80.50/87.90/93.10; GPT 54.32/63.17/82.10/
86.36 -> 57.25/65.35/82.41/87.13; most likely the best dev checkpoint of one seed. RTE moves by about ±2 points
between seeds: `python -m sot_jax.sweep --config=configs/sot_glue.py:MODEL,TASK --workdir=DIR --seeds=1,2,3 ...`
trains each seed and gives mean ± std.
Hardware: one GPU, minutes (CoLA, RTE) to hours (MNLI) per run.

`demo`: `python -m sot_jax.main --config=configs/sot_glue.py:demo --workdir=/tmp/brackets` trains a 2-layer BERT
with the SoT text head from scratch on the embedded `brackets` task (well-formed vs corrupted bracket sequences,
its own WordPiece vocabulary, no download): 1,250 steps, 91.7% validation accuracy, MCC 84.6, in about a minute on
a 2-core CPU.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from sot_jax import recipes

MODELS = ("bert_base", "bert_large", "roberta_base", "roberta_large", "gpt", "gpt2")
TASKS = ("cola", "rte", "mnli", "qnli", "sst2")
# `create_text_model` keywords left to the model's own default unless set.
TEXT_MODEL_OPTIONS = {
    "head": str, "svpn": str, "svpn_alpha": float, "mask_padding": bool, "head_dropout": float, "hidden_size": int,
    "num_layers": int, "num_heads": int, "intermediate_size": int, "vocab_size": int, "max_position_embeddings": int,
    "pad_token_id": int, "dropout": float, "attention_dropout": float,
}  # fmt: skip


def get_config(variant: str = "bert_base_sot,cola"):
    config = recipes.base_config()
    config.model = ml_collections.ConfigDict({"name": "bert_base_sot", "dtype": "bfloat16"})
    for key, kind in TEXT_MODEL_OPTIONS.items():
        config.model[key] = placeholder(kind)
    config.vocab = ""  # vocab.txt, or a folder with vocab.json + merges.txt; empty: the dataset's own (demo)
    config.input.max_seq_length = 128
    config.input.lower_case = False
    config.aug = ml_collections.ConfigDict(
        {"random_erasing": 0.0, "mixup": 0.0, "cutmix": 0.0, "mix_switch_prob": 0.5, "mix_token": False,
         "label_smoothing": 0.0}
    )  # fmt: skip
    config.batch_size, config.lr, config.seed = 32, 2e-5, 42
    config.optim.update(
        {"schedule": "linear", "weight_decay": 0.0, "grad_clip_norm": 1.0, "num_epochs": 10, "warmup_epochs": 0,
         "cooldown_epochs": 0, "ema_decay": 0.0}
    )  # fmt: skip
    config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps = 50, 100, 1000
    config.evals = ml_collections.ConfigDict({"val": recipes.eval_set()})
    if variant == "demo":
        config.dataset = "brackets"
        config.model.update({"name": "bert_base_sot", "dtype": "float32", "hidden_size": 64, "num_layers": 2,
                             "num_heads": 4, "intermediate_size": 128, "max_position_embeddings": 64})  # fmt: skip
        config.input.max_seq_length = 24
        config.batch_size, config.lr = 64, 1e-3
        config.optim.num_epochs, config.optim.warmup_epochs = 10, 1
        config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps = 25, 100, 100
        config.evals.val.mcc, config.best_metric = True, "val_mcc"
        return config
    model, _, task = variant.partition(",")
    if model.removesuffix("_sot") not in MODELS or task not in TASKS:
        choices = [f"{m}{s},{t}" for m in MODELS for s in ("", "_sot") for t in TASKS]
        raise recipes.unknown_variant(variant, ("demo", *choices[:4], "... (MODEL[_sot],TASK)"))
    config.model.name = model
    config.dataset = f"glue/{task}"
    if task == "cola":
        config.evals.val.mcc, config.best_metric = True, "val_mcc"
    if task == "mnli":
        config.evals = ml_collections.ConfigDict(
            {"val": recipes.eval_set(split="validation_matched"),
             "val_mismatched": recipes.eval_set(split="validation_mismatched")}
        )  # fmt: skip
    if task == "qnli":
        config.lr = 3e-5
    return config
