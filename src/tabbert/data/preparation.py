"""From a raw table to a prepared dataset: split, fit the tokenizer, encode, order, window, write."""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from tabbert.data.prepared import PreparedDataset, PreparedWriter, check_output_dir
from tabbert.data.schema import (
    ENTITY,
    MICROSECONDS_PER_MINUTE,
    MICROSECONDS_PER_SECOND,
    ROW,
    TIME,
    Table,
)
from tabbert.data.sources import read_source
from tabbert.data.tokenizer import TabularTokenizer, gap_seconds, time_feature_in_order
from tabbert.data.windows import (
    SPLIT_METHODS,
    SPLITS,
    assign_by_time,
    assign_entities,
    assign_random,
    split_fractions,
    time_cutoffs,
    window_labels,
    window_starts,
)
from tabbert.errors import DataError, TabbertError
from tabbert.options import PrepareOptions

DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)
KEY_LIMIT = 2**62  # the entity-then-time sort key (entity rank x time span + time) stays below this
TIME_UNITS_US = (MICROSECONDS_PER_MINUTE, MICROSECONDS_PER_SECOND, 1_000)  # a minute, a second, a millisecond


def source_digest(path: str | Path) -> str:
    """SHA-256 over the bytes of a file, or of every file of a folder in name order."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(_file_sha256(file))
    return digest.hexdigest()


def _file_sha256(file: Path) -> bytes:
    """SHA-256 of a file, hashed from its memory map: no copy of the bytes into a buffer."""
    with open(file, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return hashlib.sha256().digest()
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return hashlib.sha256(mapped).digest()


def _lowest_priority() -> None:
    """Let the calling thread run only when no other thread wants its core (Linux; elsewhere a no-op)."""
    if hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def prepare(source: str, input: str | Path, out: str | Path, options: PrepareOptions | None = None,
            **settings) -> PreparedDataset:
    """Read ``input`` with the ``source`` reader and write the prepared dataset to ``out``.

    ``options`` and ``settings`` (its fields by name: ``seq_len``, ``stride``, ``split``,
    ``fractions``, ``cutoffs``, ``seed``, ``schema``, ``keep_missing``, ``time_features``) are
    :class:`~tabbert.options.PrepareOptions`. ``split`` is ``entity`` (default: each entity's
    windows in one split, no leakage), ``time`` (by the time of a window's newest row;
    ``cutoffs`` are the ISO dates where validation and test begin, else row-time quantiles of
    ``fractions``) or ``random`` (the reference protocol: windows shuffled into splits;
    overlapping windows of one entity leak across splits).
    """
    options = PrepareOptions.create(options, source=source, **settings)
    check_output_dir(Path(out))
    if not Path(input).exists():
        raise DataError(input, "input not found")
    started = time.perf_counter()
    # the input is hashed beside the reading, on the time the reader leaves a core idle
    with ThreadPoolExecutor(max_workers=1, initializer=_lowest_priority) as pool:
        digest = pool.submit(source_digest, input)
        table = read_source(source, input, schema=options.schema, **options.reader_options())
        read_seconds = round(time.perf_counter() - started, 3)
        source_info = {"kind": source, "path": str(Path(input).resolve()), "read_seconds": read_seconds}
        return prepare_table(
            table, out, seq_len=options.seq_len, stride=options.stride, split=options.split,
            fractions=options.fractions, cutoffs=options.cutoffs, seed=options.seed, source_info=source_info,
            digest=digest, started=started,
        )


def prepare_table(table: Table, out: str | Path, *, seq_len: int = 10, stride: int = 5, split: str = "entity",
                  fractions=DEFAULT_FRACTIONS, cutoffs=None, seed: int = 0, source_info: dict | None = None,
                  digest=None, started: float | None = None) -> PreparedDataset:
    """Prepare an already-read :class:`Table` (see :func:`prepare` for the options)."""
    started = time.perf_counter() if started is None else started
    _check_options(out, seq_len, stride, split, fractions)
    if table.frame.height == 0:
        raise DataError(table.path, f"no rows left to prepare ({table.rows_in} read, dropped: {table.dropped})")
    with PreparedWriter(out) as writer:
        meta = _prepare_table(table, writer, seq_len, stride, split, fractions, cutoffs, seed)
        meta["source"] = dict(source_info or {"kind": table.schema.source, "path": table.path})
        if digest is not None:
            meta["source"]["sha256"] = digest.result()
        meta["seconds"] = {"total": round(time.perf_counter() - started, 3)}
        warn_empty_splits(meta)
        return writer.commit(meta)


def warn_empty_splits(meta: dict) -> None:
    """Warn when validation or test got no windows, saying why and what to change."""
    empty = [name for name in ("val", "test") if meta["windows"][name] == 0]
    if not empty:
        return
    if meta["split"]["method"] == "entity":
        windowed = meta["entities"] - meta["short_entities"]["count"]
        why = (f"the entity split keeps each entity's windows in one split, and {windowed} "
               f"{'entity has' if windowed == 1 else 'entities have'} a window of {meta['seq_len']} rows")
        fix = "use --split time (validation and test from the newest rows)"
    else:
        why = f"the {meta['split']['method']} split left {' and '.join(empty)} without windows"
        fix = "change --fractions" + (" or --cutoffs" if meta["split"]["method"] == "time" else "")
    warnings.warn(f"no {' and no '.join(empty)} windows: {why}; {fix}", UserWarning, stacklevel=3)


class _Ordered(NamedTuple):
    """The rows in entity-then-time order: ``order`` (``None``: in it already), their times and gaps."""

    order: np.ndarray | None
    times: np.ndarray
    gaps: np.ndarray


def _prepare_table(table: Table, writer: PreparedWriter, seq_len, stride, split, fractions, cutoffs, seed) -> dict:
    """Hand every part of the dataset to ``writer`` as soon as it is computed; return the metadata.

    A second thread sorts the rows, then gathers and writes the raw values, labels and window
    lists, while the tokenizer is fitted (the fields need the row order only once their ids go
    into the matrix) and the token matrix assembled.
    """
    frame, schema = table.frame, table.schema
    entities, entity_offsets, entity_of_run, run_lengths = entity_runs(frame)
    writer.add_array("entity_offsets", entity_offsets)
    writer.add_json("entities", entities)
    lengths = np.diff(entity_offsets)
    starts, window_entity = window_starts(entity_offsets, seq_len, stride)

    split_info: dict = {"method": split, "fractions": list(fractions), "seed": seed}
    times, window_split, time_bounds = None, None, None  # the time split needs the times before the sort
    if split == "entity":
        entity_split = assign_entities(len(entities), fractions, seed)
        train_rows = np.repeat(entity_split[entity_of_run] == 0, run_lengths)
        window_split = entity_split[window_entity]
    elif split == "time":
        times = row_times(frame)
        time_bounds = _parse_cutoffs(cutoffs) if cutoffs else time_cutoffs(times, fractions)
        split_info["cutoffs"] = [str(np.datetime64(b, "us")) for b in time_bounds]
        train_rows = times < time_bounds[0]
    else:
        train_rows = np.ones(frame.height, dtype=bool)
        window_split = assign_random(starts.size, fractions, seed)
    if not train_rows.any():
        raise TabbertError("the training split has no rows: change --split, the fractions or the cutoffs")

    with ThreadPoolExecutor(max_workers=1) as pool:
        ordering = pool.submit(_order_rows, frame, writer, entity_offsets, entity_of_run, run_lengths, times)
        rest = pool.submit(_write_rows_and_windows, table, writer, ordering, starts, seq_len, window_split, time_bounds)

        def time_feature(feature: str) -> np.ndarray:
            ordered = ordering.result()
            return time_feature_in_order(feature, ordered.times, ordered.gaps)

        tokenizer, tokens = TabularTokenizer.fit_encode(
            frame, schema, rows=train_rows, order=lambda: ordering.result().order, time_feature=time_feature
        )
        writer.add_array("tokens", tokens)
        writer.add_tokenizer(tokenizer)
        value_columns, windows, label_stats = rest.result()

    short = lengths < seq_len
    meta = {
        "task": schema.task,
        "labels": list(schema.labels),
        "seq_len": seq_len,
        "stride": stride,
        "split": split_info,
        "rows_in": table.rows_in,
        "rows_kept": frame.height,
        "dropped": dict(table.dropped),
        "entities": len(entities),
        "short_entities": {"count": int(short.sum()), "rows": int(lengths[short].sum())},
        "tokenizer_rows": int(train_rows.sum()),
        "fields": tokenizer.field_names,
        "value_columns": value_columns,
        "windows": windows,
        **label_stats,
    }
    if table.rows_in != frame.height + sum(table.dropped.values()):
        raise TabbertError(f"row accounting failed: {table.rows_in} in, {frame.height} kept, dropped {table.dropped}")
    return meta


def _order_rows(frame: pl.DataFrame, writer: PreparedWriter, entity_offsets, entity_of_run, run_lengths,
                times: np.ndarray | None = None) -> _Ordered:
    """Sort the rows by entity, then time (``times``: the rows' own, when already read); write their times."""
    order, times = row_order(entity_of_run, run_lengths, row_times(frame) if times is None else times)
    writer.add_array("times", times)
    return _Ordered(order, times, gap_seconds(times, entity_offsets))


def _write_rows_and_windows(table: Table, writer: PreparedWriter, ordering: Future[_Ordered], starts, seq_len: int,
                            window_split=None, time_bounds=None) -> tuple[list[str], dict, dict]:
    """Write the raw values, source row ids, labels or targets (rows in order) and each split's windows.

    ``starts`` are the start rows of all windows, ``window_split`` their split ids or, for the
    time split (``None``), those that the time of each window's newest row takes in
    ``time_bounds``. Returns the value column names, the window count per split and the label counts.
    """
    frame, schema = table.frame, table.schema
    order, times, gaps = ordering.result()
    if window_split is None:
        window_split = assign_by_time(times[starts + seq_len - 1], time_bounds)
    value_columns = [f.name for f in schema.fields if f.kind == "numeric"]
    values = np.empty((frame.height, len(value_columns) + 1), dtype=np.float32)
    for j, column in enumerate(value_columns):
        values[:, j] = _ordered(frame.get_column(column).cast(pl.Float32).to_numpy(), order)
    values[:, -1] = gaps
    writer.add_array("values", values)
    # source row numbers fit in int64: the same bits, read as signed
    writer.add_array("row_ids", _ordered(frame.get_column(ROW).to_numpy(), order).view(np.int64))
    label_stats: dict = {}
    if schema.task == "classification" and schema.labels:
        labels = _ordered(frame.get_column(schema.labels[0]).to_numpy(), order).astype(np.int8, copy=False)
        writer.add_array("labels", labels)
        label_stats["positive_rows"] = int(labels.sum())
        label_stats["positive_windows"] = {}
        positive_windows = window_labels(labels, starts, seq_len)
    elif schema.task == "regression":
        targets = _ordered(frame.select(schema.labels).to_numpy(), order).astype(np.float32, copy=False)
        writer.add_array("targets", targets)
    counts = {}
    for index, name in enumerate(SPLITS):
        in_split = window_split == index
        writer.add_array(f"windows_{name}", starts[in_split])  # ascending, as ``starts`` are
        counts[name] = int(in_split.sum())
        if "positive_windows" in label_stats:
            label_stats["positive_windows"][name] = int(positive_windows[in_split].sum())
    return [*value_columns, "gap_seconds"], counts, label_stats


def entity_runs(frame: pl.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The entities (by their text), where each one's rows will begin, and the runs of rows of one entity.

    Returns the sorted entity keys, ``entity_offsets`` (plus the row count), and for each run of
    consecutive rows of one entity its entity's index and its length. Rows usually come in runs
    of one entity, so entities are ranked run by run.
    """
    runs = frame.get_column(ENTITY).rle().struct.unnest()
    run_lengths = runs.get_column("len").to_numpy()
    run_keys = runs.get_column("value").cast(pl.String)
    entities = run_keys.unique().sort()
    entity_of_run = run_keys.replace_strict(entities, pl.int_range(entities.len(), eager=True)).to_numpy()
    entity_offsets = np.zeros(entities.len() + 1, dtype=np.int64)
    entity_offsets[1:] = np.cumsum(np.bincount(entity_of_run, weights=run_lengths, minlength=entities.len()))
    return entities.to_list(), entity_offsets, entity_of_run, run_lengths


def row_times(frame: pl.DataFrame) -> np.ndarray:
    """The rows' times, in epoch microseconds."""
    return frame.get_column(TIME).dt.cast_time_unit("us").to_physical().to_numpy()


def row_order(entity_of_run: np.ndarray, run_lengths: np.ndarray,
              times: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """The stable order of rows by entity index, then time (``None`` when in it already), and their times in it.

    One integer sort of ``entity * time span + time`` (time in minutes, seconds or milliseconds
    when every row's time is a whole number of them and microseconds overflow).
    """
    n_entities = int(entity_of_run.max()) + 1
    first, last = int(times.min()), int(times.max())
    unit = 1
    if n_entities * (last - first + 1) >= KEY_LIMIT:  # count time in the coarsest unit that loses nothing
        unit = next((u for u in TIME_UNITS_US if not np.any(times % u)), 1)
    span = (last - first) // unit + 1
    if n_entities * span < KEY_LIMIT:
        key = np.repeat(entity_of_run * span - first // unit, run_lengths)  # one array as long as the table
        key += times // unit if unit > 1 else times
        order = None if bool((key[1:] >= key[:-1]).all()) else np.argsort(key, kind="stable")
        if order is not None:
            times = np.take(times, order, out=key)  # the sort key is spent: its memory takes the times
    else:
        order = np.lexsort((times, np.repeat(entity_of_run, run_lengths)))
        times = times[order]
    return order, times


def _ordered(values: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    """``values`` (rows first) in entity-then-time order."""
    return values if order is None else np.take(values, order, axis=0)


def _check_options(out, seq_len: int, stride: int, split: str, fractions) -> None:
    """Fail before any work on options that cannot be prepared."""
    if split not in SPLIT_METHODS:
        raise TabbertError(f"unknown split {split!r}; choose from {SPLIT_METHODS}")
    split_fractions(fractions)
    if seq_len < 1 or stride < 1:
        raise TabbertError(f"--seq-len and --stride must be >= 1 (got {seq_len}, {stride})")
    check_output_dir(Path(out))


def _parse_cutoffs(cutoffs) -> tuple[int, int]:
    try:
        bounds = tuple(int(np.datetime64(value, "us").astype(np.int64)) for value in cutoffs)
    except ValueError as exc:
        raise TabbertError(f"cannot parse split cutoffs {cutoffs}: {exc}") from exc
    if len(bounds) != 2 or bounds[0] > bounds[1]:
        raise TabbertError(f"--cutoffs needs two dates, validation start <= test start, got {cutoffs}")
    return bounds
