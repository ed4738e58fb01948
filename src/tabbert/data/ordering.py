"""The one row order of a table, and the time features read from it.

Rows are ordered by entity (its key as text), then time, and rows of one entity at the same
time by their own field values (nulls last), never by their place in the input: the same rows
in any order give the same sequence, the same time gaps and so the same ids and scores. Rows
equal in every one of those values are interchangeable (they get the same ids) and keep their
input order.

The time features are computed from the times in that order and the entity offsets:
``timestamp`` (whole seconds since 1970), ``hour``, ``weekday`` (0 is Monday) and ``gap``
(seconds since the entity's previous row; NaN on its first row).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import polars as pl

from tabbert.data.schema import (
    ENTITY,
    MICROSECONDS_PER_DAY,
    MICROSECONDS_PER_HOUR,
    MICROSECONDS_PER_MINUTE,
    MICROSECONDS_PER_SECOND,
    TIME,
)
from tabbert.errors import TabbertError

KEY_LIMIT = 2**62  # the entity-then-time sort key (entity rank x time span + time) stays below this
TIME_UNITS_US = (MICROSECONDS_PER_MINUTE, MICROSECONDS_PER_SECOND, 1_000)  # a minute, a second, a millisecond
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday is 0)
BLOCK_ROWS = 1 << 17  # rows computed at a time, so that a formula's temporaries stay small

# the time features that depend on a row's own time, from its epoch microseconds (floor
# division, so times before 1970 count down correctly), and the type that holds them
_EPOCH_FEATURES = {
    "timestamp": (lambda micros: micros // MICROSECONDS_PER_SECOND, np.float64),
    "hour": (lambda micros: micros // MICROSECONDS_PER_HOUR % 24, np.uint8),
    "weekday": (lambda micros: (micros // MICROSECONDS_PER_DAY + EPOCH_WEEKDAY) % 7, np.uint8),
}


class EntityRuns(NamedTuple):
    """The entities and the runs of consecutive rows of one entity, in input order."""

    entities: list[str]  # the entity keys as text, sorted
    entity_offsets: np.ndarray  # where each entity's rows begin once ordered, plus the row count
    entity_of_run: np.ndarray  # each run's entity index
    run_lengths: np.ndarray  # each run's row count


class RowOrder(NamedTuple):
    """Rows in entity-then-time-then-content order."""

    order: np.ndarray | None  # the input rows in order (``None``: in order already)
    times: np.ndarray  # their times in that order, in epoch microseconds
    entity_offsets: np.ndarray  # where each entity's rows begin, plus the row count


def entity_runs(frame: pl.DataFrame) -> EntityRuns:
    """The entities of ``frame`` and its runs of rows of one entity.

    Rows usually come in runs of one entity, so entities are ranked run by run.
    """
    runs = frame.get_column(ENTITY).rle().struct.unnest()
    run_lengths = runs.get_column("len").to_numpy()
    run_keys = runs.get_column("value").cast(pl.String)
    entities = run_keys.unique().sort()
    entity_of_run = run_keys.replace_strict(entities, pl.int_range(entities.len(), eager=True)).to_numpy()
    entity_offsets = np.zeros(entities.len() + 1, dtype=np.int64)
    entity_offsets[1:] = np.cumsum(np.bincount(entity_of_run, weights=run_lengths, minlength=entities.len()))
    return EntityRuns(entities.to_list(), entity_offsets, entity_of_run, run_lengths)


def row_times(frame: pl.DataFrame) -> np.ndarray:
    """The rows' times, in epoch microseconds, in input order."""
    return frame.get_column(TIME).dt.cast_time_unit("us").to_physical().to_numpy()


def order_rows(frame: pl.DataFrame, by: Sequence[str] = (), runs: EntityRuns | None = None,
               times: np.ndarray | None = None) -> RowOrder:
    """The rows of ``frame`` by entity, then time, then the values of the columns ``by``.

    ``runs`` and ``times`` (from :func:`entity_runs` and :func:`row_times`) spare computing them
    again. One integer sort of ``entity * time span + time`` orders the rows; only rows that tie
    on it are sorted again, by their values.
    """
    runs = entity_runs(frame) if runs is None else runs
    times = row_times(frame) if times is None else times
    if times.size == 0:
        return RowOrder(None, times, runs.entity_offsets)
    order, times, same_as_previous = _by_entity_and_time(runs.entity_of_run, runs.run_lengths, times)
    if by and same_as_previous.any():
        order = _break_ties(frame.select(by), order, same_as_previous)
    return RowOrder(order, times, runs.entity_offsets)


def _by_entity_and_time(entity_of_run: np.ndarray, run_lengths: np.ndarray,
                        times: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """The stable order of rows by entity index, then time (``None``: in it already), their times in
    it, and whether each ordered row but the first has the entity and time of the one before.

    Time counts in minutes, seconds or milliseconds when every row's time is a whole number of
    them and microseconds would overflow the key; failing that, a lexicographic sort.
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
            key = np.take(key, order)
        same_as_previous = key[1:] == key[:-1]
        if order is not None:
            times = np.take(times, order, out=key)  # the sorted key is spent: its memory takes the times
        return order, times, same_as_previous
    entities = np.repeat(entity_of_run, run_lengths)
    order = np.lexsort((times, entities))
    entities, times = entities[order], times[order]
    return order, times, (entities[1:] == entities[:-1]) & (times[1:] == times[:-1])


def _break_ties(values: pl.DataFrame, order: np.ndarray | None, same_as_previous: np.ndarray) -> np.ndarray | None:
    """``order`` with every run of tied rows sorted by their ``values`` (nulls last), stably
    (``None``: the rows were in order already and still are)."""
    tied = np.zeros(same_as_previous.size + 1, dtype=bool)
    tied[1:] = same_as_previous
    tied[:-1] |= same_as_previous
    positions = np.flatnonzero(tied)
    # the tied positions hold whole runs, one after another: a run begins where a row differs from the one before
    run = np.cumsum((positions == 0) | ~same_as_previous[np.maximum(positions - 1, 0)])
    rows = positions if order is None else order[positions]
    within = values[rows].select(
        pl.arg_sort_by([pl.lit(pl.Series(run)), *values.columns], maintain_order=True, nulls_last=True)
    ).to_series().to_numpy()
    if order is None:
        if bool((within[1:] > within[:-1]).all()):
            return None
        order = np.arange(tied.size)
    order[positions] = rows[within]
    return order


def time_feature(name: str, times: np.ndarray, entity_offsets: np.ndarray,
                 previous: np.ndarray | None = None) -> np.ndarray:
    """A time feature of rows in entity-then-time order: ``times`` (epoch microseconds) and the
    ``entity_offsets`` where each entity's rows begin. ``previous`` (float epoch microseconds, NaN
    where unknown) is each entity's time before its first row, which that row's gap is counted
    from; without it an entity's first row has no gap."""
    if name == "gap":
        gaps = np.empty(times.size, dtype=np.float64)
        # exact integer differences, converted as they are stored: no temporary column
        np.subtract(times[1:], times[:-1], out=gaps[1:], dtype=np.int64, casting="unsafe")
        np.divide(gaps[1:], MICROSECONDS_PER_SECOND, out=gaps[1:])
        starts = entity_offsets[:-1]
        gaps[starts] = np.nan if previous is None else (times[starts] - previous) / MICROSECONDS_PER_SECOND
        return gaps
    if name in _EPOCH_FEATURES:
        formula, dtype = _EPOCH_FEATURES[name]
        values = np.empty(times.size, dtype=dtype)
        for begin in range(0, times.size, BLOCK_ROWS):  # the formula's temporaries stay small
            values[begin : begin + BLOCK_ROWS] = formula(times[begin : begin + BLOCK_ROWS])
        return values
    raise TabbertError(f"unknown time feature {name!r}")
