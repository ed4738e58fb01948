import numpy as np
import pytest

from tabbert.data.windows import (
    assign_by_time,
    assign_entities,
    window_labels,
    window_starts,
    window_targets,
)
from tabbert.errors import TabbertError


def test_window_starts_cover_every_row_of_long_entities():
    offsets = np.array([0, 23, 33, 40])  # lengths 23, 10, 7
    starts, entity = window_starts(offsets, seq_len=10, stride=5)
    # 23 rows: 0,5,10 then 13 so the newest row is covered; 10 rows: one window; 7 rows: none
    assert starts.tolist() == [0, 5, 10, 13, 23]
    assert entity.tolist() == [0, 0, 0, 0, 1]


def test_window_starts_exact_fit_has_no_extra_window():
    starts, _ = window_starts(np.array([0, 20]), seq_len=10, stride=5)
    assert starts.tolist() == [0, 5, 10]


def test_window_never_crosses_entities():
    offsets = np.array([0, 13, 31, 31, 60])
    starts, entity = window_starts(offsets, seq_len=10, stride=3)
    assert np.all(starts >= offsets[entity]) and np.all(starts + 10 <= offsets[entity + 1])


def test_window_labels_any_and_last():
    labels = np.zeros(30, dtype=np.int8)
    labels[[4, 19]] = 1
    starts = np.array([0, 5, 10, 15, 20])
    assert window_labels(labels, starts, 10, "any").tolist() == [1, 0, 1, 1, 0]
    assert window_labels(labels, starts, 10, "last").tolist() == [0, 0, 1, 0, 0]
    with pytest.raises(TabbertError):
        window_labels(labels, starts, 10, "most")


def test_window_targets_last_and_all():
    targets = np.arange(40, dtype=np.float32).reshape(20, 2)
    assert window_targets(targets, np.array([0, 5]), 10, "last").tolist() == [[18, 19], [28, 29]]
    assert window_targets(targets, np.array([0]), 10, "all").shape == (1, 10, 2)


def test_assign_entities_fractions_and_seed():
    split = assign_entities(1000, (0.6, 0.2, 0.2), seed=1)
    assert np.bincount(split).tolist() == [600, 200, 200]
    assert not np.array_equal(split, assign_entities(1000, (0.6, 0.2, 0.2), seed=2))
    np.testing.assert_array_equal(split, assign_entities(1000, (0.6, 0.2, 0.2), seed=1))
    with pytest.raises(TabbertError):
        assign_entities(10, (0.5, 0.2, 0.2), seed=0)


def test_assign_by_time():
    assert assign_by_time(np.array([1, 5, 6, 9, 10]), (5, 10)).tolist() == [0, 1, 1, 1, 2]
