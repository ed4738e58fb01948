"""The on-disk prepared dataset: token matrix, entity offsets, labels, windows and metadata.

Directory layout (all arrays are ``.npy``, memory-mapped on load, never pickled)::

    tokens.npy           uint8/uint16/int32 [n_rows, n_fields]  rows in entity-then-time order, ids in
                         the narrowest type holding the vocabulary
    entity_offsets.npy   int64 [n_entities + 1]    where each entity's rows start
    labels.npy           int8  [n_rows]            classification label per row, or
    targets.npy          float32 [n_rows, n_targets]  regression targets per row (neither when the rows
                         came without labels: ``meta["labelled"]`` is false)
    values.npy           float32 [n_rows, n_values] raw numeric fields and the gap in seconds (NaN: none)
    codes.npy            int32 [n_rows, n_codes]   raw value of each categorical schema field as a dense
                         code (same value, same code; null -1; no frequency cut-off)
    times.npy            int64 [n_rows]            row time, microseconds since the epoch
    row_ids.npy          int64 [n_rows]            row number in the source
    windows_<split>.npy  int64 [n_windows]         start row of each window of a split
    entities.json        entity keys, in matrix order
    splits.json          split name -> keys of the entities with rows in it: each entity in one split
                         (``entity``), those with rows in each period (``time``), or with windows in it
                         (``random``)
    tokenizer.json       the fitted TabularTokenizer
    meta.json            schema, counts, dropped rows and why, split, source hash (written last)

The directory is written under a temporary name and renamed into place when complete
(:class:`PreparedWriter`).
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Self

import numpy as np

from tabbert.atomic import remove_stale_staging, staging_dir, write_json_atomic
from tabbert.data.codes import categorical_fields
from tabbert.data.tokenizer import PAD_ID, TabularTokenizer
from tabbert.data.windows import (
    SPLITS,
    assign_by_time,
    assign_entities,
    assign_random,
    first_rows,
    history_rows,
    point_labels,
    window_labels,
    window_targets,
)
from tabbert.errors import ArtifactError, TabbertError

FORMAT_VERSION = 1
WRITING_THREADS = 2  # parts are written in parallel; NumPy and JSON encoding overlap


class PreparedDataset:
    """Read access to a prepared dataset directory; arrays are memory-mapped.

    ``tokenizer``, when the caller holds the dataset's tokenizer already, spares reading
    ``tokenizer.json`` again.
    """

    def __init__(self, path: str | Path, tokenizer: TabularTokenizer | None = None):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise ArtifactError(f"{self.path}: not a prepared dataset (no meta.json; run `tabbert prepare`)")
        try:
            self.meta = json.loads(meta_path.read_text())
        except ValueError as exc:
            raise ArtifactError(f"{meta_path}: unreadable ({exc})") from exc
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{meta_path}: unsupported dataset format {self.meta.get('format_version')!r}")
        self.tokenizer = TabularTokenizer.load(self.path / "tokenizer.json") if tokenizer is None else tokenizer
        self.tokens = self._array("tokens", mmap=True)
        self.entity_offsets = self._array("entity_offsets")
        if self.tokens.ndim != 2 or self.tokens.shape[1] != len(self.tokenizer.fields):
            raise ArtifactError(f"{self.path}: tokens.npy does not match tokenizer.json")
        if self.entity_offsets[-1] != self.tokens.shape[0]:
            raise ArtifactError(f"{self.path}: entity_offsets.npy does not match tokens.npy")

    def _array(self, name: str, mmap: bool = False) -> np.ndarray:
        file = self.path / f"{name}.npy"
        if not file.is_file():
            raise ArtifactError(f"{file}: missing from the prepared dataset")
        try:
            return np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
        except ValueError as exc:
            raise ArtifactError(f"{file}: unreadable ({exc})") from exc

    # ------------------------------------------------------------------ properties
    @property
    def seq_len(self) -> int:
        return int(self.meta["seq_len"])

    @property
    def task(self) -> str:
        return self.tokenizer.schema.task

    @property
    def n_rows(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def labelled(self) -> bool:
        """Whether the rows came with their labels (False: prepared for pre-training only)."""
        return bool(self.meta.get("labelled", True))

    def require_labels(self) -> None:
        """Raise :class:`TabbertError` when the dataset has no labels, saying what to do instead."""
        if not self.labelled:
            labels = self.meta["labels"]
            why = f"its rows were read without {labels}" if labels else "its schema names no label columns"
            raise TabbertError(
                f"{self.path}: the dataset has no labels ({why}), so it serves pre-training only; fine-tuning, "
                "baselines and evaluation need a labelled dataset: prepare labelled rows, with --tokenizer "
                "RUN/model to share the pre-training run's vocabulary"
            )

    @cached_property
    def labels(self) -> np.ndarray | None:
        return self._array("labels", mmap=True) if self.labelled and self.task == "classification" else None

    @cached_property
    def targets(self) -> np.ndarray | None:
        return self._array("targets", mmap=True) if self.labelled and self.task == "regression" else None

    @cached_property
    def values(self) -> np.ndarray:
        """Unbinned numeric fields, columns named by ``meta["value_columns"]``."""
        return self._array("values", mmap=True)

    @cached_property
    def codes(self) -> np.ndarray:
        """Raw-value codes of the categorical fields (:mod:`tabbert.data.codes`), columns named by
        ``code_fields``."""
        return self._array("codes", mmap=True)

    @property
    def code_fields(self) -> list[str]:
        return categorical_fields(self.tokenizer.schema)

    @cached_property
    def times(self) -> np.ndarray:
        return self._array("times", mmap=True)

    @cached_property
    def row_ids(self) -> np.ndarray:
        return self._array("row_ids", mmap=True)

    @cached_property
    def entities(self) -> list[str]:
        return json.loads((self.path / "entities.json").read_text())

    @cached_property
    def split_entities(self) -> dict[str, list[str]]:
        """Split name -> the keys of its entities (``splits.json``)."""
        file = self.path / "splits.json"
        if not file.is_file():
            raise ArtifactError(f"{file}: missing from the prepared dataset (prepare it again to record the splits)")
        try:
            return json.loads(file.read_text())
        except ValueError as exc:
            raise ArtifactError(f"{file}: unreadable ({exc})") from exc

    # ------------------------------------------------------------------ windows
    def windows(self, split: str) -> np.ndarray:
        """Start rows of the windows of ``split`` (train, val or test)."""
        if split not in SPLITS:
            raise TabbertError(f"unknown split {split!r}; choose from {SPLITS}")
        return self._array(f"windows_{split}")

    def window_tokens(self, starts: np.ndarray) -> np.ndarray:
        """Token ids ``[n, seq_len, n_fields]`` of the windows starting at ``starts``."""
        rows = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(self.seq_len)
        return np.asarray(self.tokens[rows.ravel()]).reshape(len(rows), self.seq_len, -1)

    # ------------------------------------------------------------------ prediction points
    @cached_property
    def first_rows(self) -> np.ndarray:
        """The first row of each row's entity."""
        return first_rows(self.entity_offsets)

    @cached_property
    def row_splits(self) -> np.ndarray:
        """The split id of every row (0 train, 1 val, 2 test), by the rule that split the windows:
        the row's entity (``entity``), the row's time (``time``) or a seeded draw per row (``random``)."""
        split = self.meta["split"]
        fractions, seed = split["fractions"], split["seed"]
        if split["method"] == "entity":
            return np.repeat(assign_entities(len(self.entity_offsets) - 1, fractions, seed),
                             np.diff(self.entity_offsets))
        if split["method"] == "time":
            cutoffs = tuple(int(np.datetime64(bound, "us").astype(np.int64)) for bound in split["cutoffs"])
            return assign_by_time(self.times, cutoffs)
        return assign_random(self.n_rows, fractions, seed)

    def entity_folds(self, folds: int) -> np.ndarray:
        """The fold (``0 .. folds-1``) of every entity, drawn once from the split's seed, so that
        pre-training and scoring agree on it."""
        n_entities = len(self.entity_offsets) - 1
        order = np.random.default_rng([self.meta["split"]["seed"], folds]).permutation(n_entities)
        return (order % folds).astype(np.int64)

    def points(self, split: str, kind: str = "rows") -> np.ndarray:
        """The prediction points of ``split`` (their newest rows): every row of the split (``rows``)
        or the newest row of each of its windows (``windows``)."""
        if kind == "windows":
            return self.windows(split) + (self.seq_len - 1)
        if kind != "rows":
            raise TabbertError(f"unknown kind of prediction points {kind!r}; choose rows or windows")
        if split not in SPLITS:
            raise TabbertError(f"unknown split {split!r}; choose from {SPLITS}")
        return np.flatnonzero(self.row_splits == SPLITS.index(split))

    def history_tokens(self, ends: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Token ids ``[n, context, n_fields]`` of the histories ending at ``ends``, [PAD] in front of
        short ones, and their attention mask ``[n, context]`` (None when no history is short)."""
        rows, real = history_rows(ends, self.first_rows, context)
        ids = np.asarray(self.tokens[rows.ravel()]).reshape(*rows.shape, -1)
        if real.all():
            return ids, None
        ids = np.where(real[..., None], ids, PAD_ID)
        return ids, real.astype(np.int64)

    def point_labels(self, ends: np.ndarray, context: int, mode: str = "last") -> np.ndarray:
        if self.labels is None:
            raise TabbertError(f"{self.path}: a regression dataset has no class labels")
        return point_labels(self.labels, ends, self.first_rows, context, mode)

    def point_targets(self, ends: np.ndarray, context: int, mode: str = "last") -> np.ndarray:
        """The last row's targets ``[n, T]``, or every row's ``[n, context, T]`` (full histories only)."""
        if self.targets is None:
            raise TabbertError(f"{self.path}: a classification dataset has no regression targets")
        ends = np.asarray(ends, dtype=np.int64)
        if mode == "last":
            return np.asarray(self.targets[ends])
        rows, real = history_rows(ends, self.first_rows, context)
        if not real.all():
            raise TabbertError("every row's targets need full histories: use windows as prediction points")
        return np.asarray(self.targets[rows.ravel()]).reshape(*rows.shape, -1)

    def window_labels(self, starts: np.ndarray, mode: str = "any") -> np.ndarray:
        if self.labels is None:
            raise TabbertError(f"{self.path}: a regression dataset has no class labels")
        return window_labels(self.labels, starts, self.seq_len, mode)

    def window_targets(self, starts: np.ndarray, mode: str = "last") -> np.ndarray:
        if self.targets is None:
            raise TabbertError(f"{self.path}: a classification dataset has no regression targets")
        return window_targets(self.targets, starts, self.seq_len, mode)

    def __repr__(self) -> str:
        counts = self.meta.get("windows", {})
        return f"PreparedDataset({str(self.path)!r}, rows={self.n_rows}, fields={self.tokens.shape[1]}, windows={counts})"


def check_output_dir(out: Path) -> None:
    """Refuse to write into an existing, non-empty directory (or onto a file)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TabbertError(f"{out}: output directory exists and is not empty; choose a new --out or remove it")


class PreparedWriter:
    """Writes a prepared dataset part by part, as each is ready; all of it or nothing.

    Parts are written into a staging sibling directory (:func:`~tabbert.atomic.staging_dir`) on
    background threads, so that writing overlaps the work that computes the next parts.
    :meth:`commit` waits for them, writes ``meta.json`` last and renames the directory into place;
    leaving the ``with`` block without a commit (an error anywhere) removes the staging directory.
    Staging directories that a killed writer left behind are removed when the next one starts. When
    two writers race for one ``out``, the one that renames second gets the "not empty" error.
    """

    def __init__(self, out: str | Path):
        self.out = Path(out)
        check_output_dir(self.out)
        remove_stale_staging(self.out)
        self._staging = staging_dir(self.out)
        self._pool = ThreadPoolExecutor(max_workers=WRITING_THREADS)
        self._writes: list[Future] = []
        self._tokenizer: TabularTokenizer | None = None
        self._committed = False

    def add_array(self, name: str, array: np.ndarray) -> None:
        """Write ``<name>.npy``; ``array`` must not change afterwards."""
        array = np.ascontiguousarray(array)
        self._writes.append(self._pool.submit(np.save, self._staging / f"{name}.npy", array, allow_pickle=False))

    def add_json(self, name: str, data: object) -> None:
        """Write ``<name>.json`` (on one line); ``data`` must not change afterwards."""
        self._writes.append(self._pool.submit(write_json_atomic, self._staging / f"{name}.json", data, indent=None))

    def add_tokenizer(self, tokenizer: TabularTokenizer) -> None:
        self._tokenizer = tokenizer
        self._writes.append(self._pool.submit(tokenizer.save, self._staging / "tokenizer.json"))

    def commit(self, meta: dict) -> PreparedDataset:
        """Finish every part, write ``meta.json`` and move the dataset into place."""
        self._pool.shutdown()
        for write in self._writes:
            write.result()  # the first failed write raises here
        write_json_atomic(self._staging / "meta.json", {"format_version": FORMAT_VERSION, **meta})
        try:
            if self.out.is_dir():
                self.out.rmdir()  # an empty directory is replaced; a filled one means another writer won
            os.rename(self._staging, self.out)
        except OSError as exc:
            if self.out.exists():
                check_output_dir(self.out)
            raise TabbertError(f"cannot write {self.out}: {exc.strerror or exc}") from exc
        self._committed = True
        return PreparedDataset(self.out, tokenizer=self._tokenizer)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        if not self._committed:
            self._pool.shutdown(cancel_futures=True)
            shutil.rmtree(self._staging, ignore_errors=True)
