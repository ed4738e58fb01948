"""Window aggregates: one fixed-length feature vector per window, for gradient-boosted trees.

Everything is derived from the tokenizer's field list and the dataset's value columns, so the
same code serves card transactions and air-quality readings. Per window of ``L`` rows:

* every raw numeric column (``values.npy``, e.g. Amount): mean, std, min, max, the last row's
  value, last minus mean, and max over |mean| (missing values are skipped; a statistic with no
  value to use is NaN);
* the gap in seconds since the entity's previous row: mean, min and the last row's gap;
* calendar of the last row (hour, weekday, month) and the window's span in seconds;
* every categorical field: the last row's category (a LightGBM categorical feature); with at
  most ``max_categories`` categories also a count per category (Use Chip, Errors?), with more
  the number of distinct categories in the window and whether the last row's category was seen
  earlier in the window (merchant, city, zip, MCC novelty).

Windows are processed in chunks, each fully vectorized: rows are gathered with
``starts[:, None] + arange(L)`` from the memory-mapped matrices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tabbert.data.tokenizer import TabularTokenizer

GAP_COLUMN = "gap_seconds"
MAX_CATEGORIES = 16
CHUNK_WINDOWS = 65_536
_US_PER_SECOND = 1_000_000
_VALUE_STATISTICS = ("mean", "std", "min", "max", "last", "last_minus_mean", "max_over_mean")
_GAP_STATISTICS = ("mean", "min", "last")
_CALENDAR = ("window.span_seconds", "last.hour", "last.weekday", "last.month")


@dataclass(frozen=True)
class WindowFeatures:
    """The feature layout of one dataset and the function that fills it for any windows.

    ``names`` are readable feature names; ``categorical`` the indices of the features that hold
    category ids (local token ids of a field, stored as exact small integers).
    """

    tokenizer: TabularTokenizer
    value_columns: tuple[str, ...]
    seq_len: int
    max_categories: int = MAX_CATEGORIES

    @classmethod
    def from_dataset(cls, data, max_categories: int = MAX_CATEGORIES) -> WindowFeatures:
        """The layout of a :class:`~tabbert.data.prepared.PreparedDataset`."""
        return cls(data.tokenizer, tuple(data.meta["value_columns"]), data.seq_len, max_categories)

    # ------------------------------------------------------------------ layout
    @property
    def _numeric_columns(self) -> list[int]:
        return [j for j, name in enumerate(self.value_columns) if name != GAP_COLUMN]

    @property
    def _categorical_fields(self) -> list[int]:
        return [j for j, field in enumerate(self.tokenizer.fields) if field.kind == "categorical"]

    @property
    def _few_valued_fields(self) -> list[int]:
        fields = self.tokenizer.fields
        return [j for j in self._categorical_fields if fields[j].n_tokens <= self.max_categories]

    @property
    def _many_valued_fields(self) -> list[int]:
        fields = self.tokenizer.fields
        return [j for j in self._categorical_fields if fields[j].n_tokens > self.max_categories]

    @property
    def names(self) -> list[str]:
        fields = self.tokenizer.fields
        names = [f"{self.value_columns[j]}.{stat}" for j in self._numeric_columns for stat in _VALUE_STATISTICS]
        if GAP_COLUMN in self.value_columns:
            names += [f"gap.{stat}" for stat in _GAP_STATISTICS]
        names += list(_CALENDAR)
        for j in self._few_valued_fields:
            names += [f"{fields[j].name}.count[{label}]" for label in fields[j].labels()]
        for j in self._many_valued_fields:
            names += [f"{fields[j].name}.distinct", f"{fields[j].name}.seen_before"]
        names += [f"{fields[j].name}.last" for j in self._categorical_fields]
        return names

    @property
    def categorical(self) -> list[int]:
        n_last = len(self._categorical_fields)
        total = len(self.names)
        return list(range(total - n_last, total))

    # ------------------------------------------------------------------ values
    def transform(self, data, starts: np.ndarray, chunk_size: int = CHUNK_WINDOWS) -> np.ndarray:
        """Features ``float32 [n_windows, n_features]`` of the windows of ``data`` at ``starts``."""
        starts = np.asarray(starts, dtype=np.int64)
        out = np.empty((starts.size, len(self.names)), dtype=np.float32)
        offsets = np.arange(self.seq_len)
        for begin in range(0, starts.size, chunk_size):
            rows = starts[begin:begin + chunk_size, None] + offsets
            flat = rows.ravel()
            shape = (*rows.shape, -1)
            out[begin:begin + rows.shape[0]] = self.compute(
                np.asarray(data.tokens[flat]).reshape(shape),
                np.asarray(data.values[flat]).reshape(shape),
                np.asarray(data.times[flat]).reshape(rows.shape),
            )
        return out

    def compute(self, tokens: np.ndarray, values: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Features of windows given as arrays: tokens ``[n, L, F]``, values ``[n, L, V]``, times ``[n, L]`` (µs)."""
        parts = [_value_statistics(values[:, :, self._numeric_columns])]
        if GAP_COLUMN in self.value_columns:
            gaps = values[:, :, self.value_columns.index(GAP_COLUMN)]
            mean, _, low, _, _ = _masked_moments(gaps)
            parts.append(np.stack([mean, low, gaps[:, -1]], axis=1))
        parts.append(_calendar(times))
        fields = self.tokenizer.fields
        local = tokens - np.asarray(self.tokenizer.field_offsets, dtype=tokens.dtype)
        few = self._few_valued_fields
        if few:
            sizes = np.array([fields[j].size for j in few])
            column = local[:, :, few] + (np.cumsum(sizes) - sizes)  # each category's count column
            width = int(sizes.sum())
            cell = np.arange(len(tokens))[:, None, None] * width + column
            parts.append(np.bincount(cell.ravel(), minlength=len(tokens) * width).reshape(len(tokens), width))
        many = self._many_valued_fields
        if many:
            chosen = local[:, :, many]
            ordered = np.sort(chosen, axis=1)
            distinct = (np.diff(ordered, axis=1) != 0).sum(axis=1) + 1
            seen_before = (chosen[:, :-1] == chosen[:, -1:]).any(axis=1)
            parts.append(np.stack([distinct, seen_before], axis=2).reshape(len(tokens), 2 * len(many)))
        parts.append(local[:, -1, self._categorical_fields])
        return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts], axis=1)


def _masked_moments(x: np.ndarray):
    """Mean, std, min, max and count over axis 1, skipping NaN; NaN where nothing is left."""
    x = x.astype(np.float64)
    finite = np.isfinite(x)
    count = finite.sum(axis=1)
    some = count > 0
    safe_count = np.maximum(count, 1)
    mean = np.where(finite, x, 0.0).sum(axis=1) / safe_count
    spread = np.where(finite, x - np.expand_dims(mean, 1), 0.0)
    std = np.sqrt((spread**2).sum(axis=1) / safe_count)
    low = np.min(x, axis=1, where=finite, initial=np.inf)
    high = np.max(x, axis=1, where=finite, initial=-np.inf)
    mean, std, low, high = (np.where(some, s, np.nan) for s in (mean, std, low, high))
    return mean, std, low, high, count


def _value_statistics(values: np.ndarray) -> np.ndarray:
    """``[n, V * 7]``: per column mean, std, min, max, last, last - mean, max / |mean|."""
    mean, std, low, high, _ = _masked_moments(values)
    last = values[:, -1].astype(np.float64)
    magnitude = np.abs(mean)
    ratio = np.divide(high, magnitude, out=np.full_like(high, np.nan), where=magnitude > 0)
    statistics = np.stack([mean, std, low, high, last, last - mean, ratio], axis=2)
    return statistics.reshape(len(values), values.shape[2] * len(_VALUE_STATISTICS))


def _calendar(times: np.ndarray) -> np.ndarray:
    """``[n, 4]``: window span in seconds, then hour, weekday (Monday 0) and month of the last row."""
    last = times[:, -1]
    seconds = last // _US_PER_SECOND
    days = seconds // 86_400
    month = last.astype("datetime64[us]").astype("datetime64[M]").astype(np.int64) % 12 + 1
    span = (last - times[:, 0]) / _US_PER_SECOND
    return np.stack([span, (seconds % 86_400) // 3_600, (days + 3) % 7, month], axis=1)
