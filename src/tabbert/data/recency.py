"""Recency fields: how long ago the entity last had a row with this row's value, over its whole past.

A window of a few rows cannot tell "a merchant this card has never used" from "one it used 30
rows ago". For each field named in ``TableSchema.recency`` (categorical fields, and ``hour`` for
the hour of day of the row's time) the row gets one more categorical field,
``recency.<name>``: the time since the entity's latest earlier row holding the same value, in
fixed buckets (``<1h``, ``<1d``, ``<7d``, ``<30d``, ``<1y``, ``>=1y``) or ``never``. A row whose
value is missing has a missing recency.

They are computed from the raw values (a merchant too rare for the vocabulary still has its own
history) and causally: only earlier rows count. Rows of one entity at the same time are ordered
by their content, never by their place in the file, so a shuffled file gives the same fields.
The tokenizer derives them with :func:`with_recency` in its own row order, for prepare and
predict alike.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl

from tabbert.data.schema import ENTITY, MICROSECONDS_PER_SECOND, TIME, TableSchema

PREFIX = "recency."
HOUR = "hour"
NEVER = "never"
# upper bounds in seconds and the names of the buckets below them; the last bucket is open
BUCKETS = ((3_600, "<1h"), (86_400, "<1d"), (7 * 86_400, "<7d"), (30 * 86_400, "<30d"), (365 * 86_400, "<1y"))
OLDEST = ">=1y"
LEVELS = (*(name for _, name in BUCKETS), OLDEST, NEVER)
THREADS = 2


def recency_name(field: str) -> str:
    return PREFIX + field


def with_recency(frame: pl.DataFrame, schema: TableSchema, order: np.ndarray, *,
                 threads: int = THREADS) -> pl.DataFrame:
    """``frame`` with a ``recency.<name>`` column (an Enum of :data:`LEVELS`) for each of ``schema.recency``.

    ``order`` is the permutation that puts the rows in the tokenizer's row order
    (:func:`tabbert.data.tokenizer.row_order`: entity, time, then content).
    """
    if not schema.recency:
        return frame
    times = frame.get_column(TIME).dt.epoch("us").to_numpy()[order]
    entity = _codes(frame.get_column(ENTITY))[order]
    entity_index = np.concatenate([[0], np.cumsum(entity[1:] != entity[:-1])])

    def column(name: str) -> pl.Series:
        values = recency_values(frame, name)
        levels = np.empty(frame.height, dtype=np.int8)
        levels[order] = _levels(entity_index, _codes(values)[order], times)
        levels[values.is_null().to_numpy()] = -1
        return level_column(name, levels)

    with ThreadPoolExecutor(max_workers=threads) as pool:  # the sorts release the GIL
        return frame.with_columns(list(pool.map(column, schema.recency)))


def recency_values(frame: pl.DataFrame, name: str) -> pl.Series:
    """The raw values whose recency the field ``recency.<name>`` measures: the column, or for
    ``hour`` the hour of each row's time."""
    return frame.get_column(TIME).dt.hour() if name == HOUR else frame.get_column(name)


def bucket_levels(elapsed: np.ndarray) -> np.ndarray:
    """Index into :data:`LEVELS` of the bucket of each time since the value was last seen (seconds)."""
    bounds = np.array([bound for bound, _ in BUCKETS], dtype=np.float64)
    return np.searchsorted(bounds, elapsed, side="right")


def level_column(name: str, levels: np.ndarray) -> pl.Series:
    """The ``recency.<name>`` column of indices into :data:`LEVELS` (-1: missing)."""
    return pl.Series(recency_name(name), levels).replace_strict(
        list(range(len(LEVELS))), list(LEVELS), default=None, return_dtype=pl.Enum(LEVELS))


def _levels(entity: np.ndarray, value: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index into :data:`LEVELS` of every row, rows given in entity-then-time order."""
    by_group = np.lexsort((value, entity))  # stable: each (entity, value) group keeps the time order
    group_entity, group_value, group_times = entity[by_group], value[by_group], times[by_group]
    first = np.ones(by_group.size, dtype=bool)
    first[1:] = (group_entity[1:] != group_entity[:-1]) | (group_value[1:] != group_value[:-1])
    elapsed = np.diff(group_times, prepend=group_times[:1]) / MICROSECONDS_PER_SECOND
    levels = np.where(first, len(LEVELS) - 1, bucket_levels(elapsed))
    result = np.empty_like(levels)
    result[by_group] = levels
    return result


def _codes(series: pl.Series) -> np.ndarray:
    """Integers, equal for equal values (nulls share one; callers mask them): the values themselves
    for integer columns, category codes for categorical ones, dense ranks otherwise."""
    if series.dtype.is_integer():
        codes = series
    elif isinstance(series.dtype, (pl.Categorical, pl.Enum)):
        codes = series.to_physical()
    else:
        codes = series.rank("dense")
    if codes.null_count():
        codes = codes.cast(pl.Int64).fill_null((codes.min() or 0) - 1)
    return codes.to_numpy().astype(np.int64, copy=False)
