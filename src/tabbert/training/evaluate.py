"""Evaluate a fine-tuned model on one split of a prepared dataset.

Classification: F1, precision and recall at a threshold chosen on the *validation* split (the
best-F1 threshold saved with the model at fine-tuning, else chosen now on this dataset's
validation windows), ROC-AUC, PR-AUC, recall at 1 % false-positive rate and the confusion
matrix; PR and ROC curves as ``<split>_pr_curve.png`` and ``<split>_roc_curve.png``. A split
without positives leaves the ranking metrics undefined: they are ``None``, with a warning.
Regression: RMSE and MAE per target and combined, in the targets' own units.

Figures are merged into the run's ``metrics.json`` under ``"evaluate"`` → split.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from tabbert.atomic import write_json_atomic
from tabbert.data.prepared import PreparedDataset
from tabbert.data.tokenizer import TabularTokenizer
from tabbert.errors import ArtifactError, TabbertError
from tabbert.metrics import (
    UndefinedMetricWarning,
    best_f1_threshold,
    classification_metrics,
    regression_metrics,
)
from tabbert.models.classifier import (
    TabBertClassifierConfig,
    TabBertForSequenceClassification,
    load_classifier,
)
from tabbert.plots import plot_pr_roc

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


def window_logits(model: TabBertForSequenceClassification, data: PreparedDataset, starts: np.ndarray,
                  *, batch_size: int = EVAL_BATCH_SIZE) -> torch.Tensor:
    """Head outputs for the windows starting at ``starts``, on the model's device."""
    model.eval()
    device = model.device
    outputs = []
    with torch.inference_mode():
        for begin in range(0, len(starts), batch_size):
            ids = torch.from_numpy(data.window_tokens(starts[begin:begin + batch_size]).astype(np.int64))
            outputs.append(model(ids.to(device)).logits)
    if not outputs:
        return torch.empty((0, model.config.num_outputs), device=device)
    return torch.cat(outputs)


def score_windows(model: TabBertForSequenceClassification, data: PreparedDataset, starts: np.ndarray,
                  *, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
    """Positive-class probabilities ``[n]`` (or regression predictions in the targets' units)."""
    with torch.inference_mode():
        return model.scores(window_logits(model, data, starts, batch_size=batch_size)).float().cpu().numpy()


def figures(config: TabBertClassifierConfig, truth: np.ndarray, scores: np.ndarray, *,
            threshold: float | None = None, split: str = "") -> dict:
    """The split's metrics: classification figures at ``threshold`` (best F1 on these labels if
    None), or RMSE/MAE per target in the targets' own units."""
    if config.task == "classification":
        return classification_metrics(truth, scores, threshold=threshold, split=split)
    return regression_metrics(truth, scores, config.target_names)


def check_data_compatible(model: TabBertForSequenceClassification, model_tokenizer: TabularTokenizer,
                          data: PreparedDataset) -> None:
    """Raise :class:`ArtifactError` unless ``data`` was tokenized the way the model expects."""
    tokenizer = data.tokenizer
    model.config.check_compatible(tokenizer.field_names, tokenizer.field_vocab_sizes, tokenizer.fingerprint())
    if model_tokenizer.fingerprint() != tokenizer.fingerprint():
        raise ArtifactError(
            f"{data.path}: tokenized with another tokenizer than the model's "
            f"({tokenizer.fingerprint()} vs {model_tokenizer.fingerprint()}); prepare the data with the model's schema"
        )
    if data.task != model.config.task:
        raise ArtifactError(f"{data.path}: a {data.task} dataset, but the model does {model.config.task}")


def run_paths(path: str | Path) -> tuple[Path, Path]:
    """``(run_dir, model_dir)`` for a run directory or its ``model/`` subdirectory."""
    path = Path(path)
    if (path / "model" / "config.json").is_file():
        return path, path / "model"
    if path.name == "model":
        return path.parent, path
    return path, path


def load_finetuned(path: str | Path) -> tuple[TabBertForSequenceClassification, TabularTokenizer]:
    """A fine-tuned model and the tokenizer saved beside it."""
    _, model_dir = run_paths(path)
    model = load_classifier(model_dir)
    return model, TabularTokenizer.load(model_dir / "tokenizer.json")


def merge_metrics(run_dir: Path, key: str, split: str, values: dict) -> None:
    """Set ``metrics.json[key][split] = values`` in the run directory, atomically."""
    path = run_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError as exc:
        raise ArtifactError(f"{path}: unreadable ({exc})") from exc
    metrics.setdefault(key, {})[split] = values
    write_json_atomic(path, metrics)


def evaluate(model_dir: str | Path, data_dir: str | Path, split: str = "test", *,
             batch_size: int = EVAL_BATCH_SIZE) -> dict:
    """Metrics of a fine-tuned model on ``split`` of a prepared dataset; also written to the run."""
    run_dir, model_path = run_paths(model_dir)
    model, tokenizer = load_finetuned(model_path)
    data = PreparedDataset(data_dir)
    check_data_compatible(model, tokenizer, data)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    starts = data.windows(split)
    if starts.size == 0:
        raise TabbertError(f"{data.path}: split {split!r} has no windows to evaluate")
    config = model.config
    truth = model_truth(data, starts, config)
    scores = score_windows(model, data, starts, batch_size=batch_size)
    if config.task == "regression":
        result = figures(config, truth, scores, split=split)
    else:
        threshold, source = validation_threshold(model, data, batch_size=batch_size)
        result = figures(config, truth, scores, threshold=threshold, split=split)
        result["threshold_source"] = source
        both_classes = 0 < result["positives"] < result["n"]  # else the curves are undefined, as warned
        result["plots"] = [p.name for p in plot_pr_roc(truth, scores, run_dir / f"{split}_")] if both_classes else []
    result = {"split": split, "data": str(data.path), **result}
    merge_metrics(run_dir, "evaluate", split, result)
    return result


def validation_threshold(model: TabBertForSequenceClassification, data: PreparedDataset, *,
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
