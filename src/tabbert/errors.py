"""Errors that reach the user as one clear line instead of a traceback."""

from __future__ import annotations


class TabbertError(Exception):
    """Base class: the command line prints these as ``error: <message>`` and exits with 2."""


class DataError(TabbertError):
    """Bad input data. Names the file and, where known, the column and the row."""

    def __init__(self, path: object, message: str, *, column: str | None = None, row: int | None = None):
        self.path, self.column, self.row = str(path), column, row
        where = [self.path]
        if column is not None:
            where.append(f"column {column!r}")
        if row is not None:
            where.append(f"row {row}")
        super().__init__(f"{', '.join(where)}: {message}")


class ArtifactError(TabbertError):
    """A dataset, tokenizer or model directory that is missing, corrupt or made for other data."""
