"""Per-field encoders: each learns one field from the training rows and turns its values into local ids.

Local id 0 is the field's own [UNK] (an unseen category), 1 its [MISSING] (a null value, or a
first row without a gap), and 2.. its categories or bins. The tokenizer places each field's
local ids in a range of its global id space (``offset``).

``CategoricalEncoder``   a vocabulary by training frequency, values seen ``min_count`` times
``NumericEncoder``       quantile bins of a numeric column or of a binned time feature
``ClockEncoder``         the hour of day or the weekday (nothing to learn)

Fitting takes a column and a boolean mask of the training rows (``None``: every row).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import polars as pl

from tabbert.errors import TabbertError

FIELD_UNK, FIELD_MISSING = 0, 1
N_FIELD_SPECIALS = 2
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
CLOCK_SIZES = {"hour": 24, "weekday": 7}
DENSE_LOOKUP_LIMIT = 1 << 22  # widest integer range encoded through a table indexed by value
COMPARE_EDGES_LIMIT = 32  # most bin edges placed by comparisons rather than binary search
BLOCK_ROWS = 1 << 17  # rows compared at a time, so that temporaries stay small
FEW_ROWS = 64  # up to this many rows, categories are looked up one by one


def id_dtype(n_ids: int) -> np.dtype:
    """The narrowest of uint8, uint16 and int32 that holds the ids ``0 .. n_ids - 1``."""
    for dtype in (np.uint8, np.uint16):
        if n_ids <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.int32)


class FieldEncoder:
    """One field's slice of the id space: fit on training rows, encode a column to local ids."""

    kind: ClassVar[str]

    def __init__(self, name: str, source: str | None = None):
        self.name = name
        self.source = name if source is None else source  # the table column or time feature it reads
        self.offset = 0  # its first global id, placed by the tokenizer

    @property
    def n_tokens(self) -> int:
        """Number of categories or bins (local ids 2..)."""
        raise NotImplementedError

    @property
    def size(self) -> int:
        return N_FIELD_SPECIALS + self.n_tokens

    def fit(self, values, train_rows: np.ndarray | None = None) -> FieldEncoder:
        """Learn the field from the rows of ``values`` where ``train_rows`` is true."""
        raise NotImplementedError

    def encode(self, values) -> np.ndarray:
        """Local ids of ``values``, in the narrowest type holding them."""
        raise NotImplementedError

    def fit_encode(self, values, train_rows: np.ndarray | None = None) -> np.ndarray:
        """:meth:`fit`, then the local ids of every row."""
        return self.fit(values, train_rows).encode(values)

    def labels(self) -> list[str]:
        """Human-readable label of every local id."""
        return ["[UNK]", "[MISSING]", *self._token_labels()]

    def _token_labels(self) -> list[str]:
        raise NotImplementedError

    def _state(self) -> dict:
        return {}

    def to_dict(self) -> dict:
        """The JSON form (lists shared, not copied: vocabularies can be large)."""
        return {"name": self.name, "kind": self.kind, "source": self.source, "offset": self.offset,
                "values": [], "edges": [], **self._state()}

    @staticmethod
    def from_dict(data: dict) -> FieldEncoder:
        """The encoder that :meth:`to_dict` wrote (its offset is placed again by the tokenizer)."""
        kind, name, source = data["kind"], data["name"], data["source"]
        if kind == CategoricalEncoder.kind:
            encoder = CategoricalEncoder(name, source=source)
            encoder.values = list(data["values"])
        elif kind == NumericEncoder.kind:
            encoder = NumericEncoder(name, source=source)
            encoder.edges = list(data["edges"])
        elif kind in CLOCK_SIZES:
            encoder = ClockEncoder(name, kind)
        else:
            raise TabbertError(f"unknown field kind {kind!r}")
        encoder.offset = int(data.get("offset", 0))
        return encoder

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, size={self.size})"


class CategoricalEncoder(FieldEncoder):
    """A vocabulary of the values seen at least ``min_count`` times on training rows, by frequency, then value.

    Columns may be text, Categorical, Enum, integer or boolean; values are compared as text.
    """

    kind = "categorical"

    def __init__(self, name: str, min_count: int = 1, source: str | None = None):
        super().__init__(name, source)
        self.min_count = min_count
        self.values: list[str] = []
        self._local: tuple[list[str] | None, dict[str, int]] = (None, {})

    @property
    def n_tokens(self) -> int:
        return len(self.values)

    def fit(self, values: pl.Series, train_rows: np.ndarray | None = None) -> CategoricalEncoder:
        self._fit_slots(values, train_rows)
        return self

    def fit_encode(self, values: pl.Series, train_rows: np.ndarray | None = None) -> np.ndarray:
        """One pass: the local ids are looked up from the slots the fit counted."""
        slots, local_of_slot = self._fit_slots(values, train_rows)
        return np.take(local_of_slot, slots.ids)

    def _fit_slots(self, column: pl.Series, train_rows: np.ndarray | None) -> tuple[_Slots, np.ndarray]:
        """Count the training rows of each slot; keep the vocabulary; return the slots and their local ids."""
        slots = _value_slots(column)
        counts = np.bincount(slots.ids, weights=train_rows, minlength=slots.null_slot + 1)[: slots.null_slot]
        # lists rather than arrays: Polars imports numpy.ma (tens of ms) to take in an array
        kept = np.flatnonzero(counts >= self.min_count).tolist()
        ranked = (
            pl.DataFrame(
                {"value": slots.values_of(kept).cast(pl.String), "n": counts[kept].astype(np.int64).tolist(),
                 "slot": kept},
                schema_overrides={"n": pl.Int64, "slot": pl.Int64},
            )
            .sort(["n", "value"], descending=[True, False])
        )
        self.values = ranked.get_column("value").to_list()
        local_of_slot = np.full(slots.null_slot + 1, FIELD_UNK, dtype=id_dtype(self.size))
        local_of_slot[slots.null_slot] = FIELD_MISSING
        local_of_slot[ranked.get_column("slot").to_numpy()] = np.arange(ranked.height) + N_FIELD_SPECIALS
        return slots, local_of_slot

    def encode(self, values: pl.Series) -> np.ndarray:
        """One vocabulary lookup per distinct value; unseen values are [UNK], nulls [MISSING].

        A few rows (scoring as transactions come) are looked up one by one in a dict of the
        vocabulary, which spares the per-call cost of a table lookup.
        """
        if values.len() <= FEW_ROWS:
            local = self._local_ids()
            return np.array([FIELD_MISSING if value is None else local.get(value, FIELD_UNK)
                             for value in values.cast(pl.String).to_list()], dtype=id_dtype(self.size))
        slots = _value_slots(values)
        present = np.flatnonzero(np.bincount(slots.ids, minlength=slots.null_slot + 1)[: slots.null_slot])
        local_of_slot = np.full(slots.null_slot + 1, FIELD_MISSING, dtype=id_dtype(self.size))
        local_of_slot[present] = slots.values_of(present.tolist()).cast(pl.String).replace_strict(
            self.values, list(range(N_FIELD_SPECIALS, self.size)), default=FIELD_UNK, return_dtype=pl.Int32
        ).to_numpy()
        return np.take(local_of_slot, slots.ids)

    def _local_ids(self) -> dict[str, int]:
        """The local id of each value of the vocabulary (made once per vocabulary)."""
        if self._local[0] is not self.values:
            self._local = (self.values, {value: i for i, value in enumerate(self.values, N_FIELD_SPECIALS)})
        return self._local[1]

    def _token_labels(self) -> list[str]:
        return list(self.values)

    def _state(self) -> dict:
        return {"values": self.values}


class NumericEncoder(FieldEncoder):
    """``n_bins`` quantile bins of the training values (fewer where values repeat); NaN and null are missing.

    A value below the lowest edge falls in the first bin, one above the highest in the last.
    """

    kind = "numeric"

    def __init__(self, name: str, n_bins: int = 10, source: str | None = None):
        super().__init__(name, source)
        self.n_bins = n_bins
        self.edges: list[float] = []

    @property
    def n_tokens(self) -> int:
        return max(len(self.edges) - 1, 1)

    def fit(self, values, train_rows: np.ndarray | None = None) -> NumericEncoder:
        values = _as_floats(values)
        if train_rows is None:
            self.edges = quantile_edges(values, self.n_bins).tolist()
        else:
            training = np.take(values, np.flatnonzero(train_rows))
            self.edges = quantile_edges(training, self.n_bins, overwrite_input=True).tolist()
        return self

    def fit_encode(self, values, train_rows: np.ndarray | None = None) -> np.ndarray:
        values = _as_floats(values)  # converted once for both
        return self.fit(values, train_rows).encode(values)

    def encode(self, values) -> np.ndarray:
        values = _as_floats(values)
        local = _bin_index(values, np.asarray(self.edges[1:-1]), id_dtype(self.size))
        local += N_FIELD_SPECIALS
        missing = np.isnan(values)
        if missing.any():
            local[missing] = FIELD_MISSING
        return local

    def _token_labels(self) -> list[str]:
        edges = self.edges if len(self.edges) > 1 else self.edges * 2
        last = len(edges) - 2
        return [f"[{lo:.6g}, {hi:.6g}{']' if i == last else ')'}" for i, (lo, hi) in enumerate(zip(edges, edges[1:]))]

    def _state(self) -> dict:
        return {"edges": self.edges}


class ClockEncoder(FieldEncoder):
    """The hour of day (0-23) or the weekday (0 is Monday) of a row: a fixed vocabulary."""

    def __init__(self, name: str, kind: str):
        if kind not in CLOCK_SIZES:
            raise TabbertError(f"unknown clock feature {kind!r}; choose from {sorted(CLOCK_SIZES)}")
        super().__init__(name, source=kind)
        self.kind = kind

    @property
    def n_tokens(self) -> int:
        return CLOCK_SIZES[self.kind]

    def fit(self, values, train_rows: np.ndarray | None = None) -> ClockEncoder:
        return self

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Local ids of hour or weekday numbers (never missing: every row has a time)."""
        return np.asarray(values, dtype=np.uint8) + np.uint8(N_FIELD_SPECIALS)

    def _token_labels(self) -> list[str]:
        return [f"{h:02d}h" for h in range(24)] if self.kind == "hour" else list(WEEKDAYS)


def _as_floats(values) -> np.ndarray:
    """A column (nulls become NaN) or an array, as float64 values."""
    if isinstance(values, pl.Series):
        return values.cast(pl.Float64).to_numpy()
    return np.asarray(values, dtype=np.float64)


@dataclass
class _Slots:
    """Each row's slot in a small table of a column's values.

    ``ids`` (intp, one per row) lie in ``0..null_slot``, null rows in ``null_slot``;
    ``values_of(slots)`` gives the column values that the given (non-null) slots stand for.
    """

    ids: np.ndarray
    null_slot: int
    values_of: Callable[[list[int]], pl.Series]


def _value_slots(column: pl.Series) -> _Slots:
    """Put every row of ``column`` in a slot: one pass, no sort.

    Categorical codes and integers spanning a small range (card numbers, codes, zips) are their
    own slots (less the smallest, when negative or large); text and wide-ranging integers get
    theirs through one hash map.
    """
    if column.null_count() == column.len():
        return _Slots(np.zeros(column.len(), dtype=np.intp), 0, lambda slots: column.clear())
    categorical = isinstance(column.dtype, (pl.Categorical, pl.Enum))
    keys = column.to_physical() if categorical else column
    low, high = (int(keys.min()), int(keys.max())) if keys.dtype.is_integer() else (0, DENSE_LOOKUP_LIMIT)
    offset = 0 if 0 <= low and high < DENSE_LOOKUP_LIMIT else low  # small non-negative keys are their own slots
    if high - offset < DENSE_LOOKUP_LIMIT:
        null_slot = high - offset + 1
        wide = pl.UInt64 if keys.dtype.is_unsigned_integer() else pl.Int64  # holds every key and slot
        shifted = keys.cast(wide) - offset if offset else keys
        ids = shifted.fill_null(null_slot).to_numpy().astype(np.intp, copy=False)

        def values_of(slots: list[int]) -> pl.Series:
            keys_of_slots = (pl.Series(column.name, slots, dtype=wide) + offset).cast(keys.dtype)
            return keys_of_slots.cat.to(column.dtype) if categorical else keys_of_slots

        return _Slots(ids, null_slot, values_of)
    values = column.unique(maintain_order=True).drop_nulls()  # one thread: fields may run in parallel
    ids = column.replace_strict(values, pl.int_range(values.len(), eager=True)).fill_null(values.len())
    return _Slots(ids.to_numpy(), values.len(), values.gather)


def _bin_index(values: np.ndarray, inner_edges: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """How many ``inner_edges`` each value reaches (``searchsorted(..., side="right")``), as ``dtype``.

    Up to a few dozen edges, one vectorized comparison per edge (a block of rows at a time)
    beats a binary search per value.
    """
    if inner_edges.size > COMPARE_EDGES_LIMIT:
        return np.searchsorted(inner_edges, values, side="right").astype(dtype)
    index = np.zeros(values.shape, dtype=dtype)
    for begin in range(0, len(values), BLOCK_ROWS):
        block, block_index = values[begin : begin + BLOCK_ROWS], index[begin : begin + BLOCK_ROWS]
        for edge in inner_edges:
            block_index += block >= edge
    return index


def quantile_edges(values: np.ndarray, n_bins: int, overwrite_input: bool = False) -> np.ndarray:
    """Distinct quantile bin edges (min and max included) of the finite ``values``.

    The edge at quantile ``i / n_bins`` is the sorted value at ``floor(i * (n - 1) / n_bins)``
    (NumPy's "lower" method, in exact integer arithmetic); one SIMD sort beats a selection per
    quantile. With ``overwrite_input``, ``values`` may be sorted in place (as in ``np.percentile``).
    """
    finite = np.isfinite(values)
    if not finite.all():
        values = values[finite]
    elif not overwrite_input:
        values = values.copy()
    values.sort()
    if values.size == 0:
        return np.zeros(1)
    positions = np.arange(n_bins + 1) * (values.size - 1) // n_bins
    edges = values[positions]
    # sorted, so an edge is new where it differs from the one before (np.unique imports numpy.ma)
    return edges[np.concatenate(([True], edges[1:] != edges[:-1]))]
