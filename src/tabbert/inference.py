"""Score raw rows with a fine-tuned model: one score per row, from the window that ends at it.

Each input row is scored from itself and the up to ``seq_len - 1`` previous rows of its entity
*in the input*, in time order (rows at the same time in the order of their field values, never
of their place in the input). A row with a shorter history gets [PAD] rows in front of it
(masked out of attention and of the head) and is flagged ``padded``. Rows are tokenized with
the model's own tokenizer; a category the model never saw becomes its field's [UNK], and those
are counted per field.

Output, one row per input row in input order:

``row``            the row's number in the source (``_row``)
``entity``         its entity key
``score``          probability of the positive class (classification), or
``predicted_<t>``  the prediction for each target ``t`` in its own units (regression)
``history_rows``   rows of the entity up to and including this one
``padded``         whether the window was padded (``history_rows < seq_len``)
``predicted``      ``score >= threshold``, when the model carries a threshold (classification)

In a notebook::

    from tabbert.inference import predict
    scores = predict("runs/finetune", "new_transactions.csv")   # or a normalized polars frame
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from tabbert.atomic import atomic_path
from tabbert.data.encoders import FIELD_UNK
from tabbert.data.schema import ENTITY, ROW, TIME
from tabbert.data.tokenizer import TabularTokenizer, row_order
from tabbert.errors import DataError
from tabbert.runs import choose_device, load_run, padded_histories, score

PREDICT_BATCH_SIZE = 512
FRAME_NAME = "<input frame>"


@dataclass
class Prediction:
    """Scores of a table and what was noticed on the way."""

    scores: pl.DataFrame
    entities: int
    padded_rows: int
    unseen: dict[str, int]
    dropped: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def predict(model_dir: str | Path, data: pl.DataFrame | str | Path, *, source: str | None = None,
            schema: str | Path | None = None, batch_size: int = PREDICT_BATCH_SIZE,
            device: str | None = None) -> pl.DataFrame:
    """One score per row of ``data``: a file of ``source`` format (default: the model's), or a
    frame in the normalized layout of :mod:`tabbert.data.schema`. See the module docstring."""
    return score_table(model_dir, data, source=source, schema=schema, batch_size=batch_size, device=device).scores


def score_table(model_dir: str | Path, data: pl.DataFrame | str | Path, *, source: str | None = None,
                schema: str | Path | None = None, batch_size: int = PREDICT_BATCH_SIZE, device: str | None = None,
                progress: bool = False) -> Prediction:
    """:func:`predict` with the unseen-category counts, padding count and timings."""
    started = time.perf_counter()
    run = load_run(model_dir, expect="classifier")
    model, tokenizer = run.model.to(choose_device(device)), run.tokenizer
    loaded = time.perf_counter()
    frame, dropped = read_rows(data, tokenizer, source=source, schema=schema)
    read = time.perf_counter()

    # rows in entity-then-time order, ties by their values, so a score never depends on the input order
    rows = row_order(frame, tokenizer.schema)
    order = np.arange(frame.height) if rows.order is None else rows.order
    tokens = tokenizer.encode(frame, rows)[order]
    entity_start = np.repeat(rows.entity_offsets[:-1], np.diff(rows.entity_offsets))
    unseen = {
        encoder.name: int(np.count_nonzero(tokens[:, j] == encoder.offset + FIELD_UNK))
        for j, encoder in enumerate(tokenizer.fields) if encoder.kind == "categorical"
    }
    tokenized = time.perf_counter()

    outputs = score(model, len(tokens), padded_histories(tokens, entity_start, model.config.seq_len),
                    batch_size=batch_size, progress=progress)
    scored = time.perf_counter()

    position = np.arange(frame.height)
    back = np.empty_like(order)
    back[order] = position
    history = (position - entity_start + 1)[back]
    seq_len = model.config.seq_len
    columns = {"row": frame.get_column(ROW), "entity": frame.get_column(ENTITY)}
    if model.config.task == "classification":
        columns["score"] = outputs[back]
    else:
        newest = outputs if outputs.ndim == 2 else outputs[:, -1]
        columns.update({f"predicted_{t}": newest[back, j] for j, t in enumerate(model.config.target_names)})
    columns.update(history_rows=history, padded=history < seq_len)
    if model.config.task == "classification" and model.config.threshold is not None:
        columns["predicted"] = (outputs[back] >= model.config.threshold).astype(np.int8)
    scores = pl.DataFrame(columns)
    seconds = {"load": loaded - started, "read": read - loaded, "tokenize": tokenized - read,
               "model": scored - tokenized, "total": time.perf_counter() - started}
    return Prediction(scores, entities=len(rows.entity_offsets) - 1, padded_rows=int(np.count_nonzero(history < seq_len)),
                      unseen=unseen, dropped=dropped, seconds={step: round(v, 3) for step, v in seconds.items()})


def read_rows(data: pl.DataFrame | str | Path, tokenizer: TabularTokenizer, *, source: str | None = None,
              schema: str | Path | None = None) -> tuple[pl.DataFrame, dict[str, int]]:
    """The rows to score in the normalized layout, and the rows the reader dropped (by reason)."""
    if isinstance(data, pl.DataFrame):
        frame, name, dropped = data, FRAME_NAME, {}
        if ROW not in frame.columns:
            frame = frame.with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.UInt64))
    else:
        from tabbert.data.sources import read_source

        source = source or tokenizer.schema.source
        options = {"keep_missing": True} if source == "prsa" else {}
        table = read_source(source, data, schema=schema, require_labels=False, **options)
        frame, name, dropped = table.frame, str(data), dict(table.dropped)
    needed = list(dict.fromkeys([ROW, ENTITY, TIME, *tokenizer.required_columns]))
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise DataError(name, f"columns {missing} that the model needs are missing (it reads {needed[3:]})",
                        column=missing[0])
    if frame.height == 0:
        raise DataError(name, "no rows to score")
    if not isinstance(frame.schema[TIME], pl.Datetime):
        raise DataError(name, f"must be a datetime, got {frame.schema[TIME]}", column=TIME)
    for column in (ENTITY, TIME):
        nulls = frame.get_column(column).is_null()
        if nulls.any():
            raise DataError(name, "missing value", column=column, row=int(frame.get_column(ROW).filter(nulls)[0]))
    return frame, dropped


def write_scores(scores: pl.DataFrame, path: str | Path) -> Path:
    """Write the scores as CSV through a temporary sibling file and a rename."""
    path = Path(path)
    with atomic_path(path) as temporary:
        scores.write_csv(temporary)
    return path
