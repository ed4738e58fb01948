"""Pre-training of TabBERT with :class:`transformers.Trainer`: masked-field or next-row (causal).

A run directory holds everything one pre-training run writes::

    RUN/run.json          the run's settings (a resumed run must repeat them)
    RUN/checkpoints/      periodic Trainer checkpoints (the newest few), for --resume
    RUN/tensorboard/      TensorBoard event files (``tensorboard --logdir RUN/tensorboard``)
    RUN/model/            the final model: config.json + model.safetensors + tokenizer.json
    RUN/metrics.json      final losses, per-field accuracy against the majority baseline, speed
    RUN/loss_curve.png    training and validation loss against the step

With ``objective="masked"`` (the default) each step masks field tokens the BERT way
(:class:`~tabbert.data.collate.MaskedFieldCollator`). With ``objective="causal"`` nothing is masked:
the row BERT attends to earlier rows only and every row's heads predict the fields of the next row
(:class:`~tabbert.models.tabbert.TabBertForNextRowModeling`); the report's ``masked`` counts then are
the predicted next-row tokens.
Masks are drawn from a generator seeded by (seed, process, step), not from the global random state,
so a run resumed from a checkpoint masks exactly as an uninterrupted one and reaches the same final
weights. A resume starts from the newest *complete* checkpoint: one that a killed run left
half-written is removed and written again. In ``metrics.json``, ``windows_trained`` (and the speed)
count this session's windows, ``windows_trained_total`` the whole run's (null when a checkpoint
written before windows were counted leaves it unknown), and ``resumed_from_step`` is the step the
session resumed from (null: a fresh run). Validation masks are drawn from a fixed seed, so every
epoch is scored on the same masked positions. For each field the report gives the accuracy of the
model on the masked tokens next to the accuracy of always guessing the field's most frequent
training value: a field whose accuracy does not beat that baseline has not been learned.

The same code runs on one process or many: under ``torchrun --nproc_per_node N`` the Trainer
shards the batches and only the main process writes the run's files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.integrations import TensorBoardCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import ExportableState, PrinterCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from tabbert.atomic import give_usual_mode, write_json_atomic
from tabbert.data.collate import IGNORE_INDEX, MaskedFieldCollator, WindowDataset, stack_windows
from tabbert.data.prepared import PreparedDataset
from tabbert.data.tokenizer import MASK_ID, PAD_ID, TabularTokenizer
from tabbert.errors import ArtifactError, TabbertError
from tabbert.integrity import record_weights_digest
from tabbert.models.classifier import without_progress_bars
from tabbert.models.configuration import TabBertConfig
from tabbert.models.tabbert import TabBertForMaskedFieldModeling, TabBertForNextRowModeling
from tabbert.options import PretrainOptions
from tabbert.plots import plot_loss_curves
from tabbert.progress import SparseProgressCallback, interactive
from tabbert.reporting import format_table
from tabbert.runs import choose_device
from tabbert.threads import use_threads

_TRAIN_MASKS, _EVAL_MASKS = 0, 1
# what a Trainer checkpoint must hold to resume from it (rng_state*.pth is optional)
CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", TRAINER_STATE_NAME)
# the columns of the per-window statistics gathered during evaluation
_MASKED, _CORRECT, _MAJORITY_HITS, _LOSS = range(4)


# ---------------------------------------------------------------------------- building blocks
def collate_windows(examples: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Stack unmasked windows; the trainer masks them step by step."""
    input_ids, attention_mask = stack_windows(examples, PAD_ID)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def field_majorities(data: PreparedDataset, starts: np.ndarray, chunk_rows: int = 1 << 21) -> np.ndarray:
    """Most frequent local id of every field over the rows that the windows ``starts`` cover."""
    starts = np.asarray(starts, dtype=np.int64)
    window_edges = np.bincount(starts, minlength=data.n_rows + 1) - np.bincount(starts + data.seq_len,
                                                                                 minlength=data.n_rows + 1)
    covered = np.cumsum(window_edges[: data.n_rows]) > 0
    tokenizer = data.tokenizer
    counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    for begin in range(0, data.n_rows, chunk_rows):
        tokens = np.asarray(data.tokens[begin : begin + chunk_rows])[covered[begin : begin + chunk_rows]]
        counts += np.bincount(tokens.ravel(), minlength=tokenizer.vocab_size)[: tokenizer.vocab_size]
    return np.array([
        int(np.argmax(counts[offset : offset + size]))
        for offset, size in zip(tokenizer.field_offsets, tokenizer.field_vocab_sizes)
    ], dtype=np.int64)


def masked_field_statistics(field_logits: Sequence[torch.Tensor], field_labels: Sequence[torch.Tensor],
                            labels: torch.Tensor, majority: torch.Tensor) -> torch.Tensor:
    """Per window and field ``[B, F, 4]``: masked tokens, correct predictions, tokens equal to the
    field's majority value, and summed cross-entropy."""
    batch, _, n_fields = labels.shape
    statistics = torch.zeros((batch, n_fields, 4), dtype=torch.float32, device=labels.device)
    for field, (logits, target) in enumerate(zip(field_logits, field_labels)):
        window = torch.nonzero(labels[:, :, field] != IGNORE_INDEX)[:, 0]
        values = torch.stack([
            torch.ones_like(target, dtype=torch.float32),
            (logits.argmax(dim=-1) == target).float(),
            (target == majority[field]).float(),
            F.cross_entropy(logits.float(), target, reduction="none"),
        ], dim=1)
        statistics[:, field].index_add_(0, window, values)
    return statistics


def field_report(field_names: Sequence[str], totals: np.ndarray) -> dict:
    """Loss and accuracies from summed statistics ``[F, 4]`` (see :func:`masked_field_statistics`)."""
    masked = totals[:, _MASKED]
    overall = totals.sum(axis=0)
    n = max(overall[_MASKED], 1.0)
    fields = {
        name: {
            "masked": int(count),
            "accuracy": float(correct / count) if count else None,
            "majority_accuracy": float(hits / count) if count else None,
            "loss": float(loss / count) if count else None,
        }
        for name, count, correct, hits, loss in zip(
            field_names, masked, totals[:, _CORRECT], totals[:, _MAJORITY_HITS], totals[:, _LOSS])
    }
    return {
        "loss": float(overall[_LOSS] / n),
        "masked_accuracy": float(overall[_CORRECT] / n),
        "majority_accuracy": float(overall[_MAJORITY_HITS] / n),
        "masked_tokens": int(overall[_MASKED]),
        "fields": fields,
    }


def metric_key(name: str) -> str:
    """A field name as a log key: letters, digits and underscores."""
    return re.sub(r"\W+", "_", name).strip("_")


class WindowCount(TrainerCallback, ExportableState):
    """The windows this process has trained on since the run began, kept in every checkpoint's
    ``trainer_state.json`` so that a resumed run goes on counting. ``from_start`` is False after
    a resume from a checkpoint that holds no count (the windows before it are unknown)."""

    def __init__(self, windows: int = 0, from_start: bool = True):
        self.windows = windows
        self.from_start = from_start

    def state(self) -> dict:
        return {"args": {}, "attributes": {"windows": self.windows}}

    @classmethod
    def from_trainer_state(cls, trainer_state: dict) -> WindowCount:
        """The count saved in a checkpoint's ``trainer_state.json`` (``{}``: a new run)."""
        if not trainer_state:
            return cls()
        saved = trainer_state.get("stateful_callbacks", {}).get(cls.__name__, {}).get("attributes", {})
        return cls(int(saved.get("windows", 0)), from_start="windows" in saved)


class TensorBoardLogs(TensorBoardCallback):
    """TensorBoard event files in a fixed directory of the run instead of a dated one."""

    def __init__(self, log_dir: str | Path):
        super().__init__()
        self.logging_dir = str(log_dir)


# ---------------------------------------------------------------------------- trainer
class MaskedFieldTrainer(Trainer):
    """A Trainer that makes each batch's targets itself and scores validation field by field.

    Args:
        masker: the masking recipe; every use gets its own generator, on the batch's device. None:
            the model predicts next rows, and the targets are its :meth:`next_row_labels`.
        majority: each field's most frequent local id on the training rows, for the baseline.
        field_names: names of the fields, for the report.
        mask_seed: root of the seeds of all masks.
        window_count: the run's count of trained windows (``windows_trained`` counts this session's).
    """

    def __init__(self, *args, masker: MaskedFieldCollator | None, majority: np.ndarray, field_names: Sequence[str],
                 mask_seed: int, window_count: WindowCount, **kwargs):
        super().__init__(*args, **kwargs)
        self.window_count = window_count
        self.add_callback(window_count)
        self.masker = masker
        self.majority = torch.as_tensor(majority, dtype=torch.long)
        self.field_names = list(field_names)
        self.mask_seed = mask_seed
        self.windows_trained = 0
        self.evaluation_seconds = 0.0
        self.last_evaluation: dict | None = None

    def _generator(self, purpose: int, step: int, device: torch.device) -> torch.Generator:
        """The generator of one step's masks: seeded by (seed, purpose, process, step), on ``device``."""
        key = [self.mask_seed, purpose, self.args.process_index, step]
        seed = int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0])
        return torch.Generator(device=device).manual_seed(seed)

    def _with_targets(self, inputs: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The batch with its labels (and, for the masked objective, its field tokens masked)."""
        if self.masker is None:
            model = self.accelerator.unwrap_model(self.model)
            return {**inputs, "labels": model.next_row_labels(inputs["input_ids"], inputs["attention_mask"])}
        masked_ids, labels = self.masker.mask(inputs["input_ids"], inputs["attention_mask"], generator)
        return {**inputs, "input_ids": masked_ids, "labels": labels}

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.windows_trained += int(inputs["input_ids"].shape[0])
        self.window_count.windows += int(inputs["input_ids"].shape[0])
        inputs = self._prepare_inputs(inputs)
        generator = self._generator(_TRAIN_MASKS, self.state.global_step, inputs["input_ids"].device)
        return super().training_step(model, self._with_targets(inputs, generator), num_items_in_batch)

    def _save_checkpoint(self, model, trial) -> None:
        # a run resumed from a checkpoint written before windows were counted has no entry to update
        self.state.stateful_callbacks.setdefault(type(self.window_count).__name__, {})
        super()._save_checkpoint(model, trial)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Validation loss and masked accuracy per field, with the majority-value baseline."""
        started = time.perf_counter()
        dataloader = self.get_eval_dataloader(eval_dataset)
        self.callback_handler.eval_dataloader = dataloader
        model = self.model
        model.eval()
        majority = self.majority.to(self.args.device)
        totals = torch.zeros((len(self.field_names), 4), dtype=torch.float64)
        generator = None  # one for the whole evaluation, made on the device of its batches
        with torch.inference_mode():
            for batch in dataloader:
                batch = self._prepare_inputs(batch)
                generator = generator or self._generator(_EVAL_MASKS, 0, batch["input_ids"].device)
                masked = self._with_targets(batch, generator)
                output = model(**masked)
                statistics = masked_field_statistics(
                    output.field_logits, output.field_labels, masked["labels"], majority)
                totals += self.accelerator.gather_for_metrics(statistics).sum(dim=0).double().cpu()
                self.control = self.callback_handler.on_prediction_step(self.args, self.state, self.control)
        report = field_report(self.field_names, totals.numpy())
        metrics = {
            f"{metric_key_prefix}_loss": report["loss"],
            f"{metric_key_prefix}_masked_accuracy": report["masked_accuracy"],
            f"{metric_key_prefix}_majority_accuracy": report["majority_accuracy"],
            **{
                f"{metric_key_prefix}_accuracy_{metric_key(name)}": field["accuracy"]
                for name, field in report["fields"].items() if field["accuracy"] is not None
            },
        }
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        self.last_evaluation = {"step": self.state.global_step, "epoch": self.state.epoch, **report}
        self.evaluation_seconds += time.perf_counter() - started
        return metrics


# ---------------------------------------------------------------------------- the run
def model_config(tokenizer: TabularTokenizer, seq_len: int, size: str, flat: bool, overrides: dict,
                 objective: str = "masked") -> TabBertConfig:
    """A TabBertConfig of the named size and objective for the tokenizer's fields and windows of ``seq_len`` rows."""
    known = set(inspect.signature(TabBertConfig.__init__).parameters) - {"self", "kwargs", "field_names",
                                                                         "field_offsets", "field_vocab_sizes"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TabbertError(f"unknown model settings {unknown}; known ones are {sorted(known)}")
    try:
        return TabBertConfig.for_tokenizer(tokenizer, size, seq_len=seq_len, flat=flat,
                                           **{"objective": objective, **overrides})
    except ValueError as exc:
        raise TabbertError(f"invalid model settings: {exc}") from exc


def prepare_run_dir(out: Path, settings: dict, resume: bool) -> None:
    """Refuse a non-empty run directory unless resuming the run with the same settings (an option
    missing from an older ``run.json`` counts as its default)."""
    if out.exists() and not out.is_dir():
        raise TabbertError(f"{out}: exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        return
    if not resume:
        raise TabbertError(f"{out}: run directory exists and is not empty; pass --resume to continue that run, "
                           "or choose a new --out")
    run_file = out / "run.json"
    if not run_file.is_file():
        raise ArtifactError(f"{out}: not a pre-training run directory (no run.json); cannot resume it")
    try:
        recorded = json.loads(run_file.read_text())["settings"]
    except (ValueError, KeyError) as exc:
        raise ArtifactError(f"{run_file}: unreadable ({exc})") from exc
    # a run recorded before an option existed ran with that option's default
    recorded = {**PretrainOptions().to_dict(), **recorded}
    changed = {key: (recorded.get(key), value) for key, value in settings.items() if recorded.get(key) != value}
    if changed:
        listing = "; ".join(f"{key}: {old!r} then, {new!r} now" for key, (old, new) in changed.items())
        raise TabbertError(f"{out}: a resumed run needs the settings it was started with ({listing})")


def complete_checkpoint(folder: Path) -> bool:
    """Whether a Trainer checkpoint holds every file a resume reads; ``trainer_state.json`` is written last."""
    if not all((folder / name).is_file() for name in CHECKPOINT_FILES):
        return False
    try:
        json.loads((folder / TRAINER_STATE_NAME).read_text())
    except ValueError:
        return False
    return True


def resume_checkpoint(checkpoints: Path, *, remove_incomplete: bool) -> Path | None:
    """The newest complete checkpoint in ``checkpoints`` (None: there is none).

    Newer, incomplete checkpoints (a run killed while writing one) are skipped with a warning, and
    removed when ``remove_incomplete`` (the main process), so that training writes them again.
    """
    if not checkpoints.is_dir():
        return None
    found = [(int(match[1]), path) for path in checkpoints.iterdir()
             if path.is_dir() and (match := re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", path.name))]
    for _, path in sorted(found, reverse=True):
        if complete_checkpoint(path):
            return path
        warnings.warn(f"{path}: incomplete checkpoint (the run was stopped while writing it); "
                      f"{'removed, ' if remove_incomplete else ''}resuming from an older one", stacklevel=2)
        if remove_incomplete:
            shutil.rmtree(path)
    return None


def replace_directory(staging: Path, target: Path) -> None:
    """Move a completed ``staging`` directory to ``target``, replacing an older one."""
    if target.exists():
        retired = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.replace(target, retired / target.name)
        os.replace(staging, target)
        shutil.rmtree(retired)
    else:
        os.replace(staging, target)


def save_model(model: TabBertForMaskedFieldModeling, tokenizer: TabularTokenizer, target: Path) -> None:
    """``save_pretrained`` plus ``tokenizer.json`` into a temporary sibling, renamed to ``target``."""
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    try:
        give_usual_mode(staging)
        with without_progress_bars():
            model.save_pretrained(staging)
        tokenizer.save(staging / "tokenizer.json")
        record_weights_digest(staging)
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _training_arguments(out: Path, options: PretrainOptions, *, evaluate: bool) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.batch_size,
        num_train_epochs=options.epochs,
        max_steps=options.max_steps,
        learning_rate=options.lr,
        lr_scheduler_type="linear",
        logging_strategy="steps",
        warmup_steps=0.05,
        weight_decay=0.01,
        eval_strategy="epoch" if evaluate else "no",
        save_strategy="steps",
        save_steps=options.save_steps,
        save_total_limit=options.save_total_limit,
        report_to="none",
        seed=options.seed,
        bf16=options.bf16,
        use_cpu=choose_device(options.device).type == "cpu",
        disable_tqdm=not interactive(),  # a bar on a terminal; else SparseProgressCallback's lines
        remove_unused_columns=False,
        dataloader_pin_memory=choose_device(options.device).type == "cuda",
        ddp_find_unused_parameters=False,
    )


def _open_run_dir(out: Path, settings: dict, config: TabBertConfig, args: TrainingArguments, *,
                  resume: bool) -> tuple[Path | None, dict]:
    """Check the run directory (every process, before the main one writes into it), record the run's
    settings, and return the checkpoint to resume from (or None) and its trainer state."""
    prepare_run_dir(out, settings, resume)
    args.distributed_state.wait_for_everyone()
    checkpoint = resume_checkpoint(out / "checkpoints", remove_incomplete=args.process_index == 0)
    resumed = {} if checkpoint is None else json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
    args.distributed_state.wait_for_everyone()
    if args.process_index == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "run.json", {"settings": settings, "config": config.to_dict()})
    return checkpoint, resumed


def pretrain(data_dir: str | Path, out_dir: str | Path, options: PretrainOptions | None = None, *,
             callbacks: Sequence[TrainerCallback] = (), **settings) -> dict:
    """Pre-train TabBERT on the prepared dataset ``data_dir``; write the run to ``out_dir``.

    ``options`` and ``settings`` (its fields by name) are :class:`~tabbert.options.PretrainOptions`:
    ``size`` is a named size (``tiny``, ``small``, ``paper``), and the size overrides
    (``hidden_size``, ``num_hidden_layers``, ...) or any other setting given by name change single
    configuration values. Training runs ``epochs`` epochs, or ``max_steps`` optimizer steps when
    positive. With ``resume`` an interrupted run continues from its newest complete checkpoint; it must be
    given the same settings. ``bf16`` uses bfloat16 autocast when a CUDA device is present.
    ``callbacks`` are extra :class:`~transformers.TrainerCallback` objects.

    Returns the metrics written to ``RUN/metrics.json``.
    """
    started = time.perf_counter()
    options = _options(options, settings)
    use_threads(options.threads)
    data = PreparedDataset(data_dir)
    tokenizer, out = data.tokenizer, Path(out_dir)
    train, val = _windows(data, options)
    # what a resumed run must repeat (it may keep fewer checkpoints, and compute elsewhere)
    free = ("resume", "save_total_limit", "threads", "device")
    settings = {"data": str(data.path.resolve()), "schema_fingerprint": tokenizer.fingerprint(),
                **{key: value for key, value in options.to_dict().items() if key not in free}}
    config = model_config(tokenizer, data.seq_len, options.size, options.flat, options.model_overrides(),
                          objective=options.objective)

    args = _training_arguments(out, options, evaluate=len(val) > 0)
    # about 100 loss points per run; the step count depends on the world size the arguments found
    steps_per_epoch = math.ceil(len(train) / (options.batch_size * args.world_size))
    total_steps = options.max_steps if options.max_steps > 0 else math.ceil(options.epochs * steps_per_epoch)
    args.logging_steps = max(1, total_steps // 100)
    checkpoint, resumed = _open_run_dir(out, settings, config, args, resume=options.resume)

    set_seed(options.seed)
    trainer = _trainer(config, options, args, data, train, val,
                       callbacks=[TensorBoardLogs(out / "tensorboard"), *callbacks], resumed=resumed)
    if args.disable_tqdm:  # the Trainer then prints every log entry; a line at every tenth of the run is enough
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(SparseProgressCallback())
    train_started = time.perf_counter()
    with without_progress_bars() if args.disable_tqdm else contextlib.nullcontext():  # checkpoints' "Writing" bars
        trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
    train_seconds = time.perf_counter() - train_started - trainer.evaluation_seconds
    if len(val) and (trainer.last_evaluation is None or trainer.last_evaluation["step"] != trainer.state.global_step):
        trainer.evaluate()

    metrics = _run_metrics(trainer, data, config, settings, train_seconds, started,
                           resumed_from_step=resumed.get("global_step"))
    if trainer.is_world_process_zero():
        save_model(trainer.model, tokenizer, out / "model")
        plot_loss_curves(trainer.state.log_history, out / "loss_curve.png",
                         title=f"{'next-row' if config.causal else 'masked-field'} pre-training ({options.size})")
        write_json_atomic(out / "metrics.json", metrics)
    args.distributed_state.wait_for_everyone()
    return metrics


def _windows(data: PreparedDataset, options: PretrainOptions) -> tuple[WindowDataset, WindowDataset]:
    """The training and validation windows; out of fold, the training entities of the fold are left out,
    and ``max_eval_windows`` keeps that many validation windows at even steps through the split."""
    train, val = WindowDataset(data, "train"), WindowDataset(data, "val")
    if options.max_eval_windows is not None and len(val) > options.max_eval_windows:
        val.starts = val.starts[np.linspace(0, len(val) - 1, options.max_eval_windows).round().astype(np.int64)]
    if options.fold is not None:
        entity = np.searchsorted(data.entity_offsets, train.starts, side="right") - 1
        train.starts = train.starts[data.entity_folds(options.folds)[entity] != options.fold]
    if len(train) == 0:
        raise TabbertError(f"{data.path}: the training split has no windows")
    return train, val


def _trainer(config: TabBertConfig, options: PretrainOptions, args: TrainingArguments, data: PreparedDataset,
             train: WindowDataset, val: WindowDataset, *, callbacks: list, resumed: dict) -> MaskedFieldTrainer:
    """A new model of ``config``'s objective in the trainer that pre-trains it."""
    tokenizer = data.tokenizer
    masker = None if config.causal else MaskedFieldCollator(
        tokenizer.field_offsets, tokenizer.field_vocab_sizes, mlm_probability=options.mlm_probability,
        mask_rows=options.mask_rows, mask_token_id=MASK_ID, pad_token_id=PAD_ID)
    model_class = TabBertForNextRowModeling if config.causal else TabBertForMaskedFieldModeling
    return MaskedFieldTrainer(
        model=model_class(config), args=args, data_collator=collate_windows, train_dataset=train,
        eval_dataset=val if len(val) else None, callbacks=callbacks,
        masker=masker, majority=field_majorities(data, train.starts), field_names=tokenizer.field_names,
        mask_seed=options.seed, window_count=WindowCount.from_trainer_state(resumed),
    )


def _options(options: PretrainOptions | None, settings: dict) -> PretrainOptions:
    """The run's options: ``settings`` that are not options are further model settings; no bf16 without CUDA."""
    model_settings = {name: settings.pop(name) for name in list(settings) if name not in PretrainOptions.names()}
    options = PretrainOptions.create(options, **settings)
    options = dataclasses.replace(options, overrides={**options.overrides, **model_settings})
    if options.bf16 and choose_device(options.device).type != "cuda":
        warnings.warn("bf16 needs a CUDA device; training in float32", stacklevel=3)
        options = dataclasses.replace(options, bf16=False)
    return options


def _run_metrics(trainer: MaskedFieldTrainer, data: PreparedDataset, config: TabBertConfig, settings: dict,
                 train_seconds: float, started: float, *, resumed_from_step: int | None) -> dict:
    world_size = trainer.args.world_size
    history = trainer.state.log_history
    train_losses = [[entry["step"], entry["loss"]] for entry in history if "loss" in entry]
    evaluation = trainer.last_evaluation or {}
    windows = trainer.windows_trained * world_size
    return {
        "data": str(data.path),
        "model": {
            "size": config.size, "flat": config.flat, "objective": config.objective,
            "parameters": trainer.model.num_parameters(),
            "field_hidden": config.field_hidden, "hidden_size": config.hidden_size,
            "num_hidden_layers": config.num_hidden_layers, "num_attention_heads": config.num_attention_heads,
        },
        "settings": settings,
        "world_size": world_size,
        "train_windows": len(trainer.train_dataset),
        "val_windows": len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0,
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "train_loss": train_losses[-1][1] if train_losses else None,
        "train_loss_history": train_losses,
        "val_loss": evaluation.get("loss"),
        "val_masked_accuracy": evaluation.get("masked_accuracy"),
        "val_majority_accuracy": evaluation.get("majority_accuracy"),
        "val_masked_tokens": evaluation.get("masked_tokens"),
        "fields": evaluation.get("fields", {}),
        "evaluations": [
            {"step": entry["step"], "epoch": entry.get("epoch"), "val_loss": entry["eval_loss"],
             "val_masked_accuracy": entry["eval_masked_accuracy"]}
            for entry in history if "eval_loss" in entry
        ],
        "resumed_from_step": resumed_from_step,
        "windows_trained": windows,
        "windows_trained_total": trainer.window_count.windows * world_size if trainer.window_count.from_start else None,
        "windows_per_second": windows / train_seconds if train_seconds > 0 else None,
        "train_seconds": round(train_seconds, 3),
        "seconds": round(time.perf_counter() - started, 3),
    }


def summary(metrics: dict) -> str:
    """The end-of-run tables: totals, then each field's accuracy (masked tokens, or next rows with the
    causal objective) against its majority baseline."""
    speed = metrics["windows_per_second"]
    predicted = "next-row" if metrics["model"].get("objective") == "causal" else "masked"
    totals = [
        ("model", f"{metrics['model']['size']}{' flat' if metrics['model']['flat'] else ''}"),
        ("objective", metrics["model"].get("objective", "masked")),
        ("parameters", metrics["model"]["parameters"]),
        ("steps", metrics["steps"]),
        ("epochs", round(metrics["epochs"] or 0.0, 3)),
        ("train loss", metrics["train_loss"] if metrics["train_loss"] is not None else "-"),
        ("val loss", metrics["val_loss"] if metrics["val_loss"] is not None else "-"),
        (f"val {predicted} accuracy",
         metrics["val_masked_accuracy"] if metrics["val_masked_accuracy"] is not None else "-"),
        ("val majority baseline", metrics["val_majority_accuracy"] if metrics["val_majority_accuracy"] is not None
         else "-"),
        ("windows/s", round(speed, 1) if speed else "-"),
        ("seconds", metrics["seconds"]),
    ]
    text = format_table(totals, headers=("pretrain", "value"))
    if metrics["fields"]:
        rows = [
            (name, field["masked"],
             field["accuracy"] if field["accuracy"] is not None else "-",
             field["majority_accuracy"] if field["majority_accuracy"] is not None else "-",
             field["accuracy"] - field["majority_accuracy"] if field["accuracy"] is not None else "-")
            for name, field in metrics["fields"].items()
        ]
        text += "\n\n" + format_table(rows, headers=("field", predicted, "accuracy", "majority", "lift"))
    return text
