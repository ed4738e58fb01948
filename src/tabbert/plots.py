"""PNG figures of a run: loss curves from a Trainer log history, precision-recall and ROC curves.

Figures are drawn with matplotlib's Agg backend (no display needed) and written atomically.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from tabbert.atomic import atomic_path  # noqa: E402
from tabbert.metrics import UndefinedMetricWarning  # noqa: E402


def save_figure(figure: plt.Figure, path: str | Path) -> Path:
    """Write ``figure`` as PNG to a temporary sibling of ``path``, rename it into place and close it."""
    path = Path(path)
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path


def loss_points(log_history: Iterable[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of ``key`` (``loss``, ``eval_loss``, ...) in a Trainer log history."""
    points = [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
    steps, values = zip(*points) if points else ((), ())
    return np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64)


def plot_loss_curves(log_history: Iterable[Mapping], path: str | Path, *, title: str = "loss") -> Path:
    """Training loss (every logging step) and validation loss (every evaluation) against the step."""
    log_history = list(log_history)
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    for key, label, style in (("loss", "train", "-"), ("eval_loss", "validation", "o-")):
        steps, values = loss_points(log_history, key)
        if steps.size:
            axes.plot(steps, values, style, label=label, markersize=4)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend()
    return save_figure(figure, path)


def plot_pr_roc(labels: np.ndarray, scores: np.ndarray, path_prefix: str | Path) -> list[Path]:
    """Write ``<prefix>pr_curve.png`` and ``<prefix>roc_curve.png``; returns the paths written.

    Both curves need positives and negatives: with one class only, nothing is written and an
    :class:`UndefinedMetricWarning` says so.
    """
    labels, scores = np.asarray(labels).astype(np.int64).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    if labels.size == 0 or labels.min() == labels.max():
        warnings.warn(f"{path_prefix}: PR and ROC curves need both classes; no curves written", UndefinedMetricWarning,
                      stacklevel=2)
        return []
    prefix = str(path_prefix)

    precision, recall, _ = precision_recall_curve(labels, scores)
    figure, axes = plt.subplots(figsize=(5.0, 4.5))
    axes.step(recall, precision, where="post", label=f"AP = {average_precision_score(labels, scores):.4f}")
    axes.axhline(labels.mean(), linestyle="--", color="grey", label=f"positive rate = {labels.mean():.4f}")
    axes.set(xlabel="recall", ylabel="precision", title="precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right")
    pr_path = save_figure(figure, prefix + "pr_curve.png")

    false_positive_rate, true_positive_rate, _ = roc_curve(labels, scores)
    figure, axes = plt.subplots(figsize=(5.0, 4.5))
    axes.plot(false_positive_rate, true_positive_rate, label=f"AUC = {roc_auc_score(labels, scores):.4f}")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axes.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.02))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    roc_path = save_figure(figure, prefix + "roc_curve.png")
    return [pr_path, roc_path]
