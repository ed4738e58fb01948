"""Threshold specs: parsing, resolution on validation scores, storage with a run, and the command line."""

from __future__ import annotations

import numpy as np
import pytest

from tabbert.cli import main
from tabbert.errors import ArtifactError, TabbertError
from tabbert.metrics import UndefinedMetricWarning
from tabbert.thresholds import ThresholdSpec, ValidationScores, resolve_threshold

DAY = 86_400_000_000
START = 1_600_000_000 * 1_000_000  # 2020-09-13, a day boundary plus 12:26:40


@pytest.fixture
def validation() -> ValidationScores:
    """1,000 negatives scored 0 .. 0.999 and 10 positives 0.9905 .. 0.9995, over 10 calendar days."""
    negatives = np.arange(1000) / 1000
    positives = 0.9905 + np.arange(10) / 1000
    scores = np.concatenate([negatives, positives])
    labels = np.r_[np.zeros(1000, int), np.ones(10, int)]
    times = START + np.linspace(0, 9 * DAY, scores.size).astype(np.int64)
    return ValidationScores(scores, labels, times)


@pytest.mark.parametrize(("text", "kind", "value", "canonical"), [
    ("0.73", "value", 0.73, "0.73"), (" FPR:0.001 ", "fpr", 0.001, "fpr:0.001"), ("fpr:0", "fpr", 0.0, "fpr:0"),
    ("alerts:50", "alerts", 50.0, "alerts:50"), ("alerts:0.5", "alerts", 0.5, "alerts:0.5"),
    ("best-f1", "best-f1", None, "best-f1"), (None, "best-f1", None, "best-f1"), (0.25, "value", 0.25, "0.25"),
])
def test_specs_parse(text, kind, value, canonical):
    spec = ThresholdSpec.parse(text)
    assert (spec.kind, spec.value, str(spec)) == (kind, value, canonical)
    assert ThresholdSpec.parse(str(spec)) == spec


@pytest.mark.parametrize(("text", "message"), [
    ("high", "a number, fpr:RATE, alerts:N"), ("fpr:", "a number, fpr:RATE"), ("recall:0.5", "a number, fpr:RATE"),
    ("fpr:1.5", r"false-positive rate in \[0, 1\)"), ("alerts:-1", "alerts per day >= 0"),
    ("nan", "finite"), ("best_f1", "a number, fpr:RATE"),
])
def test_bad_specs_say_what_is_allowed(text, message):
    with pytest.raises(TabbertError, match=message):
        ThresholdSpec.parse(text)


def test_a_number_needs_no_validation_scores():
    threshold = resolve_threshold("0.42")
    assert (threshold.value, threshold.spec, threshold.source) == (0.42, "0.42", "given")


def test_false_positive_rate(validation):
    # 1 % of 1,000 negatives: 10 may be flagged, so the threshold is the tenth-highest negative
    threshold = resolve_threshold("fpr:0.01", validation)
    assert threshold.value == pytest.approx(0.990) and threshold.spec == "fpr:0.01"
    negatives = validation.scores[validation.labels == 0]
    assert np.count_nonzero(negatives >= threshold.value) == 10
    assert resolve_threshold("fpr:0.001", validation).value == pytest.approx(0.999)
    # none allowed: just above the highest negative, so only positives above it are flagged
    strict = resolve_threshold("fpr:0", validation).value
    assert 0.999 < strict < 0.9995 and np.count_nonzero(negatives >= strict) == 0


def test_alerts_per_day(validation):
    assert validation.days == 10
    # 2 alerts a day over 10 days: the 20 highest scores
    threshold = resolve_threshold("alerts:2", validation)
    assert np.count_nonzero(validation.scores >= threshold.value) == 20
    assert "20 alerts at most over 10 days" in threshold.source
    nothing = resolve_threshold("alerts:0", validation).value
    assert nothing > validation.scores.max()


def test_ties_never_exceed_the_budget():
    scores = ValidationScores([0.1, 0.9, 0.9, 0.9, 0.5], [0, 0, 0, 1, 0], [START] * 5)
    # two alerts allowed on one day: the three tied at 0.9 would be three, so none of them is flagged
    threshold = resolve_threshold("alerts:2", scores)
    assert threshold.value > 0.9 and np.count_nonzero(scores.scores >= threshold.value) == 0
    assert resolve_threshold("alerts:3", scores).value == pytest.approx(0.9)


def test_best_f1(validation):
    assert resolve_threshold("best-f1", validation, saved=0.3).value == 0.3  # the model's saved one first
    threshold = resolve_threshold(None, validation)
    assert threshold.value == pytest.approx(0.9905) and threshold.source == "best F1 on validation"
    no_positives = ValidationScores([0.2, 0.4], [0, 0], [START, START])
    with pytest.warns(UndefinedMetricWarning, match="no positives"):
        assert resolve_threshold("best-f1", no_positives).value == 0.5


def test_specs_that_need_what_is_missing(validation):
    with pytest.raises(TabbertError, match="needs validation scores, and none are stored"):
        resolve_threshold("fpr:0.01", None)
    with pytest.raises(TabbertError, match="no negatives"):
        resolve_threshold("fpr:0.01", ValidationScores([0.5], [1], [START]))


def test_validation_scores_round_trip(tmp_path, validation):
    assert ValidationScores.load(tmp_path) is None
    validation.save(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["val_labels.npy", "val_scores.npy", "val_times.npy"]
    loaded = ValidationScores.load(tmp_path)
    for name in ("scores", "labels", "times"):
        assert np.array_equal(getattr(loaded, name), getattr(validation, name))
    assert resolve_threshold("fpr:0.01", lambda: ValidationScores.load(tmp_path)).value == pytest.approx(0.990)
    (tmp_path / "val_times.npy").unlink()
    with pytest.raises(ArtifactError, match=r"incomplete, \['val_times.npy'\] missing"):
        ValidationScores.load(tmp_path)
    np.save(tmp_path / "val_times.npy", np.zeros(3, np.int64))
    with pytest.raises(ArtifactError, match="three arrays of one length"):
        ValidationScores.load(tmp_path)


def test_command_line_refuses_a_bad_spec(tmp_path, capsys):
    for command in (["evaluate", "--data", str(tmp_path)], ["predict", "--input", "x.csv", "--out", "y.csv"]):
        with pytest.raises(SystemExit) as stopped:
            main([command[0], "--model", str(tmp_path), *command[1:], "--threshold", "fpr:2"])
        assert stopped.value.code == 2
        assert "--threshold: fpr:RATE needs a false-positive rate in [0, 1); got 'fpr:2'" in capsys.readouterr().err
