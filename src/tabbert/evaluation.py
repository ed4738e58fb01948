"""Evaluate a fine-tuned model on one split of a prepared dataset.

Classification: F1, precision and recall at a threshold resolved on the *validation* split from
a spec (:mod:`tabbert.thresholds`; by default the best-F1 threshold saved with the model at
fine-tuning), ROC-AUC, PR-AUC, recall and precision at 0.1 % and 1 % false-positive rate and the
confusion matrix, on every prediction point of the split; PR and ROC curves as ``<split>_pr_curve.png`` and ``<split>_roc_curve.png``. A split
with one class only leaves the ranking metrics undefined: they are ``None``, with a warning.
Regression: RMSE and MAE per target and combined, in the targets' own units.

:func:`evaluate` loads a run and merges its figures into the run's ``metrics.json`` under
``splits`` → split; :func:`split_report` makes that entry for every kind of run (the layout is
in the README).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tabbert.atomic import write_json_atomic
from tabbert.data.prepared import PreparedDataset
from tabbert.errors import ArtifactError, TabbertError
from tabbert.metrics import classification_metrics, regression_metrics
from tabbert.models.classifier import SequenceHeadModel, TabBertClassifierConfig
from tabbert.plots import plot_pr_roc
from tabbert.runs import check_compatible, choose_device, load_run, prepared_points, score
from tabbert.thresholds import DEFAULT_SPEC, Threshold, ThresholdSpec, ValidationScores, resolve_threshold

EVAL_BATCH_SIZE = 256


def point_truth(data: PreparedDataset, ends: np.ndarray, task: str, context: int, *, label_mode: str = "last",
                target_mode: str = "last") -> np.ndarray:
    """Class labels ``[n]`` (int64) or regression targets (float32) of the points ``ends``."""
    if task == "classification":
        return data.point_labels(ends, context, label_mode)
    return data.point_targets(ends, context, target_mode).astype(np.float32)


def model_points(data: PreparedDataset, split: str, config: TabBertClassifierConfig) -> tuple[np.ndarray, np.ndarray]:
    """The prediction points of ``split`` as the model was trained on them, and their truth."""
    ends = data.points(split, config.points)
    truth = point_truth(data, ends, config.task, config.seq_len, label_mode=config.label_mode,
                        target_mode=config.target_mode)
    return ends, truth


def score_points(model: SequenceHeadModel, data: PreparedDataset, ends: np.ndarray,
                 *, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
    """Positive-class probabilities ``[n]`` (or regression predictions in the targets' units)."""
    return score(model, len(ends), prepared_points(data, ends, model.config.seq_len), batch_size=batch_size)


def figures(config: TabBertClassifierConfig, truth: np.ndarray, scores: np.ndarray, *,
            threshold: float | None = None, split: str = "") -> dict:
    """The split's metrics: classification figures at ``threshold`` (best F1 on these labels if
    None), or RMSE/MAE per target in the targets' own units."""
    if config.task == "classification":
        return classification_metrics(truth, scores, threshold=threshold, split=split)
    return regression_metrics(truth, scores, config.target_names)


def split_report(truth: np.ndarray, scores: np.ndarray, *, task: str, split: str, data_path: str | Path,
                 run_dir: Path, threshold: float | None = None, threshold_source: str | None = None,
                 threshold_spec: str = DEFAULT_SPEC, target_names: Sequence[str] = (), plots: bool = True) -> dict:
    """One split's entry in a run's ``metrics.json``, alike for every kind of run.

    Classification: the figures at ``threshold``, the spec it was resolved from
    (:mod:`tabbert.thresholds`) and in words where it came from, and the PR and ROC curves
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
        result.update(threshold_spec=threshold_spec, threshold_source=threshold_source,
                       plots=[path.name for path in written])
    return {"split": split, "data": str(data_path), **result}


def evaluate(model_dir: str | Path, data_dir: str | Path, split: str = "test", *,
             threshold: str | float | None = None, batch_size: int = EVAL_BATCH_SIZE,
             device: str | None = None) -> dict:
    """Metrics of a fine-tuned run (``RUN`` or ``RUN/model``) on ``split`` of a prepared dataset,
    also merged into the run's ``metrics.json``. ``threshold`` is a spec of :mod:`tabbert.thresholds`
    (default ``best-f1``). ``device``: see :func:`tabbert.runs.choose_device`."""
    from tabbert.baselines.rows import evaluate_rows, is_row_run

    spec = ThresholdSpec.parse(threshold)
    if is_row_run(model_dir):
        return evaluate_rows(model_dir, data_dir, split, threshold=spec, batch_size=batch_size, device=device)
    run = load_run(model_dir, expect="classifier")
    if run.model.config.task != "classification" and threshold is not None:
        raise TabbertError(f"{run.run_dir}: a threshold applies to classification models only")
    data = PreparedDataset(data_dir)
    data.require_labels()
    check_compatible(run, data)
    run.model.to(choose_device(device))
    chosen = None
    if run.model.config.task == "classification":
        chosen = validation_threshold(run.model, data, spec=spec, run_dir=run.run_dir, batch_size=batch_size)
    result = evaluate_model(run.model, data, split, run.run_dir, batch_size=batch_size, threshold=chosen)
    merge_split(run.run_dir, split, result)
    return result


def evaluate_model(model: SequenceHeadModel, data: PreparedDataset, split: str, run_dir: Path, *,
                   batch_size: int = EVAL_BATCH_SIZE, scores: np.ndarray | None = None,
                   threshold: Threshold | None = None) -> dict:
    """:func:`split_report` of a model in memory on ``split``. ``scores`` are the split's scores when
    known already; ``threshold`` the decision threshold (default :func:`validation_threshold`)."""
    config = model.config
    ends, truth = model_points(data, split, config)
    if ends.size == 0:
        raise TabbertError(f"{data.path}: split {split!r} has no prediction points to evaluate")
    if scores is None:
        scores = score_points(model, data, ends, batch_size=batch_size)
    if config.task == "classification" and threshold is None:
        threshold = validation_threshold(model, data, batch_size=batch_size)
    chosen = {} if threshold is None else dict(threshold=threshold.value, threshold_spec=threshold.spec,
                                               threshold_source=threshold.source)
    return split_report(truth, scores, task=config.task, split=split, data_path=data.path, run_dir=run_dir,
                        target_names=config.target_names, **chosen)


def validation_threshold(model: SequenceHeadModel, data: PreparedDataset, *, spec: str | ThresholdSpec | None = None,
                         run_dir: Path | None = None, batch_size: int = EVAL_BATCH_SIZE) -> Threshold:
    """The decision threshold of ``spec`` (default ``best-f1``: the model's saved one when it has one),
    resolved on the validation scores stored in ``run_dir``, else on ``data``'s validation split."""

    def validation() -> ValidationScores:
        stored = ValidationScores.load(run_dir) if run_dir is not None else None
        return stored if stored is not None else validation_scores(model, data, batch_size=batch_size)

    return resolve_threshold(spec, validation, saved=model.config.threshold)


def validation_scores(model: SequenceHeadModel, data: PreparedDataset, *,
                      batch_size: int = EVAL_BATCH_SIZE, scores: np.ndarray | None = None) -> ValidationScores:
    """The model's scores of ``data``'s validation points (``scores`` when known already), their labels
    and the times of their rows."""
    ends, labels = model_points(data, "val", model.config)
    if scores is None:
        scores = score_points(model, data, ends, batch_size=batch_size)
    return ValidationScores(scores, labels, data.times[ends])


def merge_split(run_dir: Path, split: str, values: dict) -> None:
    """Set ``metrics.json["splits"][split] = values`` in the run directory, atomically."""
    path = run_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError as exc:
        raise ArtifactError(f"{path}: unreadable ({exc})") from exc
    metrics.setdefault("splits", {})[split] = values
    write_json_atomic(path, metrics)
