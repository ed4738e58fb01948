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

from dataclasses import dataclass

import numpy as np
import polars as pl

from tabbert.data.schema import MICROSECONDS_PER_DAY, MICROSECONDS_PER_HOUR, MICROSECONDS_PER_SECOND
from tabbert.data.tokenizer import TabularTokenizer

GAP_COLUMN = "gap_seconds"
MAX_CATEGORIES = 16
WINDOWS = (("1h", MICROSECONDS_PER_HOUR), ("1d", MICROSECONDS_PER_DAY), ("7d", 7 * MICROSECONDS_PER_DAY))
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday; Monday is 0


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
        for name in [fields[j].name for j in self._categorical] + ["hour"]:
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
        numeric = values[:, [self.value_columns.index(c) for c in self._numeric]].astype(np.float64)
        present = ~np.isnan(numeric)
        filled = np.where(present, numeric, 0.0)
        hour = times // MICROSECONDS_PER_HOUR % 24

        frame = pl.DataFrame({"entity": entity, "time": times,
                              **{f"x{k}": filled[:, k] for k in range(filled.shape[1])},
                              **{f"p{k}": present[:, k].astype(np.float64) for k in range(filled.shape[1])},
                              **{f"c{k}": codes[:, k] for k in range(codes.shape[1])}, "hour": hour})
        sums = _entity_cumulative(frame, filled.shape[1])
        seen = _seen_before(frame, [*(f"c{k}" for k in range(codes.shape[1])), "hour"])

        columns = [position - first + 1]
        for _, width in WINDOWS:
            start = _window_start(entity, times, width)
            columns.append(position - start + 1)
            for k in range(filled.shape[1]):
                cumulative = sums[f"x{k}"]
                columns.append(cumulative - (cumulative[start] - filled[start, k]))
        for k in range(filled.shape[1]):
            columns += _relative(numeric[:, k], filled[:, k], present[:, k], sums, k)
        previous = np.concatenate([[0], times[:-1]])
        columns.append(np.where(position > first, (times - previous) / MICROSECONDS_PER_SECOND, np.nan))
        columns += seen
        local = tokens.astype(np.int64) - np.asarray(self.tokenizer.field_offsets, dtype=np.int64)
        for j, usual in zip(_few_valued(self.tokenizer, self.max_categories), self.usual):
            unusual = np.cumsum(local[:, j] != usual)
            columns.append(unusual - unusual[first] + (local[first, j] != usual))
        columns += [hour, (times // MICROSECONDS_PER_DAY + EPOCH_WEEKDAY) % 7]
        columns += [local[:, j] for j in self._categorical]
        out = np.empty((n, len(columns)), dtype=np.float32)
        for k, column in enumerate(columns):
            out[:, k] = column
        return out


def _few_valued(tokenizer: TabularTokenizer, max_categories: int) -> list[int]:
    return [j for j, field in enumerate(tokenizer.fields)
            if field.kind == "categorical" and field.n_tokens <= max_categories]


def _entity_cumulative(frame: pl.DataFrame, n_numeric: int) -> dict[str, np.ndarray]:
    """Per entity, running sums (this row included) of each numeric value, its square and its presence."""
    expressions = []
    for k in range(n_numeric):
        x, p = pl.col(f"x{k}"), pl.col(f"p{k}")
        expressions += [x.cum_sum().over("entity").alias(f"x{k}"), (x * x).cum_sum().over("entity").alias(f"q{k}"),
                        p.cum_sum().over("entity").alias(f"p{k}")]
    if not expressions:
        return {}
    sums = frame.select(expressions)
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


def _seen_before(frame: pl.DataFrame, code_columns: list[str]) -> list[np.ndarray]:
    """For each code column: earlier rows of the entity with this row's code, and seconds since the
    latest (NaN: none, or a null code)."""
    expressions = []
    for name in code_columns:
        group = ["entity", name]
        null = pl.col(name) < 0
        count = pl.when(null).then(None).otherwise(pl.int_range(pl.len()).over(group))
        since = pl.when(null).then(None).otherwise(pl.col("time") - pl.col("time").shift(1).over(group))
        expressions += [count.cast(pl.Float64).alias(f"{name}.count"),
                        (since.cast(pl.Float64) / MICROSECONDS_PER_SECOND).alias(f"{name}.since")]
    seen = frame.select(expressions)
    return [seen.get_column(name).fill_null(np.nan).to_numpy() for name in seen.columns]


def _window_start(entity: np.ndarray, times: np.ndarray, width: int) -> np.ndarray:
    """For each row, the first row of its entity whose time lies within ``width`` µs before it
    (``time > row time - width``); rows are in entity-then-time order."""
    distinct = np.unique(times)
    rank = np.searchsorted(distinct, times)
    stride = distinct.size + 1
    key = entity * stride + rank  # ascending: entity first, then time
    bound = entity * stride + np.searchsorted(distinct, times - width, side="right")
    return np.searchsorted(key, bound, side="left")
