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

FPR_LEVELS = {"0.1pct": 0.001, "1pct": 0.01}  # false-positive rates at which recall and precision are reported
AT_FPR_METRICS = tuple(f"{figure}_at_{level}_fpr" for level in FPR_LEVELS for figure in ("recall", "precision"))
RANKING_METRICS = ("roc_auc", "pr_auc", *AT_FPR_METRICS)  # undefined unless both classes are present
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


def at_fpr(labels: np.ndarray, scores: np.ndarray, max_fpr: float = 0.01) -> tuple[float, float]:
    """Recall and precision at the threshold with the highest recall whose false-positive rate stays
    at or below ``max_fpr`` (the fewest false positives among equal recalls). Precision is 0 when
    that threshold flags nothing."""
    labels = np.asarray(labels)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    within = np.flatnonzero(fpr <= max_fpr)  # fpr and tpr never decrease along the curve
    best = within[np.searchsorted(tpr[within], tpr[within[-1]])]
    positives = int(np.count_nonzero(labels == 1))
    true_positives, false_positives = tpr[best] * positives, fpr[best] * (labels.size - positives)
    flagged = true_positives + false_positives
    return float(tpr[best]), float(true_positives / flagged) if flagged > 0 else 0.0


def classification_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float | None = None,
                           split: str = "") -> dict:
    """F1/precision/recall at ``threshold`` (best-F1 on these labels if None), ROC-AUC, PR-AUC,
    recall and precision at 0.1 % and 1 % false-positive rate (see :func:`at_fpr`) and the
    confusion matrix ``[[tn, fp], [fn, tp]]``."""
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
        for level, max_fpr in FPR_LEVELS.items():
            result[f"recall_at_{level}_fpr"], result[f"precision_at_{level}_fpr"] = at_fpr(labels, scores, max_fpr)
    else:
        where = f" on split {split!r}" if split else ""
        warnings.warn(
            f"ROC-AUC, PR-AUC and the figures at a false-positive rate are undefined{where}: "
            f"{positives} positives in {labels.size} windows",
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
