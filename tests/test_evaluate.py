"""Evaluation metrics against sklearn and scipy: Matthews' correlation, F1, Pearson, Spearman (ties included), and
the GLUE task score of a set of predictions; the evaluation step and eval_only."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_MODEL

from sot_jax import evaluate, experiment, models, train


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
        ours = evaluate.matthews_corrcoef(evaluate.confusion_matrix(labels, predictions, classes))
        assert ours == pytest.approx(matthews_corrcoef(labels, predictions), abs=1e-12)
    assert evaluate.matthews_corrcoef(np.zeros((2, 2))) == 0.0
    # Counts whose products overflow int64, against sklearn with sample weights.
    weights = np.array([4e9, 1e9, 2e9, 5e9])
    expected = matthews_corrcoef([0, 0, 1, 1], [0, 1, 0, 1], sample_weight=weights)
    assert evaluate.matthews_corrcoef(np.array([[4e9, 1e9], [2e9, 5e9]], np.int64)) == pytest.approx(expected)
    masked = evaluate.confusion_matrix([0, 1, 1], [0, 1, 0], 2, mask=[1, 1, 0])
    np.testing.assert_array_equal(masked, [[1, 0], [0, 1]])


@pytest.mark.filterwarnings("ignore::UserWarning")  # sklearn on an undefined F1
def test_f1_and_accuracy_equal_sklearn():
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(1)
    labels = rng.integers(2, size=300)
    cases = [
        (labels, np.where(rng.random(300) < 0.7, labels, 1 - labels)),
        (labels, np.zeros(300, int)),  # class 1 never predicted
        (np.zeros(10, int), np.zeros(10, int)),  # class 1 neither present nor predicted: 0.0 as sklearn
        (labels, labels),
    ]
    for truth, predictions in cases:
        confusion = evaluate.confusion_matrix(truth, predictions, 2)
        assert evaluate.f1_score(confusion) == pytest.approx(f1_score(truth, predictions, zero_division=0.0))
        scores = evaluate.prediction_metrics(("f1", "top1", "glue"), predictions, truth, 2, ("f1", "top1"))
        assert scores["top1"] == pytest.approx(100 * accuracy_score(truth, predictions))
        assert scores["glue"] == pytest.approx((scores["f1"] + scores["top1"]) / 2)  # MRPC's and QQP's score


def test_pearson_and_spearman_equal_scipy_with_ties():
    from scipy import stats

    rng = np.random.default_rng(2)
    scores = np.round(rng.uniform(0, 5, 400), 1)  # STS-B-like scores: many ties
    predictions = scores + rng.normal(0, 1.0, 400)
    tied_predictions = np.round(predictions)  # ties in both
    for x, y in ((predictions, scores), (tied_predictions, scores), (scores, scores)):
        assert evaluate.pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
        assert evaluate.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    np.testing.assert_allclose(evaluate.average_ranks(tied_predictions), stats.rankdata(tied_predictions))
    assert evaluate.pearson(np.ones(5), np.arange(5.0)) == 0.0  # constant: undefined, 0 as the MCC
    metrics = ("pearson", "spearman")
    result = evaluate.prediction_metrics((*metrics, "glue"), predictions, scores, 1, metrics)
    assert result["glue"] == pytest.approx((result["pearson"] + result["spearman"]) / 2)
    assert result["pearson"] == pytest.approx(100 * stats.pearsonr(predictions, scores).statistic)


def test_eval_step_handles_fewer_than_five_classes():
    model = models.create_model("deit_tiny_patch16_224", num_classes=2, img_size=32, **{**TINY_MODEL, "depth": 1})
    variables = model.init({"params": jax.random.key(0)}, jnp.zeros((1, 32, 32, 3)))
    batch = {"image": jnp.zeros((4, 32, 32, 3), jnp.uint8), "label": jnp.array([0, 1, 0, 1]), "mask": jnp.ones(4)}
    counts = evaluate.eval_step(variables["params"], {}, batch, model=model, class_mask=None)
    assert float(counts["top5"]) == 4.0 and float(counts["top1"]) == 2.0 and float(counts["count"]) == 4.0


@pytest.mark.slow
def test_eval_only_reports_params_and_ema(tiny_config, tmp_path):
    train.train_and_evaluate(experiment.build(tiny_config(ema_decay=0.9)), tmp_path)
    results = evaluate.evaluate_checkpoint(experiment.build(tiny_config(eval_only=True, init_from=str(tmp_path))))
    assert set(results) == {"val_top1", "val_top5", "ema_val_top1", "ema_val_top5"}
    last = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines() if "val_top1" in r][-1]
    assert results["val_top1"] == pytest.approx(last["val_top1"])
