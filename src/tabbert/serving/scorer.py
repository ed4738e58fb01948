"""Score transactions one by one (or a few at a time) as they come, keeping each entity's state.

A row is scored exactly as ``predict`` scores it in a file holding the entity's earlier rows: the
window of the model's ``seq_len`` rows ending at it, padded in front when the history is shorter.
The scorer does not keep those rows, only what the next row needs (:mod:`tabbert.serving.state`):
the encoded ids of the entity's latest ``seq_len - 1`` rows, the time of its latest row (for the
gap) and when it last saw each raw value of each recency field. Rows are read by the reader of the
model's source (:func:`tabbert.data.sources.read_records`) and encoded by the model's tokenizer.

Order
-----
An entity's rows must come in time order. A row earlier than the entity's latest scored row is
refused (:class:`OutOfOrderError`, the service answers 409) and the state is left unchanged;
``predict`` would have placed it before rows whose scores were already given. A row at the same
time as the latest one is taken after it. The rows of one call are scored in time order (ties by
their values, as ``predict`` orders them), each after the previous rows of its entity.

In a notebook::

    from tabbert import Scorer
    scorer = Scorer("runs/finetune")
    scorer.warm_start("history.csv")          # the entities' past rows, as predict reads them
    scorer.score([{"User": 7, "Card": 0, "Year": 2020, ...}])
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from tabbert.data.ordering import RowOrder
from tabbert.data.recency import LEVELS, NEVER, bucket_levels, level_column, recency_values
from tabbert.data.schema import ENTITY, TIME
from tabbert.data.sources import read_records
from tabbert.data.tokenizer import row_order
from tabbert.errors import TabbertError
from tabbert.inference import read_rows, training_schema
from tabbert.integrity import weights_sha256
from tabbert.runs import Run, choose_device, load_run, padded_histories, score, traced_logits
from tabbert.serving.state import EntityState, MemoryStore, SqliteStore
from tabbert.thresholds import run_threshold

SCORE_BATCH_SIZE = 256


class OutOfOrderError(TabbertError):
    """A row earlier than the latest row scored for its entity."""


class _Batch(NamedTuple):
    """Rows to score in entity-then-time order, with their entities' states."""

    frame: pl.DataFrame  # the rows as read, in input order
    order: RowOrder
    keys: list[str]  # the entity of each run of ``order.entity_offsets``
    states: list[EntityState | None]


class Scorer:
    """Scores transactions of a fine-tuned classification run from each entity's kept state.

    ``state``: a folder for durable state (SQLite, see :mod:`tabbert.serving.state`); None keeps it
    in memory. ``threshold``: a spec of :mod:`tabbert.thresholds` (default: the run's stored one).
    ``traced``: run the model as a TorchScript trace (:func:`tabbert.runs.traced_logits`; the same
    scores, faster for a few rows at a time) rather than eagerly.
    """

    def __init__(self, run: str | Path | Run, *, state: str | Path | None = None, threshold: str | float | None = None,
                 device: str | None = None, synchronous: str = "NORMAL", traced: bool = True):
        self.run = run if isinstance(run, Run) else load_run(run, expect="classifier")
        config, self.tokenizer = self.run.config, self.run.tokenizer
        if config.task != "classification":
            raise TabbertError(f"{self.run.model_dir}: a {config.task} model; the scorer serves classification models")
        self.model = self.run.model.to(choose_device(device))
        self._logits = traced_logits(self.model, config.seq_len, len(self.tokenizer.fields)) if traced else None
        self.threshold = run_threshold(self.run, threshold)
        self.seq_len = config.seq_len
        self.source = self.tokenizer.schema.source
        self.generic_schema = training_schema(self.tokenizer, None) if self.source == "generic" else None
        # the model's identity: its weights' SHA-256 and its tokenizer's fingerprint
        self.fingerprint = f"sha256:{weights_sha256(self.run.model_dir)}/tokenizer:{self.tokenizer.fingerprint()}"
        n_fields = len(self.tokenizer.fields)
        self.store = (MemoryStore() if state is None
                      else SqliteStore(state, self.fingerprint, n_fields, synchronous=synchronous))

    def read(self, rows: Sequence[Mapping[str, object]]) -> pl.DataFrame:
        """Transactions (mappings of the source's columns) in the normalized layout; DataError names a bad one."""
        if self.source not in ("card", "generic"):
            raise TabbertError(f"the scorer reads card or generic transactions, not {self.source!r} ones")
        return read_records(self.source, rows, schema=self.generic_schema)

    def score(self, rows: Sequence[Mapping[str, object]]) -> list[dict]:
        """One result per transaction, in order: entity, time, score, decision (``score >= threshold``;
        None without a threshold), history_rows and the fields whose values the model never saw.
        The entities' states are updated, and stored, before the results are returned."""
        return self.score_frame(self.read(rows))

    def score_frame(self, frame: pl.DataFrame) -> list[dict]:
        """:meth:`score` for rows in the normalized layout."""
        batch = self._batch(frame)
        ordered, recency = self._encode(batch)
        windows, ends, history = _windows(batch, ordered, self.seq_len)
        gather = padded_histories(windows.tokens, windows.entity_start, self.seq_len, ends)
        scores = score(self.model, len(ends), gather, batch_size=SCORE_BATCH_SIZE, step=self._logits)
        self.store.put(self._next_states(batch, windows, recency))
        return self._results(batch, ordered, scores, history)

    def _batch(self, frame: pl.DataFrame) -> _Batch:
        """The rows in order with their states; OutOfOrderError when one is earlier than its entity's state."""
        order = row_order(frame, self.tokenizer.schema)
        keys = _entity_keys(frame, order)
        states = [self.store.get(key) for key in keys]
        for key, state, first in zip(keys, states, order.times[order.entity_offsets[:-1]]):
            if state is not None and first < state.time:
                raise OutOfOrderError(
                    f"entity {key}: a transaction at {_iso(first)} is earlier than its latest scored one "
                    f"({_iso(state.time)}); an entity's transactions are scored in time order")
        return _Batch(frame, order, keys, states)

    def _encode(self, batch: _Batch) -> tuple[np.ndarray, list[dict[str, dict[str, int]]]]:
        """The ids of the rows in order, and each entity's recency maps once the rows are seen."""
        frame, order = batch.frame, batch.order
        recency = [{} if state is None else {name: dict(seen) for name, seen in state.recency.items()}
                   for state in batch.states]
        columns = [_recency_column(frame, order, name, [maps.setdefault(name, {}) for maps in recency])
                   for name in self.tokenizer.schema.recency]
        previous = np.array([np.nan if state is None else state.time for state in batch.states], dtype=np.float64)
        tokens = self.tokenizer.encode(frame.with_columns(columns), order, previous=previous)
        return (tokens if order.order is None else tokens[order.order]), recency

    def _next_states(self, batch: _Batch, windows: _Windows, recency: list[dict]) -> dict[str, EntityState]:
        """Each entity's state once the batch's rows are scored."""
        context, offsets = self.seq_len - 1, batch.order.entity_offsets
        states = {}
        for e, (key, state) in enumerate(zip(batch.keys, batch.states)):
            begin, end = windows.entity_start[windows.entity_end[e] - 1], windows.entity_end[e]
            rows = (0 if state is None else state.rows) + int(offsets[e + 1] - offsets[e])
            states[key] = EntityState(int(batch.order.times[offsets[e + 1] - 1]), rows,
                                      windows.tokens[max(begin, end - context):end].copy(), recency[e])
        return states

    def _results(self, batch: _Batch, ordered: np.ndarray, scores: np.ndarray, history: np.ndarray) -> list[dict]:
        """The results in input order."""
        unseen = self.tokenizer.unseen(ordered)
        order = batch.order
        entity_of_row = np.repeat(np.arange(len(batch.keys)), np.diff(order.entity_offsets))
        results: list[dict | None] = [None] * len(ordered)
        positions = range(len(ordered)) if order.order is None else order.order.tolist()
        for i, position in enumerate(positions):
            value = float(scores[i])
            results[position] = {
                "entity": batch.keys[entity_of_row[i]],
                "time": _iso(order.times[i]),
                "score": value,
                "decision": None if self.threshold is None else value >= self.threshold.value,
                "history_rows": int(history[i]),
                "unseen": [name for name, flagged in unseen.items() if flagged[i]],
            }
        return results

    def warm_start(self, data: pl.DataFrame | str | Path) -> int:
        """Take the state of the entities of ``data`` (their past rows: a file of the model's source or a
        normalized frame, read as ``predict`` reads them) from those rows, replacing any state they had.
        Returns the number of entities."""
        frame, _ = read_rows(data, self.tokenizer)
        order = row_order(frame, self.tokenizer.schema)
        tokens = self.tokenizer.encode(frame, order)
        tokens = tokens if order.order is None else tokens[order.order]
        offsets = order.entity_offsets
        keys = _entity_keys(frame, order)
        recency = _last_seen(frame, self.tokenizer.schema.recency)
        context = self.seq_len - 1
        states = {key: EntityState(int(order.times[end - 1]), int(end - begin),
                                   tokens[max(begin, end - context):end].copy(), recency.get(key, {}))
                  for key, begin, end in zip(keys, offsets[:-1].tolist(), offsets[1:].tolist())}
        self.store.put(states)
        return len(states)


class _Windows(NamedTuple):
    """Each entity's context rows then its new rows, one after another."""

    tokens: np.ndarray
    entity_start: np.ndarray  # per row: where its entity's rows begin
    entity_end: np.ndarray  # per entity: where its rows end


def _windows(batch: _Batch, ordered: np.ndarray, seq_len: int) -> tuple[_Windows, np.ndarray, np.ndarray]:
    """The entities' context and new rows, the positions of the new rows in it, and their history lengths."""
    offsets = batch.order.entity_offsets
    parts, ends, history, starts, entity_end = [], [], [], [], []
    at = 0
    for e, state in enumerate(batch.states):
        context = np.empty((0, ordered.shape[1]), np.int32) if state is None else state.context
        new = ordered[offsets[e]:offsets[e + 1]]
        parts += [context, new]
        ends.append(at + len(context) + np.arange(len(new)))
        history.append((0 if state is None else state.rows) + np.arange(1, len(new) + 1))
        starts.append(np.full(len(context) + len(new), at))
        at += len(context) + len(new)
        entity_end.append(at)
    windows = _Windows(np.concatenate(parts), np.concatenate(starts), np.array(entity_end))
    return windows, np.concatenate(ends), np.concatenate(history)


def _entity_keys(frame: pl.DataFrame, order: RowOrder) -> list[str]:
    """The key (as text) of each entity of ``order``, in its order."""
    first_rows = order.entity_offsets[:-1] if order.order is None else order.order[order.entity_offsets[:-1]]
    return frame.get_column(ENTITY).cast(pl.String).gather(first_rows).to_list()


def _recency_column(frame: pl.DataFrame, order: RowOrder, name: str, seen: list[dict[str, int]]) -> pl.Series:
    """The ``recency.<name>`` column of the rows (input order), from each entity's ``seen`` map (raw
    value -> time last seen), which is updated row by row."""
    values = recency_values(frame, name).cast(pl.String).to_list()
    positions = range(frame.height) if order.order is None else order.order.tolist()
    elapsed = np.full(frame.height, np.nan)
    missing = np.zeros(frame.height, dtype=bool)
    entity_of_row = np.repeat(np.arange(len(seen)), np.diff(order.entity_offsets))
    for i, position in enumerate(positions):
        value, time, last_seen = values[position], int(order.times[i]), seen[entity_of_row[i]]
        if value is None:
            missing[position] = True
            continue
        if value in last_seen:
            elapsed[position] = time - last_seen[value]
        last_seen[value] = time
    levels = np.where(np.isnan(elapsed), LEVELS.index(NEVER), bucket_levels(np.nan_to_num(elapsed))).astype(np.int8)
    levels[missing] = -1
    return level_column(name, levels)


def _last_seen(frame: pl.DataFrame, names: Sequence[str]) -> dict[str, dict[str, dict[str, int]]]:
    """Per entity (as text), per recency field, the time (epoch microseconds) each raw value was last seen."""
    seen: dict[str, dict[str, dict[str, int]]] = {}
    for name in names:
        values = recency_values(frame, name).cast(pl.String).alias("value")
        latest = (frame.select(pl.col(ENTITY).cast(pl.String), values, pl.col(TIME).dt.epoch("us"))
                  .drop_nulls("value").group_by(ENTITY, "value").agg(pl.col(TIME).max()))
        for entity, value, time in latest.iter_rows():
            seen.setdefault(entity, {}).setdefault(name, {})[value] = time
    for maps in seen.values():
        for name in names:
            maps.setdefault(name, {})
    return seen


def _iso(micros: int | float) -> str:
    """Epoch microseconds as ISO-8601 text."""
    return (dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=int(micros))).isoformat()
