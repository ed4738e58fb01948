"""The built-in transaction generator: format, determinism, realism, fraud episodes, files, CLI."""

from __future__ import annotations

import datetime as dt
import gzip

import numpy as np
import polars as pl
import pytest
from conftest import shared_file

from tabbert.cli import main
from tabbert.data.synthetic import (
    COLUMNS,
    generate_transactions,
    output_format,
    write_transactions,
)
from tabbert.errors import TabbertError

REAL_HEADER = ("User,Card,Year,Month,Day,Time,Amount,Use Chip,Merchant Name,Merchant City,Merchant State,Zip,MCC,"
               "Errors?,Is Fraud?")
ERROR_KINDS = "Bad Card Number|Bad CVV|Bad Expiration|Bad PIN|Bad Zipcode|Insufficient Balance|Technical Glitch"
FORMATS = {
    "User": r"\d+",
    "Card": r"[0-4]",
    "Year": r"(199\d|20[01]\d|2020)",
    "Month": r"([1-9]|1[0-2])",
    "Day": r"([1-9]|[12]\d|3[01])",
    "Time": r"([01]\d|2[0-3]):[0-5]\d",
    "Amount": r"\$-?(0|[1-9]\d*)\.\d\d",
    "Use Chip": r"(Swipe|Chip|Online) Transaction",
    "Merchant Name": r"-?\d{1,19}",
    "Merchant City": r"[A-Z][A-Za-z .]*",
    "Merchant State": r"([A-Z]{2}|[A-Z][A-Za-z ]+)",
    "Zip": r"[1-9]\d{3,4}\.0",
    "MCC": r"\d{4}",
    "Errors?": rf"({ERROR_KINDS})(,({ERROR_KINDS}))*",
    "Is Fraud?": r"(Yes|No)",
}


@pytest.fixture(scope="module")
def sample() -> pl.DataFrame:
    return generate_transactions(30, seed=7, rows_per_user=300)


@pytest.fixture(scope="module")
def fraudulent() -> pl.DataFrame:
    """A sample with a raised fraud rate, so that it holds a few dozen episodes."""
    return generate_transactions(30, seed=11, rows_per_user=300, fraud_rate=0.02)


def with_time(frame: pl.DataFrame) -> pl.DataFrame:
    hour, minute = pl.col("Time").str.slice(0, 2).cast(pl.Int32), pl.col("Time").str.slice(3, 2).cast(pl.Int32)
    return frame.with_columns(t=pl.datetime("Year", "Month", "Day", hour, minute))


def test_same_seed_same_frame_and_other_seed_other_frame():
    first = generate_transactions(6, seed=3, rows_per_user=80)
    assert first.equals(generate_transactions(6, seed=3, rows_per_user=80))
    assert not first.equals(generate_transactions(6, seed=4, rows_per_user=80))


def test_columns_and_dtypes(sample):
    assert sample.columns == list(COLUMNS)
    integers = {"User", "Card", "Year", "Month", "Day", "Merchant Name", "MCC"}
    for name, dtype in sample.schema.items():
        assert dtype == (pl.Int64 if name in integers else pl.String), name


def test_every_value_matches_the_real_format(sample):
    text = sample.with_columns(pl.all().cast(pl.String))
    for name, pattern in FORMATS.items():
        values = text[name].drop_nulls()
        bad = values.filter(~values.str.contains(f"^{pattern}$"))
        assert bad.is_empty(), f"{name}: {bad.head(3).to_list()}"
    required = [c for c in COLUMNS if c not in ("Merchant State", "Zip", "Errors?")]
    assert sample.select(pl.col(required).null_count()).sum_horizontal().item() == 0
    assert sample.select(pl.date("Year", "Month", "Day").max()).item().isoformat() <= "2020-02-28"


def test_online_and_abroad_locations(sample):
    online = sample.filter(pl.col("Use Chip") == "Online Transaction")
    assert online.height > 0
    assert (online["Merchant City"] == "ONLINE").all()
    assert online["Merchant State"].is_null().all() and online["Zip"].is_null().all()
    in_person = sample.filter(pl.col("Use Chip") != "Online Transaction")
    assert (in_person["Merchant City"] != "ONLINE").all()
    assert in_person["Merchant State"].null_count() == 0
    abroad = in_person.filter(pl.col("Merchant State").str.len_chars() > 2)
    assert abroad.height > 0 and abroad["Zip"].is_null().all()
    assert in_person.filter(pl.col("Merchant State").str.len_chars() == 2)["Zip"].null_count() == 0


def test_rows_sorted_by_user_card_time(sample):
    timed = with_time(sample)
    assert timed.select("User", "Card", "t").equals(timed.select("User", "Card", "t").sort("User", "Card", "t"))


def test_calibrated_shares(sample):
    share = sample["Use Chip"].value_counts(normalize=True).to_dict(as_series=False)
    shares = dict(zip(share["Use Chip"], share["proportion"]))
    assert 0.45 < shares["Swipe Transaction"] < 0.8
    assert 0.1 < shares["Chip Transaction"] < 0.4
    assert 0.05 < shares["Online Transaction"] < 0.2
    assert sample.filter(pl.col("Use Chip") == "Chip Transaction")["Year"].min() >= 2014
    assert 0.005 < sample["Errors?"].is_not_null().mean() < 0.04
    assert sample["MCC"].n_unique() > 50


def test_merchants_keep_one_mcc_and_place(sample):
    per_merchant = sample.group_by("Merchant Name").agg(
        pl.col("MCC").n_unique().alias("mcc"), pl.col("Merchant City").n_unique().alias("city"),
        pl.col("Zip").n_unique().alias("zip"),
    )
    assert (per_merchant["mcc"] == 1).all() and (per_merchant["city"] == 1).all() and (per_merchant["zip"] == 1).all()


def test_reversals_are_whole_dollars_and_match_a_purchase(sample):
    negative = sample.filter(pl.col("Amount").str.starts_with("$-"))
    assert 0.005 < negative.height / sample.height < 0.06
    assert negative["Amount"].str.ends_with(".00").all()
    purchases = sample.select("User", "Card", "Merchant Name", Amount=pl.col("Amount").str.replace(r"^\$", "$-"))
    matched = negative.join(purchases.unique(), on=["User", "Card", "Merchant Name", "Amount"], how="semi")
    assert matched.height == negative.height


def test_fraud_rate_follows_the_argument(sample):
    rate = (sample["Is Fraud?"] == "Yes").mean()
    assert 0.001 <= rate <= 0.004
    none = generate_transactions(10, seed=1, rows_per_user=100, fraud_rate=0.0)
    assert (none["Is Fraud?"] == "No").all()


def test_fraud_comes_in_bursts_on_one_card_at_new_merchants(fraudulent):
    rate = (fraudulent["Is Fraud?"] == "Yes").mean()
    assert 0.015 < rate < 0.025
    fraud = with_time(fraudulent).filter(pl.col("Is Fraud?") == "Yes").sort("User", "Card", "t")
    new_episode = (
        (pl.col("User") != pl.col("User").shift()) | (pl.col("Card") != pl.col("Card").shift())
        | ((pl.col("t") - pl.col("t").shift()) > pl.duration(days=4))
    ).fill_null(True)
    episodes = fraud.with_columns(episode=new_episode.cum_sum()).group_by("episode").agg(
        pl.len().alias("rows"), (pl.col("t").max() - pl.col("t").min()).alias("span"),
    )
    assert episodes.height >= 10
    assert episodes["rows"].median() >= 3 and episodes["rows"].max() <= 40
    assert episodes["span"].max() <= dt.timedelta(days=8)
    # the fraudster's merchants are new to the user
    honest = fraudulent.filter(pl.col("Is Fraud?") == "No").select("User", "Merchant Name").unique()
    seen = fraud.join(honest, on=["User", "Merchant Name"], how="semi").height
    assert seen / fraud.height < 0.1
    # fraud is mostly online or away from home
    assert (fraud["Use Chip"] == "Online Transaction").mean() > 0.4


def test_normal_use_goes_on_while_a_card_is_compromised(fraudulent):
    timed = with_time(fraudulent)
    fraud = timed.filter(pl.col("Is Fraud?") == "Yes")
    honest = timed.filter(pl.col("Is Fraud?") == "No")
    around = fraud.join(honest.select("User", pl.col("t").alias("t_honest")), on="User").filter(
        (pl.col("t_honest") - pl.col("t")).abs() <= pl.duration(days=7)
    )
    assert around["User"].n_unique() >= fraud["User"].n_unique() // 2


@pytest.mark.parametrize("suffix", ["csv", "csv.gz", "parquet"])
def test_file_round_trip(tmp_path, sample, suffix):
    path = tmp_path / f"cards.{suffix}"
    write_transactions(sample, path)
    if suffix == "parquet":
        assert pl.read_parquet(path).equals(sample)
    else:
        back = pl.read_csv(path, infer_schema=False)
        assert back.equals(sample.with_columns(pl.all().cast(pl.String)))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_csv_layout_matches_the_real_file(tmp_path, sample):
    frame = sample.head(3).with_columns(
        pl.Series("Errors?", ["Bad PIN,Insufficient Balance", None, "Technical Glitch"])
    )
    path = tmp_path / "cards.csv.gz"
    write_transactions(frame, path)
    lines = gzip.decompress(path.read_bytes()).decode().split("\n")
    assert lines[0] == REAL_HEADER and lines[-1] == ""
    assert lines[1].endswith(',"Bad PIN,Insufficient Balance",' + frame["Is Fraud?"][0])
    assert lines[2].endswith(",," + frame["Is Fraud?"][1]) and '"' not in lines[3]
    with shared_file("ibm_card", "User0_credit_card_transactions.csv").open() as real:
        assert real.readline().rstrip("\n") == REAL_HEADER


def test_failed_write_leaves_nothing_behind(tmp_path, sample):
    target = tmp_path / "taken.csv"
    target.mkdir()
    with pytest.raises(TabbertError, match="cannot write"):
        write_transactions(sample.head(5), target)
    assert [p.name for p in tmp_path.iterdir()] == ["taken.csv"]
    with pytest.raises(TabbertError, match=r"\.csv, \.csv\.gz or \.parquet"):
        output_format(tmp_path / "cards.json")


@pytest.mark.parametrize("arguments", [
    dict(n_users=0), dict(n_users=2, rows_per_user=0), dict(n_users=2, fraud_rate=0.7), dict(n_users=2, seed=-1),
])
def test_invalid_arguments_raise(arguments):
    with pytest.raises(TabbertError):
        generate_transactions(**arguments)


def test_command_line(tmp_path, capsys):
    out = tmp_path / "nested" / "cards.csv"
    args = ["generate-data", "--users", "4", "--rows-per-user", "60", "--seed", "5", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "rows" in printed and "fraud rows" in printed and "rows/s" in printed
    written = pl.read_csv(out, infer_schema=False)
    expected = generate_transactions(4, seed=5, rows_per_user=60).with_columns(pl.all().cast(pl.String))
    assert written.equals(expected)
    assert np.array_equal(np.unique(written["User"].cast(pl.Int64).to_numpy()), np.arange(4))


@pytest.mark.parametrize(("name", "flags"), [
    ("cards.csv", ["--users", "0"]), ("cards.csv", ["--fraud-rate", "2"]), ("cards.txt", []),
])
def test_command_line_rejects_bad_flags(tmp_path, capsys, name, flags):
    assert main(["generate-data", "--out", str(tmp_path / name), *flags]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not list(tmp_path.iterdir())
