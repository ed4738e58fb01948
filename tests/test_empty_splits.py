"""Prepare says when a split is left without windows, and what to change."""

from __future__ import annotations

import warnings

import pytest
from conftest import make_table

from tabbert.data.preparation import prepare_table


def test_one_entity_under_the_entity_split_names_the_time_split(tmp_path):
    with pytest.warns(UserWarning, match=r"no val and no test windows: .*one split, and 1 entity has a window of 5 rows; use --split time"):
        data = prepare_table(make_table({"a": 60}), tmp_path / "entity", seq_len=5, stride=5)
    assert data.meta["windows"]["val"] == data.meta["windows"]["test"] == 0


def test_the_time_split_of_one_entity_fills_every_split(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = prepare_table(make_table({"a": 60}), tmp_path / "time", seq_len=5, stride=5, split="time")
    assert min(data.meta["windows"].values()) > 0
