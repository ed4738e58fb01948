"""``TabularTokenizer``: per-field vocabularies and quantile bins over one global id space.

Id layout
---------
Ids 0-4 are the shared special tokens [PAD] [UNK] [SEP] [CLS] [MASK]. Then every field owns a
contiguous range ``[offset, offset + size)``; inside it, local id 0 is the field's own [UNK]
(an unseen category), local id 1 its [MISSING] (a null value, or a first row without a gap),
and local ids 2.. are its categories or bins. Models predict a masked field over its own range.

Fields come from the table schema (categorical: vocabulary by frequency with a minimum count;
numeric: quantile bins) followed by features derived from the ``_time`` column:
``time.timestamp`` (absolute time in quantile bins, the reference encoding), ``time.hour``,
``time.weekday`` and ``time.gap`` (seconds since the entity's previous row, in quantile bins).
Fit on the training rows only; the label columns are never input fields.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from tabbert.atomic import write_json_atomic
from tabbert.data.schema import (
    ENTITY,
    MICROSECONDS_PER_DAY,
    MICROSECONDS_PER_HOUR,
    MICROSECONDS_PER_SECOND,
    ROW,
    TIME,
    FieldSpec,
    TableSchema,
)
from tabbert.errors import ArtifactError, TabbertError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[SEP]", "[CLS]", "[MASK]")
PAD_ID, UNK_ID, SEP_ID, CLS_ID, MASK_ID = range(len(SPECIAL_TOKENS))
FIELD_UNK, FIELD_MISSING = 0, 1
N_FIELD_SPECIALS = 2
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
FORMAT_VERSION = 1
DENSE_LOOKUP_LIMIT = 1 << 22  # widest integer range encoded through a table indexed by value
COMPARE_EDGES_LIMIT = 32  # most bin edges placed by comparisons rather than binary search
ASSEMBLY_ROWS = 1 << 15  # rows of the id matrix filled field by field at a time
BLOCK_ROWS = 1 << 17  # rows computed at a time where whole-column temporaries would cost fresh memory
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday is 0)

# the time features that depend on a row's own time, from its epoch microseconds (a NumPy array
# or a Polars expression alike: floor division, so times before 1970 count down correctly)
_EPOCH_FEATURES = {
    "timestamp": lambda micros: micros // MICROSECONDS_PER_SECOND,
    "hour": lambda micros: micros // MICROSECONDS_PER_HOUR % 24,
    "weekday": lambda micros: (micros // MICROSECONDS_PER_DAY + EPOCH_WEEKDAY) % 7,
}


def id_dtype(n_ids: int) -> np.dtype:
    """The narrowest of uint8, uint16 and int32 that holds the ids ``0 .. n_ids - 1``."""
    for dtype in (np.uint8, np.uint16):
        if n_ids <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.int32)


@dataclass
class FieldVocab:
    """One field's slice of the id space: a vocabulary (``values``) or bin ``edges``."""

    name: str
    kind: str  # "categorical" | "numeric" | "hour" | "weekday"
    source: str  # the table column (or derived time feature) it encodes
    offset: int = 0
    values: list[str] = field(default_factory=list)
    edges: list[float] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        """Number of categories or bins (local ids 2..)."""
        if self.kind == "categorical":
            return len(self.values)
        if self.kind == "numeric":
            return max(len(self.edges) - 1, 1)
        return 24 if self.kind == "hour" else 7

    @property
    def size(self) -> int:
        return N_FIELD_SPECIALS + self.n_tokens

    def to_dict(self) -> dict:
        """The JSON form (lists shared, not copied: vocabularies can be large)."""
        return {"name": self.name, "kind": self.kind, "source": self.source, "offset": self.offset,
                "values": self.values, "edges": self.edges}

    def labels(self) -> list[str]:
        """Human-readable label of every local id."""
        if self.kind == "categorical":
            names = list(self.values)
        elif self.kind == "numeric":
            edges = self.edges if len(self.edges) > 1 else self.edges * 2
            names = [f"[{lo:.6g}, {hi:.6g}{']' if i == len(edges) - 2 else ')'}" for i, (lo, hi) in enumerate(zip(edges, edges[1:]))]
        elif self.kind == "hour":
            names = [f"{h:02d}h" for h in range(24)]
        else:
            names = list(WEEKDAYS)
        return ["[UNK]", "[MISSING]", *names]


def _time_feature_expr(feature: str, order_by: tuple[str, ...] = (TIME,)) -> pl.Expr:
    time = pl.col(TIME)
    if feature in _EPOCH_FEATURES:
        return _EPOCH_FEATURES[feature](time.dt.epoch("us")).cast(pl.Float64 if feature == "timestamp" else pl.UInt8)
    if feature == "gap":  # in microseconds: see _time_column
        previous = time.shift(1).over(ENTITY, order_by=list(order_by))
        return (time - previous).dt.total_microseconds()
    raise TabbertError(f"unknown time feature {feature!r}")


def _time_column(frame: pl.DataFrame, feature: str) -> pl.Series:
    """A derived time feature of the rows of ``frame``."""
    order_by = (TIME, ROW) if ROW in frame.columns else (TIME,)
    column = frame.select(_time_feature_expr(feature, order_by).alias(f"time.{feature}")).to_series()
    if feature == "gap":  # seconds, divided as gap_seconds divides them (NaN: no previous row)
        return pl.Series(column.name, column.to_numpy() / MICROSECONDS_PER_SECOND)
    return column


def gap_seconds(times: np.ndarray, entity_offsets: np.ndarray) -> np.ndarray:
    """Seconds since the entity's previous row, for rows in entity-then-time order (NaN: none)."""
    gaps = np.empty(times.size, dtype=np.float64)
    # exact integer differences, converted as they are stored: no temporary column
    np.subtract(times[1:], times[:-1], out=gaps[1:], dtype=np.int64, casting="unsafe")
    np.divide(gaps[1:], MICROSECONDS_PER_SECOND, out=gaps[1:])
    gaps[entity_offsets[:-1]] = np.nan
    return gaps


def time_feature_in_order(feature: str, times: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """A derived time feature of rows in entity-then-time order, from their epoch microseconds.

    The values the frame expressions give, from the same formulas (``gaps`` from
    :func:`gap_seconds`), with no per-entity shift.
    """
    if feature == "gap":
        return gaps
    if feature in _EPOCH_FEATURES:
        formula = _EPOCH_FEATURES[feature]
        values = np.empty(times.size, dtype=np.float64 if feature == "timestamp" else np.uint8)
        for begin in range(0, times.size, BLOCK_ROWS):  # the formula's temporaries stay small
            values[begin : begin + BLOCK_ROWS] = formula(times[begin : begin + BLOCK_ROWS])
        return values
    raise TabbertError(f"unknown time feature {feature!r}")


class _FieldIds(NamedTuple):
    """A field's local ids, one per row of the frame or, ``in_output_order``, of the output."""

    local_ids: np.ndarray
    in_output_order: bool = False


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
    values = column.unique(maintain_order=True).drop_nulls()  # one thread: the fields run in parallel
    ids = column.replace_strict(values, pl.int_range(values.len(), eager=True)).fill_null(values.len())
    return _Slots(ids.to_numpy(), values.len(), values.gather)


def _fit_categorical(spec: FieldSpec, column: pl.Series,
                     train_weight: np.ndarray | None) -> tuple[FieldVocab, Callable[[], np.ndarray]]:
    """A field's vocabulary and a function giving the local ids of all rows.

    The vocabulary holds the values seen at least ``min_count`` times on training rows, by
    frequency, then value. ``train_weight`` is 1.0 on training rows and 0.0 elsewhere
    (``None``: all rows train).
    """
    slots = _value_slots(column)
    counts = np.bincount(slots.ids, weights=train_weight, minlength=slots.null_slot + 1)[: slots.null_slot]
    # lists rather than arrays: Polars imports numpy.ma (tens of ms) to take in an array
    kept = np.flatnonzero(counts >= spec.min_count).tolist()
    ranked = (
        pl.DataFrame(
            {"value": slots.values_of(kept).cast(pl.String), "n": counts[kept].astype(np.int64).tolist(), "slot": kept},
            schema_overrides={"n": pl.Int64, "slot": pl.Int64},
        )
        .sort(["n", "value"], descending=[True, False])
    )
    local_of_slot = np.full(slots.null_slot + 1, FIELD_UNK, dtype=id_dtype(N_FIELD_SPECIALS + ranked.height))
    local_of_slot[slots.null_slot] = FIELD_MISSING
    local_of_slot[ranked.get_column("slot").to_numpy()] = np.arange(ranked.height) + N_FIELD_SPECIALS
    vocab = FieldVocab(spec.name, "categorical", spec.name, values=ranked.get_column("value").to_list())
    return vocab, partial(np.take, local_of_slot, slots.ids)


def _categorical_local_ids(vocab: FieldVocab, column: pl.Series) -> np.ndarray:
    """Local ids of a categorical field: one vocabulary lookup per distinct value."""
    slots = _value_slots(column)
    present = np.flatnonzero(np.bincount(slots.ids, minlength=slots.null_slot + 1)[: slots.null_slot])
    local_of_slot = np.full(slots.null_slot + 1, FIELD_MISSING, dtype=id_dtype(vocab.size))
    local_of_slot[present] = slots.values_of(present.tolist()).cast(pl.String).replace_strict(
        vocab.values, list(range(N_FIELD_SPECIALS, vocab.size)), default=FIELD_UNK, return_dtype=pl.Int32
    ).to_numpy()
    return np.take(local_of_slot, slots.ids)


def _numeric_local_ids(vocab: FieldVocab, values: np.ndarray) -> np.ndarray:
    """Local ids of a binned (``numeric``) field; NaN is missing."""
    local = _bin_index(values, np.asarray(vocab.edges[1:-1]), id_dtype(vocab.size))
    local += N_FIELD_SPECIALS
    missing = np.isnan(values)
    if missing.any():
        local[missing] = FIELD_MISSING
    return local


def _clock_local_ids(column: pl.Series) -> np.ndarray:
    """Local ids of hour (0-23) or weekday (0-6) numbers; null is missing."""
    return (column.cast(pl.UInt8) + N_FIELD_SPECIALS).fill_null(FIELD_MISSING).to_numpy()


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


def _training_edges(values: np.ndarray, train_index: np.ndarray | None, n_bins: int) -> list[float]:
    if train_index is None:
        return quantile_edges(values, n_bins).tolist()
    return quantile_edges(np.take(values, train_index), n_bins, overwrite_input=True).tolist()


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


class TabularTokenizer:
    """Turns a normalized table into an integer matrix ``[n_rows, n_fields]`` and back."""

    def __init__(self, schema: TableSchema, fields: list[FieldVocab]):
        self.schema = schema
        self.fields = fields
        offset = len(SPECIAL_TOKENS)
        for vocab in self.fields:
            vocab.offset = offset
            offset += vocab.size
        self.vocab_size = offset
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, frame: pl.DataFrame, schema: TableSchema, rows: np.ndarray | None = None,
            threads: int = 2) -> TabularTokenizer:
        """Learn vocabularies and bin edges from the training rows of ``frame``.

        ``rows`` (a boolean mask) selects the training rows; ``None`` fits on every row. Each
        field's values are put in the slots of a small table once and counted there. Fields
        are fitted on ``threads`` threads: Polars and NumPy release the GIL.
        """
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return cls._fit_fields(frame, schema, rows, pool, encode=False)[0]

    @classmethod
    def fit_encode(cls, frame: pl.DataFrame, schema: TableSchema, rows: np.ndarray | None = None,
                   order: np.ndarray | Callable[[], np.ndarray | None] | None = None, threads: int = 2,
                   time_feature: Callable[[str], np.ndarray] | None = None) -> tuple[TabularTokenizer, np.ndarray]:
        """:meth:`fit`, and the ids :meth:`encode` gives every row, from the same pass over each field.

        The ids come back as rows ``order`` of ``frame`` (all rows in frame order when ``None``),
        looked up from the slots the fit counted instead of from the values again, and stored in
        the narrowest type holding the vocabulary (:func:`id_dtype`): uint16 up to 65,536 ids.
        ``order`` may be a function giving it, called only where the order is needed (the
        assembly, and the training rows of given time features), so that the fitting can begin
        while another thread computes the order.
        ``time_feature`` (a feature's name to its values for rows already in that order, such as
        :func:`time_feature_in_order`) spares deriving the time features from the frame; each is
        computed by the thread that fits it. The fields are fitted on ``threads`` threads, then the
        same threads put blocks of rows in order.
        """
        get_order = order if callable(order) else lambda: order
        with ThreadPoolExecutor(max_workers=threads) as pool:
            tokenizer, field_ids = cls._fit_fields(frame, schema, rows, pool, get_order, time_feature)
            order = get_order()
            n_rows = frame.height if order is None else len(order)
            tokens = np.empty((n_rows, len(field_ids)), dtype=id_dtype(tokenizer.vocab_size))
            offsets = [tokens.dtype.type(offset) for offset in tokenizer.field_offsets]

            def assemble(begin: int) -> None:
                """Put one block of rows in order, field by field: the block stays in cache."""
                out_rows = slice(begin, begin + ASSEMBLY_ROWS)
                frame_rows = None if order is None else order[out_rows]
                block = tokens[out_rows]
                for j, (local_ids, in_output_order) in enumerate(field_ids):
                    in_order = in_output_order or frame_rows is None
                    ids = local_ids[out_rows] if in_order else np.take(local_ids, frame_rows)
                    np.add(ids, offsets[j], out=block[:, j])  # local ids become global ids

            list(pool.map(assemble, range(0, n_rows, ASSEMBLY_ROWS)))
        return tokenizer, tokens

    @classmethod
    def _fit_fields(cls, frame: pl.DataFrame, schema: TableSchema, rows: np.ndarray | None,
                    pool: ThreadPoolExecutor, get_order: Callable[[], np.ndarray | None] = lambda: None,
                    time_feature: Callable[[str], np.ndarray] | None = None,
                    encode: bool = True) -> tuple[TabularTokenizer, list[_FieldIds | None]]:
        """Fit every field on ``pool``; return the tokenizer and, with ``encode``, each field's local ids.

        ``time_feature`` gives its values for rows ``get_order()`` of the frame (``None``: all,
        in frame order).
        """
        rows = None if rows is None else np.asarray(rows, dtype=bool)
        train_index = None if rows is None else np.flatnonzero(rows)
        if (frame.height if train_index is None else train_index.size) == 0:
            raise TabbertError("cannot fit a tokenizer on zero rows")
        # bins need the training values themselves; categories are counted on the training
        # rows by weight, with no per-field copy of those rows
        train_weight = None if rows is None else rows.astype(np.float64)

        @cache
        def ordered_train_index() -> np.ndarray | None:
            order = get_order()
            return train_index if rows is None or order is None else np.flatnonzero(rows[order])

        def fit_field(spec: FieldSpec) -> tuple[FieldVocab, Callable[[], _FieldIds]]:
            column = frame.get_column(spec.name)
            if spec.kind == "categorical":
                vocab, local_ids = _fit_categorical(spec, column, train_weight)
                return vocab, lambda: _FieldIds(local_ids())
            values = column.cast(pl.Float64).to_numpy()
            vocab = FieldVocab(spec.name, "numeric", spec.name, edges=_training_edges(values, train_index, spec.n_bins))
            return vocab, lambda: _FieldIds(_numeric_local_ids(vocab, values))

        def fit_time_feature(feature: str) -> tuple[FieldVocab, Callable[[], _FieldIds]]:
            name = f"time.{feature}"
            given = time_feature is not None  # then in output order already
            if feature in ("hour", "weekday"):
                vocab = FieldVocab(name, feature, feature)  # nothing to learn: only encoding reads the clock
                if given:  # never missing: every row has a time
                    return vocab, lambda: _FieldIds(
                        time_feature(feature) + np.uint8(N_FIELD_SPECIALS), in_output_order=True
                    )
                return vocab, lambda: _FieldIds(_clock_local_ids(_time_column(frame, feature)))
            if given:
                values, train = time_feature(feature).astype(np.float64, copy=False), ordered_train_index()
            else:
                values, train = _time_column(frame, feature).cast(pl.Float64).to_numpy(), train_index
            vocab = FieldVocab(name, "numeric", feature, edges=_training_edges(values, train, schema.time_bins))
            return vocab, lambda: _FieldIds(_numeric_local_ids(vocab, values), given)

        def run(job: Callable) -> tuple[FieldVocab, _FieldIds | None]:
            vocab, field_ids = job()
            return vocab, field_ids() if encode else None

        jobs = [partial(fit_field, spec) for spec in schema.token_fields]
        jobs += [partial(fit_time_feature, feature) for feature in schema.time_features]
        # categorical codes are their own slots; other values may need a hash map, which takes
        # longest: those fields start first, while the rest share the other threads
        slow = [j for j, spec in enumerate(schema.token_fields) if spec.kind == "categorical"
                and not isinstance(frame.schema[spec.name], (pl.Categorical, pl.Enum))]
        start_order = slow + [j for j in range(len(jobs)) if j not in slow]
        fitted = dict(zip(start_order, pool.map(run, [jobs[j] for j in start_order])))
        vocabs, field_ids = zip(*(fitted[j] for j in range(len(jobs))))
        return cls(schema, list(vocabs)), list(field_ids)

    # ------------------------------------------------------------------ encoding
    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def field_offsets(self) -> list[int]:
        return [f.offset for f in self.fields]

    @property
    def field_vocab_sizes(self) -> list[int]:
        return [f.size for f in self.fields]

    def _raw_column(self, frame: pl.DataFrame, vocab: FieldVocab) -> pl.Series:
        if vocab.name.startswith("time."):
            return _time_column(frame, vocab.source)
        return frame.get_column(vocab.source)

    def _local_ids(self, vocab: FieldVocab, column: pl.Series) -> np.ndarray:
        if vocab.kind == "categorical":
            return _categorical_local_ids(vocab, column)
        if vocab.kind in ("hour", "weekday"):
            return _clock_local_ids(column)
        return _numeric_local_ids(vocab, column.cast(pl.Float64).to_numpy())

    def encode(self, frame: pl.DataFrame) -> np.ndarray:
        """Global ids ``[n_rows, n_fields]`` (int32) of a normalized frame, row order kept.

        Unseen categories map to the field's [UNK], nulls to its [MISSING]. ``time.gap`` looks
        at the previous row of the same entity in time order, wherever it sits in ``frame``.
        """
        out = np.empty((frame.height, len(self.fields)), dtype=np.int32)
        for j in range(len(self.fields)):
            out[:, j] = self.encode_field(frame, j)
        return out

    def encode_field(self, frame: pl.DataFrame, index: int) -> np.ndarray:
        """Global ids (int32) of one field, for callers that assemble the matrix themselves."""
        missing = [c for c in self.required_columns if c not in frame.columns]
        if missing:
            raise TabbertError(f"cannot encode: columns {missing} are missing from the table")
        vocab = self.fields[index]
        return self._local_ids(vocab, self._raw_column(frame, vocab)).astype(np.int32) + vocab.offset

    @property
    def required_columns(self) -> list[str]:
        columns = [f.source for f in self.fields if not f.name.startswith("time.")]
        return columns + ([ENTITY, TIME] if self.schema.time_features else [])

    def decode(self, ids: np.ndarray) -> pl.DataFrame:
        """A frame of readable tokens (categories, bin ranges) for an id matrix ``[..., n_fields]``."""
        ids = np.asarray(ids).reshape(-1, len(self.fields))
        columns = {}
        for j, vocab in enumerate(self.fields):
            table = np.array(list(SPECIAL_TOKENS) + ["[OTHER FIELD]"] * (vocab.offset - len(SPECIAL_TOKENS)) + vocab.labels())
            column = ids[:, j]
            valid = (column >= 0) & (column < len(table))
            columns[vocab.name] = np.where(valid, table[np.clip(column, 0, len(table) - 1)], "[OUT OF RANGE]")
        return pl.DataFrame(columns)

    # ------------------------------------------------------------------ identity
    def fingerprint(self) -> str:
        """A short hash of the field layout and vocabularies: equal tokenizers, equal ids."""
        if self._fingerprint is None:
            payload = json.dumps([f.to_dict() for f in self.fields], sort_keys=True).encode()
            self._fingerprint = hashlib.sha256(payload).hexdigest()[:16]
        return self._fingerprint

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "special_tokens": list(SPECIAL_TOKENS),
            "vocab_size": self.vocab_size,
            "fingerprint": self.fingerprint(),
            "schema": self.schema.to_dict(),
            "fields": [f.to_dict() | {"size": f.size} for f in self.fields],
        }

    def save(self, path: str | Path) -> Path:
        """Write ``tokenizer.json`` atomically, on one line (vocabularies can be long).

        ``path`` may be a directory or a file.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        write_json_atomic(path, self.to_dict(), indent=None)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TabularTokenizer:
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise ArtifactError(f"{path}: tokenizer file not found")
        try:
            data = json.loads(path.read_text())
            if data.get("format_version") != FORMAT_VERSION:
                raise ArtifactError(f"{path}: unsupported tokenizer format {data.get('format_version')!r}")
            schema = TableSchema.from_dict(data["schema"])
            fields = [
                FieldVocab(**{k: v for k, v in f.items() if k not in ("size", "offset")}) for f in data["fields"]
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{path}: not a valid tokenizer file ({exc})") from exc
        tokenizer = cls(schema, fields)
        if tokenizer.fingerprint() != data.get("fingerprint"):
            raise ArtifactError(f"{path}: tokenizer file is inconsistent (fingerprint mismatch)")
        return tokenizer

    def __repr__(self) -> str:
        sizes = ", ".join(f"{f.name}={f.size}" for f in self.fields)
        return f"TabularTokenizer(vocab_size={self.vocab_size}, fields=[{sizes}])"
