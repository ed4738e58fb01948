"""The decision threshold of a classifier, from a spec resolved on its validation scores.

Specs
-----
``0.73``        that number
``fpr:0.001``   the lowest threshold whose false-positive rate on validation is at most 0.001
``alerts:50``   the lowest threshold that flags at most 50 validation rows per day; the days are
                the calendar days from the first to the last validation row's time (inclusive)
``best-f1``     the threshold with the best F1 on validation (the default; fine-tuning saves it
                with the model, and that saved value is used when there is one)

A row is flagged when its score is at least the threshold. A spec that no threshold can meet
(``alerts:0``, say) gives a threshold just above the highest validation score: nothing flagged.

Validation scores
-----------------
A fine-tuned classification run stores what resolving a spec needs beside its ``metrics.json``:
``val_scores.npy`` (float64), ``val_labels.npy`` (int8) and ``val_times.npy`` (int64 microseconds
since the epoch, the time of each validation point's newest row), one entry per validation point,
each written atomically. :class:`ValidationScores` saves and loads them; :func:`resolve_threshold`
turns a spec and them into a :class:`Threshold`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tabbert.atomic import atomic_path
from tabbert.errors import ArtifactError, TabbertError

DEFAULT_SPEC = "best-f1"
SPEC_FORMS = "a number, fpr:RATE, alerts:N (per day) or best-f1"
VALIDATION_FILES = {"scores": "val_scores.npy", "labels": "val_labels.npy", "times": "val_times.npy"}
MICROSECONDS_PER_DAY = 86_400_000_000


@dataclass(frozen=True)
class ThresholdSpec:
    """A parsed spec: ``kind`` is ``value``, ``fpr``, ``alerts`` or ``best-f1``; ``value`` its number."""

    kind: str
    value: float | None = None

    @classmethod
    def parse(cls, spec: str | float | ThresholdSpec | None) -> ThresholdSpec:
        """The spec of a text such as ``fpr:0.001`` (None: ``best-f1``); a bad one raises :class:`TabbertError`."""
        if isinstance(spec, ThresholdSpec):
            return spec
        if spec is None:
            return cls(DEFAULT_SPEC)
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            return cls._checked("value", float(spec), str(spec))
        text = str(spec).strip().lower()
        if text == DEFAULT_SPEC:
            return cls(DEFAULT_SPEC)
        kind, _, number = text.rpartition(":")
        if kind not in ("", "fpr", "alerts"):
            raise TabbertError(f"threshold must be {SPEC_FORMS}; got {spec!r}")
        try:
            value = float(number)
        except ValueError:
            raise TabbertError(f"threshold must be {SPEC_FORMS}; got {spec!r}") from None
        return cls._checked(kind or "value", value, spec)

    @classmethod
    def _checked(cls, kind: str, value: float, spec: object) -> ThresholdSpec:
        if not math.isfinite(value):
            raise TabbertError(f"threshold must be a finite number; got {spec!r}")
        if kind == "fpr" and not 0 <= value < 1:
            raise TabbertError(f"fpr:RATE needs a false-positive rate in [0, 1); got {spec!r}")
        if kind == "alerts" and value < 0:
            raise TabbertError(f"alerts:N needs a number of alerts per day >= 0; got {spec!r}")
        return cls(kind, value)

    @property
    def needs_validation(self) -> bool:
        return self.kind != "value"

    def __str__(self) -> str:
        if self.kind == DEFAULT_SPEC:
            return DEFAULT_SPEC
        number = f"{self.value:g}"
        return number if self.kind == "value" else f"{self.kind}:{number}"


@dataclass(frozen=True)
class Threshold:
    """A resolved threshold: its value, the spec it came from, and in words where it came from."""

    value: float
    spec: str
    source: str


@dataclass(frozen=True)
class ValidationScores:
    """A classifier's scores of its validation points, their labels and their times (microseconds)."""

    scores: np.ndarray
    labels: np.ndarray
    times: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "scores", np.asarray(self.scores, dtype=np.float64))
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.int8))
        object.__setattr__(self, "times", np.asarray(self.times, dtype=np.int64))
        if not self.scores.shape == self.labels.shape == self.times.shape or self.scores.ndim != 1:
            raise ArtifactError(f"validation scores {self.scores.shape}, labels {self.labels.shape} and times "
                                f"{self.times.shape} must be three arrays of one length")

    def save(self, run_dir: str | Path) -> None:
        """Write the three arrays into ``run_dir``, each atomically (see the module docstring)."""
        for name, file in VALIDATION_FILES.items():
            with atomic_path(Path(run_dir) / file) as temporary, open(temporary, "wb") as handle:
                np.save(handle, getattr(self, name), allow_pickle=False)

    @classmethod
    def load(cls, run_dir: str | Path) -> ValidationScores | None:
        """The arrays stored in ``run_dir``, or None when it holds none of them."""
        paths = {name: Path(run_dir) / file for name, file in VALIDATION_FILES.items()}
        present = [path.is_file() for path in paths.values()]
        if not any(present):
            return None
        if not all(present):
            missing = [path.name for path, there in zip(paths.values(), present) if not there]
            raise ArtifactError(f"{run_dir}: validation scores incomplete, {missing} missing")
        arrays = {}
        for name, path in paths.items():
            try:
                arrays[name] = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise ArtifactError(f"{path}: unreadable ({exc})") from exc
        try:
            return cls(**arrays)
        except ArtifactError as exc:
            raise ArtifactError(f"{run_dir}: {exc}") from exc

    @property
    def days(self) -> int:
        """Calendar days from the first validation point to the last, both included."""
        if self.times.size == 0:
            return 0
        return int(self.times.max() // MICROSECONDS_PER_DAY - self.times.min() // MICROSECONDS_PER_DAY + 1)


Validation = ValidationScores | Callable[[], ValidationScores | None] | None


def resolve_threshold(spec: str | float | ThresholdSpec | None, validation: Validation = None, *,
                      saved: float | None = None) -> Threshold:
    """The threshold of ``spec``. ``validation`` is the validation scores, a function returning
    them (called only when the spec needs them) or None; ``saved`` is the best-F1 threshold saved
    with the model, used for ``best-f1`` when present."""
    parsed = ThresholdSpec.parse(spec)
    if parsed.kind == "value":
        return Threshold(parsed.value, str(parsed), "given")
    if parsed.kind == DEFAULT_SPEC and saved is not None:
        return Threshold(float(saved), DEFAULT_SPEC, "model (best F1 on validation at fine-tuning)")
    scores = validation() if callable(validation) else validation
    if scores is None or scores.scores.size == 0:
        raise TabbertError(f"threshold {str(parsed)!r} needs validation scores, and none are stored with the run "
                           f"({', '.join(VALIDATION_FILES.values())}); give a number instead")
    if parsed.kind == DEFAULT_SPEC:
        return _best_f1(scores)
    negatives = scores.scores[scores.labels == 0]
    if parsed.kind == "fpr":
        if negatives.size == 0:
            raise TabbertError(f"threshold {str(parsed)!r}: the validation points hold no negatives")
        allowed = math.floor(parsed.value * negatives.size + 1e-9)  # false positives within the rate
        value = threshold_flagging_at_most(negatives, allowed)
        return Threshold(value, str(parsed), f"false-positive rate {parsed.value:g} on validation "
                                             f"({allowed} of {negatives.size} negatives at most)")
    days = scores.days
    allowed = math.floor(parsed.value * days + 1e-9)
    value = threshold_flagging_at_most(scores.scores, allowed)
    return Threshold(value, str(parsed), f"{parsed.value:g} alerts per day on validation "
                                         f"({allowed} alerts at most over {days} days)")


def threshold_flagging_at_most(scores: np.ndarray, allowed: int) -> float:
    """The lowest threshold that flags (score >= threshold) at most ``allowed`` of ``scores``; just
    above the highest score when none may be flagged."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    distinct = np.unique(ordered)
    flagged = ordered.size - np.searchsorted(ordered, distinct, side="left")  # flagged at each distinct score
    within = distinct[flagged <= allowed]
    return float(within[0]) if within.size else float(np.nextafter(ordered[-1], np.inf))


def _best_f1(scores: ValidationScores) -> Threshold:
    from tabbert.metrics import UndefinedMetricWarning, best_f1_threshold

    if not scores.labels.any():
        warnings.warn("the validation split has no positives: using the threshold 0.5", UndefinedMetricWarning,
                      stacklevel=3)
        return Threshold(0.5, DEFAULT_SPEC, "default 0.5 (no validation positives)")
    return Threshold(best_f1_threshold(scores.labels, scores.scores), DEFAULT_SPEC, "best F1 on validation")


def run_threshold(run, spec: str | float | ThresholdSpec | None = None) -> Threshold | None:
    """The threshold of ``spec`` for a loaded run (:func:`tabbert.runs.load_run`); see :func:`stored_threshold`."""
    config = run.model.config
    return stored_threshold(run.run_dir, task=config.task, saved=config.threshold, spec=spec)


def stored_threshold(run_dir: str | Path, *, task: str, saved: float | None,
                     spec: str | float | ThresholdSpec | None = None) -> Threshold | None:
    """The threshold of ``spec`` for the run in ``run_dir``, on the validation scores stored with it
    (``saved``: its best-F1 threshold). None for a regression run, and for the default spec when the
    run carries neither a saved threshold nor validation scores."""
    if task != "classification":
        if spec is not None:
            raise TabbertError(f"{run_dir}: a threshold applies to classification models only")
        return None
    validation = ValidationScores.load(run_dir)
    if spec is None and saved is None and validation is None:
        return None
    return resolve_threshold(spec, validation, saved=saved)
