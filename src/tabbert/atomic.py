"""Atomic writes: a file or directory appears complete under its name, or not at all."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from glob import escape as glob_escape
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
    check_output_file(path, overwrite=True)
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


def check_output_file(path: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Refuse a directory as an output file, and an existing file unless ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise TabbertError(f"cannot write {path}: it is a directory; give the name of a file to write")
    if path.exists() and not overwrite:
        raise TabbertError(f"{path}: exists; pass --overwrite to replace it, or choose another --out")


def write_json_atomic(path: str | os.PathLike, data: object, *, indent: int | None = 2) -> None:
    """Write ``data`` as JSON to ``path``, atomically; ``indent=None`` writes one line (much faster)."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=indent) + "\n")


def staging_dir(target: str | os.PathLike) -> Path:
    """A new, empty sibling directory of ``target`` to fill and then rename to ``target``.

    Its name, ``.<target>.partial-<pid>-<random>``, carries the writing process's id, so that a
    later writer can tell a folder left by a killed process (:func:`remove_stale_staging`) from
    one still being written.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return give_usual_mode(Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{_staging_prefix(target)}{os.getpid()}-")))
    except OSError as exc:
        raise TabbertError(f"cannot write {target}: {exc.strerror or exc}") from exc


def remove_stale_staging(target: str | os.PathLike) -> list[Path]:
    """Remove the staging directories of ``target`` whose writing process is gone; returns them."""
    target = Path(target)
    prefix = _staging_prefix(target)
    removed = []
    for folder in target.parent.glob(f"{glob_escape(prefix)}*"):
        pid = folder.name[len(prefix):].split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _staging_prefix(target: Path) -> str:
    return f".{target.name}.partial-"


def _process_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True
