"""Prediction points and windows over the prepared token matrix: their index, labels and splits.

A *prediction point* is a row scored from its causal history: the ``context`` rows of its entity
that end at it (itself included), with [PAD] rows in front when the entity has fewer earlier rows.
A point is stored as its row (the newest of its history) in the entity-then-time ordered matrix.
Two kinds (``POINT_KINDS``):

* ``rows`` (the default for classification): every row is a point, labelled by its own label;
* ``windows`` (the paper's protocol): the newest rows of the stride windows, labelled positive
  when any row of the window is.

A *window* is ``seq_len`` consecutive rows of one entity, stored as its start row. Windows start
every ``stride`` rows; when the last stride does not reach an entity's newest row, one more
window ending there is added, so every row of an entity with at least ``seq_len`` rows lies in
some window. Pre-training reads windows.
"""

from __future__ import annotations

import numpy as np
from numpy.random import default_rng

from tabbert.errors import TabbertError

SPLITS = ("train", "val", "test")
SPLIT_METHODS = ("entity", "time", "random")
LABEL_MODES = ("any", "last")  # a window is positive when any of its rows is, or when its last row is
TARGET_MODES = ("last", "all")  # a window's regression targets: its last row's, or every row's
POINT_KINDS = ("rows", "windows")  # every row from its history, or the newest rows of the stride windows


def first_rows(entity_offsets: np.ndarray) -> np.ndarray:
    """The first row of each row's entity, ``[n_rows]``."""
    offsets = np.asarray(entity_offsets, dtype=np.int64)
    return np.repeat(offsets[:-1], np.diff(offsets))


def history_rows(ends: np.ndarray, entity_first_rows: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``[n, context]`` of the histories that end at ``ends`` (oldest first) and a mask
    of the real ones; rows before the entity's first row are not real (their index is clipped to it)."""
    ends = np.asarray(ends, dtype=np.int64)
    rows = ends[:, None] + np.arange(1 - context, 1)
    real = rows >= entity_first_rows[ends][:, None]
    return np.maximum(rows, entity_first_rows[ends][:, None]), real


def point_labels(row_labels: np.ndarray, ends: np.ndarray, entity_first_rows: np.ndarray, context: int,
                 mode: str = "last") -> np.ndarray:
    """Labels of the points ``ends``: their ``last`` row's, or 1 when ``any`` row of their history is."""
    ends = np.asarray(ends, dtype=np.int64)
    labels = np.asarray(row_labels)
    if mode == "last":
        return labels[ends].astype(np.int64)
    if mode == "any":
        positives_before = np.concatenate([[0], np.cumsum(labels > 0)])
        begin = np.maximum(ends - context + 1, entity_first_rows[ends])
        return (positives_before[ends + 1] > positives_before[begin]).astype(np.int64)
    raise TabbertError(f"label mode must be one of {LABEL_MODES}, got {mode!r}")


def window_starts(entity_offsets: np.ndarray, seq_len: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Start rows of all windows and the entity index of each, entity by entity."""
    if seq_len < 1 or stride < 1:
        raise TabbertError(f"seq_len and stride must be >= 1 (got {seq_len}, {stride})")
    offsets = np.asarray(entity_offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    span = lengths - seq_len
    eligible = span >= 0
    regular = np.where(eligible, span // stride + 1, 0)
    ragged = eligible & (span % stride != 0)
    counts = regular + ragged
    entity = np.repeat(np.arange(lengths.size), counts)
    first_of_entity = np.cumsum(counts) - counts
    starts = np.arange(entity.size)  # the window's position among its entity's, then its start
    starts -= first_of_entity[entity]  # in place: each window-long temporary costs fresh memory
    starts *= stride
    np.minimum(starts, span[entity], out=starts)
    starts += offsets[entity]
    return starts, entity


def window_labels(row_labels: np.ndarray, starts: np.ndarray, seq_len: int, mode: str = "any") -> np.ndarray:
    """Window labels from row labels: ``any`` row positive (the paper) or the ``last`` row's."""
    starts = np.asarray(starts, dtype=np.int64)
    if mode == "last":
        return np.asarray(row_labels)[starts + seq_len - 1].astype(np.int64)
    if mode == "any":  # some positive row in [start, start + seq_len)
        positive_rows = np.flatnonzero(np.asarray(row_labels) > 0)
        before_start = np.searchsorted(positive_rows, starts)
        before_end = np.searchsorted(positive_rows, starts + seq_len)
        return (before_end > before_start).astype(np.int64)
    raise TabbertError(f"label mode must be one of {LABEL_MODES}, got {mode!r}")


def window_targets(row_targets: np.ndarray, starts: np.ndarray, seq_len: int, mode: str = "last") -> np.ndarray:
    """Regression targets of windows: the ``last`` row's ``[n, T]`` or ``all`` rows' ``[n, L, T]``."""
    starts = np.asarray(starts, dtype=np.int64)
    if mode == "last":
        return np.asarray(row_targets)[starts + seq_len - 1]
    if mode == "all":
        return np.asarray(row_targets)[starts[:, None] + np.arange(seq_len)]
    raise TabbertError(f"target mode must be one of {TARGET_MODES}, got {mode!r}")


def split_fractions(fractions: tuple[float, float, float]) -> np.ndarray:
    values = np.asarray(fractions, dtype=np.float64)
    if values.shape != (3,) or (values < 0).any() or not np.isclose(values.sum(), 1.0):
        raise TabbertError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    return values


def assign_entities(n_entities: int, fractions, seed: int) -> np.ndarray:
    """Split id (0 train, 1 val, 2 test) per entity, from a seeded permutation."""
    cut = np.round(np.cumsum(split_fractions(fractions)) * n_entities).astype(np.int64)
    order = default_rng(seed).permutation(n_entities)
    split = np.empty(n_entities, dtype=np.int8)
    split[order] = np.searchsorted(cut, np.arange(n_entities), side="right").astype(np.int8)
    return split


def assign_random(n_windows: int, fractions, seed: int) -> np.ndarray:
    """Split id per window, at random (the reference protocol; overlapping windows leak)."""
    return assign_entities(n_windows, fractions, seed)


def time_cutoffs(row_times: np.ndarray, fractions) -> tuple[int, int]:
    """Times at which validation and test periods begin, from row-time quantiles."""
    train, val, _ = split_fractions(fractions)
    q = np.quantile(np.asarray(row_times), [train, train + val], method="lower")
    return int(q[0]), int(q[1])


def assign_by_time(window_end_times: np.ndarray, cutoffs: tuple[int, int]) -> np.ndarray:
    """Split id per window from the time of its newest row: train < val start <= val < test start."""
    return np.searchsorted(np.asarray(cutoffs), np.asarray(window_end_times), side="right").astype(np.int8)
