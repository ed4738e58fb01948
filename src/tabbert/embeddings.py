"""Encoder outputs of a pre-trained TabBERT for the windows of a prepared dataset, as Parquet.

One Parquet file, written atomically. Every record names its window: ``start`` (first row of the
window in the prepared token matrix), ``entity`` and ``split``. Then, by ``level``:

* ``window`` (one record per window): ``row_id`` of the window's newest row in the source,
  ``label`` (1 when any row of the window is positive, classification data) or ``target`` (the
  newest row's targets, regression data), ``last`` (the encoder output at the newest row) and
  ``mean`` (the mean output over the window's rows).
* ``row`` (one record per row of each window, so rows shared by overlapping windows repeat):
  ``position`` in the window (0 = oldest), the row's ``row_id``, its ``label``/``target`` and
  ``embedding`` (the encoder output at that row).

A dataset prepared without labels has no ``label``/``target`` column.

Embeddings are fixed-size lists of float32, e.g. ``np.stack(polars.read_parquet(f)["mean"])``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tabbert.atomic import atomic_path, check_output_file
from tabbert.data.prepared import PreparedDataset
from tabbert.data.windows import SPLITS
from tabbert.errors import TabbertError
from tabbert.runs import check_compatible, choose_device, forward_batches, load_run, padded_histories, prepared_windows

LEVELS = ("window", "row")
SPLIT_CHOICES = ("all", *SPLITS)
EMBED_BATCH_SIZE = 256


def write_embeddings(model_dir: str | Path, data_dir: str | Path, out: str | Path, *, split: str = "all",
                     level: str = "window", batch_size: int = EMBED_BATCH_SIZE, device: str | None = None,
                     progress: bool = True, overwrite: bool = False) -> dict:
    """Embed the windows of ``split`` with the encoder of a pre-training run (``RUN`` or ``RUN/model``);
    write the Parquet ``out`` (an existing file only when ``overwrite``). Returns counts: ``windows``,
    ``records`` and ``hidden_size``."""
    if level not in LEVELS:
        raise TabbertError(f"unknown level {level!r}; choose from {LEVELS}")
    if split not in SPLIT_CHOICES:
        raise TabbertError(f"unknown split {split!r}; choose from {SPLIT_CHOICES}")
    if batch_size < 1:
        raise TabbertError(f"the batch size must be at least 1, got {batch_size}")
    check_output_file(out, overwrite=overwrite)
    data = PreparedDataset(data_dir)
    run = load_run(model_dir, expect="encoder")
    check_compatible(run, data)
    encoder = run.model.to(choose_device(device))

    splits = SPLITS if split == "all" else (split,)
    starts = [data.windows(name) for name in splits]
    split_names = np.repeat(np.array(splits, dtype=object), [len(s) for s in starts])
    starts = np.concatenate(starts)
    schema = _schema(data, encoder.config.hidden_size, level)
    hidden_states = forward_batches(
        lambda input_ids, attention_mask: encoder(input_ids, attention_mask=attention_mask).last_hidden_state,
        len(starts), prepared_windows(data, starts), device=encoder.device, batch_size=batch_size,
        progress=progress, description="embedding",
    )
    records = 0
    with atomic_path(out) as temporary, pq.ParquetWriter(temporary, schema) as writer:
        for begin, hidden in zip(range(0, len(starts), batch_size), hidden_states):
            chunk = slice(begin, begin + batch_size)
            batch = _records(data, starts[chunk], split_names[chunk], hidden.float().cpu().numpy(), schema)
            writer.write_table(batch)
            records += batch.num_rows
    return {"windows": int(len(starts)), "records": records, "hidden_size": int(encoder.config.hidden_size)}


def row_embeddings(encoder, tokens: np.ndarray, entity_start: np.ndarray, seq_len: int, *,
                   batch_size: int = EMBED_BATCH_SIZE, progress: bool = False) -> np.ndarray:
    """The encoder's output ``float32 [n_rows, hidden]`` at every row of an entity-then-time ordered
    token matrix: the last position of the row's causal history, left-padded to ``seq_len`` rows."""
    out = np.empty((len(tokens), encoder.config.hidden_size), dtype=np.float32)
    hidden_states = forward_batches(
        lambda input_ids, attention_mask: encoder(input_ids, attention_mask=attention_mask).last_hidden_state[:, -1],
        len(tokens), padded_histories(tokens, entity_start, seq_len), device=encoder.device, batch_size=batch_size,
        progress=progress, description="embedding rows",
    )
    for begin, hidden in zip(range(0, len(tokens), batch_size), hidden_states):
        out[begin:begin + len(hidden)] = hidden.float().cpu().numpy()
    return out


def _schema(data: PreparedDataset, width: int, level: str) -> pa.Schema:
    vector = pa.list_(pa.float32(), width)
    outcome = [] if not data.labelled else [pa.field("label", pa.int8()) if data.task == "classification"
                                             else pa.field("target", pa.list_(pa.float32(), data.targets.shape[1]))]
    identity = [pa.field("start", pa.int64()), pa.field("entity", pa.string()), pa.field("split", pa.string())]
    if level == "window":
        return pa.schema([*identity, pa.field("row_id", pa.int64()), *outcome,
                          pa.field("last", vector), pa.field("mean", vector)])
    return pa.schema([*identity, pa.field("position", pa.int16()), pa.field("row_id", pa.int64()), *outcome,
                      pa.field("embedding", vector)])


def _records(data: PreparedDataset, starts: np.ndarray, splits: np.ndarray, hidden: np.ndarray,
             schema: pa.Schema) -> pa.Table:
    """The records of a batch of windows (encoder outputs ``hidden [b, L, H]``), with the columns of ``schema``."""
    width = hidden.shape[-1]
    seq_len = data.seq_len
    entities = np.asarray(data.entities, dtype=object)[np.searchsorted(data.entity_offsets, starts, side="right") - 1]
    if "embedding" not in schema.names:
        newest = starts + seq_len - 1
        columns = {
            "start": starts, "entity": entities, "split": splits, "row_id": np.asarray(data.row_ids)[newest],
            **_outcome(data, newest, window_starts=starts),
            "last": _vectors(hidden[:, -1]),
            "mean": _vectors(hidden.mean(axis=1)),
        }
    else:
        rows = (starts[:, None] + np.arange(seq_len)).ravel()
        columns = {
            "start": np.repeat(starts, seq_len), "entity": np.repeat(entities, seq_len),
            "split": np.repeat(splits, seq_len), "position": np.tile(np.arange(seq_len, dtype=np.int16), len(starts)),
            "row_id": np.asarray(data.row_ids)[rows], **_outcome(data, rows),
            "embedding": _vectors(hidden.reshape(-1, width)),
        }
    return pa.table(columns, schema=schema)


def _outcome(data: PreparedDataset, rows: np.ndarray, window_starts: np.ndarray | None = None) -> dict:
    """``label`` of the rows (of the windows: positive when any row is) or ``target`` of the rows; nothing
    for a dataset without labels."""
    if not data.labelled:
        return {}
    if data.task == "classification":
        labels = np.asarray(data.labels)[rows] if window_starts is None else data.window_labels(window_starts, "any")
        return {"label": labels.astype(np.int8)}
    return {"target": _vectors(np.asarray(data.targets)[rows])}


def _vectors(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """Rows of a float matrix as a fixed-size list column."""
    flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).ravel(), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])
