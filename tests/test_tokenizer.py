import datetime as dt
from fractions import Fraction
from functools import partial

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tabbert.data.preparation import entity_runs, row_order, row_times
from tabbert.data.schema import ENTITY, ROW, TIME, FieldSpec, TableSchema
from tabbert.data.tokenizer import (
    FIELD_MISSING,
    FIELD_UNK,
    N_FIELD_SPECIALS,
    SPECIAL_TOKENS,
    TabularTokenizer,
    gap_seconds,
    id_dtype,
    quantile_edges,
    time_feature_in_order,
)
from tabbert.errors import ArtifactError

SCHEMA = TableSchema(
    fields=(FieldSpec("shop", "categorical", min_count=1), FieldSpec("amount", "numeric", n_bins=5)),
    time_features=("timestamp", "hour", "weekday", "gap"),
)


def frame_of(shops, amounts, hours=None, entities=None) -> pl.DataFrame:
    n = len(shops)
    hours = hours if hours is not None else list(range(n))
    return pl.DataFrame({
        ROW: np.arange(n, dtype=np.uint64),
        ENTITY: entities or ["e"] * n,
        TIME: [dt.datetime(2021, 3, 1) + dt.timedelta(hours=h) for h in hours],
        "shop": pl.Series(shops, dtype=pl.String),
        "amount": pl.Series(amounts, dtype=pl.Float64),
    })


def test_bin_edges_on_known_data():
    edges = quantile_edges(np.arange(101, dtype=float), 4)
    np.testing.assert_allclose(edges, [0, 25, 50, 75, 100])
    # repeated values collapse duplicate edges instead of making empty bins
    assert quantile_edges(np.array([0.0] * 90 + [1.0] * 10), 10).tolist() == [0.0, 1.0]


@settings(max_examples=80, deadline=None)
@given(values=st.lists(st.integers(-50, 50), min_size=1, max_size=600), n_bins=st.integers(1, 60))
def test_quantile_edges_are_the_exact_lower_quantiles(values, n_bins):
    """Edge ``i`` is the sorted value at ``floor(i (n - 1) / n_bins)``, computed without float error."""
    ordered = sorted(values)
    exact = {ordered[int(Fraction(i * (len(values) - 1), n_bins))] for i in range(n_bins + 1)}
    array = np.asarray(values, dtype=float)
    assert quantile_edges(array, n_bins).tolist() == sorted(exact)
    assert array.tolist() == values  # left as it was
    assert quantile_edges(array, n_bins, overwrite_input=True).tolist() == sorted(exact)


def test_quantile_edges_ignore_nan_and_infinities():
    values = np.array([np.nan, 3.0, -np.inf, 1.0, 2.0, np.inf])
    assert quantile_edges(values, 2).tolist() == [1.0, 2.0, 3.0]
    assert np.isnan(values[0]) and values[1] == 3.0


def test_quantile_edges_where_float_positions_round_down():
    values = np.arange(457.0)  # 13/19 of 456 is exactly 312; in floating point, 311.99999999999994
    assert quantile_edges(values, 19)[13] == 312.0


@pytest.mark.parametrize("n_bins", [5, 50])  # edges placed by comparisons, or by binary search
def test_numeric_bins_count_the_edges_each_value_reaches(n_bins):
    rng = np.random.default_rng(1)
    amounts = rng.normal(size=500).round(1).tolist()
    schema = TableSchema(fields=(FieldSpec("amount", "numeric", n_bins=n_bins),), time_features=())
    tok = TabularTokenizer.fit(frame_of(["a"] * 500, amounts), schema)
    edges = np.asarray(tok.fields[0].edges)
    probe = [*amounts, *edges.tolist(), -np.inf, np.inf, None]
    local = tok.encode(frame_of(["a"] * len(probe), probe))[:, 0] - tok.fields[0].offset
    reached = np.searchsorted(edges[1:-1], np.asarray(probe[:-1], dtype=float), side="right")
    assert local.tolist() == [*(reached + N_FIELD_SPECIALS).tolist(), FIELD_MISSING]


def test_numeric_bins_and_specials():
    frame = frame_of(["a"] * 101, list(map(float, range(101))))
    tok = TabularTokenizer.fit(frame, SCHEMA)
    amount = tok.fields[1]
    assert amount.edges == [0, 20, 40, 60, 80, 100]
    probe = frame_of(["a", "a", "a", "a", "a"], [-5.0, 0.0, 19.99, 20.0, None])
    local = tok.encode(probe)[:, 1] - amount.offset
    # below the minimum -> first bin; an edge opens the next bin; null -> [MISSING]
    assert local.tolist() == [2, 2, 2, 3, FIELD_MISSING]
    assert tok.decode(tok.encode(probe))["amount"].to_list()[:2] == ["[0, 20)", "[0, 20)"]


def test_categorical_vocabulary_by_frequency_min_count_and_unk():
    schema = TableSchema(fields=(FieldSpec("shop", "categorical", min_count=2),), time_features=())
    frame = frame_of(["b", "a", "a", "c", "b", "a", None], [0.0] * 7)
    tok = TabularTokenizer.fit(frame, schema)
    assert tok.fields[0].values == ["a", "b"]  # c seen once: below min_count
    ids = tok.encode(frame_of(["a", "b", "c", "never", None], [0.0] * 5))[:, 0] - tok.fields[0].offset
    assert ids.tolist() == [2, 3, FIELD_UNK, FIELD_UNK, FIELD_MISSING]


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        ([7, 3, 3, 9, 7, 3, None], pl.Int64),  # a narrow range: a table indexed by value
        ([7, 3, 3, -(2**62), 7, 3, None], pl.Int64),  # a wide range: a hash map
        (["7", "3", "3", "9", "7", "3", None], pl.String),
        (["7", "3", "3", "9", "7", "3", None], pl.Categorical),
        (["7", "3", "3", "9", "7", "3", None], pl.Enum(["9", "7", "3", "1"])),
        ([2**63 + 7, 2**63 + 3, 2**63 + 3, 2**63 + 9, 2**63 + 7, 2**63 + 3, None], pl.UInt64),
    ],
)
def test_categorical_fields_encode_alike_from_text_categorical_or_integers(values, dtype):
    schema = TableSchema(fields=(FieldSpec("shop", "categorical", min_count=2),), time_features=())
    frame = frame_of(["x"] * len(values), [0.0] * len(values)).with_columns(pl.Series("shop", values).cast(dtype))
    tok = TabularTokenizer.fit(frame, schema)
    assert tok.fields[0].values == [str(values[1]), str(values[0])]  # "3" three times, "7" twice, "9" once
    local = tok.encode(frame)[:, 0] - tok.fields[0].offset
    assert local.tolist() == [3, 2, 2, FIELD_UNK, 3, 2, FIELD_MISSING]


@pytest.mark.parametrize("dtype", [pl.String, pl.Categorical, pl.Int64, pl.Boolean])
def test_a_field_without_values_is_missing_everywhere(dtype):
    schema = TableSchema(fields=(FieldSpec("shop", "categorical"),), time_features=())
    frame = frame_of(["x"] * 3, [0.0] * 3).with_columns(pl.Series("shop", [None] * 3).cast(dtype))
    tok = TabularTokenizer.fit(frame, schema)
    assert tok.fields[0].values == []
    assert (tok.encode(frame)[:, 0] - tok.fields[0].offset).tolist() == [FIELD_MISSING] * 3


def test_id_ranges_are_disjoint_and_cover_vocab():
    tok = TabularTokenizer.fit(frame_of(list("abcab"), [1.0, 2, 3, 4, 5]), SCHEMA)
    assert tok.field_offsets[0] == len(SPECIAL_TOKENS)
    ends = [o + s for o, s in zip(tok.field_offsets, tok.field_vocab_sizes)]
    assert tok.field_offsets[1:] == ends[:-1]
    assert ends[-1] == tok.vocab_size
    assert tok.field_names == ["shop", "amount", "time.timestamp", "time.hour", "time.weekday", "time.gap"]


def test_time_features():
    frame = frame_of(["a", "a", "a"], [1.0, 2.0, 3.0], hours=[0, 5, 30], entities=["x", "y", "x"])
    tok = TabularTokenizer.fit(frame, SCHEMA)
    decoded = tok.decode(tok.encode(frame))
    assert decoded["time.hour"].to_list() == ["00h", "05h", "06h"]
    assert decoded["time.weekday"].to_list() == ["Mon", "Mon", "Tue"]  # 2021-03-01 was a Monday
    gap = tok.encode(frame)[:, 5] - tok.fields[5].offset
    # first row of each entity has no previous row; x's second row is 30 h after its first
    assert gap[0] == FIELD_MISSING and gap[1] == FIELD_MISSING and gap[2] >= N_FIELD_SPECIALS


def test_gap_does_not_depend_on_row_order():
    frame = frame_of(["a"] * 6, [1.0] * 6, hours=[0, 1, 3, 7, 8, 20], entities=list("xyxyxy"))
    tok = TabularTokenizer.fit(frame, SCHEMA)
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=1)
    by_row = dict(zip(frame[ROW].to_list(), tok.encode(frame)[:, 5]))
    assert [by_row[r] for r in shuffled[ROW].to_list()] == tok.encode(shuffled)[:, 5].tolist()


def test_save_load_round_trip(tmp_path):
    frame = frame_of(list("abcabca"), [1.0, 5, 2, 8, 3, 9, 4])
    tok = TabularTokenizer.fit(frame, SCHEMA)
    path = tok.save(tmp_path)
    loaded = TabularTokenizer.load(path)
    assert loaded.fingerprint() == tok.fingerprint()
    np.testing.assert_array_equal(loaded.encode(frame), tok.encode(frame))


def test_load_refuses_corrupt_file(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not a valid tokenizer"):
        TabularTokenizer.load(tmp_path)
    with pytest.raises(ArtifactError, match="not found"):
        TabularTokenizer.load(tmp_path / "missing.json")


def test_label_column_is_never_a_field():
    schema = TableSchema(fields=(FieldSpec("shop", "categorical"),), labels=("fraud",), time_features=())
    frame = frame_of(["a"], [1.0]).with_columns(fraud=pl.lit(1))
    assert TabularTokenizer.fit(frame, schema).field_names == ["shop"]


@settings(max_examples=40, deadline=None)
@given(
    shops=st.lists(st.sampled_from(["alpha", "beta", "gamma", "δ", ""]), min_size=1, max_size=40),
    amounts=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=40),
)
def test_round_trip_property(shops, amounts):
    n = min(len(shops), len(amounts))
    frame = frame_of(shops[:n], amounts[:n])
    tok = TabularTokenizer.fit(frame, SCHEMA)
    ids = tok.encode(frame)
    decoded = tok.decode(ids)
    # categories come back exactly
    assert decoded["shop"].to_list() == shops[:n]
    # every number lies in the range its bin decodes to
    edges = np.asarray(tok.fields[1].edges)
    local = ids[:, 1] - tok.fields[1].offset - N_FIELD_SPECIALS
    lo = edges[np.minimum(local, len(edges) - 1)]
    hi = edges[np.minimum(local + 1, len(edges) - 1)]
    values = np.asarray(amounts[:n])
    assert np.all((values >= lo) & (values <= hi))
    # encoding is a function of the decoded tokens: decode(encode) is stable
    assert tok.decode(ids).equals(decoded)


CODE_VALUES = {
    pl.String: st.sampled_from(["a", "b", "c", "δ", "", None]),
    pl.Categorical: st.sampled_from(["a", "b", "c", None]),
    pl.Int64: st.sampled_from([3, 5, 9, -(2**62), None]),
    pl.Boolean: st.sampled_from([True, False, None]),
}


@settings(max_examples=60, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(list(CODE_VALUES)), n=st.integers(1, 30))
def test_fit_encode_equals_fit_then_encode_in_any_order(data, dtype, n):
    """The ids of the one-pass fit and encode are those ``encode`` gives, in the order asked for."""
    shops = data.draw(st.lists(CODE_VALUES[dtype], min_size=n, max_size=n))
    amount = st.one_of(st.none(), st.floats(-1e3, 1e3, allow_nan=False))
    amounts = data.draw(st.lists(amount, min_size=n, max_size=n))
    entities = data.draw(st.lists(st.sampled_from("xyz"), min_size=n, max_size=n))
    hours = data.draw(st.lists(st.integers(0, 500), min_size=n, max_size=n))
    rows = np.asarray(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    rows[data.draw(st.integers(0, n - 1))] = True
    order = np.asarray(data.draw(st.permutations(range(n))), dtype=np.int64)
    shop = FieldSpec("shop", "categorical", min_count=data.draw(st.integers(1, 2)))
    schema = TableSchema(fields=(shop, FieldSpec("amount", "numeric")), time_features=SCHEMA.time_features)
    frame = frame_of(["?"] * n, amounts, hours=hours, entities=entities).with_columns(
        pl.Series("shop", shops, dtype=pl.String if dtype == pl.Categorical else dtype).cast(dtype)
    )
    fitted = TabularTokenizer.fit(frame, schema, rows=rows)
    given_later = data.draw(st.booleans())  # the order itself, or a function giving it when needed
    tokenizer, ids = TabularTokenizer.fit_encode(frame, schema, rows=rows, order=(lambda: order) if given_later else order)
    assert tokenizer.fingerprint() == fitted.fingerprint()
    np.testing.assert_array_equal(ids, fitted.encode(frame)[order])


@pytest.mark.parametrize("n_shops, dtype", [(10, np.uint8), (300, np.uint16), (70_000, np.int32)])
def test_fit_encode_keeps_ids_in_the_narrowest_type_holding_the_vocabulary(n_shops, dtype):
    shops = pl.Series("shop", np.arange(n_shops) * 7919)  # own slots up to 300 shops, hashed at 70,000
    frame = pl.DataFrame({ROW: np.arange(n_shops, dtype=np.uint64), "shop": shops, "amount": np.zeros(n_shops)})
    schema = TableSchema(fields=(FieldSpec("shop", "categorical"), FieldSpec("amount", "numeric")), time_features=())
    tokenizer, ids = TabularTokenizer.fit_encode(frame, schema)
    assert ids.dtype == id_dtype(tokenizer.vocab_size) == dtype
    np.testing.assert_array_equal(ids, tokenizer.encode(frame))
    assert int(ids.max()) == tokenizer.vocab_size - 1


def test_id_dtype_boundaries():
    assert [id_dtype(n) for n in (1, 256, 257, 65_536, 65_537)] == [np.uint8, np.uint8, np.uint16, np.uint16, np.int32]


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(1, 40))
def test_time_features_in_order_give_the_ids_of_the_frame_expressions(data, n):
    """Sub-second, negative (before 1970) and tied times: the same edges and ids either way."""
    micros = data.draw(st.lists(st.integers(-(10**14), 10**14), min_size=n, max_size=n))
    micros = [m if data.draw(st.booleans()) else m - m % 60_000_000 for m in micros]  # some whole minutes
    frame = pl.DataFrame({
        ROW: np.arange(n, dtype=np.uint64),
        ENTITY: data.draw(st.lists(st.sampled_from(["x", "y", "z"]), min_size=n, max_size=n)),
        TIME: pl.Series(micros, dtype=pl.Int64).cast(pl.Datetime("us")),
        "shop": ["s"] * n,
    })
    rows = np.asarray(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    rows[0] = True
    schema = TableSchema(fields=(FieldSpec("shop", "categorical"),), time_features=SCHEMA.time_features)
    _, offsets, entity_of_run, run_lengths = entity_runs(frame)
    order, times = row_order(entity_of_run, run_lengths, row_times(frame))
    feature = partial(time_feature_in_order, times=times, gaps=gap_seconds(times, offsets))
    tokenizer, ids = TabularTokenizer.fit_encode(frame, schema, rows=rows, order=lambda: order, time_feature=feature)
    fitted = TabularTokenizer.fit(frame, schema, rows=rows)
    assert tokenizer.fingerprint() == fitted.fingerprint()
    np.testing.assert_array_equal(ids, fitted.encode(frame) if order is None else fitted.encode(frame)[order])
