"""Supervised fine-tuning: a head on a pre-trained TabBERT encoder, or the raw-field baselines.

Training
--------
AdamW (no weight decay on biases and norm weights), a cosine schedule after a linear warm-up,
gradient accumulation and clipping. The pre-trained encoder is frozen by default (its weights
fixed and its dropout off); ``unfreeze`` trains it too, at its own smaller learning rate
``encoder_lr``. ``encoder="raw"`` trains field embeddings from scratch instead (the paper's raw
LSTM/MLP baselines). After every epoch the validation windows are scored; the best epoch by
``metric`` is kept (PR-AUC by default; regression: the lowest RMSE) and training stops after
``patience`` epochs without improvement. A frozen encoder gives every window the same outputs
in every epoch, so they are computed once and the head trains on them (up to
``FROZEN_CACHE_BYTES`` of outputs; beyond that the encoder runs with each batch).

Rare positives: ``imbalance="upsample"`` (the default for classification, as in the paper)
repeats positive training windows every epoch until they make ``upsample_ratio`` of it;
``"weights"`` weighs the loss by inverse class frequency; ``"none"`` leaves the data alone.

Labels: ``label="any"`` (a window is positive when any of its rows is: the paper) or ``"last"``
(the newest row's label: score a transaction from its history, as ``tabbert predict`` does).
Regression targets: the last row's (``target="last"``) or every row's (``"all"``), standardized
with the training windows' mean and standard deviation; reported in their own units.

Run directory
-------------
``model/``               config.json, model.safetensors, tokenizer.json (written atomically)
``metrics.json``         options, per-epoch validation figures, best epoch, seconds, test figures
``training_curve.png``   training and validation loss against the optimizer step
``test_pr_curve.png``, ``test_roc_curve.png``   classification curves on the test split
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from tabbert.atomic import write_json_atomic
from tabbert.data.prepared import PreparedDataset, check_output_dir
from tabbert.errors import ArtifactError, TabbertError
from tabbert.metrics import UndefinedMetricWarning, best_f1_threshold
from tabbert.models.classifier import (
    ENCODERS,
    LOSSES,
    TabBertClassifierConfig,
    TabBertForSequenceClassification,
    load_encoder,
    save_classifier,
)
from tabbert.models.configuration import TabBertConfig
from tabbert.models.heads import HEADS
from tabbert.plots import plot_loss_curves
from tabbert.training.evaluate import (
    EVAL_BATCH_SIZE,
    evaluate,
    figures,
    window_logits,
    window_truth,
)

FROZEN_CACHE_BYTES = 4 << 30

IMBALANCE = ("upsample", "weights", "none")
LABEL_MODES = ("any", "last")
TARGET_MODES = ("last", "all")
HIGHER_IS_BETTER = ("pr_auc", "roc_auc", "f1", "precision", "recall", "recall_at_1pct_fpr")


@dataclass
class WindowSplit:
    """The windows of one split: start rows and their labels or targets."""

    name: str
    starts: np.ndarray
    truth: np.ndarray
    states: torch.Tensor | None = None  # the frozen encoder's outputs, when cached

    @classmethod
    def read(cls, data: PreparedDataset, name: str, task: str, label: str, target: str) -> WindowSplit:
        starts = data.windows(name)
        if starts.size == 0:
            raise TabbertError(f"{data.path}: the {name} split has no windows; prepare with other fractions")
        return cls(name, starts, window_truth(data, starts, task, label_mode=label, target_mode=target))


def finetune(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    pretrained: str | Path | None = None,
    encoder: str = "pretrained",
    head: str = "lstm",
    task: str | None = None,
    size: str = "small",
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    encoder_lr: float = 5e-5,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.1,
    grad_accum: int = 1,
    patience: int = 3,
    metric: str | None = None,
    loss: str | None = None,
    imbalance: str | None = None,
    upsample_ratio: float = 0.5,
    unfreeze: bool = False,
    label: str = "any",
    target: str = "last",
    max_grad_norm: float = 1.0,
    device: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Fine-tune on the prepared dataset ``data_dir`` and write the run to ``out_dir``.

    ``pretrained`` is a pre-training run (``RUN`` or ``RUN/model``), required with
    ``encoder="pretrained"``; ``size`` (tiny, small, paper) shapes the ``raw`` encoder. ``task``
    defaults to the dataset's; ``loss`` to ``ce`` (classification) or ``mse`` (regression);
    ``imbalance`` to ``upsample`` (classification) or ``none``. Returns the run's metrics,
    test figures included.
    """
    started = time.perf_counter()
    if epochs != int(epochs):
        raise TabbertError(f"epochs must be a whole number, got {epochs}")
    epochs = int(epochs)
    data = PreparedDataset(data_dir)
    task = task or data.task
    if task != data.task:
        raise TabbertError(f"{data.path}: a {data.task} dataset cannot be fine-tuned for {task}")
    loss = loss or LOSSES[task][0]
    imbalance = imbalance or ("upsample" if task == "classification" else "none")
    metric = metric or ("pr_auc" if task == "classification" else "rmse")
    options = dict(
        encoder=encoder, pretrained=None if pretrained is None else str(pretrained), head=head, task=task,
        size=size if encoder == "raw" else None, epochs=epochs, batch_size=batch_size, lr=lr,
        encoder_lr=encoder_lr if unfreeze and encoder == "pretrained" else None, weight_decay=weight_decay,
        warmup_ratio=warmup_ratio, grad_accum=grad_accum, patience=patience, metric=metric, loss=loss,
        imbalance=imbalance, upsample_ratio=upsample_ratio if imbalance == "upsample" else None, unfreeze=unfreeze,
        label=label if task == "classification" else None, target=target if task == "regression" else None,
        max_grad_norm=max_grad_norm, seed=seed,
    )
    _check_options(data, options)
    out = Path(out_dir)
    check_output_dir(out)

    train = WindowSplit.read(data, "train", task, label, target)
    val = WindowSplit.read(data, "val", task, label, target)
    if task == "classification" and train.truth.sum() == 0:
        raise TabbertError(f"{data.path}: the training split has no positive windows (label {label!r})")
    if task == "classification" and metric != "loss" and val.truth.sum() == 0:
        warnings.warn(f"the validation split has no positives: {metric} is undefined, keeping the epoch with the "
                      "lowest validation loss instead", UndefinedMetricWarning, stacklevel=2)
        metric = "loss"

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(data, train, encoder=encoder, pretrained=pretrained, size=size, head=head, task=task,
                        loss=loss, imbalance=imbalance, label=label, target=target, unfreeze=unfreeze)
    run_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(run_device)
    for split in (train, val):
        cache_encoder_outputs(model, data, split, progress=progress)
    order = training_order(train.truth, task, imbalance, upsample_ratio, rng)
    steps_per_epoch = math.ceil(math.ceil(len(order) / batch_size) / grad_accum)
    optimization = Optimization.create(
        model, lr=lr, encoder_lr=lr if encoder == "raw" else encoder_lr, weight_decay=weight_decay,
        warmup_ratio=warmup_ratio, total_steps=steps_per_epoch * epochs, grad_accum=grad_accum,
        max_grad_norm=max_grad_norm, logging_steps=max(1, steps_per_epoch // 10),
    )

    history: list[dict] = []
    best = None
    for epoch in range(1, epochs + 1):
        epoch_started = time.perf_counter()
        if epoch > 1:
            order = training_order(train.truth, task, imbalance, upsample_ratio, rng)
        train_loss = train_epoch(model, data, train, order, optimization, batch_size=batch_size, epoch=epoch,
                                 progress=progress, description=f"epoch {epoch}/{epochs}")
        val_loss, scores = validate(model, data, val)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            val_figures = figures(model.config, val.truth, scores, split="val")
        optimization.log_history.append({"step": optimization.step, "epoch": epoch, "eval_loss": val_loss})
        history.append({"epoch": epoch, "step": optimization.step, "train_loss": train_loss, "val_loss": val_loss,
                        **{k: v for k, v in val_figures.items() if k not in ("n", "positives")},
                        "seconds": round(time.perf_counter() - epoch_started, 3)})
        value = val_loss if metric == "loss" else val_figures[metric]
        if best is None or _better(value, best.value, metric):
            best = BestEpoch.capture(model, epoch, value, scores)
        if progress:
            tqdm.write(f"epoch {epoch}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, val {metric} {value:.4f}"
                       + (" (best)" if best.epoch == epoch else ""))
        if epoch - best.epoch >= patience:
            break
    train_seconds = time.perf_counter() - started

    model.load_state_dict(best.state)
    if task == "classification" and val.truth.sum() > 0:
        model.config.threshold = best_f1_threshold(val.truth, best.scores)
    save_classifier(model.to("cpu"), data.tokenizer, out / "model")
    parameters = list(model.parameters())
    metrics = {
        "task": task,
        "data": str(data.path),
        "options": options,
        "device": str(run_device),
        "parameters": {"total": sum(p.numel() for p in parameters),
                       "trainable": sum(p.numel() for p in parameters if p.requires_grad)},
        "windows": {"train": int(train.starts.size), "train_per_epoch": int(order.size), "val": int(val.starts.size)},
        "epochs": history,
        "log_history": optimization.log_history,
        "metric": metric,
        "best_epoch": best.epoch,
        "best_value": best.value,
        "stopped_early": len(history) < epochs,
        "threshold": model.config.threshold,
        "train_seconds": round(train_seconds, 3),
    }
    if task == "classification":
        metrics["windows"].update(train_positive=int(train.truth.sum()), val_positive=int(val.truth.sum()))
    write_json_atomic(out / "metrics.json", metrics)
    plot_loss_curves(optimization.log_history, out / "training_curve.png",
                     title=f"fine-tuning ({encoder} encoder, {head} head)")
    if data.meta["windows"]["test"]:
        evaluate(out, data.path)
    else:
        warnings.warn(f"{data.path}: the test split has no windows; no test figures", stacklevel=2)
    return json.loads((out / "metrics.json").read_text())


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
    def create(cls, model: TabBertForSequenceClassification, *, lr: float, encoder_lr: float, weight_decay: float,
               warmup_ratio: float, total_steps: int, grad_accum: int, max_grad_norm: float,
               logging_steps: int) -> Optimization:
        optimizer = torch.optim.AdamW(parameter_groups(model, lr=lr, encoder_lr=encoder_lr, weight_decay=weight_decay))
        scheduler = get_cosine_schedule_with_warmup(optimizer, round(warmup_ratio * total_steps), total_steps)
        return cls(optimizer, scheduler, grad_accum, max_grad_norm, logging_steps)

    def update(self, model: TabBertForSequenceClassification) -> None:
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


def train_epoch(model: TabBertForSequenceClassification, data: PreparedDataset, split: WindowSplit,
                order: np.ndarray, optimization: Optimization, *, batch_size: int, epoch: int,
                progress: bool = False, description: str = "training") -> float:
    """One pass over the windows ``split.starts[order]``; returns the mean batch loss."""
    model.train()
    device = model.device
    n_batches = math.ceil(len(order) / batch_size)
    total = torch.zeros((), device=device)
    interval, interval_batches = torch.zeros((), device=device), 0
    for batch in tqdm(range(n_batches), desc=description, unit="batch", disable=not progress, leave=False):
        index = order[batch * batch_size:(batch + 1) * batch_size]
        labels = torch.from_numpy(split.truth[index]).to(device)
        if split.states is not None:
            loss = model.compute_loss(model.head(split.states[index].to(device), None), labels)
        else:
            input_ids = torch.from_numpy(data.window_tokens(split.starts[index]).astype(np.int64)).to(device)
            loss = model(input_ids, labels=labels).loss
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


def build_model(data: PreparedDataset, train: WindowSplit, *, encoder: str, pretrained: str | Path | None,
                size: str, head: str, task: str, loss: str, imbalance: str, label: str, target: str,
                unfreeze: bool) -> TabBertForSequenceClassification:
    """A new model for ``data``: a head on the pre-trained encoder, or on raw field embeddings."""
    tokenizer = data.tokenizer
    settings = dict(head=head, task=task, loss=loss, label_mode=label, target_mode=target, seq_len=data.seq_len)
    if task == "classification":
        settings.update(num_outputs=2, class_weights=_class_weights(train.truth) if imbalance == "weights" else None)
    else:
        names = list(data.meta["labels"])
        values = train.truth.reshape(-1, len(names)).astype(np.float64)
        mean, std = values.mean(axis=0), values.std(axis=0)
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            raise TabbertError(f"{data.path}: the training targets hold missing or infinite values")
        settings.update(num_outputs=train.truth[0].size, target_names=names, target_mean=mean.tolist(),
                        target_std=np.where(std > 0, std, 1.0).tolist())
    if encoder == "raw":
        base = TabBertConfig.for_tokenizer(tokenizer, size, seq_len=data.seq_len)
        config = TabBertClassifierConfig.from_encoder_config(base, encoder_kind="raw", freeze_encoder=False, **settings)
        return TabBertForSequenceClassification(config)
    encoder_model = load_encoder(pretrained)
    encoder_model.config.check_compatible(tokenizer.field_names, tokenizer.field_vocab_sizes, tokenizer.fingerprint())
    if data.seq_len > encoder_model.config.max_rows:
        raise ArtifactError(f"{pretrained}: the encoder takes windows of at most {encoder_model.config.max_rows} "
                            f"rows, the data has {data.seq_len}")
    model = TabBertForSequenceClassification.from_encoder(encoder_model, freeze_encoder=not unfreeze, **settings)
    model.config.schema_fingerprint = model.config.schema_fingerprint or tokenizer.fingerprint()
    return model


def parameter_groups(model: TabBertForSequenceClassification, *, lr: float, encoder_lr: float,
                     weight_decay: float) -> list[dict]:
    """AdamW groups: head and encoder at their own rates, no decay on biases and norm weights."""
    groups = []
    for module, rate in ((model.head, lr), (model.encoder, encoder_lr)):
        parameters = [p for p in module.parameters() if p.requires_grad]
        for decay, chosen in ((weight_decay, [p for p in parameters if p.ndim >= 2]),
                              (0.0, [p for p in parameters if p.ndim < 2])):
            if chosen:
                groups.append({"params": chosen, "lr": rate, "weight_decay": decay})
    return groups


def training_order(truth: np.ndarray, task: str, imbalance: str, upsample_ratio: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Indices of the training windows for one epoch, shuffled, positives repeated when upsampling."""
    if task != "classification" or imbalance != "upsample":
        return rng.permutation(len(truth))
    return upsampled_indices(truth, upsample_ratio, rng)


def upsampled_indices(labels: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """All windows, with the positives repeated (evenly, the remainder drawn at random) until they
    make ``ratio`` of the result, shuffled. Nothing is repeated when positives already reach it."""
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels != 1)
    wanted = round(ratio / (1.0 - ratio) * negatives.size)
    if positives.size == 0 or wanted <= positives.size:
        return rng.permutation(len(labels))
    repeated = np.tile(positives, wanted // positives.size)
    remainder = rng.choice(positives, wanted % positives.size, replace=False)
    return rng.permutation(np.concatenate([negatives, repeated, remainder]))


def cache_encoder_outputs(model: TabBertForSequenceClassification, data: PreparedDataset, split: WindowSplit, *,
                          progress: bool = False) -> None:
    """Store the frozen encoder's outputs of every window of ``split`` (when they fit the budget)."""
    config = model.config
    size = len(split.starts) * data.seq_len * config.hidden_size * 4
    if not config.freeze_encoder or size > FROZEN_CACHE_BYTES:
        return
    model.encoder.eval()
    outputs = []
    with torch.inference_mode():
        for begin in tqdm(range(0, len(split.starts), EVAL_BATCH_SIZE), desc=f"encoding {split.name} windows",
                          unit="batch", disable=not progress, leave=False):
            ids = data.window_tokens(split.starts[begin:begin + EVAL_BATCH_SIZE]).astype(np.int64)
            outputs.append(model.encoder(torch.from_numpy(ids).to(model.device)).last_hidden_state.cpu())
    split.states = torch.cat(outputs)


def validate(model: TabBertForSequenceClassification, data: PreparedDataset,
             split: WindowSplit) -> tuple[float, np.ndarray]:
    """Loss and scores (probabilities or predictions in the targets' units) on a split."""
    if split.states is None:
        logits = window_logits(model, data, split.starts, batch_size=EVAL_BATCH_SIZE)
    else:
        model.eval()
        with torch.inference_mode():
            logits = torch.cat([model.head(split.states[i:i + EVAL_BATCH_SIZE].to(model.device), None)
                                for i in range(0, len(split.starts), EVAL_BATCH_SIZE)])
    with torch.inference_mode():
        loss = model.compute_loss(logits, torch.from_numpy(split.truth).to(logits.device)).item()
        return loss, model.scores(logits).float().cpu().numpy()


def _class_weights(labels: np.ndarray) -> list[float]:
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    return (labels.size / (2.0 * np.maximum(counts, 1.0))).tolist()


def _better(value: float, best: float, metric: str) -> bool:
    return value > best if metric in HIGHER_IS_BETTER else value < best


def _check_options(data: PreparedDataset, options: dict) -> None:
    """Raise :class:`TabbertError` for options that cannot work together or with ``data``."""
    task = options["task"]
    choices = {"encoder": ENCODERS, "head": tuple(HEADS), "loss": LOSSES[task], "imbalance": IMBALANCE}
    if task == "classification":
        choices["label"] = LABEL_MODES
    else:
        choices["target"] = TARGET_MODES
    for name, allowed in choices.items():
        if options[name] not in allowed:
            raise TabbertError(f"{name} must be one of {allowed} for {task}, got {options[name]!r}")
    if options["encoder"] == "pretrained" and options["pretrained"] is None:
        raise TabbertError("a pre-trained encoder needs --pretrained RUN/model (or use --encoder raw)")
    if options["encoder"] == "raw" and options["pretrained"] is not None:
        raise TabbertError("--encoder raw trains field embeddings from scratch and takes no --pretrained")
    if task == "regression" and options["imbalance"] != "none":
        raise TabbertError("class imbalance handling applies to classification only")
    metrics = ("loss", *HIGHER_IS_BETTER) if task == "classification" else (
        "loss", "rmse", "mae", *(f"{kind}_{name}" for kind in ("rmse", "mae") for name in data.meta["labels"]))
    if options["metric"] not in metrics:
        raise TabbertError(f"metric must be one of {metrics} for {task}, got {options['metric']!r}")
    positive = ("epochs", "batch_size", "grad_accum", "patience", "lr", "max_grad_norm")
    for name in positive:
        if not options[name] > 0:
            raise TabbertError(f"{name} must be positive, got {options[name]}")
    if options["encoder_lr"] is not None and not options["encoder_lr"] > 0:
        raise TabbertError(f"encoder_lr must be positive, got {options['encoder_lr']}")
    if not 0.0 <= options["warmup_ratio"] < 1.0:
        raise TabbertError(f"warmup_ratio must lie in [0, 1), got {options['warmup_ratio']}")
    if options["weight_decay"] < 0:
        raise TabbertError(f"weight_decay must be >= 0, got {options['weight_decay']}")
    if options["upsample_ratio"] is not None and not 0.0 < options["upsample_ratio"] < 1.0:
        raise TabbertError(f"upsample_ratio must lie in (0, 1), got {options['upsample_ratio']}")
