"""Where a run keeps its model: the one rule that resolves ``RUN`` or ``RUN/model``.

It imports nothing heavy, so that steps without a model (``prepare --tokenizer``) resolve runs
as :mod:`tabbert.runs` does without loading torch.
"""

from __future__ import annotations

from pathlib import Path

from tabbert.errors import ArtifactError


def run_paths(path: str | Path) -> tuple[Path, Path]:
    """``(run_dir, model_dir)`` of a run directory or of its model directory: a directory that holds
    ``config.json`` is the model directory, else its ``model/`` subdirectory is; the run directory is
    the model directory's parent when that is named ``model``, else the model directory itself."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: no such run or model directory")
    model_dir = path if (path / "config.json").is_file() or not (path / "model").is_dir() else path / "model"
    return (model_dir.parent if model_dir.name == "model" else model_dir), model_dir
