"""PNG figures of a run: loss and training curves, precision-recall and ROC curves, and a comparison of models.

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


FEW_POSITIVES = 20  # below this many positives a curve is mostly noise, and its title says so


def plot_loss_curves(log_history: Iterable[Mapping], path: str | Path, *, title: str = "loss") -> Path:
    """Training loss (every logging step) and validation loss (every evaluation) against the step."""
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    _draw_losses(axes, list(log_history))
    axes.set_title(title)
    _legend(axes)
    return save_figure(figure, path)


def plot_training_curve(training: Mapping, path: str | Path, *, title: str) -> Path:
    """Losses against the step, the validation metric of each epoch on a second axis, and the best epoch marked.

    ``training`` is the ``training`` entry of a fine-tuning run's metrics: ``log_history``,
    ``epochs`` (each with ``step`` and the validation figures), ``metric`` and ``best_epoch``.
    """
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    _draw_losses(axes, training["log_history"])
    metric, epochs = training["metric"], training["epochs"]
    best = next((e for e in epochs if e["epoch"] == training["best_epoch"]), None)
    if metric != "loss":
        points = [(e["step"], e[metric]) for e in epochs if e.get(metric) is not None]
        if points:
            right = axes.twinx()
            right.plot(*zip(*points), "s-", color="tab:green", markersize=4, label=f"validation {metric}")
            right.set_ylabel(f"validation {metric}")
            axes.plot([], [], "s-", color="tab:green", markersize=4, label=f"validation {metric} (right axis)")
    if best is not None:
        value = best["val_loss"] if metric == "loss" else best.get(metric)
        shown = "n/a" if value is None else f"{value:.4f}"
        axes.axvline(best["step"], color="tab:red", linestyle=":", label=f"best epoch {best['epoch']} ({metric} {shown})")
    axes.set_title(title)
    _legend(axes)
    return save_figure(figure, path)


def _draw_losses(axes: plt.Axes, log_history: list[Mapping]) -> None:
    for key, label, style in (("loss", "train loss", "-"), ("eval_loss", "validation loss", "o-")):
        steps, values = loss_points(log_history, key)
        if steps.size:
            axes.plot(steps, values, style, label=label, markersize=4)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)


def _legend(axes: plt.Axes, **settings) -> None:
    if axes.lines:
        axes.legend(fontsize="small", **settings)


def curve_title(kind: str, labels: np.ndarray, *, model: str = "", split: str = "") -> tuple[str, str]:
    """The title of a curve, naming the model, split and positives, and its colour: red when positives are few."""
    positives = int(labels.sum())
    where = ", ".join(part for part in (model, split) if part)
    title = f"{kind}" + (f": {where}" if where else "") + f"\n{positives:,} positives of {labels.size:,} windows"
    if positives < FEW_POSITIVES:
        return title + f" (fewer than {FEW_POSITIVES}: an unreliable curve)", "tab:red"
    return title, "black"


def plot_pr_roc(labels: np.ndarray, scores: np.ndarray, path_prefix: str | Path, *, model: str = "",
                split: str = "", threshold: float | None = None) -> list[Path]:
    """Write ``<prefix>pr_curve.png`` and ``<prefix>roc_curve.png``; returns the paths written.

    Titles name ``model``, ``split`` and the positives. The ROC curve has a logarithmic
    false-positive axis, so that rates of 0.1-1 % are readable; both curves mark the operating
    point at ``threshold``. Both curves need positives and negatives: with one class only,
    nothing is written and an :class:`UndefinedMetricWarning` says so.
    """
    labels, scores = np.asarray(labels).astype(np.int64).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    if labels.size == 0 or labels.min() == labels.max():
        warnings.warn(f"{path_prefix}: PR and ROC curves need both classes; no curves written", UndefinedMetricWarning,
                      stacklevel=2)
        return []
    prefix = str(path_prefix)
    point = None if threshold is None else _operating_point(labels, scores, threshold)

    precision, recall, _ = precision_recall_curve(labels, scores)
    figure, axes = plt.subplots(figsize=(5.0, 4.5))
    axes.step(recall, precision, where="post", label=f"AP = {average_precision_score(labels, scores):.4f}")
    axes.axhline(labels.mean(), linestyle="--", color="grey", label=f"positive rate = {labels.mean():.4f}")
    if point is not None:
        axes.plot(point["recall"], point["precision"], "o", color="tab:red",
                  label=f"threshold {threshold:.3g}: precision {point['precision']:.3f}, recall {point['recall']:.3f}")
    title, colour = curve_title("precision-recall", labels, model=model, split=split)
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    axes.set_title(title, color=colour, fontsize="medium")
    axes.grid(alpha=0.3)
    _legend(axes, loc="upper right")
    pr_path = save_figure(figure, prefix + "pr_curve.png")

    false_positive_rate, true_positive_rate, _ = roc_curve(labels, scores)
    floor = min(1e-3, 0.5 / int((labels == 0).sum()))  # where a false-positive rate of 0 is drawn
    figure, axes = plt.subplots(figsize=(5.0, 4.5))
    axes.plot(np.maximum(false_positive_rate, floor), true_positive_rate,
              label=f"AUC = {roc_auc_score(labels, scores):.4f}")
    chance = np.geomspace(floor, 1, 50)
    axes.plot(chance, chance, linestyle="--", color="grey", label="chance")
    axes.axvline(0.01, linestyle=":", color="grey", label="1 % false positives")
    if point is not None:
        axes.plot(max(point["false_positive_rate"], floor), point["recall"], "o", color="tab:red",
                  label=f"threshold {threshold:.3g}: FPR {100 * point['false_positive_rate']:.2f} %, "
                  f"recall {point['recall']:.3f}")
    title, colour = curve_title("ROC", labels, model=model, split=split)
    axes.set_xscale("log")
    axes.set(xlabel="false-positive rate (log scale)", ylabel="true-positive rate", xlim=(floor, 1), ylim=(0, 1.02))
    axes.set_title(title, color=colour, fontsize="medium")
    axes.grid(alpha=0.3, which="both")
    _legend(axes, loc="lower right")
    roc_path = save_figure(figure, prefix + "roc_curve.png")
    return [pr_path, roc_path]


def _operating_point(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall and false-positive rate of predicting positive at ``scores >= threshold``."""
    predicted = scores >= threshold
    true_positives = int((predicted & (labels == 1)).sum())
    return {
        "precision": true_positives / max(int(predicted.sum()), 1),
        "recall": true_positives / int(labels.sum()),
        "false_positive_rate": int((predicted & (labels == 0)).sum()) / int((labels == 0).sum()),
    }


def plot_model_comparison(table: Mapping[str, Mapping], path: str | Path, *, title: str,
                          figures: tuple[tuple[str, str], ...] = (("pr_auc", "PR-AUC"), ("roc_auc", "ROC-AUC"),
                                                                  ("f1", "F1"))) -> Path:
    """One bar per model and figure, models on the vertical axis: ``table`` maps a model's name to its figures.

    A figure that is undefined (None) is left out and its model's label says so.
    """
    names = list(table)
    figure, axes = plt.subplots(figsize=(6.4, 0.9 + 0.55 * len(names) * len(figures) / 2))
    height = 0.8 / len(figures)
    rows = np.arange(len(names))
    for k, (key, label) in enumerate(figures):
        values = np.array([np.nan if table[name].get(key) is None else table[name][key] for name in names])
        offsets = rows + (k - (len(figures) - 1) / 2) * height
        bars = axes.barh(offsets, np.nan_to_num(values), height=height, label=label)
        axes.bar_label(bars, labels=["n/a" if np.isnan(v) else f"{v:.3f}" for v in values], padding=2,
                       fontsize="x-small")
    axes.set_yticks(rows, names)
    axes.invert_yaxis()
    axes.set(xlim=(0, 1.12), xlabel="test figure", title=title)
    axes.grid(alpha=0.3, axis="x")
    axes.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(figures))
    return save_figure(figure, path)
