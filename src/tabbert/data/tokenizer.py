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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from tabbert.atomic import write_json_atomic
from tabbert.data.schema import ENTITY, ROW, TIME, FieldSpec, TableSchema
from tabbert.errors import ArtifactError, TabbertError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[SEP]", "[CLS]", "[MASK]")
PAD_ID, UNK_ID, SEP_ID, CLS_ID, MASK_ID = range(len(SPECIAL_TOKENS))
FIELD_UNK, FIELD_MISSING = 0, 1
N_FIELD_SPECIALS = 2
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
FORMAT_VERSION = 1
DENSE_LOOKUP_LIMIT = 1 << 22  # widest integer range encoded through a table indexed by value


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
    if feature == "timestamp":
        return time.dt.epoch("s").cast(pl.Float64)
    if feature == "hour":
        return time.dt.hour().cast(pl.Int32)
    if feature == "weekday":
        return (time.dt.weekday() - 1).cast(pl.Int32)
    if feature == "gap":
        previous = time.shift(1).over(ENTITY, order_by=list(order_by))
        return (time - previous).dt.total_seconds().cast(pl.Float64)
    raise TabbertError(f"unknown time feature {feature!r}")


def with_time_features(frame: pl.DataFrame, features, order: np.ndarray | None = None,
                       gap_seconds: np.ndarray | None = None) -> pl.DataFrame:
    """``frame`` with the derived ``time.<feature>`` columns added, computed once.

    ``gap_seconds`` (in the row order given by ``order``, or in the frame's order when ``order``
    is ``None``) saves the per-entity shift when the caller already has the rows in
    entity-then-time order.
    """
    columns = []
    for feature in features:
        if feature == "gap" and gap_seconds is not None:
            gap = gap_seconds
            if order is not None:
                gap = np.empty_like(gap_seconds)
                gap[order] = gap_seconds
            columns.append(pl.Series(f"time.{feature}", gap, nan_to_null=True))
        else:
            columns.append(_time_column(frame, feature))
    return frame.with_columns(columns)


def _time_column(frame: pl.DataFrame, feature: str) -> pl.Series:
    """A derived time feature: the precomputed ``time.<feature>`` column, or computed now."""
    name = f"time.{feature}"
    if name in frame.columns:
        return frame.get_column(name)
    order_by = (TIME, ROW) if ROW in frame.columns else (TIME,)
    return frame.select(_time_feature_expr(feature, order_by).alias(name)).to_series()


def _categorical_local_ids(vocab: FieldVocab, column: pl.Series) -> np.ndarray:
    """Local ids of a categorical field: one vocabulary lookup per distinct value.

    Categorical codes and integers spanning a small range (card numbers, codes, zips) are
    looked up in a table indexed by value; text and wide-ranging ids through a hash map.
    """
    distinct = column.unique().drop_nulls()
    if distinct.len() == 0:
        return np.full(column.len(), FIELD_MISSING, dtype=np.int32)
    known = distinct.cast(pl.String).replace_strict(
        vocab.values, list(range(N_FIELD_SPECIALS, vocab.size)), default=FIELD_UNK, return_dtype=pl.Int32
    )
    keys, distinct_keys = column, distinct
    if column.dtype == pl.Categorical:
        keys, distinct_keys = column.to_physical(), distinct.to_physical()
    if keys.dtype.is_integer():
        low, high = int(distinct_keys.min()), int(distinct_keys.max())
        if high - low < DENSE_LOOKUP_LIMIT:
            table = np.empty(high - low + 1, dtype=np.int32)
            table[distinct_keys.to_numpy() - low] = known.to_numpy()
            local = table[keys.fill_null(low).to_numpy() - low]
            local[keys.is_null().to_numpy()] = FIELD_MISSING
            return local
    return column.replace_strict(distinct, known, return_dtype=pl.Int32).fill_null(FIELD_MISSING).to_numpy()


def quantile_edges(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Distinct quantile bin edges (min and max included) of the finite ``values``."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.zeros(1)
    edges = np.quantile(values, np.linspace(0.0, 1.0, n_bins + 1), method="lower")
    return np.unique(edges)


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

        ``rows`` (a boolean mask) selects those rows one column at a time, so the training
        subset is never copied as a whole; ``None`` fits on every row. Fields are fitted on
        ``threads`` threads.
        """
        selected = None if rows is None else pl.Series(np.asarray(rows, dtype=bool))
        if (frame.height if selected is None else int(selected.sum())) == 0:
            raise TabbertError("cannot fit a tokenizer on zero rows")

        def training_values(column: pl.Series) -> pl.Series:
            return (column if selected is None else column.filter(selected)).drop_nulls()

        def fit_field(spec: FieldSpec) -> FieldVocab:
            column = training_values(frame.get_column(spec.name))
            if spec.kind == "categorical":
                counts = (
                    column.value_counts(name="n").with_columns(pl.col(spec.name).cast(pl.String))
                    .filter(pl.col("n") >= spec.min_count)
                    .sort(["n", spec.name], descending=[True, False])
                )
                return FieldVocab(spec.name, "categorical", spec.name, values=counts.get_column(spec.name).to_list())
            edges = quantile_edges(column.cast(pl.Float64).to_numpy(), spec.n_bins)
            return FieldVocab(spec.name, "numeric", spec.name, edges=edges.tolist())

        def fit_time_feature(feature: str) -> FieldVocab:
            name = f"time.{feature}"
            if feature in ("hour", "weekday"):
                return FieldVocab(name, feature, feature)
            values = training_values(_time_column(frame, feature)).to_numpy()
            return FieldVocab(name, "numeric", feature, edges=quantile_edges(values, schema.time_bins).tolist())

        # fields are fitted in parallel: Polars and NumPy release the GIL
        with ThreadPoolExecutor(max_workers=threads) as pool:
            fields = [*pool.map(fit_field, schema.fields), *pool.map(fit_time_feature, schema.time_features)]
        return cls(schema, fields)

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
        values = column.cast(pl.Float64).to_numpy()
        missing = np.isnan(values)
        if vocab.kind == "numeric":
            local = np.searchsorted(np.asarray(vocab.edges[1:-1]), values, side="right") + N_FIELD_SPECIALS
        else:
            local = np.nan_to_num(values).astype(np.int32) + N_FIELD_SPECIALS
        return np.where(missing, FIELD_MISSING, local)

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
        return (self._local_ids(vocab, self._raw_column(frame, vocab)) + vocab.offset).astype(np.int32)

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
        """Write ``tokenizer.json`` atomically; ``path`` may be a directory or a file."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        write_json_atomic(path, self.to_dict())
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
