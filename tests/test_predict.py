"""Scoring raw rows: windows ending at each row, padding, order, unseen categories, bad input."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import numpy as np
import polars as pl
import pytest
import torch
from conftest import with_tied_times

from tabbert.cli import main
from tabbert.data.preparation import prepare
from tabbert.data.schema import ENTITY, ROW, TIME
from tabbert.data.sources import read_card
from tabbert.data.tokenizer import PAD_ID
from tabbert.errors import ArtifactError, DataError, TabbertError
from tabbert.evaluation import score_points
from tabbert.inference import predict, score_table
from tabbert.models.classifier import TabBertForSequenceClassification, save_classifier
from tabbert.models.configuration import TabBertConfig
from tabbert.models.tabbert import TabBertModel
from tabbert.runs import load_run
from tabbert.thresholds import ValidationScores, resolve_threshold

SEQ_LEN = 10
CARD_OUTPUT = ["row", "entity", "User", "Card", "Year", "Month", "Day", "Time", "Amount", "Merchant Name", "Is Fraud?",
               "score", "history_rows", "padded", "predicted"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("predict")


@pytest.fixture(scope="module")
def model_dir(workdir, fraud_cards):
    """A tiny (untrained) classifier saved as a fine-tuning run saves it, with a threshold."""
    assert fraud_cards.seq_len == SEQ_LEN
    tokenizer = fraud_cards.tokenizer
    config = TabBertConfig.for_tokenizer(tokenizer, "tiny", seq_len=SEQ_LEN)
    torch.manual_seed(0)
    model = TabBertForSequenceClassification.from_encoder(TabBertModel(config), seq_len=SEQ_LEN, threshold=0.5)
    return save_classifier(model, tokenizer, workdir / "run" / "model")


@pytest.fixture(scope="module")
def scored(model_dir, fraud_card_csv):
    return score_table(model_dir.parent, fraud_card_csv)


def test_one_row_per_input_row_in_input_order(scored, fraud_card_csv):
    raw = pl.read_csv(fraud_card_csv, infer_schema=False)
    scores = scored.scores
    assert scores.columns == CARD_OUTPUT
    assert scores.height == raw.height
    assert scores["row"].to_list() == list(range(raw.height))
    assert scores["entity"].cast(pl.String).to_list() == raw["User"].to_list()
    for column in ("User", "Card", "Year", "Month", "Day", "Time", "Merchant Name"):
        assert scores[column].cast(pl.String).to_list() == raw[column].to_list(), column
    assert scores["Amount"].to_list() == [float(amount.lstrip("$")) for amount in raw["Amount"]]
    assert scores["Is Fraud?"].to_list() == [int(label == "Yes") for label in raw["Is Fraud?"]]
    assert scores["score"].is_between(0.0, 1.0).all()
    assert (scores["predicted"] == (scores["score"] >= 0.5).cast(pl.Int8)).all()


def test_shuffled_frame_keeps_its_order_and_scores(model_dir, fraud_card_csv, scored):
    frame = read_card(fraud_card_csv).frame
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=1)
    again = predict(model_dir, shuffled)
    assert again["row"].to_list() == shuffled[ROW].to_list()
    by_row = dict(zip(scored.scores["row"].to_list(), scored.scores["score"].to_list()))
    assert np.allclose(again["score"].to_numpy(), [by_row[r] for r in again["row"].to_list()], atol=1e-6)


def test_scores_do_not_depend_on_the_input_order_where_times_tie(model_dir, fraud_card_csv):
    """Rows of one entity at one time are read in the order of their values, not of the input."""
    frame = with_tied_times(read_card(fraud_card_csv).frame).drop(ROW)  # rows numbered by their place
    assert frame.group_by([ENTITY, TIME]).len()["len"].max() > 1
    permutation = np.random.default_rng(3).permutation(frame.height)
    scores = predict(model_dir, frame)
    again = predict(model_dir, frame[permutation])
    np.testing.assert_array_equal(again["score"].to_numpy(), scores["score"].to_numpy()[permutation])
    np.testing.assert_array_equal(again["history_rows"].to_numpy(), scores["history_rows"].to_numpy()[permutation])


def test_short_histories_are_padded_and_flagged(scored, fraud_card_csv, model_dir, fraud_cards):
    frame = read_card(fraud_card_csv).frame.with_columns(
        (pl.int_range(pl.len()).over(ENTITY, order_by=[TIME, ROW]) + 1).alias("expected")
    )
    scores = scored.scores
    assert scores["history_rows"].to_list() == frame["expected"].to_list()
    assert (scores["padded"] == (scores["history_rows"] < SEQ_LEN)).all()
    assert scored.padded_rows == scored.entities * (SEQ_LEN - 1) == 10 * (SEQ_LEN - 1)

    # the third row of the first entity: seven [PAD] rows, masked, then its three real rows
    model = load_run(model_dir).model
    first = fraud_cards.entity_offsets[0]
    ids = np.full((1, SEQ_LEN, fraud_cards.tokens.shape[1]), PAD_ID, dtype=np.int64)
    ids[0, -3:] = fraud_cards.tokens[first:first + 3]
    mask = torch.tensor([[0] * (SEQ_LEN - 3) + [1] * 3])
    with torch.inference_mode():
        expected = model.scores(model(torch.from_numpy(ids), attention_mask=mask).logits).item()
    row = int(fraud_cards.row_ids[first + 2])
    assert scores.filter(pl.col("row") == row)["history_rows"].item() == 3
    assert scores.filter(pl.col("row") == row)["score"].item() == pytest.approx(expected, abs=1e-6)


def test_full_history_scores_match_the_prepared_windows(scored, model_dir, fraud_cards):
    model = load_run(model_dir).model
    starts = np.concatenate([fraud_cards.windows(split) for split in ("train", "val", "test")])
    expected = score_points(model, fraud_cards, starts + SEQ_LEN - 1)
    newest_rows = fraud_cards.row_ids[starts + SEQ_LEN - 1]
    by_row = scored.scores.sort("row")
    assert np.allclose(by_row["score"].to_numpy()[newest_rows], expected, atol=1e-5)
    assert not by_row["padded"].to_numpy()[newest_rows].any()


def test_unseen_categories_are_counted(workdir, model_dir, fraud_card_csv, scored):
    assert set(scored.unseen) == {"Card", "Use Chip", "Merchant Name", "Merchant City", "Merchant State", "Zip",
                                  "MCC", "Errors?"}
    assert not any(scored.unseen.values())
    raw = pl.read_csv(fraud_card_csv, infer_schema=False)
    changed = raw.with_columns(
        pl.when(pl.int_range(pl.len()) < 7).then(pl.lit("123456789")).otherwise(pl.col("Merchant Name"))
        .alias("Merchant Name"),
        pl.when(pl.int_range(pl.len()) < 2).then(pl.lit("Atlantis")).otherwise(pl.col("Merchant City"))
        .alias("Merchant City"),
    )
    path = workdir / "unseen.csv"
    changed.write_csv(path)
    prediction = score_table(model_dir, path)
    assert prediction.unseen["Merchant Name"] == 7
    assert prediction.unseen["Merchant City"] == 2
    assert prediction.unseen["MCC"] == 0


# ------------------------------------------------------------------------------------------ bad input


def test_missing_columns(workdir, model_dir, fraud_card_csv):
    path = workdir / "no-mcc.csv"
    pl.read_csv(fraud_card_csv, infer_schema=False).drop("MCC").write_csv(path)
    with pytest.raises(DataError, match="MCC"):
        predict(model_dir, path)
    frame = read_card(fraud_card_csv).frame.drop("Amount")
    with pytest.raises(DataError, match="column 'Amount'"):
        predict(model_dir, frame)


def test_input_for_another_schema(model_dir):
    frame = pl.DataFrame({ENTITY: ["a"], TIME: [dt.datetime(2020, 1, 1)], "temp": [1.0]})
    with pytest.raises(DataError, match="that the model needs are missing"):
        predict(model_dir, frame)


def test_empty_input(workdir, model_dir, fraud_card_csv):
    path = workdir / "empty.csv"
    path.write_text(fraud_card_csv.read_text().splitlines()[0] + "\n")
    with pytest.raises(DataError, match="no data rows"):
        predict(model_dir, path)
    with pytest.raises(DataError, match="no rows to score"):
        predict(model_dir, read_card(fraud_card_csv).frame.head(0))


def test_corrupt_model(workdir, model_dir, fraud_card_csv):
    broken = workdir / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (broken / name).write_bytes((model_dir / name).read_bytes())
    (broken / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="corrupt or incomplete"):
        predict(broken, fraud_card_csv)
    (broken / "tokenizer.json").unlink()
    (broken / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes())
    with pytest.raises(ArtifactError, match="tokenizer"):
        predict(broken, fraud_card_csv)


def test_predict_command(workdir, model_dir, fraud_card_csv, capsys):
    out = workdir / "scores.csv"
    assert main(["predict", "--model", str(model_dir.parent), "--input", str(fraud_card_csv), "--out", str(out)]) == 0
    printed, progress = capsys.readouterr()
    assert "rows scored" in printed and "unseen categories" in printed
    assert "\r" not in progress and progress.count("scoring: ") <= 10
    written = pl.read_csv(out)
    assert written.columns == CARD_OUTPUT
    assert written.height == pl.read_csv(fraud_card_csv, infer_schema=False).height
    assert main(["predict", "--model", str(model_dir), "--input", str(workdir / "none.csv"), "--out", str(out),
                 "--overwrite"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


# ------------------------------------------------------------------------------------------ thresholds


@pytest.fixture(scope="module")
def run_with_validation(workdir, model_dir, fraud_cards):
    """The tiny classifier as a run that stores its validation scores (as fine-tuning does)."""
    run = workdir / "stored"
    shutil.copytree(model_dir, run / "model")
    model = load_run(run).model
    ends = fraud_cards.points("val")
    ValidationScores(score_points(model, fraud_cards, ends), fraud_cards.point_labels(ends, SEQ_LEN, "last"),
                     fraud_cards.times[ends]).save(run)
    return run


def test_threshold_specs_resolve_on_the_stored_validation_scores(run_with_validation, fraud_card_csv):
    prediction = score_table(run_with_validation, fraud_card_csv, threshold="fpr:0.2")
    expected = resolve_threshold("fpr:0.2", ValidationScores.load(run_with_validation))
    assert prediction.threshold == expected and expected.value != 0.5
    scores = prediction.scores
    assert (scores["predicted"] == (scores["score"] >= expected.value).cast(pl.Int8)).all()
    labels, flagged = scores["Is Fraud?"].to_numpy(), scores["predicted"].to_numpy()
    metrics = prediction.metrics
    assert metrics["threshold"] == expected.value and metrics["n"] == scores.height
    assert metrics["confusion_matrix"][1][1] == int(np.sum(labels & flagged))
    assert metrics["recall_at_0.1pct_fpr"] is not None and metrics["precision_at_1pct_fpr"] is not None
    assert score_table(run_with_validation, fraud_card_csv).threshold.spec == "best-f1"  # the model's saved 0.5


def test_threshold_specs_without_stored_scores(model_dir, fraud_card_csv):
    given = score_table(model_dir, fraud_card_csv, threshold="0.25")
    assert (given.threshold.value, given.threshold.source) == (0.25, "given")
    assert (given.scores["predicted"] == (given.scores["score"] >= 0.25).cast(pl.Int8)).all()
    with pytest.raises(TabbertError, match="needs validation scores, and none are stored"):
        predict(model_dir, fraud_card_csv, threshold="alerts:10")


def test_predict_command_prints_the_figures_of_labelled_input(workdir, run_with_validation, fraud_card_csv, capsys):
    out = workdir / "flagged.csv"
    command = ["predict", "--model", str(run_with_validation), "--input", str(fraud_card_csv), "--out", str(out)]
    assert main([*command, "--threshold", "alerts:1"]) == 0
    printed = capsys.readouterr().out
    assert "alerts:1" in printed and "alerts per day on validation" in printed
    assert "labelled input" in printed and "precision_at_0.1pct_fpr" in printed
    unlabelled = workdir / "unlabelled.csv"
    pl.read_csv(fraud_card_csv, infer_schema=False).drop("Is Fraud?").write_csv(unlabelled)
    assert main([*command[:4], str(unlabelled), "--out", str(out), "--overwrite"]) == 0
    assert "labelled input" not in capsys.readouterr().out
    assert pl.read_csv(out).columns == [name for name in CARD_OUTPUT if name != "Is Fraud?"]


# ------------------------------------------------------------------------------------------ generic input


def test_generic_input_keeps_its_entity_and_time_columns(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    raw = pl.DataFrame({
        "site": np.repeat(["north", "south", "east"], n // 3),
        "entity": np.tile(["7", "8"], n // 2),  # a column that predict's own entity column must not hide
        "ts": [f"2021-03-{1 + i // 24:02d} {i % 24:02d}:15:00" for i in range(n)],
        "shop": rng.choice(["a", "b", "c"], n),
        "amount": rng.normal(10, 3, n).round(2),
        "fraud": (np.arange(n) % 7 == 0).astype(int),
    })
    path = tmp_path / "rows.csv"
    raw.write_csv(path)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"entity": ["site", "entity"], "time": "ts", "categorical": ["shop"],
                                  "numeric": {"amount": 4}, "labels": ["fraud"]}))
    data = prepare("generic", path, tmp_path / "data", schema=str(schema), seq_len=4, stride=2, split="random")
    config = TabBertConfig.for_tokenizer(data.tokenizer, "tiny", seq_len=4)
    model = TabBertForSequenceClassification.from_encoder(TabBertModel(config), seq_len=4)
    save_classifier(model, data.tokenizer, tmp_path / "run" / "model")

    scores = predict(tmp_path / "run", path, schema=schema)
    assert scores.columns == ["row", "entity", "site", "input_entity", "ts", "fraud", "score", "history_rows",
                              "padded"]  # no threshold saved or stored: no predicted column
    for column in ("site", "ts"):
        assert scores[column].to_list() == raw[column].to_list()
    assert scores["input_entity"].to_list() == raw["entity"].to_list()
    assert scores["entity"].to_list() == [f"{site}|{key}" for site, key in zip(raw["site"], raw["entity"])]
    assert scores["fraud"].to_list() == raw["fraud"].to_list()
    unlabelled = tmp_path / "unlabelled.csv"
    raw.drop("fraud").write_csv(unlabelled)
    assert "fraud" not in predict(tmp_path / "run", unlabelled, schema=schema, threshold=0.5).columns


def test_predict_out_is_a_new_file_unless_overwrite(workdir, model_dir, fraud_card_csv, capsys):
    out = workdir / "kept.csv"
    out.write_text("keep me\n")
    command = ["predict", "--model", str(model_dir), "--input", str(fraud_card_csv), "--out", str(out)]
    assert main(command) == 2
    assert "kept.csv: exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "keep me\n"
    assert main([*command, "--overwrite"]) == 0
    assert "score" in pl.read_csv(out).columns
    capsys.readouterr()
    assert main(["predict", "--model", str(model_dir), "--input", str(fraud_card_csv), "--out", str(workdir),
                 "--overwrite"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "is a directory" in error
