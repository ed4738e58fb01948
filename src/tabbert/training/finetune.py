"""Supervised fine-tuning: a head on a pre-trained TabBERT encoder, or the raw-field baselines.

:func:`finetune` runs five steps: build the model, train it with early stopping, choose the
decision threshold, save it, evaluate it (the model in memory) on the validation and test splits.

Prediction points
-----------------
``points="rows"`` (the default for classification) scores every row from its causal history of
``context`` rows, left-padded, labelled by the row's own label (``label_mode="last"``);
``points="windows"`` reproduces the paper: the stride windows, positive when ``any`` row is.
Training may keep only a seeded share ``negative_rate`` of the negative points (0.1 by default
with rows), drawn once; validation and test points are never subsampled. ``label_fraction``
keeps the labels of a seeded share of the training entities only (label-budget experiments).

Training
--------
AdamW (no weight decay on biases and norm weights), a cosine schedule after a linear warm-up,
gradient accumulation and clipping. The pre-trained encoder is frozen by default (its weights
fixed and its dropout off); ``unfreeze`` trains it too, at ``encoder_lr`` for its top layer and
``layer_decay`` times less per layer below (layer-wise learning-rate decay). ``encoder="raw"``
trains field embeddings from scratch instead (the paper's raw LSTM/MLP baselines). After every
epoch the validation points are scored; the best epoch by ``metric`` is kept (PR-AUC by default;
regression: the lowest RMSE) and training stops after ``patience`` epochs without improvement.
When the validation points leave the metric undefined (one class only), it is shown as n/a, a
warning says so once, and the lowest validation loss picks the best epoch instead. A frozen
encoder gives every point the same outputs in every epoch, so they are computed once and the
head trains on them (up to ``FROZEN_CACHE_BYTES`` of outputs; beyond that the encoder runs with
each batch).

Rare positives: ``imbalance="upsample"`` (the default with windows, as in the paper) repeats
positive training points every epoch until they make ``upsample_ratio`` of it; ``"weights"``
weighs the loss by inverse class frequency; ``"none"`` (the default with rows) leaves the data
alone. Regression targets: the last row's (``target_mode="last"``) or every row's (``"all"``,
windows only), standardized with the training points' mean and standard deviation; reported in
their own units.

Run directory
-------------
``model/``               config.json, model.safetensors, tokenizer.json (written atomically)
``val_scores.npy``, ``val_labels.npy``, ``val_times.npy``   classification: the best epoch's validation
                         scores, labels and times, to resolve other thresholds (:mod:`tabbert.thresholds`)
``metrics.json``         options, training (per-epoch validation figures, best epoch, seconds), threshold,
                         validation and test figures (the layout is in the README)
``training_curve.png``   training and validation loss against the optimizer step
``val_pr_curve.png``, ``test_roc_curve.png``, ...   classification curves of both splits
"""

from __future__ import annotations

import math
import re
import time
import warnings
from dataclasses import dataclass, field
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from tabbert.atomic import write_json_atomic
from tabbert.data.prepared import PreparedDataset, check_output_dir
from tabbert.errors import TabbertError
from tabbert.data.windows import history_rows
from tabbert.evaluation import (
    EVAL_BATCH_SIZE,
    evaluate_model,
    figures,
    point_truth,
    validation_scores,
    validation_threshold,
)
from tabbert.metrics import UndefinedMetricWarning, best_f1_threshold, undefined_metrics
from tabbert.models.classifier import SequenceHeadModel, TabBertForSequenceClassification, save_classifier
from tabbert.models.raw import RawFieldsForSequenceClassification
from tabbert.options import CLASSIFICATION_METRICS, FinetuneOptions
from tabbert.plots import plot_training_curve
from tabbert.progress import track
from tabbert.threads import use_threads
from tabbert.runs import (
    check_compatible,
    choose_device,
    classifier_logits,
    forward_windows,
    load_run,
    prepared_points,
)

FROZEN_CACHE_BYTES = 4 << 30


@dataclass
class PointSplit:
    """The prediction points of one split: their newest rows and their labels or targets."""

    name: str
    ends: np.ndarray
    truth: np.ndarray
    states: torch.Tensor | None = None  # the frozen encoder's outputs, when cached
    masks: torch.Tensor | None = None  # their attention masks, when some history is short

    @classmethod
    def read(cls, data: PreparedDataset, name: str, options: FinetuneOptions, context: int,
             rng: np.random.Generator | None = None) -> PointSplit:
        """The points of split ``name``; with ``rng`` (training), only those that
        ``options.label_fraction`` and ``options.negative_rate`` keep."""
        ends = data.points(name, options.points)
        if ends.size == 0:
            raise TabbertError(f"{data.path}: the {name} split has no prediction points; prepare with other "
                               "fractions")
        if rng is not None and options.label_fraction < 1:
            ends = labelled_entities_points(data, ends, options.label_fraction, rng)
        truth = point_truth(data, ends, options.task, context, label_mode=options.label_mode,
                            target_mode=options.target_mode)
        if rng is not None and options.task == "classification" and options.negative_rate < 1:
            keep = (truth == 1) | (rng.random(truth.size) < options.negative_rate)
            ends, truth = ends[keep], truth[keep]
        return cls(name, ends, truth)


def labelled_entities_points(data: PreparedDataset, ends: np.ndarray, fraction: float,
                             rng: np.random.Generator) -> np.ndarray:
    """The points of a seeded ``fraction`` of the entities that ``ends`` belong to."""
    entity = np.searchsorted(data.entity_offsets, ends, side="right") - 1
    entities = np.unique(entity)
    chosen = rng.choice(entities, max(1, round(fraction * entities.size)), replace=False)
    return ends[np.isin(entity, chosen)]


def finetune(data_dir: str | Path, out_dir: str | Path, options: FinetuneOptions | None = None, *,
             progress: bool = True, **settings) -> dict:
    """Fine-tune on the prepared dataset ``data_dir`` and write the run to ``out_dir``.

    ``options`` and ``settings`` (its fields by name, e.g. ``pretrained="runs/pre"``,
    ``head="mlp"``, ``epochs=3``) are :class:`~tabbert.options.FinetuneOptions`. Returns the
    run's metrics, validation and test figures included.
    """
    started = time.perf_counter()
    data = PreparedDataset(data_dir)
    data.require_labels()
    options = FinetuneOptions.create(options, **settings).for_task(data.task, tuple(data.meta["labels"]))
    out = Path(out_dir)
    check_output_dir(out)
    context = options.context or data.seq_len
    rng = np.random.default_rng(options.seed)
    train = PointSplit.read(data, "train", options, context, rng)
    val = PointSplit.read(data, "val", options, context)
    if options.task == "classification" and train.truth.sum() == 0:
        raise TabbertError(f"{data.path}: the training split has no positive points "
                           f"(label mode {options.label_mode!r})")
    use_threads(options.threads)
    device = choose_device(options.device)

    torch.manual_seed(options.seed)
    model = build_model(data, train, options, context).to(device)
    training = train_with_early_stopping(model, data, train, val, options, rng, progress=progress)
    train_seconds = time.perf_counter() - started
    model.load_state_dict(training.best.state)
    model.config.threshold = choose_threshold(options, val.truth, training.best.scores)
    save_classifier(model.to("cpu"), data.tokenizer, out / "model")
    if options.task == "classification":  # what resolving another threshold spec later needs
        validation_scores(model, data, scores=training.best.scores).save(out)
    model.to(device)
    splits = evaluate_in_memory(model, data, out, val_scores=training.best.scores)

    metrics = {
        "kind": "finetune",
        "task": options.task,
        "data": str(data.path),
        "options": options.to_dict(),
        "training": training.report(model, device, train, val, train_seconds),
        "threshold": model.config.threshold,
        "splits": splits,
    }
    write_json_atomic(out / "metrics.json", metrics)
    plot_training_curve(metrics["training"], out / "training_curve.png",
                        title=f"{out.name}: fine-tuning ({options.encoder} encoder, {options.head} head)")
    return metrics


# ---------------------------------------------------------------------------------------------- step 1: the model


def build_model(data: PreparedDataset, train: PointSplit, options: FinetuneOptions,
                context: int) -> SequenceHeadModel:
    """A new model for ``data`` reading ``context`` rows per point: a head on the pre-trained
    encoder, or on raw field embeddings."""
    tokenizer = data.tokenizer
    settings = dict(head=options.head, task=options.task, loss=options.loss, label_mode=options.label_mode or "any",
                    target_mode=options.target_mode or "last", points=options.points)
    if options.task == "classification":
        weights = _class_weights(train.truth) if options.imbalance == "weights" else None
        settings.update(num_outputs=2, class_weights=weights)
    else:
        names = list(data.meta["labels"])
        values = train.truth.reshape(-1, len(names)).astype(np.float64)
        mean, std = values.mean(axis=0), values.std(axis=0)
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            raise TabbertError(f"{data.path}: the training targets hold missing or infinite values")
        settings.update(num_outputs=train.truth[0].size, target_names=names, target_mean=mean.tolist(),
                        target_std=np.where(std > 0, std, 1.0).tolist())
    if options.encoder == "raw":
        return RawFieldsForSequenceClassification.for_tokenizer(tokenizer, options.size, seq_len=context,
                                                                **settings)
    pretrained = load_run(options.pretrained, expect="encoder", heads=options.surprise_input)
    check_compatible(pretrained, data)
    if context > pretrained.config.max_rows:
        raise TabbertError(f"--context {context} exceeds the {pretrained.config.max_rows} rows the pre-trained "
                           f"encoder {options.pretrained} reads; pre-train on longer windows (--seq-len)")
    model = TabBertForSequenceClassification.from_encoder(pretrained.model, freeze_encoder=not options.unfreeze,
                                                          surprise_input=options.surprise_input, seq_len=context,
                                                          **settings)
    model.config.schema_fingerprint = model.config.schema_fingerprint or tokenizer.fingerprint()
    return model


def _class_weights(labels: np.ndarray) -> list[float]:
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    return (labels.size / (2.0 * np.maximum(counts, 1.0))).tolist()


# ---------------------------------------------------------------------------------------------- step 2: training


@dataclass
class Optimization:
    """AdamW, its learning-rate schedule, accumulation and clipping, and the step log."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    grad_accum: int
    max_grad_norm: float
    logging_steps: int
    step: int = 0
    log_history: list[dict] = field(default_factory=list)

    @classmethod
    def create(cls, model: SequenceHeadModel, options: FinetuneOptions, steps_per_epoch: int) -> Optimization:
        encoder_lr = options.lr if options.encoder == "raw" else options.encoder_lr
        groups = parameter_groups(model, lr=options.lr, encoder_lr=encoder_lr, weight_decay=options.weight_decay,
                                  layer_decay=options.layer_decay if options.encoder == "pretrained" else None)
        optimizer = torch.optim.AdamW(groups)
        total_steps = steps_per_epoch * options.epochs
        scheduler = get_cosine_schedule_with_warmup(optimizer, round(options.warmup_ratio * total_steps), total_steps)
        return cls(optimizer, scheduler, options.grad_accum, options.max_grad_norm, max(1, steps_per_epoch // 10))

    def update(self, model: SequenceHeadModel) -> None:
        """One optimizer step on the accumulated gradients."""
        trainable = [p for p in model.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(trainable, self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1


@dataclass
class BestEpoch:
    """The best epoch so far: its number, metric value, validation scores and a copy of the weights."""

    epoch: int
    value: float
    scores: np.ndarray
    state: dict[str, torch.Tensor]

    @classmethod
    def capture(cls, model: torch.nn.Module, epoch: int, value: float, scores: np.ndarray) -> BestEpoch:
        state = {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}
        return cls(epoch, value, scores, state)


@dataclass
class Training:
    """What training with early stopping leaves: the epochs, the best one, the step log."""

    metric: str
    optimization: Optimization
    points_per_epoch: int
    epochs: int
    history: list[dict] = field(default_factory=list)
    best: BestEpoch | None = None

    def report(self, model: SequenceHeadModel, device: torch.device, train: PointSplit, val: PointSplit,
               seconds: float) -> dict:
        """The ``training`` part of the run's metrics."""
        parameters = list(model.parameters())
        points = {"kind": model.config.points, "context": model.config.seq_len, "train": int(train.ends.size),
                  "train_per_epoch": self.points_per_epoch, "val": int(val.ends.size)}
        if model.config.task == "classification":
            points.update(train_positive=int(train.truth.sum()), val_positive=int(val.truth.sum()))
        return {
            "device": str(device),
            "parameters": {"total": sum(p.numel() for p in parameters),
                           "trainable": sum(p.numel() for p in parameters if p.requires_grad)},
            "points": points,
            "epochs": self.history,
            "log_history": self.optimization.log_history,
            "metric": self.metric,
            "best_epoch": self.best.epoch,
            "best_value": self.best.value,
            "stopped_early": len(self.history) < self.epochs,
            "train_seconds": round(seconds, 3),
        }


def train_with_early_stopping(model: SequenceHeadModel, data: PreparedDataset, train: PointSplit,
                              val: PointSplit, options: FinetuneOptions, rng: np.random.Generator, *,
                              progress: bool = False) -> Training:
    """Train epoch by epoch, score the validation points after each, keep the best epoch, and stop
    after ``options.patience`` epochs without a better one."""
    for split in (train, val):
        cache_encoder_outputs(model, data, split, progress=progress)
    order = training_order(train.truth, options, rng)
    steps_per_epoch = math.ceil(math.ceil(len(order) / options.batch_size) / options.grad_accum)
    training = Training(validation_metric(options, val), Optimization.create(model, options, steps_per_epoch),
                        int(order.size), options.epochs)
    for epoch in range(1, options.epochs + 1):
        if epoch > 1:
            order = training_order(train.truth, options, rng)
        run_epoch(model, data, train, val, order, training, options, epoch, progress=progress)
        if epoch - training.best.epoch >= options.patience:
            break
    return training


def run_epoch(model: SequenceHeadModel, data: PreparedDataset, train: PointSplit, val: PointSplit,
              order: np.ndarray, training: Training, options: FinetuneOptions, epoch: int, *,
              progress: bool = False) -> None:
    """Train one epoch on the points ``order`` of ``train``, score ``val``, log it and keep it if it is the best."""
    started = time.perf_counter()
    optimization = training.optimization
    train_loss = train_epoch(model, data, train, order, optimization, batch_size=options.batch_size, epoch=epoch,
                             progress=progress, description=f"epoch {epoch}/{options.epochs}")
    val_loss, scores = validate(model, data, val)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # validation_metric has warned, once
        val_figures = figures(model.config, val.truth, scores, split="val")
    optimization.log_history.append({"step": optimization.step, "epoch": epoch, "eval_loss": val_loss})
    training.history.append({"epoch": epoch, "step": optimization.step, "train_loss": train_loss, "val_loss": val_loss,
                             **{k: v for k, v in val_figures.items() if k not in ("n", "positives")},
                             "seconds": round(time.perf_counter() - started, 3)})
    metric = training.metric
    value = val_loss if metric == "loss" else val_figures[metric]
    if training.best is None or _better(value, training.best.value, metric):
        training.best = BestEpoch.capture(model, epoch, value, scores)
    if progress:
        tqdm.write(f"epoch {epoch}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, val {metric} "
                   f"{_shown(value)}" + (" (best)" if training.best.epoch == epoch else ""))


def validation_metric(options: FinetuneOptions, val: PointSplit) -> str:
    """The figure that picks the best epoch: ``options.metric``, or the loss when the validation
    points leave it undefined (said once, with an :class:`UndefinedMetricWarning`)."""
    metric = options.metric
    if options.task != "classification" or metric not in undefined_metrics(val.truth):
        return metric
    positives = int(val.truth.sum())
    warnings.warn(f"the validation points hold one class only ({positives} positive of {val.truth.size}): "
                  f"{metric} is undefined (shown as n/a); the best epoch is the one with the lowest validation "
                  "loss", UndefinedMetricWarning, stacklevel=4)
    return "loss"


def train_epoch(model: SequenceHeadModel, data: PreparedDataset, split: PointSplit,
                order: np.ndarray, optimization: Optimization, *, batch_size: int, epoch: int,
                progress: bool = False, description: str = "training") -> float:
    """One pass over the points ``order`` of ``split``; returns the mean batch loss."""
    model.train()
    device = model.device
    n_batches = math.ceil(len(order) / batch_size)
    total = torch.zeros((), device=device)
    interval, interval_batches = torch.zeros((), device=device), 0
    for batch in track(range(n_batches), description=description, enabled=progress):
        index = order[batch * batch_size:(batch + 1) * batch_size]
        labels = torch.from_numpy(split.truth[index]).to(device)
        if split.states is not None:
            mask = None if split.masks is None else split.masks[index].to(device)
            loss = model.compute_loss(model.head(split.states[index].to(device), mask), labels)
        else:
            input_ids, mask = data.history_tokens(split.ends[index], model.config.seq_len)
            loss = model(torch.from_numpy(input_ids.astype(np.int64)).to(device),
                         attention_mask=None if mask is None else torch.from_numpy(mask).to(device),
                         labels=labels).loss
        (loss / optimization.grad_accum).backward()
        total += loss.detach()
        interval += loss.detach()
        interval_batches += 1
        if (batch + 1) % optimization.grad_accum == 0 or batch + 1 == n_batches:
            optimization.update(model)
            if optimization.step % optimization.logging_steps == 0:
                optimization.log_history.append({
                    "step": optimization.step, "epoch": epoch, "loss": interval.item() / interval_batches,
                    "learning_rate": optimization.scheduler.get_last_lr()[0],
                })
                interval.zero_()
                interval_batches = 0
    return total.item() / n_batches


def parameter_groups(model: SequenceHeadModel, *, lr: float, encoder_lr: float, weight_decay: float,
                     layer_decay: float | None = None) -> list[dict]:
    """AdamW groups: the head at ``lr``, the encoder at ``encoder_lr``, no decay on biases and norm
    weights. With ``layer_decay``, the row BERT's top layer learns at ``encoder_lr`` and each layer
    below at ``layer_decay`` times the one above; what lies below the row BERT (field embeddings and
    the field transformer), and the pre-trained field heads of a ``surprise_input`` model, learn at
    the rate under its bottom layer."""
    depth_below_top = _depth_below_top(model.config.num_hidden_layers) if layer_decay else None
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.startswith("head."):
            rate = lr
        else:
            rate = encoder_lr if depth_below_top is None else encoder_lr * layer_decay ** depth_below_top(name)
        decay = weight_decay if parameter.ndim >= 2 else 0.0
        groups.setdefault((rate, decay), []).append(parameter)
    return [{"params": params, "lr": rate, "weight_decay": decay} for (rate, decay), params in groups.items()]


def _depth_below_top(n_layers: int) -> Callable[[str], int]:
    """A parameter name's number of row-BERT layers above it (0: the top layer)."""
    layer = re.compile(r"encoder\.(?:tabbert\.)?bert\.encoder\.layer\.(\d+)\.")

    def depth(name: str) -> int:
        found = layer.match(name)
        return n_layers - 1 - int(found.group(1)) if found else n_layers

    return depth


def training_order(truth: np.ndarray, options: FinetuneOptions, rng: np.random.Generator) -> np.ndarray:
    """Indices of the training points for one epoch, shuffled, positives repeated when upsampling."""
    if options.task != "classification" or options.imbalance != "upsample":
        return rng.permutation(len(truth))
    return upsampled_indices(truth, options.upsample_ratio, rng)


def upsampled_indices(labels: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """All points, with the positives repeated (evenly, the remainder drawn at random) until they
    make ``ratio`` of the result, shuffled. Nothing is repeated when positives already reach it."""
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels != 1)
    wanted = round(ratio / (1.0 - ratio) * negatives.size)
    if positives.size == 0 or wanted <= positives.size:
        return rng.permutation(len(labels))
    repeated = np.tile(positives, wanted // positives.size)
    remainder = rng.choice(positives, wanted % positives.size, replace=False)
    return rng.permutation(np.concatenate([negatives, repeated, remainder]))


def cache_encoder_outputs(model: SequenceHeadModel, data: PreparedDataset, split: PointSplit, *,
                          progress: bool = False) -> None:
    """Store the frozen encoder's outputs of every point of ``split`` (when they fit the budget)."""
    config = model.config
    size = len(split.ends) * config.seq_len * config.head_input_size * 4
    if not config.freeze_encoder or size > FROZEN_CACHE_BYTES:
        return
    model.encoder.eval()
    split.states = forward_windows(
        lambda input_ids, attention_mask: model.encoder(input_ids, attention_mask=attention_mask)
        .last_hidden_state.cpu(),
        len(split.ends), prepared_points(data, split.ends, config.seq_len), device=model.device,
        batch_size=EVAL_BATCH_SIZE, progress=progress, description=f"encoding {split.name} points",
    )
    _, real = history_rows(split.ends, data.first_rows, config.seq_len)
    split.masks = None if real.all() else torch.from_numpy(real.astype(np.int64))


def validate(model: SequenceHeadModel, data: PreparedDataset, split: PointSplit) -> tuple[float, np.ndarray]:
    """Loss and scores (probabilities or predictions in the targets' units) on a split."""
    if split.states is None:
        step, gather = classifier_logits(model), prepared_points(data, split.ends, model.config.seq_len)
    else:
        model.eval()
        step = model.head
        gather = lambda begin, end: (split.states[begin:end], None if split.masks is None else split.masks[begin:end])
    logits = forward_windows(step, len(split.ends), gather, device=model.device, batch_size=EVAL_BATCH_SIZE)
    with torch.inference_mode():
        loss = model.compute_loss(logits, torch.from_numpy(split.truth).to(logits.device)).item()
        return loss, model.scores(logits).float().cpu().numpy()


def _better(value: float, best: float, metric: str) -> bool:
    return value > best if metric in CLASSIFICATION_METRICS else value < best


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------------------------------------- steps 3 and 5


def choose_threshold(options: FinetuneOptions, truth: np.ndarray, scores: np.ndarray) -> float | None:
    """The best-F1 threshold on the validation points (classification with validation positives; else None)."""
    if options.task != "classification" or truth.sum() == 0:
        return None
    return best_f1_threshold(truth, scores)


def evaluate_in_memory(model: SequenceHeadModel, data: PreparedDataset, run_dir: Path, *,
                       val_scores: np.ndarray) -> dict:
    """The validation figures (from the best epoch's scores) and the test figures of the trained model."""
    threshold = validation_threshold(model, data) if model.config.task == "classification" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # said during training, once
        splits = {"val": evaluate_model(model, data, "val", run_dir, scores=val_scores, threshold=threshold)}
    if data.points("test", model.config.points).size:
        splits["test"] = evaluate_model(model, data, "test", run_dir, threshold=threshold)
    else:
        warnings.warn(f"{data.path}: the test split has no prediction points; no test figures", stacklevel=3)
    return splits
