"""Evaluate a fine-tuned model on one split of a prepared dataset.

Classification: F1, precision and recall at a threshold chosen on the *validation* split (the
best-F1 threshold saved with the model at fine-tuning, else chosen now on this dataset's
validation windows), ROC-AUC, PR-AUC, recall at 1 % false-positive rate and the confusion
matrix; PR and ROC curves as ``<split>_pr_curve.png`` and ``<split>_roc_curve.png``. A split
with one class only leaves the ranking metrics undefined: they are ``None``, with a warning.
Regression: RMSE and MAE per target and combined, in the targets' own units.

:func:`evaluate` loads a run and merges its figures into the run's ``metrics.json`` under
``splits`` → split; :func:`split_report` makes that entry for every kind of run (the layout is
in the README).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tabbert.atomic import write_json_atomic
from tabbert.data.prepared import PreparedDataset
from tabbert.errors import ArtifactError, TabbertError
from tabbert.metrics import (
    UndefinedMetricWarning,
    best_f1_threshold,
    classification_metrics,
    regression_metrics,
)
from tabbert.models.classifier import SequenceHeadModel, TabBertClassifierConfig
from tabbert.plots import plot_pr_roc
from tabbert.runs import check_compatible, choose_device, load_run, prepared_windows, score

EVAL_BATCH_SIZE = 256


def window_truth(data: PreparedDataset, starts: np.ndarray, task: str, *, label_mode: str = "any",
                 target_mode: str = "last") -> np.ndarray:
    """Class labels ``[n]`` (int64) or regression targets (float32) of the windows at ``starts``."""
    if task == "classification":
        return data.window_labels(starts, label_mode)
    return data.window_targets(starts, target_mode).astype(np.float32)


def model_truth(data: PreparedDataset, starts: np.ndarray, config: TabBertClassifierConfig) -> np.ndarray:
    """:func:`window_truth` as the model was trained on it (its label or target mode)."""
    return window_truth(data, starts, config.task, label_mode=config.label_mode, target_mode=config.target_mode)


def score_windows(model: SequenceHeadModel, data: PreparedDataset, starts: np.ndarray,
                  *, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
    """Positive-class probabilities ``[n]`` (or regression predictions in the targets' units)."""
    return score(model, len(starts), prepared_windows(data, starts), batch_size=batch_size)


def figures(config: TabBertClassifierConfig, truth: np.ndarray, scores: np.ndarray, *,
            threshold: float | None = None, split: str = "") -> dict:
    """The split's metrics: classification figures at ``threshold`` (best F1 on these labels if
    None), or RMSE/MAE per target in the targets' own units."""
    if config.task == "classification":
        return classification_metrics(truth, scores, threshold=threshold, split=split)
    return regression_metrics(truth, scores, config.target_names)


def split_report(truth: np.ndarray, scores: np.ndarray, *, task: str, split: str, data_path: str | Path,
                 run_dir: Path, threshold: float | None = None, threshold_source: str | None = None,
                 target_names: Sequence[str] = (), plots: bool = True) -> dict:
    """One split's entry in a run's ``metrics.json``, alike for every kind of run.

    Classification: the figures at ``threshold``, where it came from, and the PR and ROC curves
    drawn into ``run_dir`` (with ``plots``, when the split holds both classes). Regression: RMSE
    and MAE per target in ``target_names`` and over all of them.
    """
    if task == "regression":
        result = regression_metrics(truth, scores, list(target_names))
    else:
        result = classification_metrics(truth, scores, threshold, split=split)
        both_classes = 0 < result["positives"] < result["n"]  # else the curves are undefined, as warned
        written = plot_pr_roc(truth, scores, run_dir / f"{split}_", model=run_dir.name, split=split,
                              threshold=result["threshold"]) if plots and both_classes else []
        result.update(threshold_source=threshold_source, plots=[path.name for path in written])
    return {"split": split, "data": str(data_path), **result}


def evaluate(model_dir: str | Path, data_dir: str | Path, split: str = "test", *,
             batch_size: int = EVAL_BATCH_SIZE, device: str | None = None) -> dict:
    """Metrics of a fine-tuned run (``RUN`` or ``RUN/model``) on ``split`` of a prepared dataset,
    also merged into the run's ``metrics.json``. ``device``: see :func:`tabbert.runs.choose_device`."""
    run = load_run(model_dir, expect="classifier")
    data = PreparedDataset(data_dir)
    check_compatible(run, data)
    run.model.to(choose_device(device))
    result = evaluate_model(run.model, data, split, run.run_dir, batch_size=batch_size)
    merge_split(run.run_dir, split, result)
    return result


def evaluate_model(model: SequenceHeadModel, data: PreparedDataset, split: str, run_dir: Path, *,
                   batch_size: int = EVAL_BATCH_SIZE, scores: np.ndarray | None = None,
                   threshold: tuple[float, str] | None = None) -> dict:
    """:func:`split_report` of a model in memory on ``split``. ``scores`` are the split's scores when
    known already; ``threshold`` the decision threshold and its source (default :func:`validation_threshold`)."""
    starts = data.windows(split)
    if starts.size == 0:
        raise TabbertError(f"{data.path}: split {split!r} has no windows to evaluate")
    config = model.config
    truth = model_truth(data, starts, config)
    if scores is None:
        scores = score_windows(model, data, starts, batch_size=batch_size)
    if config.task == "classification" and threshold is None:
        threshold = validation_threshold(model, data, batch_size=batch_size)
    value, source = threshold or (None, None)
    return split_report(truth, scores, task=config.task, split=split, data_path=data.path, run_dir=run_dir,
                        threshold=value, threshold_source=source, target_names=config.target_names)


def validation_threshold(model: SequenceHeadModel, data: PreparedDataset, *,
                         batch_size: int = EVAL_BATCH_SIZE) -> tuple[float, str]:
    """The decision threshold and where it came from: the model's saved one, else best F1 on ``val``."""
    if model.config.threshold is not None:
        return model.config.threshold, "model (best F1 on validation at fine-tuning)"
    starts = data.windows("val")
    labels = model_truth(data, starts, model.config)
    if labels.sum() == 0:
        warnings.warn("the validation split has no positives: using the threshold 0.5", UndefinedMetricWarning,
                      stacklevel=2)
        return 0.5, "default 0.5 (no validation positives)"
    return best_f1_threshold(labels, score_windows(model, data, starts, batch_size=batch_size)), "best F1 on val"


def merge_split(run_dir: Path, split: str, values: dict) -> None:
    """Set ``metrics.json["splits"][split] = values`` in the run directory, atomically."""
    path = run_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError as exc:
        raise ArtifactError(f"{path}: unreadable ({exc})") from exc
    metrics.setdefault("splits", {})[split] = values
    write_json_atomic(path, metrics)
