"""Figures for a rare-positive classifier and for regression, from scikit-learn.

Ranking metrics (ROC-AUC, PR-AUC) are undefined when a split holds one class only; they are then
reported as ``None`` with a warning naming the split, never as a silent NaN.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

RANKING_METRICS = ("roc_auc", "pr_auc", "recall_at_1pct_fpr")  # undefined unless both classes are present
RECALL_METRICS = ("recall", "f1")  # undefined (0/0) without positives


class UndefinedMetricWarning(UserWarning):
    """A metric that the labels of a split cannot define (no positives, say)."""


def undefined_metrics(labels: np.ndarray) -> tuple[str, ...]:
    """The figures of :func:`classification_metrics` that these labels leave undefined (``None``)."""
    positives, n = int(np.sum(labels)), int(np.size(labels))
    return (RANKING_METRICS if not 0 < positives < n else ()) + (RECALL_METRICS if positives == 0 else ())


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold with the highest F1 (chosen on validation, applied to test)."""
    labels = np.asarray(labels)
    if labels.min(initial=0) == labels.max(initial=0):
        return 0.5
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def recall_at_fpr(labels: np.ndarray, scores: np.ndarray, max_fpr: float = 0.01) -> float:
    """Highest recall reachable while the false-positive rate stays at or below ``max_fpr``."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[fpr <= max_fpr].max(initial=0.0))


def classification_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float | None = None,
                           split: str = "") -> dict:
    """F1/precision/recall at ``threshold`` (best-F1 on these labels if None), ROC-AUC, PR-AUC,
    recall at 1 % FPR and the confusion matrix ``[[tn, fp], [fn, tp]]``."""
    labels = np.asarray(labels).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if threshold is None:
        threshold = best_f1_threshold(labels, scores)
    predicted = (scores >= threshold).astype(np.int64)
    positives = int(labels.sum())
    result = {
        "n": int(labels.size),
        "positives": positives,
        "threshold": float(threshold),
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "precision": float(precision_score(labels, predicted, zero_division=0)),
        "recall": float(recall_score(labels, predicted, zero_division=0)),
        "confusion_matrix": confusion_matrix(labels, predicted, labels=[0, 1]).tolist(),
    }
    undefined = undefined_metrics(labels)
    if not undefined:
        result["roc_auc"] = float(roc_auc_score(labels, scores))
        result["pr_auc"] = float(average_precision_score(labels, scores))
        result["recall_at_1pct_fpr"] = recall_at_fpr(labels, scores, 0.01)
    else:
        where = f" on split {split!r}" if split else ""
        warnings.warn(
            f"ROC-AUC, PR-AUC and recall@1%FPR are undefined{where}: {positives} positives in {labels.size} windows",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        result.update(dict.fromkeys(undefined))
    return result


def regression_metrics(targets: np.ndarray, predictions: np.ndarray, names: list[str]) -> dict:
    """RMSE and MAE per target and over all targets together, in the targets' own units."""
    targets = np.asarray(targets, dtype=np.float64).reshape(-1, len(names))
    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1, len(names))
    result = {"n": int(targets.shape[0])}
    for j, name in enumerate(names):
        result[f"rmse_{name}"] = float(np.sqrt(np.mean((targets[:, j] - predictions[:, j]) ** 2)))
        result[f"mae_{name}"] = float(mean_absolute_error(targets[:, j], predictions[:, j]))
    result["rmse"] = float(np.sqrt(np.mean((targets - predictions) ** 2)))
    result["mae"] = float(mean_absolute_error(targets.ravel(), predictions.ravel()))
    return result
