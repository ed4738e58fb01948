"""Row surprise: a label-free anomaly score of every row from its causal history.

For each row, its history of ``context`` rows (left-padded) goes through a pre-trained TabBERT
with *every field of the row itself* replaced by [MASK]. The score of a field is how unlikely the
model finds the row's true value given the rows before it: the negative log-probability (nats) of
the true token under that field's masked-field head. The row's surprise is their sum. Shown only
the row, a field such as the state could be read off the zip; masked whole, the row can only be
predicted from the entity's past, so a card used at merchants, places and hours unlike its own
history scores high.

Next-row surprise
-----------------
A model pre-trained with ``objective="causal"`` predicts row t+1 from the output at row t, which
sees rows up to t only. One forward over a window of an entity's rows then scores every row of
it but the first: the surprise of row t is the negative log-probability of its true field values
under the heads at row t-1, the same columns as above. An entity's rows are cut into windows of
``context`` rows that overlap by one row, so each row is scored once, from the rows of its window
before it (between 1 and ``context - 1`` rows, where the masked-row surprise always has
``context - 1``), at about ``1 / (context - 1)`` of the forwards. Row positions count from the
window's first row, so a row's score does not depend on how far its window reaches. An entity's
first row has no history to be predicted from and is left unscored (NaN).

Out-of-fold scores
------------------
A model finds the entities it pre-trained on unsurprising. Surprise that feeds a supervised model
must come from a model that never saw the entity: pre-train K models with ``--folds K --fold k``
(each leaves out the training entities of fold ``k``) and give them all to :func:`row_surprise`,
which scores each row with the model of its entity's fold. Rows of an entity that none of
the models pre-trained on (validation and test entities of an entity split, and the raw rows of
:func:`surprise_of_rows`) get the mean of the K models' outputs, so that a file of such rows scores
the same wherever it is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from tabbert.atomic import atomic_path
from tabbert.data.prepared import PreparedDataset
from tabbert.data.tokenizer import PAD_ID, TabularTokenizer
from tabbert.data.windows import SPLITS, first_rows
from tabbert.errors import TabbertError
from tabbert.models.surprise import masked_row_surprise, next_row_surprise
from tabbert.models.tabbert import TabBertForMaskedFieldModeling
from tabbert.runs import Run, check_compatible, choose_device, forward_batches, load_run, padded_histories

SURPRISE_BATCH_SIZE = 512
OUTPUT_SUFFIXES = (".npy", ".parquet", ".csv")


def masked_row_step(model: TabBertForMaskedFieldModeling, *, embeddings: bool = False):
    """The step that gives ``[b, F]`` per-field surprise of the newest row of each history; with
    ``embeddings``, followed by the encoder's output at that masked row ``[b, hidden]`` (what the
    model expects of the row from the history alone)."""

    def step(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        surprise, encoded = masked_row_surprise(model.tabbert, model.heads, input_ids, attention_mask)
        if not embeddings:
            return surprise
        return torch.cat([surprise, encoded.last_hidden_state[:, -1].float()], dim=1)

    return step


def next_row_step(model: TabBertForMaskedFieldModeling, *, embeddings: bool = False):
    """The step that gives ``[b, L - 1, F]`` per-field surprise of rows 1 .. L-1 of each window of a
    causal model, each from the heads at the row before it; with ``embeddings``, followed by the
    encoder's output at that row before ``[b, L - 1, hidden]``. Padding rows' values are meaningless."""

    def step(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        surprise, states = next_row_surprise(model.tabbert, model.heads, input_ids, attention_mask)
        return torch.cat([surprise, states[:, :-1].float()], dim=2) if embeddings else surprise

    return step


def next_row_windows(entity_offsets: np.ndarray, wanted: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, ends)`` of the windows that score the ``wanted`` rows (a boolean per row) in one pass:
    each entity's rows cut into windows of ``context`` rows overlapping by one, those holding a wanted
    row after their first."""
    if context < 2:
        raise TabbertError("next-row surprise needs windows of at least 2 rows (--context)")
    first, last = np.asarray(entity_offsets[:-1], dtype=np.int64), np.asarray(entity_offsets[1:], dtype=np.int64)
    counts = np.maximum(-(-(last - first - 1) // (context - 1)), 0)
    entity = np.repeat(np.arange(first.size), counts)
    step = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    starts = first[entity] + step * (context - 1)
    ends = np.minimum(starts + context, last[entity])
    cumulative = np.concatenate([[0], np.cumsum(wanted)])
    keep = cumulative[ends] - cumulative[starts + 1] > 0
    return starts[keep], ends[keep]


@dataclass(frozen=True)
class TokenRows:
    """Token ids ``[n_rows, F]`` of rows in entity-then-time order and each entity's first row
    (``entity_offsets``, one more than there are entities): what surprise is computed from."""

    tokens: np.ndarray
    entity_offsets: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.tokens)


def _window_gather(table: TokenRows, starts: np.ndarray, ends: np.ndarray, context: int):
    """Batches of the windows ``starts`` to ``ends`` (exclusive), [PAD] after the rows of short ones."""

    def gather(begin: int, end: int) -> tuple[np.ndarray, np.ndarray | None]:
        rows = starts[begin:end, None] + np.arange(context)
        real = rows < ends[begin:end, None]
        ids = np.asarray(table.tokens[np.where(real, rows, starts[begin:end, None]).ravel()])
        ids = np.where(real[..., None], ids.reshape(*rows.shape, -1), PAD_ID).astype(np.int64)
        return ids, None if real.all() else real.astype(np.int64)

    return gather


def _score_masked_rows(model, table: TokenRows, rows: np.ndarray, context: int, out: np.ndarray,
                       **settings) -> int:
    """Write the per-field masked-row surprise (then embeddings) of ``rows`` into ``out[rows]``, one
    forward per row; returns the number of forwards."""
    histories = padded_histories(table.tokens, first_rows(table.entity_offsets), context, rows)
    outputs = forward_batches(masked_row_step(model, embeddings=settings.pop("embeddings")), rows.size,
                              histories, **settings)
    out[rows] = torch.cat([output.cpu() for output in outputs]).numpy()
    return int(rows.size)


def _score_next_rows(model, table: TokenRows, rows: np.ndarray, context: int, out: np.ndarray,
                     **settings) -> int:
    """Write the per-field next-row surprise (then embeddings) of ``rows`` into ``out[rows]``, one
    forward per window; returns the number of windows."""
    wanted = np.zeros(table.n_rows, dtype=bool)
    wanted[rows] = True
    starts, ends = next_row_windows(table.entity_offsets, wanted, context)
    batch_size = settings["batch_size"]
    outputs = forward_batches(next_row_step(model, embeddings=settings.pop("embeddings")), starts.size,
                              _window_gather(table, starts, ends, context), **settings)
    for begin, output in zip(range(0, starts.size, batch_size), outputs):
        targets = starts[begin:begin + batch_size, None] + np.arange(1, context)
        scored = targets < ends[begin:begin + batch_size, None]
        scored[scored] = wanted[targets[scored]]
        out[targets[scored]] = output.cpu().numpy()[scored]
    return int(starts.size)


def _score(models: list, table: TokenRows, rows_of_model: list[np.ndarray], shared: np.ndarray, context: int,
           width: int, *, device: torch.device, progress: bool, **settings) -> tuple[np.ndarray, int]:
    """``[n_rows, 1 + width]``: the total, then each field's surprise (and embeddings). Model ``k``
    scores ``rows_of_model[k]`` alone; the ``shared`` rows get the mean of every model's outputs. Rows
    left unscored are NaN. Also returns the number of forwards."""
    outputs = np.full((table.n_rows, width), np.nan, dtype=np.float32)
    total = np.zeros((shared.size, width), dtype=np.float32)
    forwards = 0
    for k, model in enumerate(models):
        rows = np.union1d(rows_of_model[k], shared)
        if rows.size == 0:
            continue
        model.to(device).eval()
        score = _score_next_rows if model.config.causal else _score_masked_rows
        forwards += score(model, table, rows, context, outputs, device=device, progress=progress,
                          description=f"surprise (model {k + 1}/{len(models)})", **settings)
        total += outputs[shared]
    outputs[shared] = total / len(models)
    n_fields = len(models[0].config.field_offsets)
    return np.concatenate([outputs[:, :n_fields].sum(axis=1, keepdims=True), outputs], axis=1), forwards


def load_masked_model(path: str | Path) -> tuple[Run, TabBertForMaskedFieldModeling]:
    """A pre-training run and its model with its field heads (masked-field, or next-row for a causal run)."""
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
    ``embeddings`` followed by the encoder's output that predicts the row, and a summary. ``model_paths``:
    one pre-training run, or one per fold of ``--folds K``. A causal run gives next-row surprise
    (one forward per window), any other masked-row surprise (one forward per row)."""
    data = PreparedDataset(data_dir)
    folds = _fold_models([load_masked_model(path) for path in model_paths], data)
    context = _checked_context(folds, data.seq_len if context is None else context)
    for run, _ in folds:
        check_compatible(run, data)
    rows = np.arange(data.n_rows) if split == "all" else data.points(split)
    if len(folds) == 1:
        own, shared = [rows], np.empty(0, dtype=np.int64)
    else:
        fold = np.repeat(data.entity_folds(len(folds)), np.diff(data.entity_offsets))
        pretrained_on = np.repeat(np.add.reduceat(data.row_splits == 0, data.entity_offsets[:-1]) > 0,
                                  np.diff(data.entity_offsets))
        own = [rows[pretrained_on[rows] & (fold[rows] == k)] for k in range(len(folds))]
        shared = rows[~pretrained_on[rows]]
    models = [model for _, model in folds]
    hidden_size = models[0].config.hidden_size if embeddings else 0
    surprise, forwards = _score(models, TokenRows(data.tokens, data.entity_offsets), own, shared, context,
                                len(data.tokenizer.fields) + hidden_size, device=choose_device(device),
                                batch_size=batch_size, embeddings=embeddings, progress=progress)
    summary = {"rows": int(rows.size), "models": len(folds), "context": context,
               "in_sample_rows": _in_sample_rows(data, folds, rows), "mean_of_models_rows": int(shared.size),
               "objective": models[0].config.objective, "forwards": forwards,
               "unscored_rows": int(np.isnan(surprise[rows, 0]).sum()),
               "columns": surprise_columns(data.tokenizer.field_names, hidden_size)}
    return surprise, summary


def surprise_of_rows(model_paths: list[str | Path], table: TokenRows, tokenizer: TabularTokenizer, *,
                     context: int | None = None, batch_size: int = SURPRISE_BATCH_SIZE, device: str | None = None,
                     embeddings: bool = False) -> np.ndarray:
    """:func:`row_surprise` of raw rows, already encoded with ``tokenizer``: every row gets the mean of
    the models' outputs, as the rows of entities none of them pre-trained on do in a prepared dataset."""
    folds = [load_masked_model(path) for path in model_paths]
    for run, _ in folds:
        if run.tokenizer.fingerprint() != tokenizer.fingerprint():
            raise TabbertError(f"{run.model_dir}: pre-trained with another tokenizer than these rows were encoded with")
    models = [model for _, model in folds]
    context = _checked_context(folds, context or models[0].config.max_rows)
    hidden_size = models[0].config.hidden_size if embeddings else 0
    surprise, _ = _score(models, table, [np.empty(0, dtype=np.int64)] * len(models), np.arange(table.n_rows),
                         context, len(tokenizer.fields) + hidden_size, device=choose_device(device),
                         batch_size=batch_size, embeddings=embeddings, progress=False)
    return surprise


def _checked_context(folds: list, context: int) -> int:
    objectives = {model.config.objective for _, model in folds}
    if len(objectives) > 1:
        raise TabbertError(f"the runs were pre-trained with different objectives {sorted(objectives)}")
    for run, model in folds:
        if context > model.config.max_rows:
            raise TabbertError(f"--context {context} exceeds the {model.config.max_rows} rows {run.model_dir} reads")
    return context


def surprise_columns(field_names: list[str], hidden_size: int = 0) -> list[str]:
    return ["surprise", *(f"surprise.{name}" for name in field_names),
            *(f"embedding.{i}" for i in range(hidden_size))]


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
    for index, name in enumerate(surprise_columns(data.tokenizer.field_names, hidden_size)):
        columns[name] = surprise[scored, index]
    return pl.DataFrame(columns)
