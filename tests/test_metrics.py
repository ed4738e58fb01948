"""Classification figures on hand-made scores: recall and precision at a false-positive rate."""

from __future__ import annotations

import numpy as np
import pytest

from tabbert.metrics import AT_FPR_METRICS, UndefinedMetricWarning, at_fpr, classification_metrics


def _scores(negatives: int, positives: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """``negatives`` negatives scored 0 .. 1 evenly below 0.999, then the positives' scores."""
    scores = np.concatenate([np.linspace(0.0, 0.998, negatives), positives])
    return np.r_[np.zeros(negatives, int), np.ones(len(positives), int)], scores


def test_recall_and_precision_at_a_false_positive_rate():
    # 2,000 negatives: 0.1 % allows 2 false positives, 1 % allows 20
    labels, scores = _scores(2000, [0.9995, 0.9993, 0.9985, 0.9975, 0.5])
    # three positives above every negative; the fourth comes after the two highest negatives
    recall, precision = at_fpr(labels, scores, 0.001)
    negatives_above = int(np.count_nonzero(scores[labels == 0] >= 0.9975))
    assert negatives_above == 2 and (recall, precision) == (pytest.approx(4 / 5), pytest.approx(4 / 6))
    recall, precision = at_fpr(labels, scores, 0.01)
    assert recall == pytest.approx(4 / 5)  # the fifth positive needs ~1,000 false positives
    assert precision == pytest.approx(4 / 6)  # no more false positives than that recall needs


def test_nothing_flagged_within_the_rate_gives_zero():
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.9, 0.8, 0.1, 0.2])  # every positive below every negative
    assert at_fpr(labels, scores, 0.001) == (0.0, 0.0)
    assert at_fpr(labels, scores, 0.5) == (0.0, 0.0)
    assert at_fpr(labels, scores, 1.0) == (1.0, 0.5)


def test_classification_metrics_report_both_rates():
    labels, scores = _scores(2000, [0.9995, 0.9993, 0.9985, 0.9975, 0.5])
    figures = classification_metrics(labels, scores, threshold=0.999)
    for level in ("0.1pct", "1pct"):
        assert figures[f"recall_at_{level}_fpr"] == pytest.approx(0.8)
        assert figures[f"precision_at_{level}_fpr"] == pytest.approx(4 / 6)
    assert figures["recall"] == pytest.approx(0.4) and figures["precision"] == 1.0  # at the threshold given
    with pytest.warns(UndefinedMetricWarning, match="false-positive rate are undefined"):
        one_class = classification_metrics(np.zeros(4, int), np.linspace(0, 1, 4), threshold=0.5)
    assert all(one_class[key] is None for key in AT_FPR_METRICS)
