"""Causal history features: one feature vector per row, from its entity's rows up to and including it.

What a fraud analyst computes for a transaction from the card's past, for any schema (the
inputs are the prepared arrays: raw-value codes, numeric values, times and tokens). Per row:

* ``rows_so_far``: the entity's rows up to this one;
* for each window of the last hour, day and week (by time, this row included): the number of
  the entity's rows and the sum of each numeric field;
* each numeric field: its value, the mean of the entity's *earlier* values, the ratio to that
  mean and the z-score against their mean and standard deviation (NaN without earlier values);
  the seconds since the entity's previous row;
* each categorical field and the hour of day: how many earlier rows of the entity had this
  row's raw value, and the seconds since the latest of them (NaN: never, or a null value). Raw
  values (:mod:`tabbert.data.codes`), not tokens: two rare merchants merged into [UNK] are
  still two merchants;
* each categorical field of at most ``max_categories`` categories (card: Use Chip, Errors?):
  how many of the entity's rows so far took another value than the field's most common one
  on the training rows (card: errors so far);
* hour and weekday of the row, and the row's own token of each categorical field (LightGBM
  categorical features: the tokenizer's local ids, the same in every table).

Rows are the prepared order (entity, then time). "Earlier" means earlier in that order, so a
feature never depends on a later row, even one with the same time; the time windows are
computed with binary searches rather than a rolling window over time, which would let rows
with the same time see each other.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl

from tabbert.data.codes import categorical_fields
from tabbert.data.schema import MICROSECONDS_PER_DAY, MICROSECONDS_PER_HOUR, MICROSECONDS_PER_SECOND
from tabbert.data.tokenizer import TabularTokenizer

GAP_COLUMN = "gap_seconds"
MAX_CATEGORIES = 16
WINDOWS = (("1h", MICROSECONDS_PER_HOUR), ("1d", MICROSECONDS_PER_DAY), ("7d", 7 * MICROSECONDS_PER_DAY))
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday; Monday is 0
KEY_LIMIT = 2**62
THREADS = 2  # the sorts of the seen-before features run beside the rest


@dataclass(frozen=True)
class HistoryFeatures:
    """The feature layout of one tokenizer and value columns, and the function that fills it.

    ``usual`` holds, per categorical field with at most ``max_categories`` categories, the
    local token id of its most common value on the training rows.
    """

    tokenizer: TabularTokenizer
    value_columns: tuple[str, ...]
    usual: tuple[int, ...]
    max_categories: int = MAX_CATEGORIES

    @classmethod
    def fit(cls, data, train_rows: np.ndarray | None = None, max_categories: int = MAX_CATEGORIES) -> HistoryFeatures:
        """The layout of a :class:`~tabbert.data.prepared.PreparedDataset`; ``train_rows`` (bool, None:
        all rows) are the rows whose most common categories count."""
        tokenizer = data.tokenizer
        few = _few_valued(tokenizer, max_categories)
        usual = []
        for j in few:
            local = np.asarray(data.tokens[:, j]).astype(np.int64) - tokenizer.fields[j].offset
            if train_rows is not None:
                local = local[train_rows]
            usual.append(int(np.argmax(np.bincount(local, minlength=tokenizer.fields[j].size))))
        return cls(tokenizer, tuple(data.meta["value_columns"]), tuple(usual), max_categories)

    def to_dict(self) -> dict:
        return {"value_columns": list(self.value_columns), "usual": list(self.usual),
                "max_categories": self.max_categories}

    @classmethod
    def from_dict(cls, saved: dict, tokenizer: TabularTokenizer) -> HistoryFeatures:
        return cls(tokenizer, tuple(saved["value_columns"]), tuple(saved["usual"]), saved["max_categories"])

    # ------------------------------------------------------------------ layout
    @property
    def _numeric(self) -> list[str]:
        return [name for name in self.value_columns if name != GAP_COLUMN]

    @property
    def _categorical(self) -> list[int]:
        return [j for j, field in enumerate(self.tokenizer.fields) if field.kind == "categorical"]

    @property
    def names(self) -> list[str]:
        fields = self.tokenizer.fields
        names = ["rows_so_far"]
        for window, _ in WINDOWS:
            names += [f"count_{window}", *(f"{column}.sum_{window}" for column in self._numeric)]
        for column in self._numeric:
            names += [column, f"{column}.earlier_mean", f"{column}.ratio_to_earlier_mean", f"{column}.z_vs_earlier"]
        names.append("seconds_since_previous")
        for name in [*categorical_fields(self.tokenizer.schema), "hour"]:  # the columns of the codes
            names += [f"{name}.seen_before", f"{name}.seconds_since_seen"]
        names += [f"{fields[j].name}.unusual_so_far" for j in _few_valued(self.tokenizer, self.max_categories)]
        names += ["hour", "weekday"]
        names += [f"{fields[j].name}.token" for j in self._categorical]
        return names

    @property
    def categorical(self) -> list[int]:
        total, n_tokens = len(self.names), len(self._categorical)
        return list(range(total - n_tokens, total))

    # ------------------------------------------------------------------ values
    def transform(self, data) -> np.ndarray:
        """Features ``float32 [n_rows, n_features]`` of every row of a prepared dataset."""
        return self.compute(np.asarray(data.codes), np.asarray(data.values), np.asarray(data.times),
                            np.asarray(data.tokens), np.asarray(data.entity_offsets))

    def compute(self, codes: np.ndarray, values: np.ndarray, times: np.ndarray, tokens: np.ndarray,
                entity_offsets: np.ndarray) -> np.ndarray:
        """Features of rows in entity-then-time order, given as arrays: raw-value ``codes [n, C]``,
        ``values [n, V]`` (columns ``value_columns``), ``times [n]`` (µs), ``tokens [n, F]`` and
        ``entity_offsets [E + 1]``."""
        n = len(times)
        times = times.astype(np.int64, copy=False)
        lengths = np.diff(entity_offsets)
        entity = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
        first = np.asarray(entity_offsets[:-1], dtype=np.int64)[entity]  # first row of each row's entity
        position = np.arange(n, dtype=np.int64)
        hour = times // MICROSECONDS_PER_HOUR % 24
        out = np.empty((n, len(self.names)), dtype=np.float32, order="F")  # filled column by column
        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            seen = [pool.submit(_seen_before, entity, times, np.ascontiguousarray(column))
                    for column in [*codes.T, hour]]
            column = self._fill_numeric(out, values, entity, times, position, first)
            for job in seen:
                out[:, column], out[:, column + 1] = job.result()
                column += 2
        offsets = self.tokenizer.field_offsets
        for j, usual in zip(_few_valued(self.tokenizer, self.max_categories), self.usual):
            unusual = tokens[:, j] != usual + offsets[j]
            so_far = np.cumsum(unusual)
            out[:, column] = so_far - so_far[first] + unusual[first]
            column += 1
        out[:, column], out[:, column + 1] = hour, (times // MICROSECONDS_PER_DAY + EPOCH_WEEKDAY) % 7
        for j in self._categorical:
            column += 1
            out[:, column + 1] = tokens[:, j].astype(np.int64) - offsets[j]
        return out

    def _fill_numeric(self, out: np.ndarray, values: np.ndarray, entity: np.ndarray, times: np.ndarray,
                      position: np.ndarray, first: np.ndarray) -> int:
        """Fill the columns up to the seconds since the previous row; the next column's index."""
        numeric = values[:, [self.value_columns.index(c) for c in self._numeric]].astype(np.float64)
        present = ~np.isnan(numeric)
        filled = np.where(present, numeric, 0.0)
        sums = _entity_cumulative(entity, filled, present)
        out[:, 0] = position - first + 1
        column = 1
        for start in _window_starts(entity, times, [width for _, width in WINDOWS]):
            out[:, column] = position - start + 1
            column += 1
            for k in range(filled.shape[1]):
                cumulative = sums[f"x{k}"]
                out[:, column] = cumulative - (cumulative[start] - filled[start, k])
                column += 1
        for k in range(filled.shape[1]):
            for feature in _relative(numeric[:, k], filled[:, k], present[:, k], sums, k):
                out[:, column] = feature
                column += 1
        since = np.empty(len(times), dtype=np.float64)
        since[1:] = times[1:] - times[:-1]
        since /= MICROSECONDS_PER_SECOND
        since[position == first] = np.nan
        out[:, column] = since
        return column + 1


def _few_valued(tokenizer: TabularTokenizer, max_categories: int) -> list[int]:
    return [j for j, field in enumerate(tokenizer.fields)
            if field.kind == "categorical" and field.n_tokens <= max_categories]


def _entity_cumulative(entity: np.ndarray, filled: np.ndarray, present: np.ndarray) -> dict[str, np.ndarray]:
    """Per entity, running sums (this row included) of each numeric value (``x<k>``), its square
    (``q<k>``) and its presence (``p<k>``)."""
    if not filled.shape[1]:
        return {}
    columns = {"entity": entity}
    for k in range(filled.shape[1]):
        columns.update({f"x{k}": filled[:, k], f"q{k}": filled[:, k] ** 2, f"p{k}": present[:, k].astype(np.float64)})
    frame = pl.DataFrame(columns)
    sums = frame.select(pl.exclude("entity").cum_sum().over("entity"))
    return {name: sums.get_column(name).to_numpy() for name in sums.columns}


def _relative(value: np.ndarray, filled: np.ndarray, present: np.ndarray, sums: dict, k: int) -> list[np.ndarray]:
    """The value, the mean of the entity's earlier values, the ratio to it and the z-score against them."""
    count = sums[f"p{k}"] - present
    total = sums[f"x{k}"] - filled
    squares = sums[f"q{k}"] - filled * filled
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(count > 0, total / count, np.nan)
        std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
        ratio = np.where(mean != 0, value / mean, np.nan)
        z = np.where(std > 1e-6 * np.maximum(np.abs(mean), 1.0), (value - mean) / std, np.nan)
    return [value, mean, ratio, z]


def _seen_before(entity: np.ndarray, times: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Earlier rows of the entity with this row's code, and seconds since the latest of them (NaN:
    none, or a null code ``-1``). One stable sort by (entity, code) keeps each group in row order."""
    key = entity * (int(codes.max()) + 2) + (codes + 1)
    order = np.argsort(key, kind="stable")
    grouped = key[order]
    first = np.empty(grouped.size, dtype=bool)
    first[:1] = True
    np.not_equal(grouped[1:], grouped[:-1], out=first[1:])
    index = np.arange(grouped.size)
    rank = index - np.maximum.accumulate(np.where(first, index, 0))
    ordered_times = times[order]
    since = np.empty(grouped.size, dtype=np.float64)
    since[1:] = ordered_times[1:] - ordered_times[:-1]
    since /= MICROSECONDS_PER_SECOND
    since[first] = np.nan
    count, seconds = np.empty(grouped.size, dtype=np.float64), np.empty(grouped.size, dtype=np.float64)
    count[order], seconds[order] = rank, since
    null = codes < 0
    count[null], seconds[null] = np.nan, np.nan
    return count, seconds


def _window_keys(entity: np.ndarray, times: np.ndarray, longest: int) -> tuple[np.ndarray, Callable]:
    """Ascending keys of the rows (entity, then time) and a function giving, for a time, its key's
    lower bound: the first key of the entity whose time is after it.

    The key is ``entity * span + time`` in the coarsest unit that loses nothing (minutes, seconds
    ...) when that fits in 63 bits, else ``entity * (n + 1) + time rank``.
    """
    low = int(times.min())
    for unit in (60 * MICROSECONDS_PER_SECOND, MICROSECONDS_PER_SECOND, 1_000, 1):
        if unit == 1 or not np.any(times % unit):
            break
    span = (int(times.max()) - low + longest) // unit + 2
    if (int(entity[-1]) + 1) * span < KEY_LIMIT:
        offset = entity * span - low // unit + longest // unit + 1  # keys of times down to ``low - longest`` stay in
        return offset + times // unit, lambda bound: offset + bound // unit + 1
    ranked = np.sort(times)
    stride = times.size + 1
    return entity * stride + np.searchsorted(ranked, times), \
        lambda bound: entity * stride + np.searchsorted(ranked, bound, side="right")


def _window_starts(entity: np.ndarray, times: np.ndarray, widths: list[int]) -> list[np.ndarray]:
    """For each width, each row's first row of its entity whose time lies within ``width`` µs before
    it (``time > row time - width``); rows are in entity-then-time order."""
    keys, lower_bound = _window_keys(entity, times, max(widths))
    return [np.searchsorted(keys, lower_bound(times - width), side="left") for width in widths]
