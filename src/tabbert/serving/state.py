"""What the scorer keeps of an entity's past, in memory or durably in SQLite.

An entity's state is what scoring its next row needs: the encoded ids of its latest rows (the
model's context), the time and count of the rows scored, and for each recency field the time it
last saw each raw value (:mod:`tabbert.data.recency`). It is stored as JSON, never pickled.

:class:`SqliteStore` writes ``state.sqlite`` in a folder, in write-ahead-log mode; :meth:`put`
commits before it returns, so a row whose score has been answered survives a crash of the
process, ``kill -9`` included (``synchronous=NORMAL``, the default: a power loss or a crash of
the machine may take back the latest commits; ``FULL`` syncs the log to disk at every commit and
survives those too, at the cost of that sync: ``benchmarks/bench_serve.py`` measures both). The
store records which model wrote it and refuses another model's state.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tabbert.errors import ArtifactError

STATE_FILE = "state.sqlite"
SYNCHRONOUS = ("FULL", "NORMAL", "OFF")


@dataclass
class EntityState:
    """An entity's past as its next row needs it."""

    time: int  # epoch microseconds of its latest row scored
    rows: int  # rows scored (its history length)
    context: np.ndarray  # int32 ids [k, n_fields] of its latest k rows, oldest first
    recency: dict[str, dict[str, int]]  # recency field -> raw value as text -> time last seen

    def to_json(self) -> str:
        return json.dumps({"time": self.time, "rows": self.rows, "context": self.context.tolist(),
                           "recency": self.recency}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, n_fields: int) -> EntityState:
        content = json.loads(text)
        context = np.asarray(content["context"], dtype=np.int32).reshape(-1, n_fields)
        return cls(int(content["time"]), int(content["rows"]), context, content["recency"])


class MemoryStore:
    """Entity states in a dict: lost when the process ends."""

    def __init__(self) -> None:
        self.states: dict[str, EntityState] = {}

    def get(self, entity: str) -> EntityState | None:
        return self.states.get(entity)

    def put(self, states: dict[str, EntityState]) -> None:
        self.states.update(states)

    def __len__(self) -> int:
        return len(self.states)


class SqliteStore(MemoryStore):
    """Entity states in ``DIR/state.sqlite``, cached in memory; :meth:`put` commits durably.

    ``model`` identifies the model (its fingerprint); a folder written for another one is refused.
    """

    def __init__(self, directory: str | Path, model: str, n_fields: int, *, synchronous: str = "NORMAL"):
        super().__init__()
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS}, got {synchronous!r}")
        self.path = Path(directory) / STATE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.n_fields = n_fields
        self.lock = threading.Lock()  # the service reads the count while its worker writes
        self.connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute(f"PRAGMA synchronous={synchronous}")
        with self.connection:
            self.connection.execute("BEGIN")
            self.connection.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self.connection.execute("CREATE TABLE IF NOT EXISTS entities "
                                    "(entity TEXT PRIMARY KEY, state TEXT NOT NULL)")
            self.connection.execute("INSERT OR IGNORE INTO meta VALUES ('model', ?)", (model,))
        stored = self.connection.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()[0]
        if stored != model:
            raise ArtifactError(f"{self.path}: holds the state of another model ({stored}, not {model}); "
                                "give this model its own --state folder")

    def get(self, entity: str) -> EntityState | None:
        state = self.states.get(entity)
        if state is None:
            with self.lock:
                found = self.connection.execute("SELECT state FROM entities WHERE entity = ?", (entity,)).fetchone()
            if found is not None:
                state = self.states[entity] = EntityState.from_json(found[0], self.n_fields)
        return state

    def put(self, states: dict[str, EntityState]) -> None:
        rows = [(entity, state.to_json()) for entity, state in states.items()]
        with self.lock, self.connection:
            self.connection.execute("BEGIN")
            self.connection.executemany("INSERT OR REPLACE INTO entities VALUES (?, ?)", rows)
        super().put(states)

    def __len__(self) -> int:
        with self.lock:
            return self.connection.execute("SELECT count(*) FROM entities").fetchone()[0]

    def close(self) -> None:
        self.connection.close()
