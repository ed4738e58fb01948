"""LightGBM: the gradient-boosted baseline beside TabBERT.

By default (``features="history"``) every row is an example, labelled with its own label and
described by its entity's causal history (:class:`~tabbert.baselines.history.HistoryFeatures`,
plus optional encoder outputs and extra columns, :class:`~tabbert.baselines.rows.RowInputs`).
Training keeps every positive row and a seeded share ``negative_rate`` of the negative ones,
each kept negative weighing ``1 / negative_rate`` (so scores stay probability estimates);
``label_fraction`` keeps the rows of a seeded share of the training entities only. Validation
and test score every row of their split. The run is loadable by ``tabbert evaluate`` and
``tabbert predict`` (:mod:`tabbert.baselines.rows` describes its files).

With ``features="window"`` (the paper's protocol), :func:`train_lightgbm` computes the
:class:`~tabbert.baselines.features.WindowFeatures` of every window of the train, val and test
splits and fits LightGBM on the same windows and labels the neural models see.

Classification: one model of the label (of the row; of the window: ``any`` row positive, or the
``last`` row's label), early stopping on validation average precision, the decision threshold
with the best validation F1 applied unchanged to test. Regression: one model per target (the
row's, or the window's last row's value), early stopping on validation L2, RMSE and MAE in the
targets' own units (a row-level regression run is written, but only classification runs are
scored by ``evaluate`` and ``predict``).

Training is deterministic: same data, seed and parameters give the same model, whatever the
number of threads. The run directory of window features holds::

    model.txt            the booster, LightGBM's text format (regression: model-<target>.txt)
    features.json        feature names in column order, the categorical ones, the layout source
    metrics.json         options, training facts (timings, feature count, top feature importances),
                         threshold, val and test figures (the layout is in the README)
    <split>_pr_curve.png, <split>_roc_curve.png   val and test curves (classification)

A saved model reloads with ``lightgbm.Booster(model_file=".../model.txt")``; its input is the
feature matrix of :meth:`WindowFeatures.transform`, columns in ``features.json`` order.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from pathlib import Path

import lightgbm as lgb
import numpy as np

from tabbert.atomic import atomic_path, write_json_atomic
from tabbert.baselines.features import WindowFeatures
from tabbert.baselines.history import HistoryFeatures
from tabbert.baselines.rows import FEATURES_FILE, TOKENIZER_FILE, RowInputs, write_features_file
from tabbert.data.prepared import PreparedDataset, check_output_dir
from tabbert.data.windows import SPLITS
from tabbert.errors import TabbertError
from tabbert.evaluation import split_report
from tabbert.metrics import UndefinedMetricWarning, best_f1_threshold
from tabbert.options import BaselineOptions
from tabbert.threads import resolve_threads
from tabbert.thresholds import ValidationScores

TOP_FEATURES = 20
THRESHOLD_SOURCE = "best F1 on val"


def train_lightgbm(data_dir: str | Path, out_dir: str | Path, options: BaselineOptions | None = None,
                   **settings) -> dict:
    """Fit LightGBM on the prepared dataset at ``data_dir``; write the run to ``out_dir``.

    ``options`` and ``settings`` (its fields by name) are :class:`~tabbert.options.BaselineOptions`
    of kind ``lightgbm``: ``rounds`` is the most boosting rounds, and training stops after
    ``early_stopping`` rounds without a better validation score; ``scale_pos_weight`` weighs
    positive windows in the loss (a number, or ``"balanced"`` for negatives / positives of the
    training windows); ``plots`` draws the PR and ROC curves. Returns the run's metrics, also
    written to ``metrics.json``.
    """
    if options is None:
        settings = {"kind": "lightgbm", **settings}
    options = BaselineOptions.create(options, **settings)
    if options.kind != "lightgbm":
        raise TabbertError(f"train_lightgbm trains the lightgbm baseline, not {options.kind!r}")
    out = Path(out_dir)
    check_output_dir(out)
    data = PreparedDataset(data_dir)
    data.require_labels()
    if options.features == "history":
        return _train_rows(data, out, options)
    layout = WindowFeatures.from_dataset(data)
    starts = {split: data.windows(split) for split in SPLITS}
    empty = [split for split in SPLITS if starts[split].size == 0]
    if empty:
        raise TabbertError(f"{data.path}: no windows in split(s) {empty}; LightGBM needs train, val and test windows")

    began = time.perf_counter()
    features = {split: layout.transform(data, starts[split]) for split in SPLITS}
    feature_seconds = time.perf_counter() - began
    n_windows = sum(s.size for s in starts.values())
    params = _params(options)
    out.mkdir(parents=True, exist_ok=True)
    if data.task == "classification":
        labels = {split: data.window_labels(starts[split], options.label_mode or "any") for split in SPLITS}
        val_times = data.times[starts["val"] + data.seq_len - 1]
        training, threshold, splits = _fit_classifier(data, features, labels, layout, params, out, options, "windows",
                                                      val_times)
    else:
        targets = {split: data.window_targets(starts[split], "last") for split in SPLITS}
        training, threshold, splits = _fit_regressors(data, features, targets, layout, params, out, options)
    metrics = _run_metrics(data, options, params, threshold, splits, {
        "windows": {split: int(starts[split].size) for split in SPLITS},
        "features": {
            "count": len(layout.names),
            "categorical": len(layout.categorical),
            "seconds": round(feature_seconds, 3),
            "windows_per_second": round(n_windows / max(feature_seconds, 1e-9), 1),
        },
        **training,
    })
    _write_features(out / "features.json", layout, data)
    write_json_atomic(out / "metrics.json", metrics)
    return metrics


def _surprise_features(path: str) -> np.ndarray:
    if not Path(path).is_file():
        raise TabbertError(f"{path}: surprise features not found")
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _train_rows(data: PreparedDataset, out: Path, options: BaselineOptions) -> dict:
    """Fit LightGBM on every row's history features (see the module docstring); write the run."""
    split = data.row_splits
    empty = [name for index, name in enumerate(SPLITS) if not (split == index).any()]
    if empty:
        raise TabbertError(f"{data.path}: no rows in split(s) {empty}; LightGBM needs train, val and test rows")
    inputs = RowInputs(HistoryFeatures.fit(data, split == 0), options.embeddings, options.extra_features,
                       surprise=tuple(str(Path(run).resolve()) for run in options.surprise or ()),
                       surprise_context=data.seq_len if options.surprise else 0,
                       surprise_expectation=not options.surprise_only)
    began = time.perf_counter()
    surprise = _surprise_features(options.surprise_features) if options.surprise_features else None
    matrix = inputs.of_dataset(data, device=options.device, surprise=surprise)
    feature_seconds = time.perf_counter() - began
    rows = {name: np.flatnonzero(split == index) for index, name in enumerate(SPLITS)}
    classification = data.task == "classification"
    truth_of_rows = np.asarray(data.labels if classification else data.targets)
    rows["train"], weights, sampling = _training_rows(data, rows["train"], truth_of_rows, classification, options)
    features = {name: matrix[rows[name]] for name in SPLITS}
    truth = {name: truth_of_rows[rows[name]] for name in SPLITS}
    del matrix
    params = _params(options)
    out.mkdir(parents=True, exist_ok=True)
    if classification:
        training, threshold, splits = _fit_classifier(data, features, truth, inputs, params, out, options, "rows",
                                                      data.times[rows["val"]], weights)
    else:
        training, threshold, splits = _fit_regressors(data, features, truth, inputs, params, out, options, weights)
    metrics = _run_metrics(data, options, params, threshold, splits, {
        "examples": "rows: every row, scored from its entity's causal history, labelled with its own label",
        "rows": {name: int(rows[name].size) for name in SPLITS},
        "sampling": sampling,
        "features": {
            "count": len(inputs.names),
            "categorical": len(inputs.categorical),
            "seconds": round(feature_seconds, 3),
            "rows_per_second": round(data.n_rows / max(feature_seconds, 1e-9), 1),
        },
        **training,
    })
    write_features_file(out / FEATURES_FILE, inputs, data.task, threshold, lightgbm_names(inputs.names))
    data.tokenizer.save(out / TOKENIZER_FILE)
    metrics["training"]["files"] = [*metrics["training"]["files"], TOKENIZER_FILE]
    write_json_atomic(out / "metrics.json", metrics)
    return metrics


def _training_rows(data: PreparedDataset, train: np.ndarray, truth: np.ndarray, classification: bool,
                   options: BaselineOptions) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """The training rows kept (label fraction of entities, then negatives sampled), their weights, and what was done."""
    rng = np.random.default_rng(options.seed)
    sampling: dict = {"label_fraction": options.label_fraction}
    if options.label_fraction < 1:
        entity = np.searchsorted(data.entity_offsets, train, side="right") - 1
        entities = np.unique(entity)
        keep = max(1, round(options.label_fraction * entities.size))
        chosen = rng.choice(entities, size=keep, replace=False)
        train = train[np.isin(entity, chosen)]
        sampling["labelled_entities"] = int(keep)
        sampling["training_entities"] = int(entities.size)
    if not classification:
        return train, None, sampling
    sampling["negative_rate"] = options.negative_rate
    weights = None
    if options.negative_rate < 1:
        negative = truth[train] == 0
        kept = ~negative | (rng.random(train.size) < options.negative_rate)
        train = train[kept]
        weights = np.where(truth[train] == 0, 1.0 / options.negative_rate, 1.0)
        sampling["scores"] = ("kept negatives weigh 1/negative_rate in the loss, so scores estimate the "
                              "probability of the full row distribution")
    sampling["positive_rows"] = int(truth[train].sum())
    sampling["training_rows"] = int(train.size)
    return train, weights, sampling


def _params(options: BaselineOptions) -> dict:
    """LightGBM's parameters, those of the options and the fixed ones."""
    return {
        "learning_rate": options.learning_rate,
        "num_leaves": options.num_leaves,
        "min_data_in_leaf": options.min_data_in_leaf,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "feature_fraction": 0.8,
        "lambda_l2": 1.0,
        "seed": options.seed,
        "num_threads": resolve_threads(options.threads) or os.cpu_count() or 1,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
    }


# ---------------------------------------------------------------------------------------------
# Fitting


def _run_metrics(data: PreparedDataset, options: BaselineOptions, params: dict, threshold: float | None,
                 splits: dict, training: dict) -> dict:
    """The run's ``metrics.json``, in the layout every kind of run shares (see the README)."""
    return {
        "kind": "lightgbm",
        "task": data.task,
        "data": str(data.path),
        "options": options.to_dict(),
        "training": {**training, "params": {**params, "rounds": options.rounds,
                                            "early_stopping": options.early_stopping}},
        "threshold": threshold,
        "splits": splits,
    }


def _fit_classifier(data, features, labels, layout, params, out, options, unit: str, val_times: np.ndarray,
                    weights: np.ndarray | None = None) -> tuple[dict, float, dict]:
    """Fit the classifier of ``unit`` (windows or rows); its training facts, threshold and validation
    and test figures. ``weights`` weigh the training examples. The validation scores, labels and
    ``val_times`` are stored in the run, so that later threshold specs resolve on them."""
    train = labels["train"]
    positives = int(train.sum())
    if positives in (0, train.size):
        raise TabbertError(f"{data.path}: the training {unit} hold one class only ({positives} positive of "
                           f"{train.size}); LightGBM cannot learn a classifier")
    scale_pos_weight = options.scale_pos_weight
    if scale_pos_weight == "balanced":
        negative_weight = train.size - positives if weights is None else float(weights[train == 0].sum())
        scale_pos_weight = negative_weight / positives
    val_positives = int(labels["val"].sum())
    metric = "average_precision"
    if val_positives in (0, labels["val"].size):
        metric = "binary_logloss"
        warnings.warn(f"the validation {unit} hold one class only ({val_positives} positive); early stopping "
                      "on log-loss instead of average precision", UndefinedMetricWarning, stacklevel=3)
    params = {**params, "objective": "binary", "metric": metric, "scale_pos_weight": float(scale_pos_weight)}
    booster, seconds = _train(params, features, labels, layout, options, weights)
    scores = {split: booster.predict(features[split], num_iteration=booster.best_iteration)
              for split in ("val", "test")}
    threshold = best_f1_threshold(labels["val"], scores["val"])
    ValidationScores(scores["val"], labels["val"], val_times).save(out)
    splits = {split: split_report(labels[split], scores[split], task="classification", split=split,
                                  data_path=data.path, run_dir=out, threshold=threshold,
                                  threshold_source=THRESHOLD_SOURCE, plots=options.plots) for split in scores}
    _save_booster(booster, out / "model.txt")
    training = {
        "train_seconds": seconds,
        "early_stopping_metric": metric,
        "scale_pos_weight": float(scale_pos_weight),
        "best_iteration": booster.best_iteration,
        "feature_importance": _top_features([booster], layout.names),
        "files": ["model.txt", "features.json", *(name for split in splits.values() for name in split["plots"])],
    }
    return training, threshold, splits


def _fit_regressors(data, features, targets, layout, params, out, options,
                    weights: np.ndarray | None = None) -> tuple[dict, None, dict]:
    """Fit one model per target (of the window's last row, or of the row); their training facts and
    validation and test figures."""
    names = list(data.meta["labels"])
    predictions = {split: np.empty(targets[split].shape, dtype=np.float64) for split in ("val", "test")}
    params = {**params, "objective": "regression", "metric": "l2"}
    boosters, best, files, seconds = [], {}, [], 0.0
    for j, name in enumerate(names):
        columns = {split: np.ascontiguousarray(t[:, j]) for split, t in targets.items()}
        booster, fit_seconds = _train(params, features, columns, layout, options, weights)
        for split in predictions:
            predictions[split][:, j] = booster.predict(features[split], num_iteration=booster.best_iteration)
        file = f"model-{_safe_name(name)}.txt"
        _save_booster(booster, out / file)
        boosters.append(booster)
        best[name] = booster.best_iteration
        files.append(file)
        seconds += fit_seconds
    splits = {split: split_report(targets[split], predictions[split], task="regression", split=split,
                                  data_path=data.path, run_dir=out, target_names=names) for split in predictions}
    training = {
        "targets": names,
        "train_seconds": round(seconds, 3),
        "best_iteration": best,
        "feature_importance": _top_features(boosters, layout.names),
        "files": [*files, "features.json"],
    }
    return training, None, splits


def _train(params: dict, features: dict, targets: dict, layout, options: BaselineOptions,
           weights: np.ndarray | None = None) -> tuple[lgb.Booster, float]:
    """Boost on train (examples weighed by ``weights``), stop early on val; the booster and the seconds it took."""
    began = time.perf_counter()
    names = lightgbm_names(layout.names)
    train = lgb.Dataset(features["train"], targets["train"], weight=weights, feature_name=names,
                        categorical_feature=layout.categorical, params={"verbosity": -1})
    val = lgb.Dataset(features["val"], targets["val"], reference=train)
    stopping = lgb.early_stopping(options.early_stopping, first_metric_only=True, verbose=False)
    booster = lgb.train(params, train, num_boost_round=options.rounds, valid_sets=[val], valid_names=["val"],
                        callbacks=[stopping])
    return booster, round(time.perf_counter() - began, 3)


# ---------------------------------------------------------------------------------------------
# Artifacts


def _write_features(path: Path, layout: WindowFeatures, data: PreparedDataset) -> None:
    """``features.json``: the feature names in column order, the categorical ones, and the layout's source."""
    write_json_atomic(path, {
        "names": layout.names,
        "lightgbm_names": lightgbm_names(layout.names),
        "categorical": layout.categorical,
        "value_columns": list(layout.value_columns),
        "seq_len": layout.seq_len,
        "max_categories": layout.max_categories,
        "tokenizer_fingerprint": data.tokenizer.fingerprint(),
    })


def lightgbm_names(names: list[str]) -> list[str]:
    """Feature names LightGBM accepts (no JSON punctuation, no spaces), unique, in order."""
    safe = [_safe_name(name) for name in names]
    seen: dict[str, int] = {}
    unique = []
    for name in safe:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return unique


def _safe_name(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.?=+-]+", "_", name).strip("_")


def _save_booster(booster: lgb.Booster, path: Path) -> None:
    """Write the booster (its best iteration) in LightGBM's text format, atomically."""
    with atomic_path(path) as temporary:
        booster.save_model(temporary)


def _top_features(boosters: list[lgb.Booster], names: list[str]) -> list[dict]:
    """The features with the largest share of split gain, averaged over the models."""
    shares = np.zeros(len(names))
    for booster in boosters:
        gain = booster.feature_importance("gain", iteration=booster.best_iteration or None)
        shares += gain / max(gain.sum(), 1e-12) / len(boosters)
    order = np.argsort(-shares, kind="stable")[:TOP_FEATURES]
    return [{"feature": names[i], "gain_share": round(float(shares[i]), 6)} for i in order if shares[i] > 0]
