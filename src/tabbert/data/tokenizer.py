"""``TabularTokenizer``: per-field encoders over one global id space.

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
Each field is one encoder of :mod:`tabbert.data.encoders`; the time features are read from the
rows in the order of :mod:`tabbert.data.ordering`. Fit on the training rows only; the label
columns are never input fields.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl

from tabbert.atomic import write_json_atomic
from tabbert.data.encoders import (
    CLOCK_SIZES,
    FIELD_UNK,
    CategoricalEncoder,
    ClockEncoder,
    FieldEncoder,
    NumericEncoder,
)
from tabbert.data.ordering import EntityRuns, RowOrder, order_rows, time_feature
from tabbert.data.recency import recency_name, with_recency
from tabbert.data.schema import ENTITY, TIME, TableSchema
from tabbert.errors import ArtifactError, TabbertError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[SEP]", "[CLS]", "[MASK]")
PAD_ID, UNK_ID, SEP_ID, CLS_ID, MASK_ID = range(len(SPECIAL_TOKENS))
TIME_PREFIX = "time."
FORMAT_VERSION = 1


def field_encoders(schema: TableSchema) -> list[FieldEncoder]:
    """The unfitted encoders of a schema's fields (its recency fields included), then of its time
    features, in id order."""
    encoders: list[FieldEncoder] = [
        CategoricalEncoder(spec.name, min_count=spec.min_count) if spec.kind == "categorical"
        else NumericEncoder(spec.name, n_bins=spec.n_bins)
        for spec in schema.token_fields
    ]
    for feature in schema.time_features:
        name = TIME_PREFIX + feature
        encoders.append(ClockEncoder(name, feature) if feature in CLOCK_SIZES
                        else NumericEncoder(name, n_bins=schema.time_bins, source=feature))
    return encoders


def is_time_feature(encoder: FieldEncoder) -> bool:
    """Whether the field is derived from the rows' times (and their order) rather than read from a column."""
    return encoder.name.startswith(TIME_PREFIX)


def row_order(frame: pl.DataFrame, schema: TableSchema, runs: EntityRuns | None = None,
              times: np.ndarray | None = None) -> RowOrder:
    """The order in which the tokenizer of ``schema`` reads rows: prepare and predict both use it.

    By entity, then time, then the values of the schema's fields (see :func:`order_rows`, which
    ``runs`` and ``times`` are passed to).
    """
    return order_rows(frame, by=schema.field_names, runs=runs, times=times)


class TabularTokenizer:
    """Turns a normalized table into an integer matrix ``[n_rows, n_fields]`` and back.

    ``TabularTokenizer(schema).fit(frame, train_rows)`` learns every field; ``fields`` may
    instead be encoders fitted already.
    """

    def __init__(self, schema: TableSchema, fields: list[FieldEncoder] | None = None):
        self.schema = schema
        self.fields = field_encoders(schema) if fields is None else list(fields)
        self._place_fields()

    def _place_fields(self) -> None:
        """Give every field its range of the id space, in order, after the special tokens."""
        offset = len(SPECIAL_TOKENS)
        for encoder in self.fields:
            encoder.offset = offset
            offset += encoder.size
        self.vocab_size = offset
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ fitting
    def fit(self, frame: pl.DataFrame, train_rows: np.ndarray | None = None) -> TabularTokenizer:
        """Learn vocabularies and bin edges from the training rows of ``frame``.

        ``train_rows`` (a boolean mask) selects the training rows; ``None`` fits on every row.
        """
        self._check_columns(frame)
        train_rows = None if train_rows is None else np.asarray(train_rows, dtype=bool)
        if (frame.height if train_rows is None else np.count_nonzero(train_rows)) == 0:
            raise TabbertError("cannot fit a tokenizer on zero rows")
        order = row_order(frame, self.schema) if self.schema.time_features or self.schema.recency else None
        frame = self.with_recency(frame, order)
        for encoder in self.fields:
            if is_time_feature(encoder):
                values = time_feature(encoder.source, order.times, order.entity_offsets)
                in_order = train_rows if train_rows is None or order.order is None else train_rows[order.order]
                encoder.fit(values, in_order)
            else:
                encoder.fit(frame.get_column(encoder.source), train_rows)
        self._place_fields()
        return self

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

    @property
    def required_columns(self) -> list[str]:
        """The columns a frame to encode must hold (the recency fields are derived from them)."""
        derived = {recency_name(name) for name in self.schema.recency}
        columns = [f.source for f in self.fields if not is_time_feature(f) and f.source not in derived]
        return columns + ([ENTITY, TIME] if self.schema.time_features or self.schema.recency else [])

    def with_recency(self, frame: pl.DataFrame, order: RowOrder | None = None) -> pl.DataFrame:
        """``frame`` with the schema's recency fields (:mod:`tabbert.data.recency`), unless it holds
        them already; ``order`` is :func:`row_order` of the frame, when the caller has it."""
        if all(recency_name(name) in frame.columns for name in self.schema.recency):
            return frame
        order = row_order(frame, self.schema) if order is None else order
        return with_recency(frame, self.schema, np.arange(frame.height) if order.order is None else order.order)

    def _check_columns(self, frame: pl.DataFrame) -> None:
        missing = [c for c in self.required_columns if c not in frame.columns]
        if missing:
            raise TabbertError(f"cannot encode: columns {missing} are missing from the table")

    def encode(self, frame: pl.DataFrame, order: RowOrder | None = None,
               previous: np.ndarray | None = None) -> np.ndarray:
        """Global ids ``[n_rows, n_fields]`` (int32) of a normalized frame, row order kept.

        Unseen categories map to the field's [UNK], nulls to its [MISSING]. The time features
        read the rows in :func:`row_order` (``order``, when the caller has it already), so
        ``time.gap`` looks at the entity's previous row wherever it sits in ``frame``. Rows that
        continue an entity's earlier rows give ``previous``: each entity's (in ``order``) time
        before its first row here, epoch microseconds (NaN: none), which that row's gap counts from.
        """
        self._check_columns(frame)
        if self.schema.recency:
            order = row_order(frame, self.schema) if order is None else order
            frame = self.with_recency(frame, order)
        out = np.empty((frame.height, len(self.fields)), dtype=np.int32)
        for j, encoder in enumerate(self.fields):
            if is_time_feature(encoder):
                order = row_order(frame, self.schema) if order is None else order
                values = time_feature(encoder.source, order.times, order.entity_offsets, previous)
                rows = slice(None) if order.order is None else order.order
                out[rows, j] = encoder.encode(values)
            else:
                out[:, j] = encoder.encode(frame.get_column(encoder.source))
            out[:, j] += encoder.offset
        return out

    def unseen(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        """For each categorical input field, which rows of ``tokens`` (ids from :meth:`encode`) hold a
        value the tokenizer never saw: its [UNK]."""
        return {encoder.name: tokens[:, j] == encoder.offset + FIELD_UNK
                for j, encoder in enumerate(self.fields)
                if isinstance(encoder, CategoricalEncoder) and encoder.name in self.schema.field_names}

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
            fields = [FieldEncoder.from_dict(f) for f in data["fields"]]
        except ArtifactError:
            raise
        except (ValueError, KeyError, TypeError, TabbertError) as exc:
            raise ArtifactError(f"{path}: not a valid tokenizer file ({exc})") from exc
        tokenizer = cls(schema, fields)
        if tokenizer.fingerprint() != data.get("fingerprint"):
            raise ArtifactError(f"{path}: tokenizer file is inconsistent (fingerprint mismatch)")
        return tokenizer

    def __repr__(self) -> str:
        sizes = ", ".join(f"{f.name}={f.size}" for f in self.fields)
        return f"TabularTokenizer(vocab_size={self.vocab_size}, fields=[{sizes}])"
