import datetime as dt
import json
from fractions import Fraction

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tabbert.data.encoders import (
    FIELD_MISSING,
    FIELD_UNK,
    N_FIELD_SPECIALS,
    CategoricalEncoder,
    ClockEncoder,
    FieldEncoder,
    NumericEncoder,
    id_dtype,
    quantile_edges,
)
from tabbert.data.ordering import order_rows, time_feature
from tabbert.data.schema import ENTITY, ROW, TIME, FieldSpec, TableSchema
from tabbert.data.tokenizer import SPECIAL_TOKENS, TabularTokenizer
from tabbert.errors import ArtifactError, TabbertError

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
    tok = TabularTokenizer(schema).fit(frame_of(["a"] * 500, amounts))
    edges = np.asarray(tok.fields[0].edges)
    probe = [*amounts, *edges.tolist(), -np.inf, np.inf, None]
    local = tok.encode(frame_of(["a"] * len(probe), probe))[:, 0] - tok.fields[0].offset
    reached = np.searchsorted(edges[1:-1], np.asarray(probe[:-1], dtype=float), side="right")
    assert local.tolist() == [*(reached + N_FIELD_SPECIALS).tolist(), FIELD_MISSING]


def test_numeric_bins_and_specials():
    frame = frame_of(["a"] * 101, list(map(float, range(101))))
    tok = TabularTokenizer(SCHEMA).fit(frame)
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
    tok = TabularTokenizer(schema).fit(frame)
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
    tok = TabularTokenizer(schema).fit(frame)
    assert tok.fields[0].values == [str(values[1]), str(values[0])]  # "3" three times, "7" twice, "9" once
    local = tok.encode(frame)[:, 0] - tok.fields[0].offset
    assert local.tolist() == [3, 2, 2, FIELD_UNK, 3, 2, FIELD_MISSING]


@pytest.mark.parametrize("dtype", [pl.String, pl.Categorical, pl.Int64, pl.Boolean])
def test_a_field_without_values_is_missing_everywhere(dtype):
    schema = TableSchema(fields=(FieldSpec("shop", "categorical"),), time_features=())
    frame = frame_of(["x"] * 3, [0.0] * 3).with_columns(pl.Series("shop", [None] * 3).cast(dtype))
    tok = TabularTokenizer(schema).fit(frame)
    assert tok.fields[0].values == []
    assert (tok.encode(frame)[:, 0] - tok.fields[0].offset).tolist() == [FIELD_MISSING] * 3


def test_id_ranges_are_disjoint_and_cover_vocab():
    tok = TabularTokenizer(SCHEMA).fit(frame_of(list("abcab"), [1.0, 2, 3, 4, 5]))
    assert tok.field_offsets[0] == len(SPECIAL_TOKENS)
    ends = [o + s for o, s in zip(tok.field_offsets, tok.field_vocab_sizes)]
    assert tok.field_offsets[1:] == ends[:-1]
    assert ends[-1] == tok.vocab_size
    assert tok.field_names == ["shop", "amount", "time.timestamp", "time.hour", "time.weekday", "time.gap"]


def test_time_features():
    frame = frame_of(["a", "a", "a"], [1.0, 2.0, 3.0], hours=[0, 5, 30], entities=["x", "y", "x"])
    tok = TabularTokenizer(SCHEMA).fit(frame)
    decoded = tok.decode(tok.encode(frame))
    assert decoded["time.hour"].to_list() == ["00h", "05h", "06h"]
    assert decoded["time.weekday"].to_list() == ["Mon", "Mon", "Tue"]  # 2021-03-01 was a Monday
    gap = tok.encode(frame)[:, 5] - tok.fields[5].offset
    # first row of each entity has no previous row; x's second row is 30 h after its first
    assert gap[0] == FIELD_MISSING and gap[1] == FIELD_MISSING and gap[2] >= N_FIELD_SPECIALS


def test_gap_does_not_depend_on_row_order():
    frame = frame_of(["a"] * 6, [1.0] * 6, hours=[0, 1, 3, 7, 8, 20], entities=list("xyxyxy"))
    tok = TabularTokenizer(SCHEMA).fit(frame)
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=1)
    by_row = dict(zip(frame[ROW].to_list(), tok.encode(frame)[:, 5]))
    assert [by_row[r] for r in shuffled[ROW].to_list()] == tok.encode(shuffled)[:, 5].tolist()


def test_save_load_round_trip(tmp_path):
    frame = frame_of(list("abcabca"), [1.0, 5, 2, 8, 3, 9, 4])
    tok = TabularTokenizer(SCHEMA).fit(frame)
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
    assert TabularTokenizer(schema).fit(frame).field_names == ["shop"]


@settings(max_examples=40, deadline=None)
@given(
    shops=st.lists(st.sampled_from(["alpha", "beta", "gamma", "δ", ""]), min_size=1, max_size=40),
    amounts=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=40),
)
def test_round_trip_property(shops, amounts):
    n = min(len(shops), len(amounts))
    frame = frame_of(shops[:n], amounts[:n])
    tok = TabularTokenizer(SCHEMA).fit(frame)
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
def test_categorical_fit_encode_gives_the_ids_of_fit_then_encode(data, dtype, n):
    """The one-pass fit and encode learns the same vocabulary and gives the ids ``encode`` gives."""
    values = data.draw(st.lists(CODE_VALUES[dtype], min_size=n, max_size=n))
    column = pl.Series("shop", values, dtype=pl.String if dtype == pl.Categorical else dtype).cast(dtype)
    rows = np.asarray(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    min_count = data.draw(st.integers(1, 2))
    one_pass = CategoricalEncoder("shop", min_count=min_count)
    ids = one_pass.fit_encode(column, rows)
    fitted = CategoricalEncoder("shop", min_count=min_count).fit(column, rows)
    assert one_pass.values == fitted.values
    assert ids.dtype == id_dtype(fitted.size)
    np.testing.assert_array_equal(ids, fitted.encode(column))


@pytest.mark.parametrize("n_shops, dtype", [(10, np.uint8), (300, np.uint16), (70_000, np.int32)])
def test_categorical_ids_come_in_the_narrowest_type_holding_the_vocabulary(n_shops, dtype):
    shops = pl.Series("shop", np.arange(n_shops) * 7919)  # own slots up to 300 shops, hashed at 70,000
    encoder = CategoricalEncoder("shop")
    ids = encoder.fit_encode(shops)
    assert ids.dtype == id_dtype(encoder.size) == dtype
    np.testing.assert_array_equal(ids, encoder.encode(shops))
    assert int(ids.max()) == encoder.size - 1


def test_id_dtype_boundaries():
    assert [id_dtype(n) for n in (1, 256, 257, 65_536, 65_537)] == [np.uint8, np.uint8, np.uint16, np.uint16, np.int32]


ENCODERS = [
    (CategoricalEncoder("shop", min_count=2), pl.Series(["b", "a", "a", None, "b", "c", "a"])),
    (NumericEncoder("amount", n_bins=3), pl.Series([0.5, None, 3.0, 7.25, -1.0, 2.0, float("nan")])),
    (NumericEncoder("time.gap", n_bins=4, source="gap"), np.array([np.nan, 60.0, 3600.0, 0.0, 120.0, 86400.0, 5.0])),
    (ClockEncoder("time.hour", "hour"), np.array([0, 5, 23, 12, 5, 0, 1], dtype=np.uint8)),
    (ClockEncoder("time.weekday", "weekday"), np.array([0, 6, 3, 3, 1, 2, 5], dtype=np.uint8)),
]


@pytest.mark.parametrize(("encoder", "values"), ENCODERS, ids=lambda x: getattr(x, "name", None))
def test_encoders_round_trip_through_their_json_form(encoder, values):
    train = np.array([True, True, True, True, True, False, True])
    ids = encoder.fit_encode(values, train)
    encoder.offset = 11
    data = json.loads(json.dumps(encoder.to_dict()))
    assert list(data) == ["name", "kind", "source", "offset", "values", "edges"]
    loaded = FieldEncoder.from_dict(data)
    assert type(loaded) is type(encoder) and loaded.to_dict() == encoder.to_dict()
    assert loaded.size == encoder.size and loaded.labels() == encoder.labels()
    np.testing.assert_array_equal(loaded.encode(values), ids)
    assert ids.max() < encoder.size and len(encoder.labels()) == encoder.size


def test_from_dict_refuses_an_unknown_kind():
    with pytest.raises(TabbertError, match="unknown field kind"):
        FieldEncoder.from_dict({"name": "x", "kind": "colour", "source": "x", "values": [], "edges": []})


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(1, 40))
def test_time_features_follow_the_calendar_and_each_entity(data, n):
    """Sub-second, negative (before 1970) and tied times: each feature is what the calendar says."""
    micros = data.draw(st.lists(st.integers(-(10**14), 10**14), min_size=n, max_size=n))
    micros = [m if data.draw(st.booleans()) else m - m % 60_000_000 for m in micros]  # some whole minutes
    frame = pl.DataFrame({
        ENTITY: data.draw(st.lists(st.sampled_from(["x", "y", "z"]), min_size=n, max_size=n)),
        TIME: pl.Series(micros, dtype=pl.Int64).cast(pl.Datetime("us")),
    })
    rows = order_rows(frame)
    ordered = frame if rows.order is None else frame[rows.order]
    feature = {name: time_feature(name, rows.times, rows.entity_offsets) for name in ("timestamp", "hour", "weekday", "gap")}
    stamps = ordered[TIME].to_list()
    assert feature["hour"].tolist() == [t.hour for t in stamps]
    assert feature["weekday"].tolist() == [t.weekday() for t in stamps]
    epoch = dt.datetime(1970, 1, 1)
    assert feature["timestamp"].tolist() == [(t - epoch) // dt.timedelta(seconds=1) for t in stamps]
    entities = ordered[ENTITY].to_list()
    expected_gaps = [
        (t - stamps[i - 1]).total_seconds() if i and entities[i - 1] == entities[i] else None
        for i, t in enumerate(stamps)
    ]
    assert [None if np.isnan(g) else g for g in feature["gap"].tolist()] == pytest.approx(expected_gaps)


def test_fit_and_encode_read_the_times_in_the_order_of_the_rows_values():
    """Two rows of one entity at one time: the gap of each depends on their values, not their places."""
    frame = frame_of(["b", "a", "c"], [1.0, 2.0, 3.0], hours=[0, 5, 5])
    tok = TabularTokenizer(SCHEMA).fit(frame)
    decoded = tok.decode(tok.encode(frame))
    assert decoded["time.gap"][0] == "[MISSING]"
    flipped = frame[[0, 2, 1]]
    np.testing.assert_array_equal(tok.encode(flipped), tok.encode(frame)[[0, 2, 1]])
    gaps = time_feature("gap", order_rows(frame, by=["shop"]).times, np.array([0, 3]))
    assert gaps[1:].tolist() == [5 * 3600.0, 0.0]  # "a" five hours after "b", then "c" at the same time
    gap = tok.fields[5]
    assert tok.encode(frame)[1, 5] - gap.offset == gap.encode(np.array([5 * 3600.0]))[0]
