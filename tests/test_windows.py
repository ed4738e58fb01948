import numpy as np
import pytest

from tabbert.data.windows import (
    SPLITS,
    assign_by_time,
    assign_entities,
    first_rows,
    history_rows,
    point_labels,
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


def test_histories_are_left_padded_within_the_entity():
    offsets = np.array([0, 3, 10])
    first = first_rows(offsets)
    assert first.tolist() == [0, 0, 0, 3, 3, 3, 3, 3, 3, 3]
    rows, real = history_rows(np.array([1, 9]), first, context=4)
    # row 1 has one earlier row; the padding positions point at the entity's first row, masked out
    assert rows.tolist() == [[0, 0, 0, 1], [6, 7, 8, 9]]
    assert real.tolist() == [[False, False, True, True], [True] * 4]


def test_point_labels_last_and_any_stay_inside_the_entity():
    offsets = np.array([0, 3, 10])
    labels = np.zeros(10, dtype=np.int8)
    labels[[2, 5]] = 1
    first = first_rows(offsets)
    ends = np.arange(10)
    assert point_labels(labels, ends, first, 3, "last").tolist() == [0, 0, 1, 0, 0, 1, 0, 0, 0, 0]
    # the positive row 2 of the first entity never reaches the second entity's rows 3 and 4
    assert point_labels(labels, ends, first, 3, "any").tolist() == [0, 0, 1, 0, 0, 1, 1, 1, 0, 0]


def test_every_row_is_a_point_of_the_split_of_its_windows(fraud_cards):
    splits = fraud_cards.row_splits
    assert splits.shape == (fraud_cards.n_rows,)
    ends = {name: fraud_cards.points(name) for name in SPLITS}
    assert sum(e.size for e in ends.values()) == fraud_cards.n_rows
    windows = fraud_cards.points("test", "windows")
    assert np.array_equal(windows, fraud_cards.windows("test") + fraud_cards.seq_len - 1)


def test_entity_split_rows_follow_their_entity(tmp_path, fraud_card_csv):
    from tabbert.data.preparation import prepare

    data = prepare("card", fraud_card_csv, tmp_path / "by-entity", split="entity", seed=3)
    for index, name in enumerate(SPLITS):
        window_rows = data.windows(name)
        assert (data.row_splits[window_rows] == index).all()
    entity_of_row = np.searchsorted(data.entity_offsets, np.arange(data.n_rows), side="right") - 1
    for entity in range(len(data.entities)):  # one split per entity
        assert np.unique(data.row_splits[entity_of_row == entity]).size == 1
