"""Raw-value codes, causal history features and the row-level LightGBM run."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import polars as pl
import pytest
import torch

from tabbert import anomaly
from tabbert.anomaly import row_surprise
from tabbert.baselines.history import HistoryFeatures
from tabbert.baselines.lightgbm import train_lightgbm
from tabbert.baselines.rows import RowModel
from tabbert.cli import main
from tabbert.data.codes import dense_codes
from tabbert.data.preparation import prepare, prepare_table
from tabbert.data.schema import ENTITY, ROW, TIME, FieldSpec, Table, TableSchema
from tabbert.data.sources import read_source
from tabbert.data.synthetic import generate_transactions, write_transactions
from tabbert.errors import TabbertError
from tabbert.evaluation import evaluate
from tabbert.inference import score_table
from tabbert.models.configuration import TabBertConfig
from tabbert.models.tabbert import TabBertForMaskedFieldModeling
from tabbert.thresholds import ValidationScores, resolve_threshold
from tabbert.training.pretrain import pretrain

# One holder "u": shop x1 and x2 occur once each, below the vocabulary's min_count, so both become
# [UNK] tokens; their raw codes still tell them apart. Rows 4 and 5 share a time.
SHOPS = ["a", "b", "a", "x1", "a", "x2", "b", None]
MINUTES = [0, 30, 100, 200, 1500, 1500, 1600, 1700]
AMOUNTS = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0]
CHANNELS = ["chip", "chip", "web", "chip", "chip", "web", "web", "chip"]


def _hand_table() -> Table:
    start = dt.datetime(2021, 3, 1, 6, 0)
    rows = [{ENTITY: "u", TIME: start + dt.timedelta(minutes=m), "shop": s, "channel": c, "amount": a, "fraud": 0}
            for m, s, c, a in zip(MINUTES, SHOPS, CHANNELS, AMOUNTS)]
    rows += [{ENTITY: "v", TIME: start + dt.timedelta(hours=i), "shop": "a", "channel": "chip", "amount": 1.0,
              "fraud": 0} for i in range(4)]
    frame = pl.DataFrame(rows).with_row_index(ROW)
    frame = frame.with_columns(pl.col(ROW).cast(pl.UInt64), pl.col("fraud").cast(pl.Int8))
    schema = TableSchema(fields=(FieldSpec("shop", "categorical", min_count=2), FieldSpec("channel", "categorical"),
                                 FieldSpec("amount", "numeric", n_bins=2)), labels=("fraud",))
    return Table(frame=frame, schema=schema, path="hand-made", rows_in=frame.height)


@pytest.fixture(scope="module")
def hand_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("history") / "ds"
    return prepare_table(_hand_table(), out, seq_len=2, stride=1, split="random", fractions=(1.0, 0.0, 0.0))


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    """Generated card transactions, prepared with the entity split (no entity in two splits)."""
    folder = tmp_path_factory.mktemp("history-cards")
    write_transactions(generate_transactions(24, seed=1, rows_per_user=150, fraud_rate=0.05), folder / "cards.csv")
    return folder / "cards.csv", prepare("card", folder / "cards.csv", folder / "prepared", seed=2)


def _column(layout: HistoryFeatures, matrix: np.ndarray, name: str) -> np.ndarray:
    return matrix[:, layout.names.index(name)]


def test_dense_codes_keep_every_value_and_code_null_as_minus_one():
    text = pl.Series(["m", None, "k", "m", "z"])
    assert dense_codes(text).tolist() == [1, -1, 0, 1, 2]  # by value: the same for rows in any order
    assert dense_codes(text.reverse()).tolist() == [2, 1, 0, -1, 1]
    wide = pl.Series([10**15, None, -(10**15), 10**15])
    assert dense_codes(wide).tolist() == [1, -1, 0, 1]
    narrow = pl.Series([1608, 99804, 1608, None])
    assert dense_codes(narrow).tolist() == [0, 1, 0, -1]
    categorical = pl.Series(["b", "a", "b"], dtype=pl.Categorical)
    assert dense_codes(categorical).tolist() == [1, 0, 1]
    first_seen_last_in_order = pl.Series(["zq-late", None, "zq-early", "zq-late"], dtype=pl.Categorical)
    assert dense_codes(first_seen_last_in_order).tolist() == [1, -1, 0, 1]
    assert dense_codes(pl.Series([None, None], dtype=pl.String)).tolist() == [-1, -1]


def test_prepared_codes_follow_the_raw_values(hand_data):
    assert hand_data.code_fields == ["shop", "channel"]
    codes = np.asarray(hand_data.codes)
    assert codes.shape == (hand_data.n_rows, 2) and codes.dtype == np.int32
    shops = codes[:8, 0]  # holder "u" first, in time order
    assert shops[7] == -1
    assert shops[0] == shops[2] == shops[4] and shops[1] == shops[6]
    assert len({shops[0], shops[1], shops[3], shops[5]}) == 4  # x1 and x2 apart, though both are [UNK]
    unk = hand_data.tokenizer.fields[0].offset  # local id 0: [UNK]
    assert hand_data.tokens[3, 0] == hand_data.tokens[5, 0] == unk


def test_seen_before_and_windows_on_a_hand_made_table(hand_data):
    layout = HistoryFeatures.fit(hand_data)
    matrix = layout.transform(hand_data)[:8]
    nan = np.nan
    np.testing.assert_array_equal(_column(layout, matrix, "shop.seen_before"), [0, 0, 1, 0, 2, 0, 1, nan])
    expected_since = np.array([nan, nan, 100, nan, 1400, nan, 1570, nan]) * 60
    np.testing.assert_array_equal(_column(layout, matrix, "shop.seconds_since_seen"), expected_since)
    np.testing.assert_array_equal(_column(layout, matrix, "rows_so_far"), np.arange(1, 9))
    # last hour, this row included; row 5 shares row 4's time but row 4 never sees row 5
    np.testing.assert_array_equal(_column(layout, matrix, "count_1h"), [1, 2, 1, 1, 1, 2, 1, 1])
    np.testing.assert_array_equal(_column(layout, matrix, "amount.sum_1h"), [10, 30, 30, 40, 50, 110, 70, 80])
    np.testing.assert_array_equal(_column(layout, matrix, "count_1d"), [1, 2, 3, 4, 3, 4, 4, 4])
    earlier = np.array([nan, 10, 15, 20, 25, 30, 35, 40])
    np.testing.assert_allclose(_column(layout, matrix, "amount.earlier_mean"), earlier)
    np.testing.assert_allclose(_column(layout, matrix, "amount.ratio_to_earlier_mean"), np.array(AMOUNTS) / earlier)
    std = np.array([nan, nan] + [np.std(AMOUNTS[:k]) for k in range(2, 8)])
    np.testing.assert_allclose(_column(layout, matrix, "amount.z_vs_earlier"), (np.array(AMOUNTS) - earlier) / std,
                               rtol=1e-5)
    # "chip" is the most common channel on the training rows: "web" rows are unusual
    np.testing.assert_array_equal(_column(layout, matrix, "channel.unusual_so_far"), [0, 0, 1, 1, 1, 2, 3, 3])
    np.testing.assert_array_equal(_column(layout, matrix, "hour"), [6, 6, 7, 9, 7, 7, 8, 10])
    assert _column(layout, matrix, "seconds_since_previous")[4:6].tolist() == [1300 * 60, 0]
    assert [layout.names[k] for k in layout.categorical] == ["shop.token", "channel.token"]
    for j, name in enumerate(("shop", "channel")):
        local = np.asarray(hand_data.tokens[:8, j]) - hand_data.tokenizer.fields[j].offset
        np.testing.assert_array_equal(_column(layout, matrix, f"{name}.token"), local)


def test_features_are_causal(cards):
    _, data = cards
    layout = HistoryFeatures.fit(data)
    arrays = [np.array(a) for a in (data.codes, data.values, data.times, data.tokens, data.entity_offsets)]
    before = layout.compute(*arrays)
    codes, values, times, tokens, offsets = arrays
    row = int(offsets[3]) + 40  # a row of the fourth entity; everything after it in the entity changes
    end = int(offsets[4])
    rng = np.random.default_rng(0)
    codes[row + 1:end] = rng.integers(0, 50, size=codes[row + 1:end].shape)
    values[row + 1:end] *= 7.0
    tokens[row + 1:end] = tokens[rng.integers(0, len(tokens), end - row - 1)]
    times[row + 1] = times[row]  # a later row at the same time
    after = layout.compute(codes, values, times, tokens, offsets)
    np.testing.assert_array_equal(after[:row + 1], before[:row + 1])
    assert not np.array_equal(after[row + 1:end], before[row + 1:end], equal_nan=True)


def test_row_lightgbm_trains_evaluates_and_predicts_alike(cards, tmp_path):
    csv, data = cards
    run = tmp_path / "run"
    metrics = train_lightgbm(data.path, run, seed=0, threads=1, rounds=60, negative_rate=0.5, label_fraction=0.5,
                             plots=False)
    sampling = metrics["training"]["sampling"]
    assert sampling["negative_rate"] == 0.5 and sampling["label_fraction"] == 0.5
    assert sampling["labelled_entities"] == round(0.5 * sampling["training_entities"])
    split = data.row_splits
    assert metrics["splits"]["test"]["n"] == int((split == 2).sum())  # every test row, none subsampled
    assert metrics["options"]["features"] == "history" and "label_mode" not in metrics["options"]
    assert {"model.txt", "features.json", "tokenizer.json"} <= {p.name for p in run.iterdir()}

    result = evaluate(run, data.path, "test")
    assert result["pr_auc"] == metrics["splits"]["test"]["pr_auc"]
    assert result["confusion_matrix"] == metrics["splits"]["test"]["confusion_matrix"]

    test_entities = {key for key, s in zip(data.entities, split[data.entity_offsets[:-1]]) if s == 2}
    frame = read_source("card", csv).frame
    frame = frame.filter(pl.col(ENTITY).cast(pl.String).is_in(test_entities))
    predicted = score_table(run, frame).scores
    model = RowModel.load(run)
    test_rows = np.flatnonzero(split == 2)
    expected = model.scores(model.inputs.of_dataset(data)[test_rows])
    by_row = dict(zip(predicted["row"].to_list(), predicted["score"].to_list()))
    np.testing.assert_array_equal([by_row[r] for r in np.asarray(data.row_ids)[test_rows]], expected)
    assert predicted["predicted"].to_list() == (predicted["score"] >= metrics["threshold"]).cast(pl.Int8).to_list()

    # threshold specs resolve on the validation scores the run stores, as for fine-tuned runs
    stored = ValidationScores.load(run)
    assert stored.scores.size == metrics["splits"]["val"]["n"]
    by_fpr = evaluate(run, data.path, "test", threshold="fpr:0.01")
    expected_threshold = resolve_threshold("fpr:0.01", stored)
    assert (by_fpr["threshold"], by_fpr["threshold_spec"]) == (expected_threshold.value, "fpr:0.01")
    flagged = score_table(run, frame, threshold="fpr:0.01").scores
    assert flagged["predicted"].to_list() == (flagged["score"] >= expected_threshold.value).cast(pl.Int8).to_list()


def test_embeddings_and_extra_features_are_appended(cards, tmp_path):
    csv, data = cards
    config = TabBertConfig.for_tokenizer(data.tokenizer, "tiny", seq_len=data.seq_len)
    torch.manual_seed(0)
    encoder = tmp_path / "pretrain" / "model"
    TabBertForMaskedFieldModeling(config).save_pretrained(encoder)
    data.tokenizer.save(encoder / "tokenizer.json")
    extra = tmp_path / "extra.npy"
    np.save(extra, np.arange(data.n_rows * 2, dtype=np.float32).reshape(-1, 2))
    run = tmp_path / "run"
    metrics = train_lightgbm(data.path, run, threads=1, rounds=20, embeddings=str(encoder), extra_features=str(extra),
                             device="cpu", plots=False)
    names = json.loads((run / "features.json").read_text())["names"]
    assert names[-2:] == ["extra.0", "extra.1"] and f"embedding.{config.hidden_size - 1}" in names
    assert metrics["training"]["features"]["count"] == len(names)
    assert evaluate(run, data.path, "val")["pr_auc"] == metrics["splits"]["val"]["pr_auc"]
    with pytest.raises(TabbertError, match="extra features"):
        score_table(run, csv)


def test_surprise_of_pre_trained_folds_is_appended_and_predicted_alike(cards, tmp_path, monkeypatch):
    csv, data = cards
    folds = [tmp_path / f"fold{k}" for k in range(2)]
    for k, fold in enumerate(folds):
        pretrain(data.path, fold, size="tiny", objective="causal", folds=2, fold=k, max_steps=2, batch_size=16,
                 seed=0, threads=1)
    run = tmp_path / "run"
    assert main(["baseline", "--data", str(data.path), "--kind", "lightgbm", "--out", str(run), "--threads", "1",
                 "--rounds", "20", "--surprise", *map(str, folds)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    names = json.loads((run / "features.json").read_text())["names"]
    hidden_size = TabBertConfig.from_pretrained(folds[0] / "model").hidden_size
    assert {"surprise", "surprise.Merchant Name", f"expectation.{hidden_size - 1}"} <= set(names)
    assert metrics["training"]["features"]["count"] == len(names)

    # the surprise computed before gives the same run
    surprise, _ = row_surprise(folds, data.path, embeddings=True, progress=False)
    np.save(tmp_path / "surprise.npy", surprise)
    again = train_lightgbm(data.path, tmp_path / "again", threads=1, rounds=20, surprise=tuple(map(str, folds)),
                           surprise_features=str(tmp_path / "surprise.npy"), plots=False)
    assert again["splits"]["test"]["pr_auc"] == metrics["splits"]["test"]["pr_auc"]

    # predict on the test entities' raw rows scores what evaluate scores: neither fold model saw them
    split = data.row_splits
    test_entities = {key for key, s in zip(data.entities, split[data.entity_offsets[:-1]]) if s == 2}
    frame = read_source("card", csv).frame.filter(pl.col(ENTITY).cast(pl.String).is_in(test_entities))
    predicted = score_table(run, frame).scores
    by_row = dict(zip(predicted["row"].to_list(), predicted["score"].to_list()))
    test_rows = np.flatnonzero(split == 2)
    model = RowModel.load(run)
    expected = model.scores(model.inputs.of_dataset(data)[test_rows])
    np.testing.assert_allclose([by_row[r] for r in np.asarray(data.row_ids)[test_rows]], expected, rtol=1e-6)
    scored_splits = []  # evaluate computes the surprise of the evaluated split's rows only
    def recording(*args, **options):
        scored_splits.append(options["split"])
        return row_surprise(*args, **options)

    monkeypatch.setattr(anomaly, "row_surprise", recording)
    assert evaluate(run, data.path, "test")["pr_auc"] == metrics["splits"]["test"]["pr_auc"]
    assert scored_splits == ["test"]

    # --surprise-only: the total and per-field surprise without the expectation, on both paths
    only = train_lightgbm(data.path, tmp_path / "only", threads=1, rounds=20, surprise=tuple(map(str, folds)),
                          surprise_only=True, surprise_features=str(tmp_path / "surprise.npy"), plots=False)
    names = json.loads((tmp_path / "only" / "features.json").read_text())["names"]
    fields = data.tokenizer.field_names
    assert names[-1 - len(fields):] == ["surprise", *(f"surprise.{field}" for field in fields)]
    assert evaluate(tmp_path / "only", data.path, "test")["pr_auc"] == only["splits"]["test"]["pr_auc"]
    assert score_table(tmp_path / "only", frame).scores.height == frame.height


def test_cli_history_baseline_and_options(cards, tmp_path, capsys):
    _, data = cards
    out = tmp_path / "run"
    args = ["baseline", "--data", str(data.path), "--kind", "lightgbm", "--out", str(out), "--threads", "1",
            "--rounds", "20", "--negative-rate", "0.2"]
    assert main(args) == 0
    assert "rows/s" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["training"]["sampling"]["negative_rate"] == 0.2
    bad = ["baseline", "--data", str(data.path), "--kind", "lightgbm", "--out", str(tmp_path / "x"),
           "--features", "window", "--label-fraction", "0.5"]
    assert main(bad) == 2
    assert "apply to --features history" in capsys.readouterr().err
