import datetime as dt

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tabbert.data.ordering import order_rows
from tabbert.data.schema import ENTITY, ROW, TIME


def test_rows_sort_by_entity_text_then_time_then_their_values():
    hours = [5, 1, 3, 0, 3, 2, 3]
    frame = pl.DataFrame({
        ENTITY: ["b", "b", "a", "10", "a", "b", "a"],
        TIME: [dt.datetime(2021, 1, 1) + dt.timedelta(hours=h) for h in hours],
        "shop": ["x", "x", "q", "x", None, "x", "p"],
    })
    rows = order_rows(frame, by=["shop"])
    # "10" < "a" < "b" as text; the three rows of "a" at the same time by shop, nulls last
    assert rows.order.tolist() == [3, 6, 2, 4, 1, 5, 0]
    assert rows.entity_offsets.tolist() == [0, 1, 4, 7]
    assert np.array_equal(rows.times, frame[TIME].dt.epoch("us").to_numpy()[rows.order])
    again = order_rows(frame[rows.order], by=["shop"])
    assert again.order is None and again.entity_offsets.tolist() == rows.entity_offsets.tolist()


def test_rows_equal_in_every_value_keep_their_input_order():
    frame = pl.DataFrame({ENTITY: ["a"] * 3, TIME: [dt.datetime(2021, 1, 1)] * 3, "shop": ["x", "y", "x"]})
    assert order_rows(frame, by=["shop"]).order.tolist() == [0, 2, 1]
    assert order_rows(frame).order is None  # with no values to compare, every tie is such a pair


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 60))
def test_the_order_of_the_rows_values_does_not_depend_on_the_input_order(data, n):
    frame = pl.DataFrame({
        ENTITY: data.draw(st.lists(st.sampled_from([3, 10, 200]), min_size=n, max_size=n)),
        TIME: [dt.datetime(2021, 1, 1, h) for h in data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))],
        "shop": pl.Series(data.draw(st.lists(st.sampled_from(["b", "a", None]), min_size=n, max_size=n)),
                          dtype=pl.String).cast(pl.Categorical),
        "amount": data.draw(st.lists(st.sampled_from([1.0, -2.0, float("nan"), None]), min_size=n, max_size=n)),
    }).with_row_index(ROW)
    shuffled = frame[data.draw(st.permutations(range(n)))]
    by = ["shop", "amount"]

    def in_order(table: pl.DataFrame) -> pl.DataFrame:
        order = order_rows(table, by=by).order
        return (table if order is None else table[order]).drop(ROW)

    assert in_order(shuffled).equals(in_order(frame))


@pytest.mark.parametrize("odd_microsecond", [False, True])
def test_order_over_millennia_matches_a_lexicographic_sort(odd_microsecond):
    """Times too wide for a microsecond key are counted in minutes, or sorted pairwise when they must be."""
    rng = np.random.default_rng(0)
    n, entities = 400, [f"e{i:02d}" for i in range(40)]
    minutes = rng.integers(0, 4_000 * 525_600, n)  # four thousand years, from the year 3000
    times = [dt.datetime(3000, 1, 1) + dt.timedelta(minutes=int(m)) for m in minutes]
    if odd_microsecond:
        times[7] += dt.timedelta(microseconds=1)
    frame = pl.DataFrame({ENTITY: rng.choice(entities, n), TIME: times, "shop": rng.integers(0, 3, n)})
    rows = order_rows(frame, by=["shop"])
    epoch_us = frame[TIME].dt.epoch("us").to_numpy()
    assert rows.order.tolist() == np.lexsort((frame["shop"].to_numpy(), epoch_us, frame[ENTITY].to_numpy())).tolist()
    assert np.array_equal(rows.times, epoch_us[rows.order])
    assert rows.entity_offsets[-1] == n
