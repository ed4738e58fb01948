"""Score raw rows with a fine-tuned model: one score per row, from the window that ends at it.

Each input row is scored from itself and the up to ``seq_len - 1`` previous rows of its entity
*in the input*, in time order (rows at the same time in the order of their field values, never
of their place in the input). A row with a shorter history gets [PAD] rows in front of it
(masked out of attention and of the head) and is flagged ``padded``. Rows are tokenized with
the model's own tokenizer; a category the model never saw becomes its field's [UNK], and those
are counted per field.

Output, one row per input row in input order:

``row``            the row's number in the source (``_row``)
``entity``         its entity key (as in the prepared dataset's ``entities.json`` and ``splits.json``)
input columns      what identifies the row in the input: for ``card`` User, Card, Year, Month, Day,
                   Time, Amount and Merchant Name; for ``prsa`` station, year, month, day and hour;
                   for ``generic`` the schema's entity and time columns as the files hold them (a
                   frame: ``time``). A name that predict uses itself gets the prefix ``input_``
``<label>``        the input's label (0/1) or targets, when it has them
``score``          probability of the positive class (classification), or
``predicted_<t>``  the prediction for each target ``t`` in its own units (regression)
``history_rows``   rows of the entity up to and including this one
``padded``         whether the window was padded (``history_rows < seq_len``)
``predicted``      ``score >= threshold``, when there is a threshold (classification)

The threshold is a spec of :mod:`tabbert.thresholds`, resolved on the validation scores stored
with the run (default ``best-f1``: the threshold saved with the model). When the input has class
labels, :attr:`Prediction.metrics` holds the classification figures of its rows at that threshold.

In a notebook::

    from tabbert.inference import predict
    scores = predict("runs/finetune", "new_transactions.csv")   # or a normalized polars frame
    scores = predict("runs/finetune", "new_transactions.csv", threshold="fpr:0.001")
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from tabbert.atomic import atomic_path
from tabbert.data.codes import raw_codes
from tabbert.data.ordering import time_feature
from tabbert.data.schema import ENTITY, ROW, TIME, GenericSchemaFile, SchemaError
from tabbert.data.tokenizer import TabularTokenizer, row_order
from tabbert.errors import DataError
from tabbert.metrics import classification_metrics
from tabbert.runs import choose_device, load_run, padded_histories, score
from tabbert.thresholds import Threshold, run_threshold

PREDICT_BATCH_SIZE = 512
GAP_COLUMN = "gap_seconds"  # the last value column of a prepared dataset
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
    threshold: Threshold | None = None
    metrics: dict | None = None  # classification figures at the threshold, when the input has labels


def predict(model_dir: str | Path, data: pl.DataFrame | str | Path, *, source: str | None = None,
            schema: str | Path | None = None, threshold: str | float | None = None,
            batch_size: int = PREDICT_BATCH_SIZE, device: str | None = None) -> pl.DataFrame:
    """One score per row of ``data``: a file of ``source`` format (default: the model's), or a
    frame in the normalized layout of :mod:`tabbert.data.schema`. ``threshold``: a spec of
    :mod:`tabbert.thresholds` (default ``best-f1``). See the module docstring."""
    return score_table(model_dir, data, source=source, schema=schema, threshold=threshold, batch_size=batch_size,
                       device=device).scores


def score_table(model_dir: str | Path, data: pl.DataFrame | str | Path, *, source: str | None = None,
                schema: str | Path | None = None, threshold: str | float | None = None,
                batch_size: int = PREDICT_BATCH_SIZE, device: str | None = None, progress: bool = False) -> Prediction:
    """:func:`predict` with the threshold, the figures on labelled input, the unseen-category
    counts, padding count and timings."""
    from tabbert.baselines.rows import is_row_run, predict_rows

    if is_row_run(model_dir):
        return predict_rows(model_dir, data, source=source, schema=schema, threshold=threshold,
                            batch_size=batch_size, device=device)
    started = time.perf_counter()
    run = load_run(model_dir, expect="classifier")
    chosen = run_threshold(run, threshold)
    model, tokenizer = run.model.to(choose_device(device)), run.tokenizer
    loaded = time.perf_counter()
    frame, dropped = read_rows(data, tokenizer, source=source, schema=schema)
    inputs = input_columns(frame, tokenizer, data, source=source, schema=schema)
    read = time.perf_counter()

    # rows in entity-then-time order, ties by their values, so a score never depends on the input order
    rows = row_order(frame, tokenizer.schema)
    order = np.arange(frame.height) if rows.order is None else rows.order
    tokens = tokenizer.encode(frame, rows)[order]
    entity_start = np.repeat(rows.entity_offsets[:-1], np.diff(rows.entity_offsets))
    unseen = {name: int(np.count_nonzero(flagged)) for name, flagged in tokenizer.unseen(tokens).items()}
    tokenized = time.perf_counter()

    outputs = score(model, len(tokens), padded_histories(tokens, entity_start, model.config.seq_len),
                    batch_size=batch_size, progress=progress)
    scored = time.perf_counter()

    position = np.arange(frame.height)
    back = np.empty_like(order)
    back[order] = position
    history = (position - entity_start + 1)[back]
    seq_len = model.config.seq_len
    columns = {}
    if model.config.task == "classification":
        columns["score"] = outputs[back]
    else:
        newest = outputs if outputs.ndim == 2 else outputs[:, -1]
        columns.update({f"predicted_{t}": newest[back, j] for j, t in enumerate(model.config.target_names)})
    columns.update(history_rows=history, padded=history < seq_len)
    if chosen is not None:
        columns["predicted"] = (outputs[back] >= chosen.value).astype(np.int8)
    own = frame.select(pl.col(ROW).alias("row"), pl.col(ENTITY).alias("entity"))
    inputs = inputs.rename({name: f"input_{name}" for name in inputs.columns if name in (*own.columns, *columns)})
    scores = pl.concat([own, inputs, pl.DataFrame(columns)], how="horizontal")
    metrics = labelled_metrics(frame, tokenizer, outputs[back], chosen)
    seconds = {"load": loaded - started, "read": read - loaded, "tokenize": tokenized - read,
               "model": scored - tokenized, "total": time.perf_counter() - started}
    return Prediction(scores, entities=len(rows.entity_offsets) - 1, padded_rows=int(np.count_nonzero(history < seq_len)),
                      unseen=unseen, dropped=dropped, seconds={step: round(v, 3) for step, v in seconds.items()},
                      threshold=chosen, metrics=metrics)


def input_columns(frame: pl.DataFrame, tokenizer: TabularTokenizer, data: pl.DataFrame | str | Path, *,
                  source: str | None = None, schema: str | Path | None = None) -> pl.DataFrame:
    """The columns that identify each row of ``frame`` in the input, then its labels when it has
    them (see the module docstring)."""
    source = source or tokenizer.schema.source
    when = pl.col(TIME).dt
    if source == "card":
        keys = frame.select(pl.col(ENTITY).alias("User"), "Card", when.year().alias("Year"),
                            when.month().alias("Month"), when.day().alias("Day"),
                            when.strftime("%H:%M").alias("Time"), "Amount", "Merchant Name")
    elif source == "prsa":
        keys = frame.select(pl.col(ENTITY).alias("station"), when.year().alias("year"), when.month().alias("month"),
                            when.day().alias("day"), when.hour().alias("hour"))
    elif isinstance(data, pl.DataFrame) or schema is None:
        keys = frame.select(pl.col(TIME).alias("time"))
    else:
        from tabbert.data.sources import read_columns

        spec = GenericSchemaFile.load(schema)
        raw = read_columns(data, list(dict.fromkeys((*spec.entity, *spec.time))))
        keys = raw.drop(ROW)[frame.get_column(ROW).cast(pl.Int64).to_numpy()]  # both number the rows alike
    labels = [name for name in tokenizer.schema.labels
              if name in frame.columns and frame.get_column(name).null_count() < frame.height]
    return pl.concat([keys, frame.select(labels)], how="horizontal")


def labelled_metrics(frame: pl.DataFrame, tokenizer: TabularTokenizer, scores: np.ndarray,
                     threshold: Threshold | None) -> dict | None:
    """The classification figures at ``threshold`` of the rows whose label the input gives (None
    without labels or threshold)."""
    schema = tokenizer.schema
    label = schema.labels[0] if schema.task == "classification" and schema.labels else None
    if threshold is None or label not in frame.columns:
        return None
    known = frame.get_column(label).is_not_null().to_numpy()
    if not known.any():
        return None
    labels = frame.get_column(label).to_numpy()[known]
    return classification_metrics(labels, scores[known], threshold.value, split="input")


class EncodedRows(NamedTuple):
    """Rows in entity-then-time order (``order``: their input positions), as the prepared arrays hold them."""

    order: np.ndarray
    tokens: np.ndarray
    codes: np.ndarray
    values: np.ndarray
    times: np.ndarray
    entity_offsets: np.ndarray
    unseen: dict[str, int]


def encode_rows(frame: pl.DataFrame, tokenizer: TabularTokenizer, value_columns: Sequence[str]) -> EncodedRows:
    """Tokens, raw-value codes, numeric values (then the gap in seconds) and times of raw rows, in
    the tokenizer's row order, as ``prepare`` writes them."""
    rows = row_order(frame, tokenizer.schema)
    order = np.arange(frame.height) if rows.order is None else rows.order
    tokens = tokenizer.encode(frame, rows)[order]
    values = np.empty((frame.height, len(value_columns)), dtype=np.float32)
    for j, column in enumerate(value_columns):
        values[:, j] = (time_feature("gap", rows.times, rows.entity_offsets) if column == GAP_COLUMN
                        else frame.get_column(column).cast(pl.Float32).to_numpy()[order])
    unseen = {name: int(np.count_nonzero(flagged)) for name, flagged in tokenizer.unseen(tokens).items()}
    return EncodedRows(order, tokens, raw_codes(frame, tokenizer.schema, order), values, rows.times,
                       rows.entity_offsets, unseen)


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
        if source == "generic":
            schema = training_schema(tokenizer, schema)
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


def training_schema(tokenizer: TabularTokenizer, schema: str | Path | None = None) -> GenericSchemaFile | str | Path:
    """The generic schema the model's data was prepared with, stored beside its tokenizer.

    A ``schema`` file given as well must say the same; one that differs is an error naming the
    keys. A tokenizer that stores none (prepared from a frame or before schemas were stored)
    needs ``schema``.
    """
    stored = tokenizer.schema.schema_file
    if stored is None:
        if schema is None:
            raise SchemaError("the model stores no generic schema; pass the schema file it was prepared with "
                              "(--schema)")
        return schema
    trained = GenericSchemaFile.from_dict(stored)
    if schema is None:
        return trained
    differing = trained.differences(GenericSchemaFile.load(schema))
    if differing:
        raise SchemaError(
            f"{schema}: differs from the schema the model was prepared with in {differing}; "
            "leave out --schema to use the stored one"
        )
    return trained


def write_scores(scores: pl.DataFrame, path: str | Path) -> Path:
    """Write the scores as CSV through a temporary sibling file and a rename."""
    path = Path(path)
    with atomic_path(path) as temporary:
        scores.write_csv(temporary)
    return path
