"""Atomic writes: a file appears complete under its name, or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tabbert.errors import TabbertError


def _read_umask() -> int:
    """The file-mode creation mask; read once, at import, because reading it means setting it for a moment."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()


def give_usual_mode(path: Path) -> Path:
    """Give ``path`` the mode ``open`` or ``mkdir`` would give it under the umask.

    Temporary files and folders are made private (0600, 0700); an artifact renamed from one
    would keep that mode.
    """
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~UMASK)
    return path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it is renamed to ``path``.

    On any error the temporary file is removed and ``path`` keeps its old content (if any).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
    except OSError as exc:
        raise TabbertError(f"cannot write {path}: {exc.strerror or exc}") from exc
    temporary = Path(name)
    try:
        yield temporary
        give_usual_mode(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, data: object, *, indent: int | None = 2) -> None:
    """Write ``data`` as JSON to ``path``, atomically; ``indent=None`` writes one line (much faster)."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=indent) + "\n")
