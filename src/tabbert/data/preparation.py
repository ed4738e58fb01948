"""From a raw table to a prepared dataset: split, fit the tokenizer, encode, order, window, write."""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from tabbert.data.codes import categorical_fields, raw_codes
from tabbert.data.encoders import CategoricalEncoder, FieldEncoder, id_dtype
from tabbert.data.ordering import EntityRuns, RowOrder, entity_runs, row_times, time_feature
from tabbert.data.prepared import PreparedDataset, PreparedWriter, check_output_dir
from tabbert.data.recency import with_recency
from tabbert.data.schema import ROW, FieldSpec, Table, TableSchema
from tabbert.data.sources import has_labels, read_source
from tabbert.data.tokenizer import TabularTokenizer, field_encoders, is_time_feature, row_order
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
from tabbert.errors import ArtifactError, DataError, TabbertError
from tabbert.options import PrepareOptions
from tabbert.run_layout import run_paths
from tabbert.threads import resolve_threads

DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)
FIT_THREADS = 2  # fields fitted and encoded at once: Polars and NumPy release the GIL
ASSEMBLY_ROWS = 1 << 15  # rows of the id matrix filled field by field at a time


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
    ``fractions``, ``cutoffs``, ``seed``, ``schema``, ``keep_missing``, ``time_features``, ``recency``,
    ``tokenizer``) are :class:`~tabbert.options.PrepareOptions`. ``split`` is ``entity`` (default:
    each entity's windows in one split, no leakage), ``time`` (by the time of a window's newest row;
    ``cutoffs`` are the ISO dates where validation and test begin, else row-time quantiles of
    ``fractions``) or ``random`` (the reference protocol: windows shuffled into splits;
    overlapping windows of one entity leak across splits).

    Input without its label columns (card without ``Is Fraud?``, generic without the schema's
    labels) gives a dataset for pre-training only: ``meta["labelled"]`` is False. ``tokenizer``
    (a run, ``RUN`` or ``RUN/model``) encodes the rows with that run's tokenizer instead of fitting
    one; values it never saw become [UNK].
    """
    options = PrepareOptions.create(options, source=source, **settings)
    check_output_dir(Path(out))
    if not Path(input).exists():
        raise DataError(input, "input not found")
    started = time.perf_counter()
    reader_options = options.reader_options()
    tokenizer = tokenizer_file = None
    if options.tokenizer is not None:
        tokenizer, tokenizer_file = run_tokenizer(options.tokenizer)
        if source == "card" and not options.time_features:
            reader_options["time_features"] = tokenizer.schema.time_features
        if source == "card" and options.recency is None:
            reader_options["recency"] = tokenizer.schema.recency
    labelled = has_labels(source, input, schema=options.schema)
    # the input is hashed beside the reading, on the time the reader leaves a core idle
    with ThreadPoolExecutor(max_workers=1, initializer=_lowest_priority) as pool:
        digest = pool.submit(source_digest, input)
        table = read_source(source, input, schema=options.schema, require_labels=labelled, **reader_options)
        read_seconds = round(time.perf_counter() - started, 3)
        source_info = {"kind": source, "path": str(Path(input).resolve()), "read_seconds": read_seconds}
        return prepare_table(
            table, out, seq_len=options.seq_len, stride=options.stride, split=options.split,
            fractions=options.fractions, cutoffs=options.cutoffs, seed=options.seed, source_info=source_info,
            digest=digest, started=started, threads=resolve_threads(options.threads) or FIT_THREADS,
            tokenizer=tokenizer, tokenizer_from=tokenizer_file,
        )


def run_tokenizer(path: str | Path) -> tuple[TabularTokenizer, Path]:
    """The tokenizer saved with the run at ``path`` (``RUN`` or ``RUN/model``: see
    :func:`~tabbert.run_layout.run_paths`) and its file."""
    _, model_dir = run_paths(path)
    file = model_dir / "tokenizer.json"
    if not file.is_file():
        raise ArtifactError(f"{model_dir}: no tokenizer.json; --tokenizer takes a pre-training run (RUN or RUN/model)")
    return TabularTokenizer.load(file), file


def check_reusable(tokenizer: TabularTokenizer, schema: TableSchema, where: str) -> None:
    """Refuse to encode a table of ``schema`` with ``tokenizer`` unless both name the same source,
    fields (with their bins), time features and recency fields."""
    fitted = tokenizer.schema
    differences = [
        f"{what} {mine} here, {theirs} in the tokenizer"
        for what, mine, theirs in (
            ("source", schema.source, fitted.source),
            ("fields", [_describe(f) for f in schema.fields], [_describe(f) for f in fitted.fields]),
            ("time features", list(schema.time_features), list(fitted.time_features)),
            ("time bins", schema.time_bins, fitted.time_bins),
            ("recency fields", list(schema.recency), list(fitted.recency)),
        )
        if mine != theirs
    ]
    if differences:
        raise TabbertError(f"{where}: the schema does not match the tokenizer's ({'; '.join(differences)}); "
                           "prepare with the source and schema the tokenizer was fitted on")


def _describe(field: FieldSpec) -> str:
    """A field as the schema check names it: name, kind, and what fitting it depends on."""
    if field.kind == "numeric":
        return f"{field.name} (numeric, {field.n_bins} bins)"
    return f"{field.name} (categorical{f', min count {field.min_count}' if field.min_count > 1 else ''})"


def prepare_table(table: Table, out: str | Path, *, seq_len: int = 10, stride: int = 5, split: str = "entity",
                  fractions=DEFAULT_FRACTIONS, cutoffs=None, seed: int = 0, source_info: dict | None = None,
                  digest=None, started: float | None = None, threads: int = FIT_THREADS,
                  tokenizer: TabularTokenizer | None = None, tokenizer_from: str | Path | None = None,
                  ) -> PreparedDataset:
    """Prepare an already-read :class:`Table` (see :func:`prepare` for the options); ``threads`` fit
    the fields and derive the recency fields. ``tokenizer``, fitted already, encodes the rows instead
    of one fitted on the training rows (``tokenizer_from``: where it was read from, for the metadata)."""
    started = time.perf_counter() if started is None else started
    _check_options(out, seq_len, stride, split, fractions)
    if table.frame.height == 0:
        raise DataError(table.path, f"no rows left to prepare ({table.rows_in} read, dropped: {table.dropped})")
    if tokenizer is not None:
        check_reusable(tokenizer, table.schema, table.path)
    table.check_time_features()
    with PreparedWriter(out) as writer:
        meta = _prepare_table(table, writer, seq_len, stride, split, fractions, cutoffs, seed, threads, tokenizer)
        if tokenizer is not None:
            meta["tokenizer_from"] = str(tokenizer_from or "a tokenizer given")
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
    """The rows in order (see :mod:`tabbert.data.ordering`) and their gaps, shared by the values and the tokens."""

    rows: RowOrder
    gaps: np.ndarray

    def time_feature(self, name: str) -> np.ndarray:
        if name == "gap":
            return self.gaps
        return time_feature(name, self.rows.times, self.rows.entity_offsets)


def _some_windows(entities: list, entity_offsets: np.ndarray, seq_len: int,
                  stride: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`window_starts`, refused when every entity is shorter than a window."""
    starts, window_entity = window_starts(entity_offsets, seq_len, stride)
    if starts.size == 0:
        lengths = np.diff(entity_offsets)
        longest = int(lengths.argmax())
        raise TabbertError(
            f"--seq-len {seq_len} is longer than every entity (the longest, {entities[longest]!r}, has "
            f"{lengths[longest]} rows), so there are no windows; use --seq-len {lengths[longest]} or less"
        )
    return starts, window_entity


def _prepare_table(table: Table, writer: PreparedWriter, seq_len, stride, split, fractions, cutoffs, seed,
                   threads: int = FIT_THREADS, fitted: TabularTokenizer | None = None) -> dict:
    """Hand every part of the dataset to ``writer`` as soon as it is computed; return the metadata.

    A second thread sorts the rows; the raw-value codes are taken in that order (they feed the
    recency fields too). The second thread then gathers and writes the raw values, labels and
    window lists, while the recency fields are derived, the tokenizer is fitted and the token
    matrix assembled.
    """
    frame, schema = table.frame, table.schema
    runs = entity_runs(frame)
    entities, entity_offsets = runs.entities, runs.entity_offsets
    writer.add_array("entity_offsets", entity_offsets)
    writer.add_json("entities", entities)
    lengths = np.diff(entity_offsets)
    starts, window_entity = _some_windows(entities, entity_offsets, seq_len, stride)

    splits = _assign_splits(frame, runs, starts.size, window_entity, split, fractions, cutoffs, seed)
    writer.add_json("splits", splits.members)
    if not splits.train_rows.any():
        raise TabbertError("the training split has no rows: change --split, the fractions or the cutoffs")

    with ThreadPoolExecutor(max_workers=1) as pool:
        ordering = pool.submit(_order_rows, frame, schema, writer, runs, splits.times)
        order = ordering.result().rows.order
        codes = raw_codes(frame, schema, order, threads=threads)
        rest = pool.submit(_write_rows_and_windows, table, writer, ordering, codes, starts, seq_len,
                           splits.window_split, splits.time_bounds)
        if schema.recency:  # the recency fields need the row order and codes before the fields are fitted
            frame = with_recency(frame, schema, np.arange(frame.height) if order is None else order,
                                 codes=_recency_codes(schema, codes), threads=threads)
        tokenizer, tokens = _fit_encode(frame, schema, splits.train_rows, ordering, threads, fitted)
        writer.add_array("tokens", tokens)
        writer.add_tokenizer(tokenizer)
        value_columns, windows, label_stats = rest.result()

    short = lengths < seq_len
    meta = {
        "task": schema.task,
        "labels": list(schema.labels),
        "labelled": table.labelled,
        "seq_len": seq_len,
        "stride": stride,
        "split": splits.info,
        "rows_in": table.rows_in,
        "rows_kept": frame.height,
        "dropped": dict(table.dropped),
        "entities": len(entities),
        "short_entities": {"count": int(short.sum()), "rows": int(lengths[short].sum())},
        **_encoding_meta(tokenizer, tokens, splits.train_rows, reused=fitted is not None),
        "fields": tokenizer.field_names,
        "value_columns": value_columns,
        "windows": windows,
        **label_stats,
    }
    if table.rows_in != frame.height + sum(table.dropped.values()):
        raise TabbertError(f"row accounting failed: {table.rows_in} in, {frame.height} kept, dropped {table.dropped}")
    return meta


class _Splits(NamedTuple):
    """Which rows fit the tokenizer and which split each window (or, for the time split, row) is in."""

    info: dict  # the split's description in the metadata
    train_rows: np.ndarray
    members: dict[str, list[str]]  # split name -> entity keys
    window_split: np.ndarray | None = None  # None for the time split: windows follow their newest row's time
    times: np.ndarray | None = None  # the rows' times, when the split read them (before the sort)
    time_bounds: tuple[int, int] | None = None


def _assign_splits(frame: pl.DataFrame, runs: EntityRuns, n_windows: int, window_entity: np.ndarray, split: str,
                   fractions, cutoffs, seed: int) -> _Splits:
    """The ``entity``, ``time`` or ``random`` split of the table (see :func:`prepare`)."""
    info: dict = {"method": split, "fractions": list(fractions), "seed": seed}
    entities = runs.entities
    if split == "entity":
        entity_split = assign_entities(len(entities), fractions, seed)
        train_rows = np.repeat(entity_split[runs.entity_of_run] == 0, runs.run_lengths)
        return _Splits(info, train_rows, split_members(entities, np.arange(len(entities)), entity_split),
                       entity_split[window_entity])
    if split == "time":
        times = row_times(frame)
        bounds = _parse_cutoffs(cutoffs) if cutoffs else time_cutoffs(times, fractions)
        info["cutoffs"] = [str(np.datetime64(b, "us")) for b in bounds]
        members = split_members(entities, np.repeat(runs.entity_of_run, runs.run_lengths),
                                assign_by_time(times, bounds))
        return _Splits(info, times < bounds[0], members, None, times, bounds)
    window_split = assign_random(n_windows, fractions, seed)
    return _Splits(info, np.ones(frame.height, dtype=bool), split_members(entities, window_entity, window_split),
                   window_split)


def _order_rows(frame: pl.DataFrame, schema: TableSchema, writer: PreparedWriter, runs: EntityRuns,
                times: np.ndarray | None = None) -> _Ordered:
    """Order the rows as the tokenizer reads them (``times``: the rows' own, when already read); write their times."""
    rows = row_order(frame, schema, runs=runs, times=times)
    writer.add_array("times", rows.times)
    return _Ordered(rows, time_feature("gap", rows.times, rows.entity_offsets))


def _fit_encode(frame: pl.DataFrame, schema: TableSchema, train_rows: np.ndarray, ordering: Future[_Ordered],
                threads: int = FIT_THREADS,
                fitted: TabularTokenizer | None = None) -> tuple[TabularTokenizer, np.ndarray]:
    """The tokenizer fitted on ``train_rows`` and the ids of every row in order, from one pass over each field.

    The ids are those ``TabularTokenizer(schema).fit(frame, train_rows).encode(frame)`` gives, in
    the order ``ordering`` brings, stored in the narrowest type holding the vocabulary. The
    fields are fitted on their own threads while another computes the order; the table's fields
    need it only when their ids go into the matrix, which the same threads fill a block of rows
    at a time. With ``fitted`` (a tokenizer of the same schema) its fields encode the rows, unfitted.
    """
    encoders = field_encoders(schema) if fitted is None else fitted.fields

    @cache
    def train_rows_in_order() -> np.ndarray:
        order = ordering.result().rows.order
        return train_rows if order is None else train_rows[order]

    def fit_field(encoder: FieldEncoder) -> tuple[np.ndarray, bool]:
        """The field's local ids, and whether they come in output order (else in frame order)."""
        if is_time_feature(encoder):
            values = ordering.result().time_feature(encoder.source)
            ids = encoder.encode(values) if fitted else encoder.fit_encode(values, train_rows_in_order())
            return ids, True
        column = frame.get_column(encoder.source)
        return (encoder.encode(column) if fitted else encoder.fit_encode(column, train_rows)), False

    # text and wide-ranging integers go through a hash map, which takes longest: those fields
    # start first, while the rest share the other threads
    slow = [j for j, encoder in enumerate(encoders) if isinstance(encoder, CategoricalEncoder)
            and not isinstance(frame.schema[encoder.source], (pl.Categorical, pl.Enum))]
    start_order = slow + [j for j in range(len(encoders)) if j not in slow]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        fitted = dict(zip(start_order, pool.map(fit_field, [encoders[j] for j in start_order])))
        field_ids = [fitted[j] for j in range(len(encoders))]
        tokenizer = TabularTokenizer(schema, encoders)
        order = ordering.result().rows.order
        tokens = np.empty((frame.height, len(encoders)), dtype=id_dtype(tokenizer.vocab_size))
        offsets = [tokens.dtype.type(offset) for offset in tokenizer.field_offsets]

        def assemble(begin: int) -> None:
            """Put one block of rows in order, field by field: the block stays in cache."""
            out_rows = slice(begin, begin + ASSEMBLY_ROWS)
            frame_rows = None if order is None else order[out_rows]
            block = tokens[out_rows]
            for j, (local_ids, in_output_order) in enumerate(field_ids):
                in_order = in_output_order or frame_rows is None
                ids = local_ids[out_rows] if in_order else np.take(local_ids, frame_rows)
                np.add(ids, offsets[j], out=block[:, j])  # local ids become global ids

        list(pool.map(assemble, range(0, frame.height, ASSEMBLY_ROWS)))
    return tokenizer, tokens


def _encoding_meta(tokenizer: TabularTokenizer, tokens: np.ndarray, train_rows: np.ndarray, *, reused: bool) -> dict:
    """How the rows were encoded: the rows the tokenizer was fitted on, or for a reused tokenizer the
    rows of each input field holding a value it never saw."""
    if not reused:
        return {"tokenizer_rows": int(train_rows.sum())}
    return {"unseen": {name: int(rows.sum()) for name, rows in tokenizer.unseen(tokens).items() if rows.any()}}


def _recency_codes(schema: TableSchema, codes: np.ndarray) -> dict[str, np.ndarray]:
    """The columns of the code matrix that recency fields read, each contiguous."""
    return {name: np.ascontiguousarray(codes[:, j]) for j, name in enumerate(categorical_fields(schema))
            if name in schema.recency}


def _write_rows_and_windows(table: Table, writer: PreparedWriter, ordering: Future[_Ordered],
                            codes: np.ndarray, starts, seq_len: int, window_split=None,
                            time_bounds=None) -> tuple[list[str], dict, dict]:
    """Write the raw values and ``codes``, source row ids, labels or targets (rows in order) and each split's windows.

    ``starts`` are the start rows of all windows, ``window_split`` their split ids or, for the
    time split (``None``), those that the time of each window's newest row takes in
    ``time_bounds``. Returns the value column names, the window count per split and the label counts.
    """
    frame, schema = table.frame, table.schema
    (order, times, _), gaps = ordering.result()
    if window_split is None:
        window_split = assign_by_time(times[starts + seq_len - 1], time_bounds)
    value_columns = [f.name for f in schema.fields if f.kind == "numeric"]
    values = np.empty((frame.height, len(value_columns) + 1), dtype=np.float32)
    for j, column in enumerate(value_columns):
        values[:, j] = _ordered(frame.get_column(column).cast(pl.Float32).to_numpy(), order)
    values[:, -1] = gaps
    writer.add_array("values", values)
    writer.add_array("codes", codes)
    # source row numbers fit in int64: the same bits, read as signed
    writer.add_array("row_ids", _ordered(frame.get_column(ROW).to_numpy(), order).view(np.int64))
    label_stats: dict = {}
    if table.labelled and schema.task == "classification" and schema.labels:
        labels = _ordered(frame.get_column(schema.labels[0]).to_numpy(), order).astype(np.int8, copy=False)
        writer.add_array("labels", labels)
        label_stats["positive_rows"] = int(labels.sum())
        label_stats["positive_windows"] = {}
        label_stats["positive_window_rule"] = "any"  # a window is positive when any of its rows is
        positive_windows = window_labels(labels, starts, seq_len, "any")
    elif table.labelled and schema.task == "regression":
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


def split_members(entities: list[str], entity_of_item: np.ndarray, split_of_item: np.ndarray) -> dict[str, list[str]]:
    """Split name -> the keys of the entities that have an item (an entity, a row, a window) in it."""
    present = np.zeros((len(SPLITS), len(entities)), dtype=bool)
    present[split_of_item, entity_of_item] = True
    return {name: [entities[i] for i in np.flatnonzero(present[k])] for k, name in enumerate(SPLITS)}


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
