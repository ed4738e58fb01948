"""Readers: turn a raw source into a normalized :class:`~tabbert.data.schema.Table`.

Sources
-------
``card``     IBM's synthetic card transactions (``card_transaction.v1.csv`` or any slice of it),
             as CSV, gzip-compressed CSV or Parquet: :func:`read_card`.
``prsa``     the twelve hourly station files of the UCI Beijing multi-site air-quality data
             (a folder, one file or a list of files): :func:`read_prsa`.
``generic``  any CSV or Parquet file (or folder of them) described by a schema file, see
             :class:`~tabbert.data.schema.GenericSchemaFile`: :func:`read_generic`.

How reading works
-----------------
Each reader builds one lazy Polars query over the raw file. CSV values are read as text (types
are never guessed from the first rows) and parsed with vectorized expressions; every strict rule
is a boolean "bad" expression evaluated in the same pass, so raw text is never kept. Only when a
rule fires is the source scanned again to report the first offending row: the error names the
file, the column, the 1-based data row (header excluded) and the value. Rows stay in source
order; ``_row`` numbers them from 0 across all files read, in reading order. Rows a reader drops
(missing values in PRSA, missing labels in generic sources) are counted per reason in
:attr:`Table.dropped`, each row under the first missing column, so
``rows_in == rows_kept + sum(dropped.values())``.
"""

from __future__ import annotations

import csv
import gzip
import inspect
import io
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import polars as pl

from tabbert.data.schema import (
    ENTITY,
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

CARD_COLUMNS = (
    "User", "Card", "Year", "Month", "Day", "Time", "Amount", "Use Chip", "Merchant Name",
    "Merchant City", "Merchant State", "Zip", "MCC", "Errors?", "Is Fraud?",
)  # fmt: skip
CARD_USE_CHIP = ("Swipe Transaction", "Chip Transaction", "Online Transaction")
CARD_LABEL = "Is Fraud?"

PRSA_COLUMNS = (
    "No", "year", "month", "day", "hour", "PM2.5", "PM10", "SO2", "NO2", "CO", "O3", "TEMP",
    "PRES", "DEWP", "RAIN", "wd", "WSPM", "station",
)  # fmt: skip
PRSA_TARGETS = ("PM2.5", "PM10")
PRSA_NUMERIC = ("SO2", "NO2", "CO", "O3", "TEMP", "PRES", "DEWP", "RAIN", "WSPM")
PRSA_BINS = 50

GENERIC_NULL_VALUES = ("NA", "N/A", "NaN", "null")
NEGATIVE_VALUES = ("0", "no", "false", "n")

_BAD = "__bad"
_DROP = "__drop"
_PARQUET_SUFFIXES = (".parquet", ".pq")
_MONEY = r"^\$?-?[0-9]+(\.[0-9]+)?$"
_CLOCK = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
_INTEGER = r"^-?[0-9]+$"
_ISO_FORMATS = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%d")


@dataclass(frozen=True)
class _Check:
    """A strict-parsing rule: ``bad`` is true on rows whose raw ``column`` value is unacceptable."""

    column: str
    bad: pl.Expr
    expected: str


@dataclass(frozen=True)
class _Query:
    """What a reader asks of the raw rows: output columns, strict rules, droppable columns."""

    values: dict[str, pl.Expr]
    checks: list[_Check]
    drop_if_missing: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# Public readers


def read_card(path: PathLike, *, time_features: Sequence[str] = ("hour", "weekday", "gap")) -> Table:
    """Read IBM card transactions (CSV, ``.csv.gz`` or Parquet) into the normalized layout.

    Entity is ``User``; ``_time`` comes from Year/Month/Day and Time ("HH:MM"). Input fields are
    Card, Amount (numeric, parsed from "$134.09"), Use Chip, Merchant Name, Merchant City,
    Merchant State, Zip ("91750.0" becomes "91750"), MCC and Errors?; the label is ``Is Fraud?``.
    Empty Merchant State, Zip and Errors? are missing values. Every other bad value is an error:
    no row is dropped.
    """
    files = _source_files(path, pattern=None)
    for file in files:
        _require_columns(file, CARD_COLUMNS)
    user, card, mcc = (pl.col(name) for name in ("User", "Card", "MCC"))
    time_text, amount, chip, fraud = (pl.col(name) for name in ("Time", "Amount", "Use Chip", CARD_LABEL))
    timestamp, time_checks = _datetime_from_parts(
        [
            ("Year", _integer("Year")),
            ("Month", _integer("Month")),
            ("Day", _integer("Day")),
            ("Time", time_text.str.slice(0, 2).cast(pl.Int64, strict=False)),
            ("Time", time_text.str.slice(3, 2).cast(pl.Int64, strict=False)),
        ]
    )
    query = _Query(
        values={
            ENTITY: user,
            TIME: timestamp,
            "Card": card,
            "Amount": amount.str.strip_prefix("$").cast(pl.Float64, strict=False),
            "Use Chip": chip,
            "Merchant Name": _text("Merchant Name"),
            "Merchant City": _text("Merchant City"),
            "Merchant State": _text("Merchant State"),
            "Zip": _text("Zip").str.strip_suffix(".0"),
            "MCC": mcc,
            "Errors?": _text("Errors?"),
            CARD_LABEL: (fraud == "Yes").cast(pl.Int8),
        },
        checks=[
            _Check("User", _integer("User").is_null(), "an integer user id"),
            _Check("Card", _integer("Card").is_null(), "an integer card number"),
            _Check("Time", ~time_text.str.contains(_CLOCK).fill_null(False), "a time HH:MM (00:00 to 23:59)"),
            *time_checks,
            _Check("Amount", ~amount.str.contains(_MONEY).fill_null(False), "an amount of money like $134.09"),
            _Check("Use Chip", ~chip.is_in(CARD_USE_CHIP).fill_null(False), f"one of {list(CARD_USE_CHIP)}"),
            _Check("MCC", _integer("MCC").is_null(), "an integer merchant category code"),
            _Check(CARD_LABEL, ~fraud.is_in(("Yes", "No")).fill_null(False), "Yes or No"),
        ],
    )
    frame, rows_in, dropped = _run(path, files, _scanner(as_text=True), query)
    fields = tuple(
        FieldSpec(name, "numeric" if name == "Amount" else "categorical")
        for name in ("Card", "Amount", "Use Chip", "Merchant Name", "Merchant City", "Merchant State", "Zip", "MCC", "Errors?")
    )
    schema = TableSchema(
        fields=fields,
        labels=(CARD_LABEL,),
        task="classification",
        time_features=tuple(time_features),
        time_bins=10,
        source="card",
    )
    return Table(frame, schema, str(path), rows_in, dropped)


def read_prsa(path: Sources, *, keep_missing: bool = False) -> Table:
    """Read the UCI PRSA station files: a folder (every ``PRSA_Data_*.csv``), a file or a list.

    Entity is the station; ``_time`` comes from year/month/day/hour. Inputs are the numeric
    SO2, NO2, CO, O3, TEMP, PRES, DEWP, RAIN and WSPM (50 bins each) and the wind direction
    ``wd``; PM2.5 and PM10 are regression targets. "NA" marks a missing value. By default a row
    with any missing value is dropped; with ``keep_missing`` only rows missing a target are.
    """
    files = _source_files(path, pattern="PRSA_Data_*.csv")
    for file in files:
        _require_columns(file, PRSA_COLUMNS)
    timestamp, time_checks = _datetime_from_parts([(name, _integer(name)) for name in ("year", "month", "day", "hour")])
    station = pl.col("station")
    numeric = {name: _number(name) for name in (*PRSA_TARGETS, *PRSA_NUMERIC)}
    values = {ENTITY: station, TIME: timestamp}
    values |= {name: numeric[name][0] if name != "wd" else _text("wd") for name in PRSA_COLUMNS if name in (*numeric, "wd")}
    inputs = tuple(name for name in PRSA_COLUMNS if name in (*PRSA_NUMERIC, "wd"))
    query = _Query(
        values={**values},
        checks=[
            *time_checks,
            *(numeric[name][1] for name in PRSA_COLUMNS if name in numeric),
            _Check("station", station.is_null(), "a station name"),
        ],
        drop_if_missing=PRSA_TARGETS if keep_missing else (*PRSA_TARGETS, *inputs),
    )
    frame, rows_in, dropped = _run(path, files, _scanner(null_values="NA"), query)
    fields = tuple(FieldSpec(name, "categorical") if name == "wd" else FieldSpec(name, "numeric", n_bins=PRSA_BINS) for name in inputs)
    schema = TableSchema(
        fields=fields,
        labels=PRSA_TARGETS,
        task="regression",
        time_features=("timestamp",),
        time_bins=PRSA_BINS,
        source="prsa",
    )
    frame = frame.select(ROW, ENTITY, TIME, *inputs, *PRSA_TARGETS)
    return Table(frame, schema, str(path), rows_in, dropped)
