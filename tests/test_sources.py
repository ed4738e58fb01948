"""Readers: the real card and PRSA files, format variants, generic schemas and every bad input."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml

from tabbert.data.schema import ENTITY, ROW, TIME, SchemaError
from tabbert.data.sources import (
    CARD_COLUMNS,
    CARD_USE_CHIP,
    PRSA_COLUMNS,
    _epoch_minutes,
    _Query,
    read_card,
    read_generic,
    read_prsa,
    read_source,
)
from tabbert.errors import DataError, TabbertError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CARD_FILE = SHARED / "ibm_card" / "User0_credit_card_transactions.csv"
PRSA_DIR = SHARED / "prsa"

CARD_HEADER = ",".join(CARD_COLUMNS)
CARD_ROW = "0,0,2002,9,1,06:21,$134.09,Swipe Transaction,3527213246127876953,La Verne,CA,91750.0,5300,,No"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (the ../shared/data folder is absent)")
    return path


def _write(path: Path, lines: list[str], newline: str = "\n") -> Path:
    path.write_text(newline.join(lines) + newline)
    return path


def _card_csv(tmp_path: Path, *edits: tuple[int, str, str], name: str = "cards.csv") -> Path:
    """Four copies of the sample card row, with ``(row, column, value)`` edits (rows 1-based)."""
    rows = [CARD_ROW.split(",") for _ in range(4)]
    for row, column, value in edits:
        rows[row - 1][CARD_COLUMNS.index(column)] = value
    return _write(tmp_path / name, [CARD_HEADER, *(",".join(row) for row in rows)])


def _raises(match_all: list[str], call, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    for part in match_all:
        assert part in message, f"{part!r} not in {message!r}"
    return message


# ------------------------------------------------------------------------------------------ card


@pytest.fixture(scope="module")
def card_table():
    return read_card(_need(CARD_FILE))


def test_card_real_file(card_table):
    frame = card_table.frame
    assert card_table.rows_in == card_table.rows_kept == frame.height == 19_963
    assert card_table.dropped == {}
    assert frame[ROW].to_list() == list(range(19_963))
    assert frame["Is Fraud?"].sum() == 27
    assert frame["Card"].n_unique() == 5
    assert frame["Zip"].null_count() == 1_647
    assert frame["Merchant State"].null_count() == 1_317
    assert frame["Errors?"].drop_nulls().len() == 574
    assert dict(frame["Use Chip"].value_counts().rows()) == {
        "Chip Transaction": 2_808,
        "Online Transaction": 1_315,
        "Swipe Transaction": 15_840,
    }
    assert frame[TIME].min() == dt.datetime(2002, 9, 1, 6, 21)
    assert frame[TIME].max().date() == dt.date(2020, 2, 28)
    assert not frame["Zip"].cast(pl.String).drop_nulls().str.ends_with(".0").any()
    first = frame.row(0, named=True)
    assert (first[ENTITY], first["Amount"], first["Zip"], first["MCC"]) == (0, 134.09, 91750, 5300)
    assert frame["Amount"].min() < 0  # refunds like $-77.00


def test_card_layout_and_schema(card_table):
    schema = card_table.schema
    assert card_table.frame.schema == pl.Schema(
        {
            ROW: pl.UInt64, ENTITY: pl.Int64, TIME: pl.Datetime("us"), "Card": pl.Int64,
            "Amount": pl.Float64, "Use Chip": CARD_USE_CHIP, "Merchant Name": pl.Int64,
            "Merchant City": pl.Categorical(), "Merchant State": pl.Categorical(), "Errors?": pl.Categorical(),
            "Zip": pl.Int64, "MCC": pl.Int64,
            "Is Fraud?": pl.Int8,
        }
    )  # fmt: skip
    assert (schema.source, schema.task, schema.labels) == ("card", "classification", ("Is Fraud?",))
    assert schema.time_bins == 10
    assert schema.time_features == ("hour", "weekday", "gap")
    assert [(f.name, f.kind, f.n_bins) for f in schema.fields if f.kind == "numeric"] == [("Amount", "numeric", 10)]
    assert len(schema.fields) == 9


def test_card_gzip_and_parquet_match_csv(card_table, tmp_path):
    gz = tmp_path / "cards.csv.gz"
    with open(CARD_FILE, "rb") as source, gzip.open(gz, "wb") as target:
        shutil.copyfileobj(source, target)
    assert read_card(gz).frame.equals(card_table.frame)
    as_text = tmp_path / "text.parquet"
    pl.read_csv(CARD_FILE, infer_schema=False).write_parquet(as_text)
    assert read_card(as_text).frame.equals(card_table.frame)
    typed = tmp_path / "typed.parquet"  # inferred types: integer ids, float Zip
    pl.read_csv(CARD_FILE, infer_schema_length=None).write_parquet(typed)
    assert read_card(typed).frame.equals(card_table.frame)


def test_card_columns_in_another_order(card_table, tmp_path):
    raw = pl.read_csv(CARD_FILE, infer_schema=False)
    reordered = tmp_path / "reordered.csv"
    raw.select(raw.columns[::-1]).write_csv(reordered)
    assert read_card(reordered).frame.equals(card_table.frame)


def test_card_quoted_empty_text_is_missing(tmp_path):
    empty = [(2, "Merchant City", ""), (2, "Merchant State", ""), (2, "Zip", ""), (3, "Errors?", "")]
    plain = read_card(_card_csv(tmp_path, *empty, name="plain.csv")).frame
    quoted = read_card(_card_csv(tmp_path, *[(row, column, '""') for row, column, _ in empty], name="quoted.csv")).frame
    assert quoted.equals(plain)
    assert [plain[column][row - 1] for row, column, _ in empty] == [None] * 4


def test_card_missing_and_extra_columns(tmp_path):
    lines = [CARD_HEADER.replace(",MCC", ""), CARD_ROW.replace(",5300", "")]
    path = _write(tmp_path / "missing.csv", lines)
    _raises([str(path), "missing columns ['MCC']"], read_card, path)
    path = _write(tmp_path / "extra.csv", [CARD_HEADER + ",Extra", CARD_ROW + ",1"])
    _raises([str(path), "unexpected columns ['Extra']"], read_card, path)


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("Amount", "$12x", "money"),
        ("Amount", "", "missing value"),
        ("Amount", '""', "missing value"),
        ("Time", "6:21", "HH:MM"),
        ("Time", "24:00", "HH:MM"),
        ("Day", "31", "day that exists"),  # September 31st
        ("Month", "13", "month"),
        ("Year", "20x2", "year"),
        ("Use Chip", "Tap Transaction", "Swipe Transaction"),
        ("Is Fraud?", "Maybe", "Yes or No"),
        ("User", "u7", "integer"),
        ("Card", "1.5", "integer"),
        ("MCC", "53x0", "integer"),
        ("Merchant Name", "Acme", "integer merchant id"),
        ("Zip", "9175O", "zip code"),
        ("Zip", "91750.5", "zip code"),
    ],
)
def test_card_bad_values_name_file_column_row_value(tmp_path, column, value, expected):
    path = _card_csv(tmp_path, (3, column, value), (4, column, value))
    message = _raises([str(path), f"column {column!r}", "row 3", expected], read_card, path)
    if value.strip('"'):
        assert repr(value) in message


def test_card_leap_days(tmp_path):
    valid = _card_csv(tmp_path, (2, "Year", "2000"), (2, "Month", "2"), (2, "Day", "29"), name="leap.csv")
    assert read_card(valid).frame[TIME][1] == dt.datetime(2000, 2, 29, 6, 21)
    invalid = _card_csv(tmp_path, (2, "Year", "1900"), (2, "Month", "2"), (2, "Day", "29"), name="no_leap.csv")
    _raises([str(invalid), "column 'Day'", "row 2", "'29'"], read_card, invalid)


def test_card_empty_header_only_and_missing_path(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _raises([str(empty), "empty file"], read_card, empty)
    header_only = _write(tmp_path / "header.csv", [CARD_HEADER])
    _raises([str(header_only), "no data rows"], read_card, header_only)
    no_rows = tmp_path / "empty.parquet"
    pl.DataFrame(schema=dict.fromkeys(CARD_COLUMNS, pl.String)).write_parquet(no_rows)
    _raises([str(no_rows), "no data rows"], read_card, no_rows)
    _raises([str(tmp_path / "absent.csv"), "no such file"], read_card, tmp_path / "absent.csv")


def test_card_unreadable_gzip_and_parquet(tmp_path):
    broken_gz = tmp_path / "cards.csv.gz"
    broken_gz.write_bytes(gzip.compress((CARD_HEADER + "\n" + CARD_ROW + "\n").encode())[:20])
    _raises([str(broken_gz)], read_card, broken_gz)
    broken_parquet = tmp_path / "cards.parquet"
    broken_parquet.write_bytes(b"PAR1 this is not parquet")
    _raises([str(broken_parquet), "Parquet"], read_card, broken_parquet)


def test_card_list_of_files_rows_run_on_and_errors_name_the_file(tmp_path):
    first = _card_csv(tmp_path, name="a.csv")
    second = _card_csv(tmp_path, (2, "Amount", "oops"), name="b.csv")
    _raises([str(second), "row 2", "'oops'"], read_card, [first, second])
    table = read_card([first, _card_csv(tmp_path, name="c.csv")])
    assert table.frame[ROW].to_list() == list(range(8))
    assert read_card(tmp_path / "c.csv").rows_kept == 4


# ------------------------------------------------------------------------------------------ prsa


@pytest.fixture(scope="module")
def prsa_table():
    return read_prsa(_need(PRSA_DIR))


def test_prsa_folder_counts(prsa_table):
    assert prsa_table.rows_in == 420_768
    assert prsa_table.rows_kept == 382_168
    assert prsa_table.rows_kept + sum(prsa_table.dropped.values()) == prsa_table.rows_in
    assert all(key.startswith("missing ") for key in prsa_table.dropped)
    assert prsa_table.dropped["missing PM2.5"] > 0
    frame = prsa_table.frame
    assert frame.null_count().sum_horizontal().item() == 0
    assert frame[ENTITY].n_unique() == 12
    assert frame[ROW].is_sorted() and frame[ROW].max() < 420_768
    assert frame[TIME].min() == dt.datetime(2013, 3, 1) and frame[TIME].max() == dt.datetime(2017, 2, 28, 23)
    schema = prsa_table.schema
    assert (schema.source, schema.task, schema.labels) == ("prsa", "regression", ("PM2.5", "PM10"))
    assert (schema.time_features, schema.time_bins) == (("timestamp",), 50)
    assert {f.name: (f.kind, f.n_bins) for f in schema.fields if f.kind == "numeric"} == {
        name: ("numeric", 50) for name in ("SO2", "NO2", "CO", "O3", "TEMP", "PRES", "DEWP", "RAIN", "WSPM")
    }
    assert [f.name for f in schema.fields if f.kind == "categorical"] == ["wd"]
    assert "station" not in frame.columns and frame["wd"].dtype == pl.String


def test_prsa_keep_missing_keeps_rows_missing_inputs(prsa_table):
    kept = read_prsa(PRSA_DIR, keep_missing=True)
    assert kept.rows_in == prsa_table.rows_in
    assert kept.rows_kept > prsa_table.rows_kept
    assert set(kept.dropped) <= {"missing PM2.5", "missing PM10"}
    assert kept.dropped["missing PM2.5"] == prsa_table.dropped["missing PM2.5"]
    assert kept.rows_kept + sum(kept.dropped.values()) == kept.rows_in
    assert kept.frame.select("PM2.5", "PM10").null_count().sum_horizontal().item() == 0
    assert kept.frame["CO"].null_count() > 0 and kept.frame["wd"].null_count() > 0


def test_prsa_integer_then_decimal_column():
    station = _need(PRSA_DIR / "PRSA_Data_Aotizhongxin_20130301-20170228.csv")
    table = read_prsa(station, keep_missing=True)
    assert table.rows_in == 35_064
    reference = pl.read_csv(station, null_values="NA", infer_schema_length=None)["PM2.5"]
    first_decimal = (reference % 1 != 0).arg_true()[0]
    assert first_decimal > 10_000  # a type guess from the first rows would call PM2.5 an integer
    row = table.frame.filter(pl.col(ROW) == first_decimal)
    assert row["PM2.5"].item() == reference[first_decimal] and row["PM2.5"].item() % 1 != 0


def _prsa_csv(path: Path, temp: str = "-0.7") -> Path:
    header = ",".join(f'"{name}"' for name in PRSA_COLUMNS)
    rows = [
        f'1,2013,3,1,0,4,4,4,7,300,77,{temp},1023,-18.8,0,"NNW",4.4,"Tiny"',
        '2,2013,3,1,1,NA,8,4,7,300,77,-1.1,1023.2,-18.2,0,"N",4.7,"Tiny"',
        '3,2013,3,1,2,7,7,NA,7,300,77,-1.1,1023.2,-18.2,0.5,NA,4.7,"Tiny"',
    ]
    return _write(path, [header, *rows], newline="\r\n")


def test_prsa_small_file_crlf_quotes_and_drops(tmp_path):
    folder = tmp_path / "prsa"
    folder.mkdir()
    _prsa_csv(folder / "PRSA_Data_Tiny_2013.csv")
    (folder / "notes.csv").write_text("ignored\n")
    table = read_prsa(folder)
    assert (table.rows_in, table.rows_kept, table.dropped) == (3, 1, {"missing PM2.5": 1, "missing SO2": 1})
    assert table.frame.row(0, named=True)[ENTITY] == "Tiny" and table.frame["wd"].item() == "NNW"
    kept = read_prsa(folder, keep_missing=True)
    assert kept.rows_kept == 2 and kept.frame["wd"].to_list() == ["NNW", None]
    assert kept.frame[TIME].to_list() == [dt.datetime(2013, 3, 1, 0), dt.datetime(2013, 3, 1, 2)]


def test_prsa_bad_value_and_empty_folder(tmp_path):
    bad = _prsa_csv(tmp_path / "PRSA_Data_Bad.csv", temp="warm")
    _raises([str(bad), "column 'TEMP'", "row 1", "'warm'"], read_prsa, bad)
    _raises([str(tmp_path / "empty"), "no such file"], read_prsa, tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    _raises([str(tmp_path / "empty"), "PRSA_Data_*.csv"], read_prsa, tmp_path / "empty")


# --------------------------------------------------------------------------------------- generic

GENERIC_ROWS = [
    "id,region,ts,amount,kind,label,extra",
    "1,north,2020-01-01T08:00:00,10.5,a,fraud,x",
    "1,north,2020-01-01 09:30,NA,b,No,x",
    "2,south,2020-01-02,3,a,1,x",
    "2,south,2020-01-03 10:00:00.250,4,,,x",
    "3,north,1577865600,-1,c,0,x",
]
GENERIC_SCHEMA = {
    "entity": ["id", "region"],
    "time": "ts",
    "categorical": ["kind"],
    "numeric": {"amount": 5},
    "labels": ["label"],
    "positive_values": ["fraud", "1"],
    "time_unit": "s",
}


def _schema_file(path: Path, **keys) -> Path:
    """A schema file (JSON or YAML, by suffix) holding ``keys``."""
    path.write_text(json.dumps(keys) if path.suffix == ".json" else yaml.safe_dump(keys))
    return path


def _generic(tmp_path: Path, rows: list[str] = GENERIC_ROWS, **overrides) -> tuple[Path, Path]:
    """The hand-made CSV (``rows``) and its JSON schema, with ``overrides`` of the schema keys."""
    schema = _schema_file(tmp_path / "schema.json", **{**GENERIC_SCHEMA, **overrides})
    return _write(tmp_path / "data.csv", rows), schema


def test_generic_csv_with_json_schema(tmp_path):
    table = read_generic(*_generic(tmp_path))
    frame = table.frame
    assert (table.rows_in, table.rows_kept, table.dropped) == (5, 4, {"missing label": 1})
    assert frame.columns == [ROW, ENTITY, TIME, "kind", "amount", "label"]
    assert frame[ROW].to_list() == [0, 1, 2, 4]
    assert frame[ENTITY].to_list() == ["1|north", "1|north", "2|south", "3|north"]
    assert frame[TIME].to_list() == [
        dt.datetime(2020, 1, 1, 8),
        dt.datetime(2020, 1, 1, 9, 30),
        dt.datetime(2020, 1, 2),
        dt.datetime(2020, 1, 1, 8),
    ]
    assert frame["amount"].to_list() == [10.5, None, 3.0, -1.0]
    assert frame["label"].dtype == pl.Int8 and frame["label"].to_list() == [1, 0, 1, 0]
    fields = [(f.name, f.kind, f.n_bins) for f in table.schema.fields]
    assert fields == [("kind", "categorical", 10), ("amount", "numeric", 5)]


def test_generic_parquet_with_yaml_schema_and_time_parts(tmp_path):
    data = tmp_path / "data.parquet"
    pl.DataFrame(
        {
            "site": ["a", "a", "b"],
            "year": [2021, 2021, 2021],
            "month": [5, 5, 6],
            "day": [1, 1, 30],
            "hour": [0, 1, 23],
            "wind": ["N", "", "S"],
            "temp": [1.5, float("nan"), 3.0],
            "pm": [10.0, None, 30.0],
        }
    ).write_parquet(data)
    keys = {"entity": "site", "categorical": ["wind"], "numeric": ["temp"]}
    schema = _schema_file(
        tmp_path / "schema.yaml",
        **keys,
        time=["year", "month", "day", "hour"],
        labels=["pm"],
        task="regression",
        time_features=["timestamp"],
    )
    table = read_generic(data, schema)
    assert (table.rows_in, table.rows_kept, table.dropped) == (3, 2, {"missing pm": 1})
    assert table.frame[TIME].to_list() == [dt.datetime(2021, 5, 1, 0), dt.datetime(2021, 6, 30, 23)]
    assert table.frame["pm"].to_list() == [10.0, 30.0]
    assert table.schema.task == "regression" and table.schema.time_features == ("timestamp",)
    unlabelled = read_generic(data, _schema_file(tmp_path / "days.yml", **keys, time=["year", "month", "day"]))
    assert unlabelled.rows_kept == 3 and unlabelled.dropped == {}
    assert unlabelled.frame["wind"].to_list() == ["N", None, "S"]  # empty text is missing
    assert unlabelled.frame["temp"].to_list() == [1.5, None, 3.0]  # NaN is missing


def test_generic_native_datetime_epoch_and_time_format(tmp_path):
    data = tmp_path / "native.parquet"
    pl.DataFrame(
        {"id": [7, 7], "when": [dt.datetime(2022, 1, 1, 12), dt.datetime(2022, 1, 2)], "secs": [0, 86_400], "x": [1, 2]}
    ).write_parquet(data)
    keys = {"entity": "id", "numeric": ["x"]}
    native = read_generic(data, _schema_file(tmp_path / "native.json", **keys, time="when"))
    assert native.frame[TIME].to_list() == [dt.datetime(2022, 1, 1, 12), dt.datetime(2022, 1, 2)]
    assert native.frame[ENTITY].to_list() == ["7", "7"]
    epoch = read_generic(data, _schema_file(tmp_path / "epoch.json", **keys, time="secs", time_unit="s"))
    assert epoch.frame[TIME].to_list() == [dt.datetime(1970, 1, 1), dt.datetime(1970, 1, 2)]
    text = _write(tmp_path / "formatted.csv", ["id,when,x", "1,03/02/2021 14:05,1", "1,04/02/2021 00:00,2"])
    day_first = _schema_file(tmp_path / "fmt.json", **keys, time="when", time_format="%d/%m/%Y %H:%M")
    formatted = read_generic(text, day_first)
    assert formatted.frame[TIME].to_list() == [dt.datetime(2021, 2, 3, 14, 5), dt.datetime(2021, 2, 4)]
    iso = _schema_file(tmp_path / "iso.json", **keys, time="when")
    _raises([str(text), "column 'when'", "row 1", "'03/02/2021 14:05'", "ISO-8601"], read_generic, text, iso)


def test_generic_schema_naming_absent_columns(tmp_path):
    data, schema = _generic(tmp_path, categorical=["kind", "colour"], labels=["target"])
    _raises([str(data), str(schema), "['colour', 'target']"], read_generic, data, schema)


def test_generic_bad_numeric_and_bad_label(tmp_path):
    rows = [*GENERIC_ROWS[:3], GENERIC_ROWS[3].replace(",3,", ",three,"), *GENERIC_ROWS[4:]]
    data, schema = _generic(tmp_path, rows)
    _raises([str(data), "column 'amount'", "row 3", "'three'", "number"], read_generic, data, schema)
    rows = [*GENERIC_ROWS[:2], GENERIC_ROWS[2].replace(",No,", ",maybe,"), *GENERIC_ROWS[3:]]
    data, schema = _generic(tmp_path, rows)
    _raises([str(data), "column 'label'", "row 2", "'maybe'", "class label"], read_generic, data, schema)


def test_generic_invalid_schema_and_missing_entity(tmp_path):
    data, schema = _generic(tmp_path, time=["ts", "id"])
    with pytest.raises(SchemaError, match="schema.json"):
        read_generic(data, schema)
    data, schema = _generic(tmp_path, categorical=["label"])
    with pytest.raises(SchemaError, match="label columns cannot be input fields"):
        read_generic(data, schema)
    rows = [*GENERIC_ROWS[:4], GENERIC_ROWS[4].replace("2,south", "2,"), *GENERIC_ROWS[5:]]
    data, schema = _generic(tmp_path, rows)
    _raises([str(data), "column 'region'", "row 4", "missing value"], read_generic, data, schema)


# ---------------------------------------------------------------------------------------- source


def test_read_source_dispatch(tmp_path):
    cards = _card_csv(tmp_path)
    assert read_source("card", cards).schema.source == "card"
    assert read_source("card", cards, time_features=("hour",)).schema.time_features == ("hour",)
    data, schema = _generic(tmp_path)
    assert read_source("generic", data, schema=schema).rows_kept == 4
    prsa = _prsa_csv(tmp_path / "PRSA_Data_Tiny.csv")
    assert read_source("prsa", prsa, keep_missing=True).rows_kept == 2
    with pytest.raises(TabbertError, match="unknown source"):
        read_source("bank", cards)
    with pytest.raises(TabbertError, match="needs a schema"):
        read_source("generic", data)
    with pytest.raises(TabbertError, match="keep_missing"):
        read_source("card", cards, keep_missing=True)
    with pytest.raises(TabbertError, match="only for 'generic'"):
        read_source("card", cards, schema=schema)


def test_card_without_labels_for_scoring(tmp_path):
    source = tmp_path / "labelled.csv"
    source.write_text(
        "User,Card,Year,Month,Day,Time,Amount,Use Chip,Merchant Name,Merchant City,Merchant State,Zip,MCC,Errors?,Is Fraud?\n"
        "0,0,2002,9,1,06:21,$134.09,Swipe Transaction,3527213246127876953,La Verne,CA,91750.0,5300,,No\n"
    )
    unlabelled = tmp_path / "new.csv"
    unlabelled.write_text("\n".join(line.rsplit(",", 1)[0] for line in source.read_text().splitlines()) + "\n")
    with pytest.raises(DataError, match="missing columns \\['Is Fraud\\?'\\]"):
        read_card(unlabelled)
    table = read_card(unlabelled, require_labels=False)
    assert table.frame["Is Fraud?"].null_count() == 1 and table.frame["Amount"].to_list() == [134.09]
    assert read_card(source, require_labels=False).frame["Is Fraud?"].to_list() == [0]


def test_generic_rows_to_score_need_no_labels(tmp_path):
    data, schema = _generic(tmp_path)
    table = read_generic(data, schema, require_labels=False)
    assert (table.rows_in, table.rows_kept, table.dropped) == (5, 5, {})
    unlabelled = pl.read_csv(data, infer_schema=False).drop("label")
    unlabelled.write_csv(tmp_path / "new.csv")
    with pytest.raises(DataError, match="label"):
        read_generic(tmp_path / "new.csv", schema)
    table = read_generic(tmp_path / "new.csv", schema, require_labels=False)
    assert table.rows_kept == 5 and table.frame["label"].null_count() == 5


def test_epoch_minutes_match_the_calendar():
    # every day from December 1899 into 2012 (1900 is no leap year, 2000 is one), plus the first
    # and last days the readers accept, each at a different time of day
    dates = [dt.date(1899, 12, 1) + dt.timedelta(days=i) for i in range(2 * 1461 + 40000)]
    dates += [dt.date(1, 1, 1), dt.date(1600, 2, 29), dt.date(9999, 12, 31)]
    times = [dt.datetime(d.year, d.month, d.day, i % 24, i * 7 % 60) for i, d in enumerate(dates)]
    # impossible dates and times are null
    impossible = [(2021, 2, 29, 0, 0), (1900, 2, 29, 0, 0), (2020, 4, 31, 0, 0), (2020, 13, 1, 0, 0),
                  (2020, 0, 1, 0, 0), (0, 1, 1, 0, 0), (10000, 1, 1, 0, 0), (2020, 1, 0, 0, 0),
                  (2020, 1, 1, 24, 0), (2020, 1, 1, 0, 60), (2020, 1, 1, -1, 0)]
    parts = [(t.year, t.month, t.day, t.hour, t.minute) for t in times] + impossible
    names = ["year", "month", "day", "hour", "minute"]
    frame = pl.DataFrame(parts, schema={name: pl.Int32 for name in names}, orient="row")
    query = _Query()
    minutes = _epoch_minutes(query, [(name, pl.col(name)) for name in names])
    got = frame.with_columns(**query.parsed).select(minutes).to_series().to_list()
    epoch = dt.datetime(1970, 1, 1)
    assert got == [(t - epoch) // dt.timedelta(minutes=1) for t in times] + [None] * len(impossible)
