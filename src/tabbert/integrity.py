"""The SHA-256 of a model's weights, recorded when the model is saved and checked when it is loaded.

A model directory holds ``weights.sha256.json`` beside ``model.safetensors``::

    {"file": "model.safetensors", "bytes": 1234567, "sha256": "9f86d0..."}

safetensors checks the header of a weights file but not its tensor bytes, so a file damaged on
disk or in a copy would otherwise load as a model with wrong weights. A model directory without
the record (saved by other code) loads unchecked.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tabbert.atomic import write_json_atomic
from tabbert.errors import ArtifactError

WEIGHTS_FILE = "model.safetensors"
DIGEST_FILE = "weights.sha256.json"


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def weights_sha256(model_dir: str | Path) -> str:
    """The SHA-256 of a model's weights: the one recorded when it was saved (checked at loading), else computed."""
    digest_file = Path(model_dir) / DIGEST_FILE
    if digest_file.is_file():
        return str(json.loads(digest_file.read_text())["sha256"])
    return file_sha256(Path(model_dir) / WEIGHTS_FILE)


def record_weights_digest(model_dir: str | Path) -> dict:
    """Write ``weights.sha256.json`` for the ``model.safetensors`` of ``model_dir``; returns the record."""
    weights = Path(model_dir) / WEIGHTS_FILE
    record = {"file": WEIGHTS_FILE, "bytes": weights.stat().st_size, "sha256": file_sha256(weights)}
    write_json_atomic(Path(model_dir) / DIGEST_FILE, record)
    return record


def check_weights_digest(model_dir: str | Path) -> None:
    """Raise :class:`ArtifactError` when ``model.safetensors`` differs from its recorded digest."""
    digest_file, weights = Path(model_dir) / DIGEST_FILE, Path(model_dir) / WEIGHTS_FILE
    if not digest_file.is_file():
        return
    try:
        record = json.loads(digest_file.read_text())
        expected_bytes, expected = int(record["bytes"]), str(record["sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{digest_file}: unreadable ({exc})") from exc
    actual_bytes = weights.stat().st_size
    if actual_bytes != expected_bytes:
        raise ArtifactError(f"{weights}: the file is corrupt or incomplete ({actual_bytes} bytes, "
                            f"{expected_bytes} when the model was saved, says {DIGEST_FILE})")
    actual = file_sha256(weights)
    if actual != expected:
        raise ArtifactError(f"{weights}: the file is corrupt (its SHA-256 differs from the one recorded when "
                            f"the model was saved in {DIGEST_FILE})")
