"""GLUE's tasks as data: each task's TFDS features and splits, its metrics as GLUE reports them, and the GLUE
server's submission files. (No heavy imports: the configs read it.)"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TextTask:
    """A text dataset's text features (one, or a pair in order), its metrics as GLUE reports them (evaluation
    metric names: the task's GLUE score is their mean), its evaluation and test splits, and for the GLUE server
    the submission file of each test split and whether it takes label names (else class indices or, for a
    regression, the score)."""

    text_features: tuple[str, ...]
    metrics: tuple[str, ...]
    eval_splits: tuple[str, ...] = ("validation",)
    test_splits: tuple[str, ...] = ("test",)
    submission_files: tuple[str, ...] = ()
    submission_names: bool = False
    regression: bool = False


# GLUE with the TFDS glue builder's feature and split names, GLUE's metrics and the GLUE server's file names. AX,
# the diagnostic set (test only), is predicted by an MNLI model.
GLUE_TASKS = {
    "cola": TextTask(("sentence",), ("mcc",), submission_files=("CoLA.tsv",)),
    "sst2": TextTask(("sentence",), ("top1",), submission_files=("SST-2.tsv",)),
    "mrpc": TextTask(("sentence1", "sentence2"), ("f1", "top1"), submission_files=("MRPC.tsv",)),
    "stsb": TextTask(
        ("sentence1", "sentence2"), ("pearson", "spearman"), submission_files=("STS-B.tsv",), regression=True
    ),
    "qqp": TextTask(("question1", "question2"), ("f1", "top1"), submission_files=("QQP.tsv",)),
    "mnli": TextTask(
        ("premise", "hypothesis"), ("top1",), ("validation_matched", "validation_mismatched"),
        ("test_matched", "test_mismatched"), ("MNLI-m.tsv", "MNLI-mm.tsv"), submission_names=True,
    ),  # fmt: skip
    "qnli": TextTask(("question", "sentence"), ("top1",), submission_files=("QNLI.tsv",), submission_names=True),
    "rte": TextTask(("sentence1", "sentence2"), ("top1",), submission_files=("RTE.tsv",), submission_names=True),
    "wnli": TextTask(("sentence1", "sentence2"), ("top1",), submission_files=("WNLI.tsv",)),
    "ax": TextTask(("premise", "hypothesis"), ("top1",), (), ("test",), ("AX.tsv",), submission_names=True),
}
