"""Masked-row surprise: a label-free anomaly score of every row from its causal history.

For each row, its history of ``context`` rows (left-padded) goes through a pre-trained TabBERT
with *every field of the row itself* replaced by [MASK]. The score of a field is how unlikely the
model finds the row's true value given the rows before it: the negative log-probability (nats) of
the true token under that field's masked-field head. The row's surprise is their sum. Shown only
the row, a field such as the state could be read off the zip; masked whole, the row can only be
predicted from the entity's past, so a card used at merchants, places and hours unlike its own
history scores high.

Out-of-fold scores
------------------
A model finds the entities it pre-trained on unsurprising. Surprise that feeds a supervised model
must come from a model that never saw the entity: pre-train K models with ``--folds K --fold k``
(each leaves out the training entities of fold ``k``) and give them all to :func:`row_surprise`,
which scores each row with the model of its entity's fold. Validation and test entities are never
pre-trained on, so each of their rows is scored by the model of its fold too, alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from tabbert.atomic import atomic_path
from tabbert.data.prepared import PreparedDataset
from tabbert.data.tokenizer import MASK_ID
from tabbert.data.windows import SPLITS
from tabbert.errors import TabbertError
from tabbert.models.tabbert import TabBertForMaskedFieldModeling
from tabbert.runs import Run, check_compatible, choose_device, forward_batches, load_run

SURPRISE_BATCH_SIZE = 512
OUTPUT_SUFFIXES = (".npy", ".parquet", ".csv")


def masked_row_step(model: TabBertForMaskedFieldModeling, field_offsets: torch.Tensor, *, embeddings: bool = False):
    """The step that gives ``[b, F]`` per-field surprise of the newest row of each history; with
    ``embeddings``, followed by the encoder's output at that masked row ``[b, hidden]`` (what the
    model expects of the row from the history alone)."""
    flat = model.config.flat

    def step(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        truth = input_ids[:, -1, :] - field_offsets  # field-local ids of the newest row
        masked = input_ids.clone()
        masked[:, -1, :] = MASK_ID
        encoded = model.tabbert(masked, attention_mask=attention_mask)
        states = encoded.token_hidden_states[:, -1:] if flat else encoded.last_hidden_state[:, -1:]
        logits = model.heads(states)
        surprise = torch.stack([
            -F.log_softmax(field_logits[:, 0].float(), dim=-1).gather(1, truth[:, field:field + 1]).squeeze(1)
            for field, field_logits in enumerate(logits)
        ], dim=1)
        if not embeddings:
            return surprise
        return torch.cat([surprise, encoded.last_hidden_state[:, -1].float()], dim=1)

    return step


def load_masked_model(path: str | Path) -> tuple[Run, TabBertForMaskedFieldModeling]:
    """A pre-training run and its model with the masked-field heads."""
    run = load_run(path, expect="encoder", heads=True)
    return run, run.model


def fold_of(run: Run) -> tuple[int, int | None]:
    """``(folds, fold)`` a pre-training run was trained with (``(1, None)``: every training entity)."""
    settings = (run.metrics or {}).get("settings", {})
    return int(settings.get("folds", 1) or 1), settings.get("fold")


def row_surprise(model_paths: list[str | Path], data_dir: str | Path, *, split: str = "all",
                 context: int | None = None, batch_size: int = SURPRISE_BATCH_SIZE, device: str | None = None,
                 embeddings: bool = False, progress: bool = True) -> tuple[np.ndarray, dict]:
    """Per-row surprise ``[n_rows, 1 + F]`` (total, then each field; NaN for rows not scored), with
    ``embeddings`` followed by the masked row's encoder output, and a summary. ``model_paths``: one
    pre-training run, or one per fold of ``--folds K``."""
    data = PreparedDataset(data_dir)
    runs = [load_masked_model(path) for path in model_paths]
    folds = _fold_models(runs, data)
    context = context or data.seq_len
    for run, model in runs:
        check_compatible(run, data)
        if context > model.config.max_rows:
            raise TabbertError(f"--context {context} exceeds the {model.config.max_rows} rows {run.model_dir} reads")
    chosen = choose_device(device)
    offsets = torch.as_tensor(data.tokenizer.field_offsets, dtype=torch.long, device=chosen)
    rows = np.arange(data.n_rows) if split == "all" else data.points(split)
    entity_fold = np.repeat(data.entity_folds(len(folds)), np.diff(data.entity_offsets)) if len(folds) > 1 else None
    n_fields = len(data.tokenizer.fields)
    width = 1 + n_fields + (folds[0][1].config.hidden_size if embeddings else 0)
    surprise = np.full((data.n_rows, width), np.nan, dtype=np.float32)
    for fold, (run, model) in enumerate(folds):
        ends = rows if entity_fold is None else rows[entity_fold[rows] == fold]
        if ends.size == 0:
            continue
        model.to(chosen).eval()
        gather = _gather(data, ends, context)
        outputs = forward_batches(masked_row_step(model, offsets, embeddings=embeddings), ends.size, gather,
                                  device=chosen,
                                  batch_size=batch_size, progress=progress,
                                  description=f"surprise (fold {fold + 1}/{len(folds)})")
        per_field = torch.cat([output.cpu() for output in outputs]).numpy()
        surprise[ends, 1:] = per_field
        surprise[ends, 0] = per_field[:, :n_fields].sum(axis=1)
    in_sample = _in_sample_rows(data, folds, rows)
    summary = {"rows": int(rows.size), "models": len(folds), "context": context, "in_sample_rows": in_sample,
               "columns": surprise_columns(data, folds[0][1].config.hidden_size if embeddings else 0)}
    return surprise, summary


def surprise_columns(data: PreparedDataset, hidden_size: int = 0) -> list[str]:
    return ["surprise", *(f"surprise.{name}" for name in data.tokenizer.field_names),
            *(f"embedding.{i}" for i in range(hidden_size))]


def _gather(data: PreparedDataset, ends: np.ndarray, context: int):
    def gather(begin: int, end: int) -> tuple[np.ndarray, np.ndarray | None]:
        ids, mask = data.history_tokens(ends[begin:end], context)
        return ids.astype(np.int64), mask

    return gather


def _fold_models(runs: list[tuple[Run, TabBertForMaskedFieldModeling]],
                 data: PreparedDataset) -> list[tuple[Run, TabBertForMaskedFieldModeling]]:
    """The runs in fold order; one run, or exactly one per fold of the same ``--folds K``."""
    if len(runs) == 1 and fold_of(runs[0][0])[0] == 1:
        return runs
    folds = {fold_of(run) for run, _ in runs}
    counts = {count for count, _ in folds}
    if len(counts) != 1 or sorted(fold for _, fold in folds) != list(range(len(runs))) or counts != {len(runs)}:
        found = sorted(f"{count}:{fold}" for count, fold in folds)
        raise TabbertError(f"give one pre-training run, or one run per fold of the same --folds K "
                           f"(found folds:fold {found})")
    return sorted(runs, key=lambda item: fold_of(item[0])[1])


def _in_sample_rows(data: PreparedDataset, folds: list, rows: np.ndarray) -> int:
    """Rows scored by a model that pre-trained on their entity (training rows of a single model)."""
    if len(folds) > 1:
        return 0
    return int((data.row_splits[rows] == 0).sum())


def write_surprise(data_dir: str | Path, surprise: np.ndarray, out: str | Path) -> Path:
    """Write per-row surprise: ``.npy`` (the matrix, rows in prepared order) or ``.parquet``/``.csv``
    (one record per scored row with its source row, entity, split and label)."""
    out = Path(out)
    if out.suffix not in OUTPUT_SUFFIXES:
        raise TabbertError(f"{out}: write surprise to one of {OUTPUT_SUFFIXES}")
    if out.is_dir():
        raise TabbertError(f"{out}: is a directory; --out takes a file")
    with atomic_path(out) as temporary:
        if out.suffix == ".npy":
            with open(temporary, "wb") as handle:
                np.save(handle, surprise, allow_pickle=False)
        else:
            frame = surprise_frame(PreparedDataset(data_dir), surprise)
            frame.write_parquet(temporary) if out.suffix == ".parquet" else frame.write_csv(temporary)
    return out


def surprise_frame(data: PreparedDataset, surprise: np.ndarray) -> pl.DataFrame:
    """One record per scored row: source row, entity, split, label (when known) and the surprise columns."""
    scored = np.flatnonzero(~np.isnan(surprise[:, 0]))
    entity = np.searchsorted(data.entity_offsets, scored, side="right") - 1
    columns = {
        "row": np.asarray(data.row_ids)[scored],
        "entity": np.asarray(data.entities, dtype=object)[entity].astype(str),
        "split": np.asarray(SPLITS)[data.row_splits[scored]],
    }
    if data.labels is not None:
        columns["label"] = np.asarray(data.labels)[scored]
    hidden_size = surprise.shape[1] - 1 - len(data.tokenizer.fields)
    for index, name in enumerate(surprise_columns(data, hidden_size)):
        columns[name] = surprise[scored, index]
    return pl.DataFrame(columns)
