"""Figures say what they show: model, split, positives, operating point, best epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tabbert import plots


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plotting functions draw, kept open instead of written."""
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: figures.append(figure) or Path(path))
    yield figures
    for figure in figures:
        plots.plt.close(figure)


def labels_and_scores(positives: int, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.zeros(n, dtype=np.int64)
    labels[:positives] = 1
    return labels, rng.random(n) * 0.6 + 0.4 * labels


def legend_texts(axes) -> list[str]:
    return [text.get_text() for text in axes.get_legend().get_texts()]


def test_pr_and_roc_name_model_split_positives_and_mark_the_threshold(drawn):
    labels, scores = labels_and_scores(60)
    plots.plot_pr_roc(labels, scores, "x_", model="tabbert_lstm", split="test", threshold=0.7)
    pr, roc = (figure.axes[0] for figure in drawn)
    for axes in (pr, roc):
        assert "tabbert_lstm, test" in axes.get_title() and "60 positives of 2,000 windows" in axes.get_title()
        assert "unreliable" not in axes.get_title()
        assert any(text.startswith("threshold 0.7:") for text in legend_texts(axes))
    assert roc.get_xscale() == "log" and roc.get_xlim()[0] <= 1e-3


def test_few_positives_warn_in_the_title(drawn):
    labels, scores = labels_and_scores(7)
    plots.plot_pr_roc(labels, scores, "x_", model="m", split="val")
    for figure in drawn:
        title = figure.axes[0].title
        assert "fewer than 20: an unreliable curve" in title.get_text() and title.get_color() == "tab:red"


def test_training_curve_shows_the_validation_metric_and_the_best_epoch(drawn):
    epochs = [{"epoch": e, "step": 10 * e, "val_loss": 1.0 / e, "pr_auc": value}
              for e, value in ((1, 0.2), (2, 0.5), (3, 0.4))]
    log_history = [{"step": s, "loss": 1.0 / s} for s in range(1, 31)] + [
        {"step": e["step"], "eval_loss": e["val_loss"]} for e in epochs]
    plots.plot_training_curve({"log_history": log_history, "epochs": epochs, "metric": "pr_auc", "best_epoch": 2},
                              "curve.png", title="ft")
    (figure,) = drawn
    texts = legend_texts(figure.axes[0])
    assert "validation pr_auc (right axis)" in texts and "best epoch 2 (pr_auc 0.5000)" in texts
    assert list(figure.axes[1].lines[0].get_ydata()) == [0.2, 0.5, 0.4]


def test_model_comparison_is_written(tmp_path):
    table = {"LightGBM": {"pr_auc": 0.4, "roc_auc": 0.9, "f1": 0.5}, "TabBERT": {"pr_auc": None, "roc_auc": 0.8,
                                                                                "f1": 0.3}}
    path = plots.plot_model_comparison(table, tmp_path / "models.png", title="test")
    assert path.read_bytes().startswith(b"\x89PNG")
