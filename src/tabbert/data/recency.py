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

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl

from tabbert.data.codes import NULL_CODE, dense_codes
from tabbert.data.schema import ENTITY, MICROSECONDS_PER_SECOND, TIME, TableSchema

PREFIX = "recency."
HOUR = "hour"
NEVER = "never"
# upper bounds in seconds and the names of the buckets below them; the last bucket is open
BUCKETS = ((3_600, "<1h"), (86_400, "<1d"), (7 * 86_400, "<7d"), (30 * 86_400, "<30d"), (365 * 86_400, "<1y"))
OLDEST = ">=1y"
LEVELS = (*(name for _, name in BUCKETS), OLDEST, NEVER)
BOUNDS_MICROSECONDS = np.array([bound * MICROSECONDS_PER_SECOND for bound, _ in BUCKETS], dtype=np.int64)
THREADS = 2


def recency_name(field: str) -> str:
    return PREFIX + field


def with_recency(frame: pl.DataFrame, schema: TableSchema, order: np.ndarray, *,
                 codes: Mapping[str, np.ndarray] | None = None, threads: int = THREADS) -> pl.DataFrame:
    """``frame`` with a ``recency.<name>`` column (an Enum of :data:`LEVELS`) for each of ``schema.recency``.

    ``order`` is the permutation that puts the rows in the tokenizer's row order
    (:func:`tabbert.data.tokenizer.row_order`: entity, time, then content). ``codes`` may give
    fields' :func:`~tabbert.data.codes.dense_codes` already taken in that order.
    """
    if not schema.recency:
        return frame
    codes = codes or {}
    times = frame.get_column(TIME).dt.epoch("us").to_numpy()[order]
    entity = dense_codes(frame.get_column(ENTITY))[order]

    def column(name: str) -> pl.Series:
        ordered = codes.get(name)
        if ordered is None:
            ordered = np.take(dense_codes(recency_values(frame, name)), order)
        levels = np.empty(frame.height, dtype=np.int8)
        levels[order] = recency_levels(entity, ordered, times)
        return level_column(name, levels)

    with ThreadPoolExecutor(max_workers=threads) as pool:  # the sorts release the GIL
        return frame.with_columns(list(pool.map(column, schema.recency)))


def recency_values(frame: pl.DataFrame, name: str) -> pl.Series:
    """The raw values whose recency the field ``recency.<name>`` measures: the column, or for
    ``hour`` the hour of each row's time."""
    return frame.get_column(TIME).dt.hour() if name == HOUR else frame.get_column(name)


def bucket_levels(elapsed: np.ndarray) -> np.ndarray:
    """Index into :data:`LEVELS` (int8) of the bucket of each time since the value was last seen,
    in microseconds."""
    levels = np.zeros(elapsed.shape, dtype=np.int8)
    for bound in BOUNDS_MICROSECONDS:  # a few comparisons beat a binary search per row
        levels += elapsed >= bound
    return levels


def level_column(name: str, levels: np.ndarray) -> pl.Series:
    """The ``recency.<name>`` column of indices into :data:`LEVELS` (-1: missing)."""
    # the levels are the Enum's physical codes; -1 does not fit the unsigned type and becomes null
    return pl.Series(recency_name(name), levels).cast(pl.UInt8, strict=False).cat.to(pl.Enum(LEVELS))


def recency_levels(entity: np.ndarray, codes: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index into :data:`LEVELS` of every row (``-1`` where its code is null), rows in entity-then-time order.

    The rows are grouped by value, then by position: as positions run entity by entity, each
    (entity, value) group is one run in time order, and a row's latest earlier match sits just
    before it.
    """
    by_group = _group_by_value(codes)
    group_codes, group_entity = codes[by_group], entity[by_group]
    first = np.ones(codes.size, dtype=bool)
    first[1:] = (group_codes[1:] != group_codes[:-1]) | (group_entity[1:] != group_entity[:-1])
    elapsed = np.diff(times[by_group], prepend=times[by_group[:1]])
    levels = bucket_levels(elapsed)
    levels[first] = len(LEVELS) - 1
    result = np.empty_like(levels)
    result[by_group] = levels
    result[codes == NULL_CODE] = -1
    return result


def _group_by_value(codes: np.ndarray) -> np.ndarray:
    """The permutation that sorts the rows by code, then by position.

    Codes that fit 16 bits take NumPy's radix sort (stable, one pass per byte); wider ones are
    made distinct by their position, so the fast unstable sort is exact.
    """
    shifted = codes.astype(np.int64) + 1  # null (-1) becomes 0
    widest = int(shifted.max(initial=0))
    if widest < 1 << 16:
        return np.argsort(shifted.astype(np.uint8 if widest < 1 << 8 else np.uint16), kind="stable")
    position_bits = max(codes.size - 1, 1).bit_length()
    if widest < 1 << (62 - position_bits):
        return np.argsort((shifted << position_bits) | np.arange(codes.size, dtype=np.int64))
    return np.argsort(codes, kind="stable")
