import datetime as dt
import json

import lightgbm
import numpy as np
import polars as pl
import pytest
from conftest import make_table, shared_file

from tabbert.baselines.features import WindowFeatures
from tabbert.baselines.lightgbm import lightgbm_names, train_lightgbm
from tabbert.cli import main
from tabbert.data.preparation import prepare, prepare_table
from tabbert.data.schema import ENTITY, ROW, TIME, FieldSpec, Table, TableSchema
from tabbert.data.synthetic import generate_transactions, write_transactions
from tabbert.errors import TabbertError
from tabbert.metrics import UndefinedMetricWarning, classification_metrics

# One card holder, 15 rows. Minutes between rows vary; row 7 has no amount; 17+ merchants make
# "shop" a many-valued field (distinct counts, novelty), "chip" a few-valued one (counts).
GAPS_MINUTES = [0, 30, 90, 10, 600, 45, 5, 120, 60, 15, 240, 20, 35, 400, 50]
AMOUNTS = [12.0, 5.5, 80.0, 3.0, 41.0, 9.0, 17.0, None, 60.0, 2.5, 33.0, 7.0, 120.0, 4.0, 26.0]
CHIPS = ["swipe", "chip", "swipe", "online", "swipe", "chip", "swipe", "swipe",
         "online", "chip", "swipe", "online", "online", "swipe", "chip"]  # fmt: skip
SHOPS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "m9", "m10",
         "m11", "m12", "m11", "m13", "m11"]  # fmt: skip
EXTRA_SHOPS = [f"x{i}" for i in range(8)]  # a second holder, so the vocabulary has > 16 shops


def _hand_table() -> Table:
    start = dt.datetime(2021, 3, 1, 6, 0)  # a Monday
    times = start + np.cumsum(np.array(GAPS_MINUTES)).astype("timedelta64[m]").astype(dt.timedelta)
    rows = [{ENTITY: "u", TIME: t, "chip": c, "shop": s, "amount": a, "fraud": 0}
            for t, c, s, a in zip(times, CHIPS, SHOPS, AMOUNTS)]
    rows += [{ENTITY: "v", TIME: start + dt.timedelta(hours=i), "chip": "swipe", "shop": s, "amount": 1.0, "fraud": 0}
             for i, s in enumerate(EXTRA_SHOPS)]
    frame = pl.DataFrame(rows).with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.UInt64), pl.col("fraud").cast(pl.Int8))
    schema = TableSchema(
        fields=(FieldSpec("chip", "categorical"), FieldSpec("shop", "categorical"), FieldSpec("amount", "numeric", n_bins=4)),
        labels=("fraud",),
    )
    return Table(frame=frame, schema=schema, path="hand-made", rows_in=frame.height)


@pytest.fixture(scope="module")
def hand_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("hand") / "ds"
    return prepare_table(_hand_table(), out, seq_len=5, stride=5, split="random", fractions=(1.0, 0.0, 0.0))


@pytest.fixture(scope="module")
def card_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cards")
    frame = generate_transactions(20, seed=0, rows_per_user=300, fraud_rate=0.02)
    write_transactions(frame, folder / "cards.csv")
    return prepare("card", folder / "cards.csv", folder / "prepared")


def _feature(layout: WindowFeatures, matrix: np.ndarray, name: str) -> np.ndarray:
    return matrix[:, layout.names.index(name)]


def test_window_features_match_hand_computation(hand_data):
    layout = WindowFeatures.from_dataset(hand_data)
    starts = np.array([0, 5, 10])  # holder "u" comes first: rows 0-4, 5-9, 10-14
    matrix = layout.transform(hand_data, starts)
    assert matrix.shape == (3, len(layout.names)) and matrix.dtype == np.float32

    for k, start in enumerate(starts):
        amounts = np.array([a for a in AMOUNTS[start:start + 5] if a is not None])
        expected = [amounts.mean(), amounts.std(), amounts.min(), amounts.max()]
        got = [_feature(layout, matrix, f"amount.{s}")[k] for s in ("mean", "std", "min", "max")]
        np.testing.assert_allclose(got, expected, rtol=1e-5)
        gaps = np.array(GAPS_MINUTES[max(start, 1):start + 5]) * 60.0  # the first row has no gap
        assert _feature(layout, matrix, "gap.mean")[k] == pytest.approx(gaps.mean())
        assert _feature(layout, matrix, "gap.min")[k] == gaps.min()
        assert _feature(layout, matrix, "gap.last")[k] == gaps[-1]
        assert _feature(layout, matrix, "window.span_seconds")[k] == sum(GAPS_MINUTES[start + 1:start + 5]) * 60
        shops, chips = SHOPS[start:start + 5], CHIPS[start:start + 5]
        assert _feature(layout, matrix, "shop.distinct")[k] == len(set(shops))
        assert _feature(layout, matrix, "shop.seen_before")[k] == (shops[-1] in shops[:-1])
        for value in ("swipe", "chip", "online"):
            assert _feature(layout, matrix, f"chip.count[{value}]")[k] == chips.count(value)
        assert _feature(layout, matrix, "chip.count[[MISSING]]")[k] == 0
        chip_vocab = hand_data.tokenizer.fields[hand_data.tokenizer.field_names.index("chip")]
        assert _feature(layout, matrix, "chip.last")[k] == chip_vocab.values.index(chips[-1]) + 2

    # the missing amount (row 7) is skipped, and the last amount of window 0 is row 4's
    assert _feature(layout, matrix, "amount.mean")[1] == pytest.approx(np.mean([9.0, 17.0, 60.0, 2.5]))
    assert _feature(layout, matrix, "amount.last_minus_mean")[0] == pytest.approx(41.0 - np.mean(AMOUNTS[:5]))
    assert _feature(layout, matrix, "amount.max_over_mean")[2] == pytest.approx(120.0 / np.mean(AMOUNTS[10:15]))
    # m11 is bought from three times in the last window: novelty off, 3 distinct shops
    assert _feature(layout, matrix, "shop.distinct")[2] == 3
    # calendar of each window's last row: 2021-03-01 06:00 plus the summed gaps
    last_times = [dt.datetime(2021, 3, 1, 6) + dt.timedelta(minutes=sum(GAPS_MINUTES[:s + 5])) for s in starts]
    assert _feature(layout, matrix, "last.hour").tolist() == [t.hour for t in last_times]
    assert _feature(layout, matrix, "last.weekday").tolist() == [t.weekday() for t in last_times]
    assert _feature(layout, matrix, "last.month").tolist() == [t.month for t in last_times]
    assert [layout.names[i] for i in layout.categorical] == ["chip.last", "shop.last"]


def test_chunked_transform_equals_one_pass(hand_data):
    layout = WindowFeatures.from_dataset(hand_data)
    starts = np.array([0, 3, 5, 10, 7])
    np.testing.assert_array_equal(layout.transform(hand_data, starts, chunk_size=2), layout.transform(hand_data, starts))
    assert layout.transform(hand_data, np.array([], dtype=np.int64)).shape == (0, len(layout.names))
    n_fields, n_values = len(hand_data.tokenizer.fields), len(layout.value_columns)
    no_windows = layout.compute(np.zeros((0, 5, n_fields), np.int32), np.zeros((0, 5, n_values), np.float32),
                                np.zeros((0, 5), np.int64))
    assert no_windows.shape == (0, len(layout.names))


def test_card_features_have_no_nan(card_data):
    layout = WindowFeatures.from_dataset(card_data)
    matrix = layout.transform(card_data, card_data.windows("train"))
    assert not np.isnan(matrix).any()
    assert "Merchant Name.distinct" in layout.names and "Use Chip.count[Online Transaction]" in layout.names
    assert "Errors?.count[[MISSING]]" in layout.names and "Merchant Name.last" in layout.names


def test_lightgbm_names_are_legal_and_unique():
    names = lightgbm_names(["Errors?.count[Bad PIN,Insufficient Balance]", "a b", "a,b", "PM2.5.mean"])
    assert names == ["Errors?.count_Bad_PIN_Insufficient_Balance", "a_b", "a_b_2", "PM2.5.mean"]


def _scores(run, data) -> dict:
    layout = WindowFeatures.from_dataset(data)
    booster = lightgbm.Booster(model_file=str(run / "model.txt"))
    starts = data.windows("test")
    return booster.predict(layout.transform(data, starts)), data.window_labels(starts)


def test_lightgbm_trains_saves_and_reloads(card_data, tmp_path):
    run = tmp_path / "run"
    metrics = train_lightgbm(card_data.path, run, seed=0, threads=1, features="window")
    saved = json.loads((run / "metrics.json").read_text())
    test = metrics["splits"]["test"]
    assert saved["splits"] == metrics["splits"]
    assert test["pr_auc"] > test["positives"] / test["n"]  # beats chance
    assert metrics["training"]["features"]["count"] == len(json.loads((run / "features.json").read_text())["names"])
    assert 0 < len(metrics["training"]["feature_importance"]) <= 20
    for name in ("model.txt", "features.json", "test_pr_curve.png", "val_roc_curve.png"):
        assert (run / name).is_file()
    scores, labels = _scores(run, card_data)
    reloaded = classification_metrics(labels, scores, metrics["threshold"])
    assert reloaded["pr_auc"] == test["pr_auc"]
    assert reloaded["confusion_matrix"] == test["confusion_matrix"]


def test_same_seed_same_model(card_data, tmp_path):
    options = {"seed": 3, "threads": 1, "label_mode": "last", "scale_pos_weight": "balanced", "plots": False,
               "features": "window"}
    one = train_lightgbm(card_data.path, tmp_path / "one", **options)
    two = train_lightgbm(card_data.path, tmp_path / "two", **options)
    assert one["splits"]["val"] == two["splits"]["val"] and one["splits"]["test"] == two["splits"]["test"]
    assert one["options"]["label_mode"] == "last" and one["training"]["scale_pos_weight"] > 1
    assert (tmp_path / "one" / "model.txt").read_bytes() == (tmp_path / "two" / "model.txt").read_bytes()


def test_one_class_training_windows_is_an_error(tmp_path):
    data = prepare_table(make_table({f"e{i}": 20 for i in range(10)}), tmp_path / "ds", split="random")
    with pytest.raises(TabbertError, match="one class only"):
        train_lightgbm(data.path, tmp_path / "run", threads=1)


def test_validation_without_positives_stops_on_log_loss(tmp_path):
    frame = generate_transactions(20, seed=0, rows_per_user=300)  # the default fraud rate: no positive val window
    write_transactions(frame, tmp_path / "cards.csv")
    data = prepare("card", tmp_path / "cards.csv", tmp_path / "ds")
    assert data.meta["positive_windows"]["val"] == 0 < data.meta["positive_windows"]["train"]
    with pytest.warns(UndefinedMetricWarning) as caught:
        metrics = train_lightgbm(data.path, tmp_path / "run", rounds=100, threads=1, plots=False, features="window")
    assert any("validation windows hold one class" in str(w.message) for w in caught)
    assert metrics["training"]["early_stopping_metric"] == "binary_logloss"
    assert metrics["splits"]["val"]["pr_auc"] is None and metrics["splits"]["val"]["positives"] == 0


def test_regression_on_prsa_subset(tmp_path, capsys):
    source = shared_file("prsa", "PRSA_Data_Aotizhongxin_20130301-20170228.csv")
    subset = tmp_path / source.name
    with open(source, "rb") as handle:
        subset.write_bytes(b"".join(handle.readline() for _ in range(2001)))
    data = prepare("prsa", subset, tmp_path / "ds", split="time")
    args = ["baseline", "--data", str(data.path), "--kind", "lightgbm", "--out", str(tmp_path / "run"),
            "--rounds", "60", "--threads", "1"]
    assert main(args) == 0
    assert "rmse_PM2.5" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for split in ("val", "test"):
        for key in ("rmse", "mae", "rmse_PM2.5", "rmse_PM10"):
            assert np.isfinite(metrics["splits"][split][key]) and metrics["splits"][split][key] > 0
    assert set(metrics["training"]["best_iteration"]) == {"PM2.5", "PM10"}
    booster = lightgbm.Booster(model_file=str(tmp_path / "run" / "model-PM10.txt"))
    assert booster.num_feature() == metrics["training"]["features"]["count"]


def test_cli_baseline_lightgbm(card_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["baseline", "--data", str(card_data.path), "--kind", "lightgbm", "--out", str(out), "--threads", "1",
            "--rounds", "50"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "PR-AUC" in printed and "gain share" in printed
    assert json.loads((out / "metrics.json").read_text())["training"]["params"]["rounds"] == 50
    assert main(args) == 2  # the run directory is not empty now
    assert "not empty" in capsys.readouterr().err


@pytest.mark.slow  # loads torch and transformers
def test_cli_baseline_raw_lstm(tmp_path, capsys):
    table = make_table({f"e{i}": 14 for i in range(12)}, positives={f"e{i}": [5] for i in range(0, 12, 2)})
    data = prepare_table(table, tmp_path / "ds", split="random", seed=0)  # both classes in val and test
    args = ["baseline", "--data", str(data.path), "--kind", "lstm", "--out", str(tmp_path / "run"),
            "--epochs", "1", "--size", "tiny", "--device", "cpu"]
    assert main(args) == 0
    assert "best epoch" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["options"]["encoder"] == "raw" and metrics["options"]["head"] == "lstm"
