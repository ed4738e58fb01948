"""Reading defects: time columns of digits, schema keys, headers, ragged rows, encodings, ranges."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tabbert.data.preparation import prepare
from tabbert.data.schema import TIME, GenericSchemaFile, SchemaError
from tabbert.data.sources import CARD_COLUMNS, read_card, read_generic, read_prsa
from tabbert.errors import DataError, TabbertError

CARD_HEADER = ",".join(CARD_COLUMNS)
CARD_ROW = "0,0,2002,9,1,06:21,$134.09,Swipe Transaction,3527213246127876953,La Verne,CA,91750.0,5300,,No"
DAYS = ["id,day,x", "a,20240131,1", "a,20240201,2", "b,20240202,3"]


def _schema(path: Path, **keys) -> Path:
    path.write_text(json.dumps({"entity": "id", "time": "day", "numeric": ["x"], **keys}))
    return path


def _lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _cards(tmp_path: Path, rows: list[str], header: str = CARD_HEADER) -> Path:
    return _lines(tmp_path / "cards.csv", [header, *rows])


def _message(call, *args, error=DataError, **kwargs) -> str:
    with pytest.raises(error) as info:
        call(*args, **kwargs)
    return str(info.value)


# ------------------------------------------------------------------------------ time columns


def test_digit_dates_are_never_epoch_seconds(tmp_path):
    data = _lines(tmp_path / "days.csv", DAYS)
    message = _message(read_generic, data, _schema(tmp_path / "plain.json"))
    assert "row 1" in message and "'20240131'" in message and "time_format" in message and "time_unit" in message
    days = read_generic(data, _schema(tmp_path / "days.json", time_format="%Y%m%d"))
    assert days.frame[TIME].to_list() == [dt.datetime(2024, 1, 31), dt.datetime(2024, 2, 1), dt.datetime(2024, 2, 2)]
    epoch = _lines(tmp_path / "epoch.csv", ["id,day,x", "a,86400000,1"])
    millis = read_generic(epoch, _schema(tmp_path / "ms.json", time_unit="ms"))
    assert millis.frame[TIME].to_list() == [dt.datetime(1970, 1, 2)]
    with pytest.raises(SchemaError, match="time_unit must be one of"):
        read_generic(data, _schema(tmp_path / "bad.json", time_unit="days"))
    with pytest.raises(SchemaError, match="not both"):
        read_generic(data, _schema(tmp_path / "both.json", time_unit="s", time_format="%Y%m%d"))


def test_parquet_integer_dates_use_time_format(tmp_path):
    data = tmp_path / "days.parquet"
    pl.DataFrame({"id": ["a", "a"], "day": [20240131, 20240201], "x": [1.0, 2.0]}).write_parquet(data)
    days = read_generic(data, _schema(tmp_path / "days.json", time_format="%Y%m%d"))
    assert days.frame[TIME].to_list() == [dt.datetime(2024, 1, 31), dt.datetime(2024, 2, 1)]
    message = _message(read_generic, data, _schema(tmp_path / "plain.json"), error=SchemaError)
    assert "'day'" in message and "time_unit" in message and "%Y%m%d" in message
    seconds = read_generic(data, _schema(tmp_path / "s.json", time_unit="s"))
    assert seconds.frame[TIME][0] == dt.datetime(1970, 1, 1) + dt.timedelta(seconds=20240131)


def test_hour_on_dates_without_a_time_of_day_is_an_error(tmp_path):
    data = _lines(tmp_path / "days.csv", DAYS)
    schema = _schema(tmp_path / "days.json", time_format="%Y%m%d", time_features=["hour", "gap"])
    message = _message(prepare, "generic", data, tmp_path / "out", schema=schema, seq_len=1, stride=1,
                       error=SchemaError)
    assert "midnight" in message and "time_features: ['gap']" in message
    weekly = ["id,day,x", *(f"a,2024-01-{d:02d} 10:00,{d}" for d in (1, 8, 15, 22))]
    schema = _schema(tmp_path / "weekly.json", time_features=["weekday", "gap"])
    with pytest.warns(UserWarning, match="same weekday"):
        prepare("generic", _lines(tmp_path / "weekly.csv", weekly), tmp_path / "w", schema=schema, seq_len=1, stride=1)


# --------------------------------------------------------------------------------- schema keys


@pytest.mark.parametrize("keys", [{"numeric": {"x": "many"}}, {"time_bins": "x"}, {"min_count": 0}])
def test_non_numeric_bin_counts_are_schema_errors(tmp_path, keys):
    message = _message(GenericSchemaFile.load, _schema(tmp_path / "s.json", **keys), error=SchemaError)
    assert "whole number" in message and "s.json" in message


def test_schema_round_trips_through_its_dict(tmp_path):
    spec = GenericSchemaFile.load(_schema(tmp_path / "s.json", time_format="%Y%m%d", numeric={"x": "7"}))
    assert spec.numeric == {"x": 7}
    assert GenericSchemaFile.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    other = GenericSchemaFile.load(_schema(tmp_path / "t.json", time_unit="s", numeric={"x": 5}))
    assert spec.differences(other) == ["numeric", "time_format", "time_unit"]


# ------------------------------------------------------------------------------ file structure


def test_duplicated_header_columns_are_errors(tmp_path):
    header = CARD_HEADER.replace("Amount", "Amount,Amount")
    cards = _cards(tmp_path, [CARD_ROW.replace("$134.09", "$134.09,$1.00")], header=header)
    assert "'Amount' more than once" in _message(read_card, cards)
    data = _lines(tmp_path / "data.csv", ["id,day,x,x", "a,2024-01-01,1,2"])
    assert "'x' more than once" in _message(read_generic, data, _schema(tmp_path / "s.json"))
    prsa = _lines(tmp_path / "PRSA_Data_X.csv", ["No,No", "1,1"])
    assert "'No' more than once" in _message(read_prsa, prsa)


@pytest.mark.parametrize("edit, fields", [(lambda row: row.rsplit(",", 1)[0], 14), (lambda row: row + ",extra", 16)])
def test_rows_with_another_field_count_name_the_row(tmp_path, edit, fields):
    cards = _cards(tmp_path, [CARD_ROW, edit(CARD_ROW), CARD_ROW])
    message = _message(read_card, cards)
    assert str(cards) in message and "row 2" in message and f"{fields} fields" in message
    # a missing last field that the reader allows to be empty is still found
    short = _lines(tmp_path / "short.csv", ["id,day,x,note", "a,2024-01-01,1,n", "a,2024-01-02,2", "a,2024-01-03,3,"])
    message = _message(read_generic, short, _schema(tmp_path / "s.json"))
    assert "row 2" in message and "3 fields where the header has 4" in message


def test_short_unlabelled_card_row_names_the_row(tmp_path):
    header = CARD_HEADER.rsplit(",", 1)[0]
    row = CARD_ROW.rsplit(",", 1)[0]
    cards = _cards(tmp_path, [row, row.rsplit(",", 1)[0]], header=header)
    assert "row 2" in _message(read_card, cards, require_labels=False)
    assert read_card(_cards(tmp_path, [row, row], header=header), require_labels=False).rows_kept == 2


def test_bytes_that_are_not_utf8_name_the_line(tmp_path):
    cards = tmp_path / "cards.csv"
    latin = CARD_ROW.replace("La Verne", "La V\xe9rne").encode("latin-1")
    cards.write_bytes(f"{CARD_HEADER}\n{CARD_ROW}\n".encode() + latin + b"\n")
    message = _message(read_card, cards)
    assert str(cards) in message and "line 3" in message and "0xe9" in message and "UTF-8" in message
    header = tmp_path / "header.csv"
    header.write_bytes(b"id,d\xffy,x\na,2024-01-01,1\n")
    assert "line 1" in _message(read_generic, header, _schema(tmp_path / "s.json"))


# ------------------------------------------------------------------------------------- values


def test_numbers_beyond_float32_name_the_row(tmp_path):
    cards = _cards(tmp_path, [CARD_ROW, CARD_ROW.replace("$134.09", "$1e308")])
    message = _message(read_card, cards)
    assert "column 'Amount'" in message and "row 2" in message and "'$1e308'" in message
    data = _lines(tmp_path / "data.csv", ["id,day,x", "a,2024-01-01,1", "a,2024-01-02,-1e39"])
    message = _message(read_generic, data, _schema(tmp_path / "s.json"))
    assert "column 'x'" in message and "row 2" in message
    parquet = tmp_path / "big.parquet"
    pl.DataFrame({"id": ["a"], "day": [dt.datetime(2024, 1, 1)], "x": [1e300]}).write_parquet(parquet)
    assert "row 1" in _message(read_generic, parquet, _schema(tmp_path / "s.json"))


def test_card_zip_nan_is_missing_and_bad_values_never_show_internal_names(tmp_path):
    table = read_card(_cards(tmp_path, [CARD_ROW, CARD_ROW.replace("91750.0", "NaN")]))
    assert table.frame["Zip"].to_list() == [91750, None]
    message = _message(read_card, _cards(tmp_path, [CARD_ROW, CARD_ROW.replace("91750.0", "1e30")]))
    assert "__parsed" not in message and "column 'Zip'" in message and "row 2" in message and "'1e30'" in message


# ------------------------------------------------------------------------------------ prepare


def test_seq_len_longer_than_every_entity_is_an_error(tmp_path):
    data = _lines(tmp_path / "data.csv", ["id,day,x", "a,2024-01-01,1", "a,2024-01-02,2", "b,2024-01-01,3"])
    schema = _schema(tmp_path / "s.json", time_features=["gap"])
    with pytest.raises(TabbertError, match="longest, 'a', has 2 rows.*--seq-len 2 or less"):
        prepare("generic", data, tmp_path / "out", schema=schema, seq_len=5, stride=1)


def test_prepare_summary_names_the_window_label_rule(fraud_cards):
    from tabbert.commands.prepare import summary

    assert fraud_cards.meta["positive_window_rule"] == "any"
    assert "positive windows train (any row positive)" in summary(fraud_cards.meta)
    assert np.isfinite(np.load(fraud_cards.path / "values.npy")).sum() > 0


# ------------------------------------------------------------------------------------ predict


def test_predict_reads_rows_with_the_stored_training_schema(tmp_path):
    from tabbert.data.tokenizer import TabularTokenizer
    from tabbert.inference import read_rows

    rows = ["id,day,x,label", *(f"{e},{20240101 + d},{d},{d % 2}" for e in "ab" for d in range(6))]
    data = _lines(tmp_path / "data.csv", rows)
    schema = _schema(tmp_path / "s.json", time_format="%Y%m%d", labels=["label"], time_features=["weekday", "gap"])
    prepared = prepare("generic", data, tmp_path / "prepared", schema=schema, seq_len=2, stride=1, split="random")
    tokenizer = TabularTokenizer.load(prepared.path)
    stored = json.loads((prepared.path / "tokenizer.json").read_text())["schema"]["schema_file"]
    assert stored["time_format"] == "%Y%m%d"
    new = _lines(tmp_path / "new.csv", ["id,day,x", "a,20240301,1", "c,20240302,2"])
    frame, _ = read_rows(new, tokenizer)  # no schema given: the stored one reads the digits as dates
    assert frame[TIME].to_list() == [dt.datetime(2024, 3, 1), dt.datetime(2024, 3, 2)]
    assert read_rows(new, tokenizer, schema=schema)[0].height == 2  # the same schema again is fine
    other = _schema(tmp_path / "other.json", time_unit="s", labels=["label"], time_features=["weekday", "gap"])
    message = _message(read_rows, new, tokenizer, schema=other, error=SchemaError)
    assert "other.json" in message and "['time_format', 'time_unit']" in message
