"""What a column is: entity id, time, categorical or numeric input field, label or target.

Every reader in :mod:`tabbert.data.sources` returns a :class:`Table`: a Polars frame whose
columns follow one normalized layout, plus the :class:`TableSchema` that describes it.

Normalized layout
-----------------
``_row``      source row number (0-based, data rows only), UInt64
``_entity``   entity key (card holder, station ...), String or integer
``_time``     row timestamp, Datetime("us")
input fields  one column per :class:`FieldSpec`: String, Categorical or integer for categorical, Float64
              for numeric
labels        one column per label/target: Int8 (0/1) for classification, Float64 for regression
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from tabbert.errors import TabbertError

ROW = "_row"
ENTITY = "_entity"
TIME = "_time"

# units of ``_time``, which counts microseconds since 1970-01-01
MICROSECONDS_PER_SECOND = 1_000_000
MICROSECONDS_PER_MINUTE = 60 * MICROSECONDS_PER_SECOND
MICROSECONDS_PER_HOUR = 60 * MICROSECONDS_PER_MINUTE
MINUTES_PER_DAY = 24 * 60
MICROSECONDS_PER_DAY = MINUTES_PER_DAY * MICROSECONDS_PER_MINUTE
RESERVED_COLUMNS = (ROW, ENTITY, TIME)

FieldKind = Literal["categorical", "numeric"]
Task = Literal["classification", "regression"]
TIME_FEATURES = ("timestamp", "hour", "weekday", "gap")
TIME_UNITS = ("s", "ms", "us", "ns")


class SchemaError(TabbertError):
    """A schema that cannot describe the data it is applied to."""


@dataclass(frozen=True)
class FieldSpec:
    """One input field. Numeric fields are cut into ``n_bins`` quantile bins."""

    name: str
    kind: FieldKind
    n_bins: int = 10
    min_count: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("categorical", "numeric"):
            raise SchemaError(f"field {self.name!r}: kind must be 'categorical' or 'numeric', got {self.kind!r}")
        if self.n_bins < 1 or self.min_count < 1:
            raise SchemaError(f"field {self.name!r}: n_bins and min_count must be >= 1")


@dataclass(frozen=True)
class TableSchema:
    """The fields a table offers to the tokenizer and the labels it carries.

    ``time_features`` are derived from ``_time`` by the tokenizer: ``timestamp`` (absolute time
    in ``time_bins`` quantile bins, the reference encoding), ``hour`` (hour of day), ``weekday``
    and ``gap`` (seconds since the entity's previous row, in ``time_bins`` log-spaced quantile bins).
    ``schema_file`` holds the generic schema file the table was read with (see
    :meth:`GenericSchemaFile.to_dict`), so that rows to score are read the same way.
    """

    fields: tuple[FieldSpec, ...]
    labels: tuple[str, ...] = ()
    task: Task = "classification"
    time_features: tuple[str, ...] = ("hour", "weekday", "gap")
    time_bins: int = 10
    source: str = "generic"
    recency: tuple[str, ...] = ()
    schema_file: dict | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise SchemaError(f"duplicate field names in {names}")
        if not names and not self.time_features:
            raise SchemaError("a schema needs at least one input field")
        overlap = set(names) & set(self.labels)
        if overlap:
            raise SchemaError(f"label columns cannot be input fields: {sorted(overlap)}")
        reserved = set(names) & set(RESERVED_COLUMNS)
        if reserved:
            raise SchemaError(f"column names {sorted(reserved)} are reserved")
        categorical = {f.name for f in self.fields if f.kind == "categorical"}
        not_categorical = [name for name in self.recency if name not in categorical | {"hour"}]
        if not_categorical:
            raise SchemaError(f"recency applies to categorical fields and 'hour'; not to {not_categorical}")
        unknown = set(self.time_features) - set(TIME_FEATURES)
        if unknown:
            raise SchemaError(f"unknown time features {sorted(unknown)}; choose from {TIME_FEATURES}")
        if self.task not in ("classification", "regression"):
            raise SchemaError(f"task must be 'classification' or 'regression', got {self.task!r}")

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def token_fields(self) -> tuple[FieldSpec, ...]:
        """The fields the tokenizer encodes: the input fields, then one ``recency.<name>`` per
        entry of ``recency`` (see :mod:`tabbert.data.recency`)."""
        return (*self.fields, *(FieldSpec(f"recency.{name}", "categorical") for name in self.recency))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TableSchema:
        data = dict(data)
        data["fields"] = tuple(FieldSpec(**f) for f in data.get("fields", ()))
        for key in ("labels", "time_features", "recency"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


@dataclass
class Table:
    """A source read into the normalized layout, with what was dropped on the way.

    ``labelled`` is False when the rows were read without their label columns (rows to
    pre-train on or to score): the label columns are then null.
    """

    frame: pl.DataFrame
    schema: TableSchema
    path: str
    rows_in: int
    dropped: dict[str, int] = field(default_factory=dict)
    labelled: bool = True

    @property
    def rows_kept(self) -> int:
        return self.frame.height

    def check_time_features(self) -> None:
        """Fail on a time feature the rows cannot support, warn on one that takes a single value.

        ``hour`` on dates without a time of day (every row at midnight) is an error. ``weekday``
        on rows spanning more than a week all on one weekday (weekly data) is a warning. Only
        the first rows are looked at when they already show two values.
        """
        wanted = [f for f in ("hour", "weekday") if f in self.schema.time_features]
        if not wanted or self.frame.is_empty():
            return
        times = self.frame.get_column(TIME)
        for feature in wanted:
            part = (lambda t: t.dt.hour()) if feature == "hour" else (lambda t: t.dt.weekday())
            if part(times.head(4096)).n_unique() > 1 or part(times).n_unique() > 1:
                continue
            others = [f for f in self.schema.time_features if f != feature]
            fix = f"time_features: {others}" if others else "time_features: [timestamp] (or [gap])"
            if feature == "hour" and (times.dt.epoch("us") % MICROSECONDS_PER_DAY == 0).all():
                raise SchemaError(
                    f"{self.path}: every time is at midnight (dates without a time of day), so the 'hour' "
                    f"time feature would be one constant token; drop it: {fix}"
                )
            if (times.max() - times.min()).total_seconds() > 7 * 86_400 or feature == "hour":
                warnings.warn(
                    f"{self.path}: every row has the same {feature}, so the {feature!r} time feature is one "
                    f"constant token; consider {fix}",
                    stacklevel=2,
                )


@dataclass(frozen=True)
class GenericSchemaFile:
    """The user-facing schema file of the ``generic`` source (JSON or YAML).

    Example (YAML)::

        entity: station            # one column, or a list joined into one key
        time: [year, month, day, hour]   # one datetime/date/text/number column, or parts
        categorical: [wd]
        numeric: {TEMP: 50, PRES: 50}     # a list, or a mapping name -> number of bins
        labels: [PM2.5]
        task: regression
        time_features: [timestamp]
        recency: [wd]              # default: every categorical field, and hour when a time feature

    ``recency`` names the fields whose time since the entity last had the same value becomes a
    field of its own (:mod:`tabbert.data.recency`); ``[]`` turns them off.

    A single ``time`` column of numbers (or of digits-only text) needs ``time_unit`` (epoch
    numbers in s, ms, us or ns) or ``time_format`` (such as ``%Y%m%d``): digits are never guessed.
    """

    entity: tuple[str, ...]
    time: tuple[str, ...]
    categorical: tuple[str, ...] = ()
    numeric: dict[str, int] = field(default_factory=dict)
    labels: tuple[str, ...] = ()
    task: Task = "classification"
    time_features: tuple[str, ...] = ("hour", "weekday", "gap")
    time_bins: int = 10
    time_format: str | None = None
    time_unit: str | None = None
    positive_values: tuple[str, ...] = ("1", "yes", "true", "y")
    min_count: int = 1
    recency: tuple[str, ...] | None = None

    @classmethod
    def load(cls, path: str | Path) -> GenericSchemaFile:
        path = Path(path)
        if not path.is_file():
            raise SchemaError(f"{path}: schema file not found")
        text = path.read_text()
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                raw = yaml.safe_load(text)
            else:
                raw = json.loads(text)
        except Exception as exc:  # parser errors differ between JSON and YAML
            raise SchemaError(f"{path}: cannot parse schema: {exc}") from exc
        try:
            return cls.from_dict(raw)
        except SchemaError as exc:
            raise SchemaError(f"{path}: {exc}") from exc

    @classmethod
    def from_dict(cls, raw: object) -> GenericSchemaFile:
        """A schema from its keys, as written in a schema file or as :meth:`to_dict` gives them."""
        if not isinstance(raw, dict):
            raise SchemaError("a schema must be a mapping")
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - allowed
        if unknown:
            raise SchemaError(f"unknown schema keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        for key in ("entity", "time"):
            if key not in raw:
                raise SchemaError(f"schema needs the key {key!r}")
        default_bins = _count(raw.get("time_bins", 10), "time_bins")

        def as_tuple(value) -> tuple[str, ...]:
            if value is None:
                return ()
            return (str(value),) if isinstance(value, (str, int)) else tuple(str(v) for v in value)

        numeric = raw.get("numeric") or {}
        if not isinstance(numeric, dict):
            numeric = {str(name): default_bins for name in as_tuple(numeric)}
        time_unit = raw.get("time_unit")
        if time_unit is not None and time_unit not in TIME_UNITS:
            raise SchemaError(f"time_unit must be one of {list(TIME_UNITS)} (epoch numbers), got {time_unit!r}")
        if time_unit is not None and raw.get("time_format") is not None:
            raise SchemaError("give time_unit (epoch numbers) or time_format (dates as text or digits), not both")
        return cls(
            entity=as_tuple(raw["entity"]),
            time=as_tuple(raw["time"]),
            categorical=as_tuple(raw.get("categorical")),
            numeric={str(k): _count(v, f"numeric: {k}") for k, v in numeric.items()},
            labels=as_tuple(raw.get("labels")),
            task=raw.get("task", "classification"),
            time_features=as_tuple(raw.get("time_features", ("hour", "weekday", "gap"))),
            time_bins=default_bins,
            time_format=raw.get("time_format"),
            time_unit=time_unit,
            positive_values=tuple(v.lower() for v in as_tuple(raw.get("positive_values", cls.positive_values))),
            min_count=_count(raw.get("min_count", 1), "min_count"),
            recency=None if raw.get("recency", "auto") in ("auto", None) else as_tuple(raw["recency"]),
        )

    def to_dict(self) -> dict:
        """Every key, defaults included, in JSON types: what a prepared dataset stores."""
        return {
            key: list(value) if isinstance(value, tuple) else dict(value) if isinstance(value, dict) else value
            for key, value in dataclasses.asdict(self).items()
        }

    def differences(self, other: GenericSchemaFile) -> list[str]:
        """The keys whose values differ between two schemas."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [key for key in mine if mine[key] != theirs[key]]

    def table_schema(self) -> TableSchema:
        fields = [FieldSpec(name, "categorical", min_count=self.min_count) for name in self.categorical]
        fields += [FieldSpec(name, "numeric", n_bins=bins) for name, bins in self.numeric.items()]
        return TableSchema(
            fields=tuple(fields),
            labels=self.labels,
            task=self.task,
            time_features=self.time_features,
            time_bins=self.time_bins,
            source="generic",
            recency=self.recency if self.recency is not None else (
                *self.categorical, *(("hour",) if "hour" in self.time_features else ())),
            schema_file=self.to_dict(),
        )


def _count(value: object, key: str) -> int:
    """A whole number >= 1 from a schema value (an int, or text holding one)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        number = None if isinstance(value, (bool, float)) else int(str(value).strip())
    except ValueError:
        number = None
    if number is None or number < 1:
        raise SchemaError(f"{key} must be a whole number >= 1 (a count of bins or of rows), got {value!r}")
    return number
