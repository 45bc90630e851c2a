"""Evaluation: the config's `evals` entries resolved (and checked) before training, and every metric's definition.

`config.evals` maps a name to {dataset, data_dir, split, optional, label_subset, multi_label, metrics, submission}
(`recipes.eval_set`); results are logged as `<name>_<metric>` (`recipes.EVAL_METRICS`: top1/top5 for images; for
text, GLUE's: accuracy as top1, mcc, f1, pearson, spearman, and glue, the task's GLUE score), and
`config.best_metric` names the one that ranks the best weights. Image sets are scored by counts accumulated on the
device; text sets by every prediction gathered on the host (Spearman's ranks and the submission files need them).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from sot_jax import checkpoints, data, recipes, sharding
from sot_jax.errors import UserError

if TYPE_CHECKING:  # the type only: experiment.py builds on this module
    from sot_jax.experiment import Experiment


def eval_step(
    params: Any, batch_stats: Any, batch: dict[str, jax.Array], *, model: Any, class_mask: Any, predict: bool = False
) -> dict:
    """Counts of top-1/top-5 hits over the unpadded examples (with `real` labels: a hit is any of them), or with
    `predict` each example's prediction (the arg-max class, or a regression's score), label and mask."""
    logits = model.apply({"params": params, "batch_stats": batch_stats}, **data.model_inputs(batch))
    if class_mask is not None:  # e.g. ImageNet-A: predict among its 200 classes only
        logits = jnp.where(class_mask, logits, -jnp.inf)
    if predict:
        prediction = logits[:, 0] if logits.shape[-1] == 1 else jnp.argmax(logits, axis=-1)
        return {"prediction": prediction, "label": batch["label"], "mask": batch["mask"]}
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    mask = batch["mask"].astype(jnp.float32)
    if "real" in batch:
        hits = jnp.take_along_axis(batch["real"], top5, axis=1).astype(jnp.float32)
        mask = mask * (jnp.sum(batch["real"], axis=1) > 0)  # ReaL leaves out images without any real label
    else:
        hits = (top5 == batch["label"][:, None]).astype(jnp.float32)
    return {"top1": jnp.sum(hits[:, 0] * mask), "top5": jnp.sum(jnp.max(hits, axis=1) * mask), "count": jnp.sum(mask)}


# --- metrics of predictions (text tasks) -----------------------------------------------------------------------


def confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """C×C counts, rows the true class and columns the predicted one (sklearn's layout); `mask` 0 rows skipped."""
    labels, predictions = np.asarray(labels, np.int64).ravel(), np.asarray(predictions, np.int64).ravel()
    if mask is not None:
        keep = np.asarray(mask).ravel() != 0
        labels, predictions = labels[keep], predictions[keep]
    return np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, num_classes)


def matthews_corrcoef(confusion: np.ndarray) -> float:
    """The Matthews correlation of a C×C confusion matrix (rows true, columns predicted), in Gorodkin's multiclass
    form as sklearn's `matthews_corrcoef`; 0.0 when either marginal is constant (the correlation is undefined)."""
    confusion = np.asarray(confusion, np.float64)  # float: the products overflow int64 for large counts
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"matthews_corrcoef needs a square confusion matrix, got shape {confusion.shape}")
    true_counts, predicted_counts = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, total = np.trace(confusion), confusion.sum()
    covariance = correct * total - true_counts @ predicted_counts
    spread_true = total**2 - true_counts @ true_counts
    spread_predicted = total**2 - predicted_counts @ predicted_counts
    if spread_true * spread_predicted == 0:
        return 0.0
    return float(covariance / math.sqrt(spread_true * spread_predicted))


def f1_score(confusion: np.ndarray) -> float:
    """F1 of class 1 (GLUE's MRPC and QQP: "equivalent", "duplicate") from a 2×2 confusion matrix, as sklearn's
    `f1_score` (0.0 when class 1 is neither present nor predicted)."""
    confusion = np.asarray(confusion, np.float64)
    true_positive = confusion[1, 1]
    denominator = 2 * true_positive + confusion[0, 1] + confusion[1, 0]
    return float(2 * true_positive / denominator) if denominator else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's correlation (0.0 when either is constant)."""
    x, y = np.asarray(x, np.float64) - np.mean(x), np.asarray(y, np.float64) - np.mean(y)
    spread = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y / spread) if spread else 0.0


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (scipy's `rankdata`)."""
    _, inverse, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - (counts - 1) / 2.0)[inverse]).astype(np.float64)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson's of the average ranks."""
    return pearson(average_ranks(x), average_ranks(y))


def prediction_metrics(
    metrics: tuple[str, ...], predictions: np.ndarray, labels: np.ndarray, num_classes: int, task_metrics: tuple
) -> dict[str, float]:
    """`metrics` (`recipes.EVAL_METRICS` names but top5) of predictions against labels, in percent; `glue` is the
    mean of `task_metrics` (the task's GLUE metrics)."""
    needed = [m for m in metrics if m != "glue"] + (list(task_metrics) if "glue" in metrics else [])
    counted = {"top1", "mcc", "f1"} & set(needed)  # from the confusion matrix, built once
    confusion = confusion_matrix(labels, predictions, num_classes) if counted else None

    def value(metric: str) -> float:
        if metric in ("pearson", "spearman"):
            return (pearson if metric == "pearson" else spearman)(predictions, labels)
        if metric == "mcc":
            return matthews_corrcoef(confusion)
        if metric == "f1":
            return f1_score(confusion)
        return float(np.trace(confusion) / max(confusion.sum(), 1))  # top1: accuracy

    scores = {m: 100 * value(m) for m in dict.fromkeys(needed)}  # each metric computed once
    return {m: float(np.mean([scores[t] for t in task_metrics])) if m == "glue" else scores[m] for m in metrics}


# --- eval sets --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class EvalSet:
    """One `config.evals` entry resolved: its source and split, its batches (this process's slices of every
    example once, with the set's own batch size, crop or tokenizer), and what is scored."""

    name: str
    source: Any  # data.source_base.Source
    split: str
    batches: Callable[[], Iterator[dict[str, np.ndarray]]]
    class_mask: np.ndarray | None
    metrics: tuple[str, ...]
    submission: str  # a GLUE server file name, or ""

    @property
    def predicts(self) -> bool:
        """Scored from predictions on the host (text), else from counts on the device (images)."""
        return isinstance(self.source, data.text.TextSource)


def _check_metrics(name: str, metrics: tuple[str, ...], source: Any, num_classes: int) -> None:
    if isinstance(source, data.text.TextSource):
        if source.regression:
            valid = ("pearson", "spearman", "glue")
        else:
            valid = ("top1", "mcc", "glue", *(("top5",) if num_classes > 5 else ()))
            valid += ("f1",) if num_classes == 2 else ()
    else:
        valid = ("top1", "top5")
    for metric in metrics:
        if metric not in valid:
            raise UserError(
                f"evals.{name}: metric {metric!r} does not apply to {source.name}; valid: {', '.join(valid)}"
            )


def resolve_evals(
    config: Any, train_source: Any, num_classes: int,
    make_batches: Callable[[Any, str, bool], Callable[[], Iterator[dict[str, np.ndarray]]]],
) -> list[EvalSet]:  # fmt: skip
    """Every `config.evals` entry with its data source, checked now rather than at the first evaluation: an unknown
    key, metric, dataset or split, or another number of classes, is an error; an unprepared dataset too, unless the
    entry is `optional` (then one warning line, and the set is left out). Text sources other than the training
    one take its class order (`TextSource.use_label_names`). `make_batches(source, split, multi_label)` gives a
    set's batch factory."""
    from sot_jax.data import pipeline, source_base, sources

    if "val" not in config.evals and not config.eval_only:
        raise UserError("config.evals needs a 'val' entry (it ranks the best checkpoint)")
    sets = []
    for name, entry in config.evals.items():
        unknown = set(entry) - set(recipes.EVAL_KEYS)
        if unknown:
            valid = ", ".join(recipes.EVAL_KEYS)
            raise UserError(f"evals.{name}: unknown key(s) {', '.join(sorted(unknown))}; valid: {valid}")
        dataset, data_dir = entry.dataset or config.dataset, entry.data_dir or config.data_dir
        try:
            if (dataset, data_dir) == (config.dataset, config.data_dir):
                source = train_source
            else:
                source = sources.get_source(dataset, data_dir, prepare_embedded=jax.process_index() == 0)
                if getattr(train_source, "model_class", None) is not None:
                    source.use_label_names(train_source.label_names)
            split = entry.split or source.eval_split
            source.num_examples(split)  # an unknown split or an unreadable folder stops here
        except source_base.DatasetNotReadyError as e:
            if not entry.optional:
                raise UserError(f"evals.{name}: {e}") from None
            if jax.process_index() == 0:
                print(f"warning: evals.{name} skipped: {e}", flush=True)
            continue
        except UserError as e:
            raise UserError(f"evals.{name}: {e}") from None
        if source.num_classes != num_classes:
            raise UserError(f"evals.{name}: {dataset} has {source.num_classes} classes, the model {num_classes}")
        metrics = tuple(entry.metrics)
        _check_metrics(name, metrics, source, num_classes)
        if entry.submission and not isinstance(source, data.text.TextSource):
            raise UserError(f"evals.{name}: submission files are written for GLUE tasks only, not {dataset}")
        class_mask = pipeline.label_subset(source, split) if entry.label_subset else None
        batches = make_batches(source, split, entry.multi_label)
        sets.append(EvalSet(name, source, split, batches, class_mask, metrics, entry.submission))
    return sets


class Evaluator:
    """The metrics (percent) of given weights on each eval set; the jitted steps are built once. After a call,
    `predictions[name]` holds a text set's predictions in the split's stored order (model class indices)."""

    def __init__(self, model: Any, eval_sets: list[EvalSet], mesh: Any):
        self.model, self.eval_sets = model, eval_sets
        replicated = sharding.replicated(mesh)
        step = functools.partial(eval_step, model=model)
        self.steps = {
            s.name: jax.jit(
                functools.partial(step, class_mask=s.class_mask, predict=s.predicts), out_shardings=replicated
            )
            for s in eval_sets
        }
        self.batch_sharding = sharding.batch_sharding(mesh)
        self.predictions: dict[str, np.ndarray] = {}

    def __call__(self, params: Any, batch_stats: Any) -> dict[str, float]:
        results = {}
        for eval_set in self.eval_sets:
            outputs: dict[str, list[np.ndarray]] = {}
            for local in eval_set.batches():
                batch = sharding.global_batch(local, self.batch_sharding)
                for key, value in self.steps[eval_set.name](params, batch_stats, batch).items():
                    outputs.setdefault(key, []).append(np.asarray(value))
            values = {k: np.concatenate(v) if v[0].ndim else np.sum(v, dtype=np.float64) for k, v in outputs.items()}
            if eval_set.predicts:
                keep = values["mask"] != 0
                predictions, labels = values["prediction"][keep], values["label"][keep]
                self.predictions[eval_set.name] = predictions
                scores = prediction_metrics(
                    eval_set.metrics, predictions, labels, self.model.num_classes, eval_set.source.task.metrics
                )
            else:
                count = max(float(values["count"]), 1.0)
                scores = {m: 100 * float(values[m]) / count for m in eval_set.metrics}
            results.update({f"{eval_set.name}_{metric}": value for metric, value in scores.items()})
        return results


def write_submission(directory: Path, eval_set: EvalSet, predictions: np.ndarray) -> Path:
    """A GLUE server file: `index<TAB>prediction` per example of the set's split, in the task's label names (MNLI,
    AX, QNLI, RTE), class indices, or scores (STS-B)."""
    source = eval_set.source
    if source.regression:
        values = [f"{value:.3f}" for value in predictions]
    else:
        classes = source.dataset_class(predictions)
        names = source.builder.info.features["label"].names
        values = [names[c] for c in classes] if source.task.submission_names else [str(c) for c in classes]
    ids = source.indices(eval_set.split)
    path = directory / eval_set.submission
    path.write_text("index\tprediction\n" + "".join(f"{i}\t{v}\n" for i, v in zip(ids, values, strict=True)))
    return path


def evaluate_checkpoint(experiment: Experiment, workdir: str | None = None) -> dict[str, float]:
    """eval_only: the metrics of the experiment's `init_from` on every eval set (and of its EMA weights when it has
    them); sets with a `submission` file name write their predictions there, in `workdir` (GLUE's test splits)."""
    model, mesh, init_from = experiment.trainer.model, experiment.trainer.mesh, experiment.init_from
    submissions = [s for s in experiment.eval_sets if s.submission]
    if submissions and not workdir:
        raise UserError(f"--workdir is required: the submission files ({submissions[0].submission}, ...) go there")
    evaluator = Evaluator(model, experiment.eval_sets, mesh)
    loaded = checkpoints.read_init_variables(init_from)
    fresh = experiment.trainer.abstract_state  # the model's variables as shapes
    results = {}
    for prefix in ("", "ema_"):
        if f"{prefix}params" not in loaded:
            continue
        params = checkpoints.merge_exact(fresh.params, loaded[f"{prefix}params"], init_from)
        batch_stats = checkpoints.merge_exact(fresh.batch_stats, loaded.get(f"{prefix}batch_stats", {}), init_from)
        params, batch_stats = jax.device_put((params, batch_stats), sharding.replicated(mesh))
        results.update({prefix + k: v for k, v in evaluator(params, batch_stats).items()})
        if not prefix and submissions and jax.process_index() == 0:
            Path(workdir).mkdir(parents=True, exist_ok=True)
            for eval_set in submissions:
                written = write_submission(Path(workdir), eval_set, evaluator.predictions[eval_set.name])
                print(f"wrote {written}", flush=True)
    return results
