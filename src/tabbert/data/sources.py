"""Readers: turn a raw source into a normalized :class:`~tabbert.data.schema.Table`.

Sources
-------
``card``     IBM's synthetic card transactions (``card_transaction.v1.csv`` or a slice of it) as
             CSV, gzip-compressed CSV or Parquet: :func:`read_card`.
``prsa``     the twelve hourly station files of the UCI Beijing multi-site air-quality data:
             :func:`read_prsa`.
``generic``  any CSV or Parquet data described by a schema file (see
             :class:`~tabbert.data.schema.GenericSchemaFile`): :func:`read_generic`.

A path is a file, a list of files, or a folder standing for its matching files sorted by name.
An empty text value is a missing value everywhere.

How reading works
-----------------
Each reader builds one lazy Polars query over the raw files and collects it once with the
streaming engine. CSV values are read as text (types are never guessed from the first rows) and
parsed with vectorized expressions. Every strict rule is a boolean "bad" expression evaluated in
the same pass, so raw text is not kept. Only when a rule fires are the files scanned again to
report the first offending row: the error names the file, the column, the 1-based data row
(header excluded) and the value. A CSV row with too many fields, or a byte that is not UTF-8,
stops the reader, and a row with too few reads as one whose last columns are empty: only then
(an error, or an empty value in a file's last column) are the files read again, line by line,
to name the row whose field count differs from the header's, or the line that is not UTF-8.

Rows stay in source order; ``_row`` numbers them from 0 across all files read, in reading order.
Rows a reader drops (missing values in PRSA, missing labels in generic sources) are counted in
:attr:`Table.dropped` under ``"missing <column>"``, each row under its first missing column in
file order, so ``rows_in == rows_kept + sum(dropped.values())``.
"""

from __future__ import annotations

import csv
import datetime
import functools
import gzip
import inspect
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np
import polars as pl

from tabbert.data.schema import (
    ENTITY,
    MICROSECONDS_PER_MINUTE,
    MINUTES_PER_DAY,
    ROW,
    TIME,
    FieldSpec,
    GenericSchemaFile,
    SchemaError,
    Table,
    TableSchema,
)
from tabbert.errors import DataError, TabbertError

PathLike = str | os.PathLike
Sources = PathLike | Sequence[PathLike]
Scan = Callable[[Sequence[Path]], pl.LazyFrame]

CARD_COLUMNS = (
    "User", "Card", "Year", "Month", "Day", "Time", "Amount", "Use Chip", "Merchant Name",
    "Merchant City", "Merchant State", "Zip", "MCC", "Errors?", "Is Fraud?",
)  # fmt: skip
CARD_FIELDS = (
    "Card", "Amount", "Use Chip", "Merchant Name", "Merchant City", "Merchant State", "Zip", "MCC", "Errors?",
)  # fmt: skip
CARD_LABEL = "Is Fraud?"
# columns with a closed set of values: a value's code is its position (a time's code is its minute of the day)
CARD_USE_CHIP = pl.Enum(["Swipe Transaction", "Chip Transaction", "Online Transaction"])
CARD_FRAUD = pl.Enum(["No", "Yes"])
CARD_CLOCK = pl.Enum([f"{hour:02d}:{minute:02d}" for hour in range(24) for minute in range(60)])
CARD_CSV_TYPES = {
    "User": pl.Int64, "Card": pl.Int64, "Year": pl.Int32, "Month": pl.Int32, "Day": pl.Int32, "Time": CARD_CLOCK,
    "Amount": pl.String, "Use Chip": CARD_USE_CHIP, "Merchant Name": pl.Int64, "Merchant City": pl.Categorical,
    "Merchant State": pl.Categorical, "Zip": pl.Float64, "MCC": pl.Int64, "Errors?": pl.Categorical,
    CARD_LABEL: CARD_FRAUD,
}  # fmt: skip

PRSA_COLUMNS = (
    "No", "year", "month", "day", "hour", "PM2.5", "PM10", "SO2", "NO2", "CO", "O3", "TEMP",
    "PRES", "DEWP", "RAIN", "wd", "WSPM", "station",
)  # fmt: skip
PRSA_FIELDS = ("SO2", "NO2", "CO", "O3", "TEMP", "PRES", "DEWP", "RAIN", "wd", "WSPM")
PRSA_TARGETS = ("PM2.5", "PM10")
PRSA_BINS = 50

GENERIC_NULL_VALUES = ("NA", "N/A", "NaN", "null")
NEGATIVE_VALUES = ("0", "no", "false", "n")
DATA_FILE_PATTERNS = ("*.csv", "*.csv.gz", "*.parquet")
PARQUET_SUFFIXES = (".parquet", ".pq")

_INTEGER = r"^-?[0-9]+$"
_YEARS = (1, 9999)  # the calendar of dates given as parts
_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # in a common year
_ISO_FORMATS = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%d")
_TIME_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
FLOAT32_MAX = float(np.finfo(np.float32).max)  # prepared values are float32: larger ones would become inf
_BAD = "__bad"
_FILE = "__file"
_DROP = "__drop"
_LAST_EMPTY = "__last_empty"


@dataclass(frozen=True)
class _Check:
    """A strict-parsing rule: ``bad`` is true on rows whose raw ``column`` value is unacceptable."""

    column: str
    bad: pl.Expr
    expected: str


@dataclass
class _Query:
    """What a reader asks of the raw rows.

    ``parsed`` columns are computed first (each once, however often it is used), then the output
    ``values`` and the strict ``checks``, both from raw and parsed columns. A row missing a value
    in one of the ``drop_if_missing`` output columns is dropped and counted.
    """

    parsed: dict[str, pl.Expr] = field(default_factory=dict)
    values: dict[str, pl.Expr] = field(default_factory=dict)
    checks: list[_Check] = field(default_factory=list)
    drop_if_missing: tuple[str, ...] = ()

    def parse(self, expr: pl.Expr) -> pl.Expr:
        """Compute ``expr`` once, ahead of values and checks; return a reference to the result."""
        name = f"__parsed{len(self.parsed)}"
        self.parsed[name] = expr
        return pl.col(name)

    def check(self, column: str, bad: pl.Expr, expected: str) -> None:
        self.checks.append(_Check(column, bad, expected))


# ---------------------------------------------------------------------------------------------
# Readers


# how long ago the user last paid this merchant, in this city and zip, in this category, this way, at this hour
CARD_RECENCY = ("Merchant Name", "Merchant City", "Zip", "MCC", "Use Chip", "hour")


def read_card(path: Sources, *, time_features: Sequence[str] = ("hour", "weekday", "gap"),
              recency: Sequence[str] = CARD_RECENCY, require_labels: bool = True) -> Table:
    """Read IBM card transactions (CSV, ``.csv.gz`` or Parquet) into the normalized layout.

    The entity is ``User`` (an integer id); ``_time`` comes from Year, Month, Day and Time
    ("HH:MM"). Input fields: Card, Amount (numeric, from "$134.09" or "$-77.00"), Use Chip,
    Merchant Name, Merchant City, Merchant State, Zip ("91750.0" becomes 91750), MCC and Errors?.
    The categorical fields are integers (Card, Merchant Name, Zip, MCC), Categoricals (one code per
    row keeps 24 M rows small) or, for Use Chip, an Enum of its three values. The label is
    ``Is Fraud?`` (Yes/No). Empty values are missing values (the file leaves Merchant State, Zip
    and Errors? empty); User, Card and MCC must be integers, Merchant Name and Zip too when
    present, and any bad value in a column that is parsed is an error, so no row is ever dropped.
    With ``require_labels=False`` (new transactions to score) the ``Is Fraud?`` column may be
    absent; labels are then null. ``recency`` names the fields (categorical fields and ``hour``)
    whose time since the card holder last used the same value becomes a field of its own
    (:mod:`tabbert.data.recency`); ``()`` leaves the reference fields alone.

    A CSV is first read with its columns' types (integers parsed by the CSV reader, text
    columns straight into Categoricals, and Time, Use Chip and Is Fraud? into Enums of their
    valid values, so that the reader itself checks them); when a value does not parse, it is
    read again as text, where the strict checks find and name the offending row.
    """
    schema = _card_schema(time_features, recency)  # checked before any reading
    files = _source_files(path, DATA_FILE_PATTERNS)
    labelled = require_labels or CARD_LABEL in _columns(files[0])
    expected = CARD_COLUMNS if labelled else tuple(c for c in CARD_COLUMNS if c != CARD_LABEL)
    for file in files:
        _require_exact_columns(file, expected)
    scan, typed_scan = _scanner(as_text=True), None
    if not _is_parquet(files[0]):
        typed_scan = _scanner(types={name: CARD_CSV_TYPES[name] for name in expected})
    frame, rows_in, dropped = _run(_describe(path), files, scan, _card_query(labelled), typed_scan=typed_scan)
    return Table(frame, schema, _describe(path), rows_in, dropped, labelled=labelled)


def _card_query(labelled: bool) -> _Query:
    """The strict parsing of card columns (text) into the normalized layout; see :func:`read_card`."""
    query = _Query()
    for name, what in (("User", "an integer user id"), ("Card", "an integer card number"),
                       ("MCC", "an integer merchant category code")):
        query.check(name, _integer(name).is_null(), what)
    merchant = pl.col("Merchant Name")
    query.check("Merchant Name", merchant.is_not_null() & _integer("Merchant Name").is_null(), "an integer merchant id")
    minute_of_day = query.parse(pl.col("Time").cast(CARD_CLOCK, strict=False).to_physical())
    query.check("Time", minute_of_day.is_null(), "a time HH:MM from 00:00 to 23:59")
    date = [(name, _integer(name, pl.Int32)) for name in ("Year", "Month", "Day")]
    timestamp = _as_datetime(_epoch_minutes(query, date) + minute_of_day)
    amount = query.parse(pl.col("Amount").str.strip_prefix("$").cast(pl.Float64, strict=False))
    query.check("Amount", ~_in_float32(amount), "an amount of money like $134.09")
    zip_number = query.parse(pl.col("Zip").cast(pl.Float64, strict=False))
    zip_code = zip_number.fill_nan(None)  # "NaN" is a missing zip code
    whole_zip = ((zip_code.round() == zip_code) & (zip_code.abs() < 2**53)).fill_null(False)
    query.check("Zip", pl.col("Zip").is_not_null() & ~zip_number.is_nan().fill_null(False) & ~whole_zip,
                "a zip code like 91750 or 91750.0")
    chip = query.parse(pl.col("Use Chip").cast(CARD_USE_CHIP, strict=False))
    query.check("Use Chip", chip.is_null(), f"one of {CARD_USE_CHIP.categories.to_list()}")
    label = pl.lit(None, pl.Int8)
    if labelled:
        fraud = query.parse(pl.col(CARD_LABEL).cast(CARD_FRAUD, strict=False))
        query.check(CARD_LABEL, fraud.is_null(), "Yes or No")
        label = (fraud == "Yes").cast(pl.Int8)
    query.values = {
        ENTITY: _integer("User"),
        TIME: timestamp,
        "Card": _integer("Card"),
        "Amount": amount,
        "Use Chip": chip,
        "Merchant Name": _integer("Merchant Name"),
        **{name: pl.col(name).cast(pl.Categorical) for name in ("Merchant City", "Merchant State", "Errors?")},
        "Zip": zip_code.cast(pl.Int64, strict=False),
        "MCC": _integer("MCC"),
        CARD_LABEL: label,
    }
    return query


def _card_schema(time_features: Sequence[str], recency: Sequence[str] = CARD_RECENCY) -> TableSchema:
    return TableSchema(
        fields=tuple(FieldSpec(name, "numeric" if name == "Amount" else "categorical") for name in CARD_FIELDS),
        labels=(CARD_LABEL,),
        task="classification",
        time_features=tuple(time_features),
        time_bins=10,
        source="card",
        recency=tuple(recency),
    )


def read_prsa(path: Sources, *, keep_missing: bool = False, require_labels: bool = True) -> Table:
    """Read the UCI PRSA station files: a folder (its ``PRSA_Data_*.csv``), one file or a list.

    The entity is ``station``; ``_time`` comes from year, month, day and hour. Input fields:
    SO2, NO2, CO, O3, TEMP, PRES, DEWP, RAIN, WSPM (numeric, 50 bins each) and the wind
    direction ``wd``; PM2.5 and PM10 are regression targets, never inputs. "NA" marks a missing
    value. By default a row with any missing value is dropped; with ``keep_missing`` only a row
    missing a target is, and missing inputs stay missing (null). ``require_labels=False``
    (rows to score) keeps rows whose targets are missing.
    """
    files = _source_files(path, ("PRSA_Data_*.csv",))
    for file in files:
        _require_exact_columns(file, PRSA_COLUMNS)
    query = _Query()
    parts = [(name, _integer(name, pl.Int32)) for name in ("year", "month", "day", "hour")]
    timestamp = _as_datetime(_epoch_minutes(query, parts))
    query.values = {ENTITY: pl.col("station"), TIME: timestamp}
    for name in (*PRSA_FIELDS, *PRSA_TARGETS):
        query.values[name] = pl.col(name) if name == "wd" else _number(query, name)
    query.check("station", pl.col("station").is_null(), "a station name")
    droppable = (PRSA_TARGETS if require_labels else ()) + (() if keep_missing else PRSA_FIELDS)
    query.drop_if_missing = tuple(name for name in PRSA_COLUMNS if name in droppable)
    frame, rows_in, dropped = _run(_describe(path), files, _scanner(null_values=("NA",)), query)
    schema = TableSchema(
        fields=tuple(
            FieldSpec(name, "categorical") if name == "wd" else FieldSpec(name, "numeric", n_bins=PRSA_BINS)
            for name in PRSA_FIELDS
        ),
        labels=PRSA_TARGETS,
        task="regression",
        time_features=("timestamp",),
        time_bins=PRSA_BINS,
        source="prsa",
    )
    return Table(frame, schema, _describe(path), rows_in, dropped)


def read_generic(path: Sources, schema_path: PathLike | GenericSchemaFile, *, require_labels: bool = True) -> Table:
    """Read CSV or Parquet data (a file, a list, or a folder of them) described by a schema file.

    See :class:`~tabbert.data.schema.GenericSchemaFile` for the keys. The entity key joins its
    columns with "|". Time is one column (text parsed with ``time_format``, else ISO-8601 or
    epoch numbers in ``time_unit``; or a native date, datetime, or integers in ``time_unit`` or
    ``time_format``) or integer parts
    [year, month, day(, hour(, minute))]. Categorical columns become text, numeric ones floats.
    Classification labels map numbers 0/1, ``positive_values`` (to 1) and "0", "no", "false",
    "n" (to 0), case-insensitively; regression targets are floats. In CSV, empty values and
    "NA", "N/A", "NaN", "null" are missing. A row missing a label is dropped and counted; a row
    missing its entity or time is an error. Columns the schema does not name are ignored. With
    ``require_labels=False`` (rows to score) label columns may be absent and no row is dropped
    for a missing label. ``schema_path`` may also be a schema already loaded.
    """
    if isinstance(schema_path, GenericSchemaFile):
        spec, schema_path = schema_path, "the stored schema"
    else:
        spec = GenericSchemaFile.load(schema_path)
    try:
        schema = spec.table_schema()
    except SchemaError as exc:
        raise SchemaError(f"{schema_path}: {exc}") from exc
    if len(spec.time) not in (1, 3, 4, 5):
        raise SchemaError(f"{schema_path}: 'time' must be one column or [year, month, day(, hour(, minute))]")
    files = _source_files(path, DATA_FILE_PATTERNS)
    first_columns = set(_columns(files[0]))
    labels = [name for name in spec.labels if require_labels or name in first_columns]
    named = list(dict.fromkeys((*spec.entity, *spec.time, *schema.field_names, *labels)))
    for file in files:
        present = set(_columns(file))
        absent = [name for name in named if name not in present]
        if absent:
            raise DataError(file, f"columns {absent} named in schema {schema_path} are not in the file")
    scan = _scanner(null_values=GENERIC_NULL_VALUES)
    dtypes = _collect(scan(files[:1]).head(0), files[0]).schema
    query = _generic_query(spec, dtypes, labels, files[0])
    query.drop_if_missing = spec.labels if require_labels else ()
    frame, rows_in, dropped = _run(_describe(path), files, scan, query)
    return Table(frame, schema, _describe(path), rows_in, dropped, labelled=bool(labels))


def _generic_query(spec: GenericSchemaFile, dtypes: pl.Schema, labels: Sequence[str], path: Path) -> _Query:
    """The parsing of columns of ``dtypes`` into the normalized layout of ``spec``, the ``labels``
    given (others are null); see :func:`read_generic`. ``path`` names the data in errors."""
    query = _Query()
    entity = [pl.col(name).cast(pl.String) for name in spec.entity]
    for name, part in zip(spec.entity, entity):
        query.check(name, part.is_null(), "a value (part of the entity key)")
    if len(spec.time) == 1:
        timestamp = _time_column(query, path, spec.time[0], dtypes[spec.time[0]], spec)
    else:
        timestamp = _as_datetime(_epoch_minutes(query, [(name, _integer(name, pl.Int32)) for name in spec.time]))
    query.values = {ENTITY: pl.concat_str(entity, separator="|"), TIME: timestamp}
    for name in spec.categorical:
        query.values[name] = pl.col(name).cast(pl.String)
    for name in spec.numeric:
        query.values[name] = _generic_number(query, path, name, dtypes[name])
    for name in spec.labels:
        if name not in labels:
            query.values[name] = pl.lit(None, pl.Int8 if spec.task == "classification" else pl.Float64)
        elif spec.task == "classification":
            query.values[name] = _class_label(query, name, spec.positive_values)
        else:
            query.values[name] = _generic_number(query, path, name, dtypes[name])
    return query


_READERS: dict[str, Callable[..., Table]] = {"card": read_card, "prsa": read_prsa, "generic": read_generic}


def has_labels(kind: str, path: Sources, *, schema: PathLike | GenericSchemaFile | None = None) -> bool:
    """Whether the files of a source hold its label columns: every file all of them (True), or none
    of them (False: rows to pre-train on or to score). Only the headers are read; a file holding
    some of the label columns, or files that disagree, are an error."""
    if kind == "card":
        labels, patterns = (CARD_LABEL,), DATA_FILE_PATTERNS
    elif kind == "prsa":
        labels, patterns = PRSA_TARGETS, ("PRSA_Data_*.csv",)
    elif kind == "generic":
        if schema is None:
            raise TabbertError("the generic source needs a schema file")
        spec = schema if isinstance(schema, GenericSchemaFile) else GenericSchemaFile.load(schema)
        labels, patterns = spec.labels, DATA_FILE_PATTERNS
    else:
        raise TabbertError(f"unknown source {kind!r}; choose from {sorted(_READERS)}")
    if not labels:
        return False
    held = []
    for file in _source_files(path, patterns):
        present = [name for name in labels if name in _columns(file)]
        if present and len(present) < len(labels):
            raise DataError(file, f"holds label columns {present} but not {[n for n in labels if n not in present]}; "
                            f"give it all of {list(labels)} or none")
        held.append(bool(present))
    if len(set(held)) > 1:
        raise DataError(_describe(path), f"some files hold the label columns {list(labels)} and others do not; "
                        "give every file the labels, or none")
    return held[0]


def read_source(kind: str, path: Sources, *, schema: PathLike | GenericSchemaFile | None = None, **options) -> Table:
    """Read a source by kind: ``"card"``, ``"prsa"`` or ``"generic"`` (which needs ``schema``: a
    file or a loaded :class:`~tabbert.data.schema.GenericSchemaFile`)."""
    reader = _READERS.get(kind)
    if reader is None:
        raise TabbertError(f"unknown source {kind!r}; choose from {sorted(_READERS)}")
    accepted = [name for name, p in inspect.signature(reader).parameters.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TabbertError(f"source {kind!r} has no option {unknown}; its options: {accepted}")
    if kind == "generic":
        if schema is None:
            raise TabbertError("the generic source needs a schema file")
        return read_generic(path, schema, **options)
    if schema is not None:
        raise TabbertError(f"source {kind!r} has a built-in schema; a schema file is only for 'generic'")
    return reader(path, **options)


def read_records(kind: str, records: Sequence[Mapping[str, object]], *, schema: GenericSchemaFile | None = None,
                 source: str = "transactions") -> pl.DataFrame:
    """Rows given as mappings of column name to value (JSON values: text, numbers or null) in the
    normalized layout, read by the rules of a file of ``kind``: ``card``, or ``generic`` with its
    loaded ``schema``. Labels are not read. Errors name ``source``, the column and the 1-based record."""
    columns = record_columns(kind, schema)
    if not records:
        raise DataError(source, "no records to read")
    if kind == "card":
        query, allowed = _card_query(labelled=False), set(CARD_COLUMNS)
    else:  # as in files, columns the schema does not name are ignored
        query, allowed = _generic_query(schema, pl.Schema(dict.fromkeys(columns, pl.String)), (), Path(source)), None
    raw = {name: [] for name in columns}
    for number, record in enumerate(records, 1):
        if not isinstance(record, Mapping):
            raise DataError(source, f"expected an object of column values, got {type(record).__name__}", row=number)
        missing = [name for name in columns if name not in record]
        unknown = [] if allowed is None else [name for name in record if name not in allowed]
        if missing or unknown:
            problem = f"missing fields {missing}" if missing else f"unknown fields {unknown}"
            raise DataError(source, f"{problem} (expected {columns})", column=(missing or unknown)[0], row=number)
        for name in columns:
            raw[name].append(_record_text(source, record[name], name, number))
    frame = pl.DataFrame(raw, schema={name: pl.String for name in columns}).with_row_index(ROW)
    parsed = _plan(frame.lazy(), query).collect()
    if parsed[_BAD].any():
        _raise_bad_value(source, _first_bad(frame.lazy(), query).collect().row(0, named=True), query)
    return parsed.drop(_BAD)


def record_columns(kind: str, schema: GenericSchemaFile | None = None) -> list[str]:
    """The columns a record of ``kind`` (``card``, or ``generic`` with its ``schema``) must hold to be scored."""
    if kind == "card":
        return [name for name in CARD_COLUMNS if name != CARD_LABEL]
    if kind == "generic" and schema is not None:
        return list(dict.fromkeys((*schema.entity, *schema.time, *schema.table_schema().field_names)))
    raise TabbertError(f"cannot read records of source {kind!r}" + (" without its schema" if kind == "generic" else ""))


def _record_text(source: str, value: object, column: str, number: int) -> str | None:
    """A JSON value as the text a CSV would hold (empty text and null: missing)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise DataError(source, f"bad value {value!r}; expected text, a number or null", column=column, row=number)


def read_columns(path: Sources, names: Sequence[str]) -> pl.DataFrame:
    """The raw values of columns ``names`` of a CSV or Parquet source (CSV values as text, missing
    as in :func:`read_generic`), with ``_row`` numbering the rows as the readers do."""
    files = _source_files(path, DATA_FILE_PATTERNS)
    return _collect(_scanner(null_values=GENERIC_NULL_VALUES)(files).select(ROW, *names), _describe(path))


# ---------------------------------------------------------------------------------------------
# Files and headers


def _source_files(path: Sources, patterns: Sequence[str]) -> list[Path]:
    """The files to read, in reading order; a folder stands for its matching files, sorted."""
    items = [Path(path)] if isinstance(path, (str, os.PathLike)) else [Path(p) for p in path]
    if not items:
        raise DataError(_describe(path), "no input files given")
    if len(items) == 1 and items[0].is_dir():
        folder = items[0]
        items = sorted({file for pattern in patterns for file in folder.glob(pattern) if file.is_file()})
        if not items:
            raise DataError(folder, f"folder has no files matching {' or '.join(patterns)}")
    for item in items:
        if not item.is_file():
            raise DataError(item, "not a file" if item.exists() else "no such file")
    if len({_is_parquet(item) for item in items}) > 1:
        raise DataError(_describe(path), "cannot mix CSV and Parquet files in one source")
    return items


def _describe(path: Sources) -> str:
    """How errors and tables name a source: the path, or the files of a list."""
    return str(path) if isinstance(path, (str, os.PathLike)) else ", ".join(str(p) for p in path)


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in PARQUET_SUFFIXES


def _columns(path: Path) -> list[str]:
    """Column names of a Parquet or CSV (plain or gzip) file, read without touching the rows."""
    if _is_parquet(path):
        try:
            return pl.scan_parquet(path, glob=False).collect_schema().names()
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise DataError(path, f"not a readable Parquet file ({_first_line(exc)})") from exc
    try:
        with _open_binary(path) as raw:
            header = next(_decoded_lines(path, raw), "")
    except (OSError, EOFError) as exc:
        raise DataError(path, f"cannot read the file ({exc})") from exc
    if not header.strip():
        raise DataError(path, "empty file: no header row")
    columns = next(csv.reader([header]))
    repeated = [name for i, name in enumerate(columns) if name in columns[:i]]
    if repeated:
        raise DataError(path, f"the header names column {repeated[0]!r} more than once; give each column its own name")
    return columns


def _open_binary(path: Path):
    """A CSV file's bytes, gzip-compressed or not."""
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _decoded_lines(path: Path, raw) -> Iterator[str]:
    """The lines of a binary file as text; a byte that is not UTF-8 is an error naming its line."""
    for number, line in enumerate(raw, 1):
        try:
            yield line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                path, f"line {number}: byte {line[exc.start]:#04x} is not UTF-8 text; save the file as UTF-8"
            ) from exc


def _check_field_counts(files: Sequence[Path], last_row: int | None = None) -> None:
    """Raise a DataError at the first data row (up to ``_row`` ``last_row``) whose field count
    differs from its file's header, or at the first line that is not UTF-8 text."""
    rows_before = 0
    for file in files:
        with _open_binary(file) as raw:
            reader = csv.reader(_decoded_lines(file, raw))
            n_columns = len(next(reader, []))
            rows = 0
            for fields in reader:
                if not fields:  # a blank line is no row
                    continue
                rows += 1
                if len(fields) != n_columns:
                    raise DataError(file, f"{len(fields)} fields where the header has {n_columns} "
                                          f"(line {reader.line_num})", row=rows)
                if last_row is not None and rows_before + rows > last_row:
                    return
        rows_before += rows


def _require_exact_columns(path: Path, expected: Sequence[str]) -> None:
    columns = _columns(path)
    missing = [name for name in expected if name not in columns]
    extra = [name for name in columns if name not in expected]
    problems = []
    if missing:
        problems.append(f"missing columns {missing}")
    if extra:
        problems.append(f"unexpected columns {extra}")
    if problems:
        raise DataError(path, f"{'; '.join(problems)} (expected exactly {list(expected)})")


def _scanner(*, null_values: Sequence[str] = (), as_text: bool = False,
             types: dict[str, pl.DataType] | None = None) -> Scan:
    """A function scanning files into their raw rows plus ``_row``; empty text is missing.

    CSV values are text, with ``null_values`` missing too, or of the given column ``types``
    (failing on a value that does not parse). Parquet values keep their stored types (or become
    text with ``as_text``).
    """

    def scan(files: Sequence[Path]) -> pl.LazyFrame:
        if _is_parquet(files[0]):
            frame = pl.scan_parquet(list(files), row_index_name=ROW, glob=False)
            if as_text:
                frame = frame.with_columns(pl.exclude(ROW).cast(pl.String))
        elif types is None:
            return pl.scan_csv(list(files), infer_schema=False, null_values=["", *null_values],
                               row_index_name=ROW, glob=False)
        else:
            # The reader takes an empty field for missing by itself; listing "" as well would
            # compare every field with it. Only a quoted "" is left to clear, in Categorical
            # columns: text columns are parsed further, and a "" there fails as any bad value does.
            frame = pl.scan_csv(list(files), infer_schema=False, schema_overrides=types,
                                null_values=list(null_values) or None, row_index_name=ROW, glob=False)
            return frame.with_columns(_empty_as_null(name) for name, dtype in types.items() if dtype == pl.Categorical)
        text_columns = [name for name, dtype in frame.collect_schema().items() if dtype in (pl.String, pl.Categorical)]
        return frame.with_columns(_empty_as_null(name) for name in text_columns)

    return scan


# ---------------------------------------------------------------------------------------------
# Running a query


def _run(source: str, files: list[Path], scan: Scan, query: _Query,
         typed_scan: Scan | None = None) -> tuple[pl.DataFrame, int, dict[str, int]]:
    """Collect ``query`` over ``files``: the normalized frame, the rows read and the rows dropped.

    ``typed_scan`` (faster) is tried first; if a value fails to parse there, ``scan`` reads again.
    A CSV row with too few fields reads as one whose last columns are empty, so only when some
    row's last column is empty (or a rule fires) are the files read again for their field counts.
    """
    csv_last = [] if _is_parquet(files[0]) else list(dict.fromkeys(_columns(file)[-1] for file in files))
    frame = None
    if typed_scan is not None:
        try:
            frame = _plan(typed_scan(files), query, csv_last).collect(engine="streaming")
        except pl.exceptions.PolarsError:
            frame = None  # the text scan below meets the same value and names it
    if frame is None:
        try:
            frame = _collect(_plan(scan(files), query, csv_last), source)
        except DataError:
            if csv_last:  # too many fields or a byte that is not UTF-8: name the row
                _check_field_counts(files)
            raise
    if frame.is_empty():
        raise DataError(source, "no data rows")
    if csv_last:
        last_empty = frame.get_column(ROW).filter(frame.get_column(_LAST_EMPTY))
        if not last_empty.is_empty():  # rows up to the first bad one, else up to the last suspect
            bad_rows = frame.get_column(ROW).filter(frame.get_column(_BAD))
            last_row = int(last_empty[-1] if bad_rows.is_empty() else bad_rows[0])
            if last_empty[0] <= last_row:
                _check_field_counts(files, last_row=last_row)
        frame = frame.drop(_LAST_EMPTY)
    if frame[_BAD].any():
        _raise_first_bad(files, scan, query)
    frame = frame.drop(_BAD)
    rows_in, dropped = frame.height, {}
    if query.drop_if_missing:
        counts = frame[_DROP].drop_nulls().value_counts()
        dropped = {f"missing {query.drop_if_missing[i]}": n for i, n in sorted(counts.iter_rows())}
        if dropped:
            frame = frame.filter(pl.col(_DROP).is_null())
        frame = frame.drop(_DROP)
    return frame, rows_in, dropped


def _plan(raw: pl.LazyFrame, query: _Query, last_columns: Sequence[str] = ()) -> pl.LazyFrame:
    """The normalized columns of ``raw``, a flag for rows breaking a check, one for rows to drop
    and one for rows whose value in one of ``last_columns`` (the files' last) is empty."""
    last_empty = []
    if last_columns:
        last_empty.append(pl.any_horizontal(pl.col(name).is_null() for name in last_columns).alias(_LAST_EMPTY))
    plan = raw.with_columns(**query.parsed).select(
        pl.col(ROW).cast(pl.UInt64),
        *(expr.alias(name) for name, expr in query.values.items()),
        pl.any_horizontal(check.bad for check in query.checks).alias(_BAD),
        *last_empty,
    )
    if query.drop_if_missing:
        first_missing = pl.min_horizontal(
            pl.when(pl.col(name).is_null()).then(pl.lit(i, pl.UInt8)) for i, name in enumerate(query.drop_if_missing)
        )
        plan = plan.with_columns(first_missing.alias(_DROP))
    return plan


def _raise_first_bad(files: list[Path], scan: Scan, query: _Query) -> NoReturn:
    """Scan ``files`` again for the first row breaking a check and raise a DataError naming it."""
    first_per_file = [_first_bad(scan([file]), query).with_columns(pl.lit(number).alias(_FILE))
                      for number, file in enumerate(files)]
    hit = _collect(pl.concat(first_per_file, how="diagonal_relaxed").head(1), files[0]).row(0, named=True)
    _raise_bad_value(files[hit[_FILE]], hit, query)


def _first_bad(raw: pl.LazyFrame, query: _Query) -> pl.LazyFrame:
    """The first row of ``raw`` that breaks a check, with a flag per check (``__bad<i>``)."""
    flags = [f"{_BAD}{i}" for i in range(len(query.checks))]
    return (raw.with_columns(**query.parsed)
            .with_columns(check.bad.alias(flag) for check, flag in zip(query.checks, flags))
            .filter(pl.any_horizontal(flags))
            .head(1))


def _raise_bad_value(source: PathLike, hit: dict, query: _Query) -> NoReturn:
    """The DataError naming the first check the row ``hit`` (from :func:`_first_bad`) breaks."""
    check = next(check for i, check in enumerate(query.checks) if hit[f"{_BAD}{i}"])
    value = hit[check.column]
    found = "missing value" if value is None else f"bad value {value!r}"
    raise DataError(source, f"{found}; expected {check.expected}", column=check.column, row=hit[ROW] + 1)


def _collect(plan: pl.LazyFrame, path: PathLike) -> pl.DataFrame:
    try:
        return plan.collect(engine="streaming")
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(path, f"cannot read the data ({_first_line(exc)})") from exc


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Parsing expressions


def _empty_as_null(column: str) -> pl.Expr:
    """The text or categories of ``column``, with an empty text ("") as a missing value."""
    return pl.when(pl.col(column) != "").then(pl.col(column)).alias(column)


def _integer(column: str, dtype: pl.DataType = pl.Int64) -> pl.Expr:
    """An integer parsed from text (null where the text is not an integer)."""
    return pl.col(column).cast(dtype, strict=False)


def _number(query: _Query, column: str) -> pl.Expr:
    """A float parsed from text; a value that is not a finite number is bad."""
    raw = pl.col(column)
    value = query.parse(raw.cast(pl.Float64, strict=False))
    query.check(column, raw.is_not_null() & ~_in_float32(value), f"a number within ±{FLOAT32_MAX:.3g}")
    return value


def _in_float32(value: pl.Expr) -> pl.Expr:
    """True where ``value`` is a number float32 holds (finite once stored), false where missing."""
    return (value.abs() <= FLOAT32_MAX).fill_null(False)


def _generic_number(query: _Query, path: Path, column: str, dtype: pl.DataType) -> pl.Expr:
    """A float from text or from a stored number (where NaN is a missing value)."""
    if dtype == pl.String:
        return _number(query, column)
    if not (dtype.is_numeric() or dtype == pl.Boolean):
        raise DataError(path, f"holds {dtype}, not numbers", column=column)
    value = query.parse(pl.col(column).cast(pl.Float64).fill_nan(None))
    query.check(column, value.is_not_null() & ~_in_float32(value), f"a number within ±{FLOAT32_MAX:.3g}")
    return value


def _class_label(query: _Query, column: str, positive: Sequence[str]) -> pl.Expr:
    """0/1 from numbers 0/1, from ``positive`` words (1) or from the usual negative words (0)."""
    text = pl.col(column).cast(pl.String).str.strip_chars().str.to_lowercase()
    number = text.cast(pl.Float64, strict=False)
    value = query.parse(
        pl.when(text.is_in(list(positive)) | (number == 1))
        .then(pl.lit(1, pl.Int8))
        .when(text.is_in(NEGATIVE_VALUES) | (number == 0))
        .then(pl.lit(0, pl.Int8))
    )
    expected = f"a class label: 0 or 1, one of {list(positive)} (positive) or {list(NEGATIVE_VALUES)} (negative)"
    query.check(column, pl.col(column).is_not_null() & value.is_null(), expected)
    return value


def _epoch_minutes(query: _Query, parts: Sequence[tuple[str, pl.Expr]]) -> pl.Expr:
    """Minutes since 1970-01-01 00:00 from integer (year, month, day[, hour[, minute]]) parts.

    Null unless every part is in range; each part is paired with the source column it comes
    from, so that a range check names the column holding the impossible value (a 13th month,
    February 30th, hour 24 ...). Days come from a table of months (:func:`_calendar`).
    """
    columns = [column for column, _ in parts]
    values = [query.parse(value) for _, value in parts]
    year, month, day = values[:3]
    month_firsts, month_lengths = _calendar()
    first_year, last_year = _YEARS
    in_calendar = year.is_between(first_year, last_year) & month.is_between(1, 12)
    month_index = pl.when(in_calendar).then((year - first_year) * 12 + month - 1)
    ranges = [
        (first_year, last_year, f"a year from {first_year} to {last_year}"),
        (1, 12, "a month from 1 to 12"),
        (1, pl.lit(month_lengths).gather(month_index), "a day that exists in its month"),
        (0, 23, "an hour from 0 to 23"),
        (0, 59, "a minute from 0 to 59"),
    ]
    valid = []
    for column, value, (low, high, expected) in zip(columns, values, ranges):
        valid.append(value.is_between(low, high).fill_null(False))
        query.check(column, ~valid[-1], expected)
    minutes = (pl.lit(month_firsts).gather(month_index) + day - 1) * MINUTES_PER_DAY
    for value, per_unit in zip(values[3:], (60, 1)):
        minutes = minutes + value * per_unit
    return pl.when(pl.all_horizontal(valid)).then(minutes)


@functools.cache
def _calendar() -> tuple[pl.Series, pl.Series]:
    """The first day (days since 1970-01-01) and the length in days of every month of the calendar.

    Month by month from January of the first year: lengths by the Gregorian rules, which repeat
    every 400 years (one cycle is computed, then repeated), firsts as their running sum.
    """
    first_year, last_year = _YEARS
    n_months = (last_year - first_year + 1) * 12
    cycle = pl.int_range(400 * 12, dtype=pl.Int64, eager=True)
    year, month = cycle // 12 + first_year, cycle % 12 + 1
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    days = pl.Series(_MONTH_DAYS, dtype=pl.Int8).gather(month - 1) + (leap & (month == 2)).cast(pl.Int8)
    days = pl.concat([days] * -(-n_months // cycle.len()))[:n_months]
    first_day = (datetime.date(first_year, 1, 1) - datetime.date(1970, 1, 1)).days
    firsts = days.cast(pl.Int64).cum_sum() - days + first_day
    return firsts.alias("first_day"), days.alias("days")


def _as_datetime(minutes: pl.Expr) -> pl.Expr:
    """Minutes since 1970-01-01 00:00 as a datetime (microseconds)."""
    return (minutes * MICROSECONDS_PER_MINUTE).cast(pl.Datetime("us"))


def _time_column(query: _Query, path: Path, column: str, dtype: pl.DataType, spec: GenericSchemaFile) -> pl.Expr:
    """A datetime from one column: native date/datetime, epoch numbers (``time_unit``), or text
    or integers in ``time_format`` (else ISO-8601 text). Digits are never guessed to be epoch seconds."""
    raw = pl.col(column)
    time_format, time_unit = spec.time_format, spec.time_unit
    digits_fix = (
        "set time_unit (s, ms, us or ns) for epoch numbers, or time_format for dates written as digits "
        "(such as '%Y%m%d' for 20240131)"
    )
    if isinstance(dtype, pl.Datetime):
        utc = raw.dt.convert_time_zone("UTC").dt.replace_time_zone(None) if dtype.time_zone else raw
        value = utc.dt.cast_time_unit("us")
    elif dtype == pl.Date:
        value = raw.cast(pl.Datetime("us"))
    elif dtype.is_integer() and time_unit:
        value = _from_epoch(raw, time_unit)
    elif dtype.is_integer() and time_format:
        value = _formatted_time(raw.cast(pl.String), time_format)
    elif dtype.is_integer():
        raise SchemaError(f"{path}: time column {column!r} holds integers ({dtype}); {digits_fix}")
    elif dtype == pl.String and time_format:
        value = _formatted_time(raw, time_format)
    elif dtype == pl.String:
        digits = raw.str.contains(_INTEGER)
        iso = raw.str.strip_suffix("Z").str.replace("T", " ", literal=True)
        parsed = pl.coalesce(iso.str.to_datetime(fmt, time_unit="us", strict=False) for fmt in _ISO_FORMATS)
        if time_unit:
            value = pl.when(digits).then(_from_epoch(raw.cast(pl.Int64, strict=False), time_unit)).otherwise(parsed)
        else:
            query.check(column, digits.fill_null(False), f"a date or time, not bare digits; {digits_fix}")
            value = pl.when(~digits).then(parsed)
    else:
        raise DataError(path, f"holds {dtype}; expected a date, a datetime, epoch numbers or text", column=column)
    value = query.parse(value)
    if time_format:
        expected = f"a time in the format {time_format!r}"
    elif time_unit:
        expected = f"epoch {_TIME_UNIT_NAMES[time_unit]} or an ISO-8601 date/datetime"
    else:
        expected = "an ISO-8601 date/datetime"
    query.check(column, value.is_null(), expected)
    return value


def _from_epoch(number: pl.Expr, time_unit: str) -> pl.Expr:
    """A datetime (microseconds) from an integer count of ``time_unit`` since 1970-01-01."""
    return pl.from_epoch(number, time_unit=time_unit).dt.cast_time_unit("us")


def _formatted_time(text: pl.Expr, time_format: str) -> pl.Expr:
    """A datetime (microseconds) from text in ``time_format``; null where it does not match."""
    return text.str.to_datetime(time_format, time_unit="us", strict=False).dt.replace_time_zone(None)
