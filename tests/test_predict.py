"""Scoring raw rows: windows ending at each row, padding, order, unseen categories, bad input."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
import torch

from tabbert.cli import main
from tabbert.data.schema import ENTITY, ROW, TIME
from tabbert.data.sources import read_card
from tabbert.data.tokenizer import PAD_ID
from tabbert.errors import ArtifactError, DataError
from tabbert.evaluation import score_windows
from tabbert.inference import predict, score_table
from tabbert.models.classifier import TabBertForSequenceClassification, save_classifier
from tabbert.models.configuration import TabBertConfig
from tabbert.models.tabbert import TabBertModel
from tabbert.runs import load_run

SEQ_LEN = 10


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
    assert scores.columns == ["row", "entity", "score", "history_rows", "padded", "predicted"]
    assert scores.height == raw.height
    assert scores["row"].to_list() == list(range(raw.height))
    assert scores["entity"].cast(pl.String).to_list() == raw["User"].to_list()
    assert scores["score"].is_between(0.0, 1.0).all()
    assert (scores["predicted"] == (scores["score"] >= 0.5).cast(pl.Int8)).all()


def test_shuffled_frame_keeps_its_order_and_scores(model_dir, fraud_card_csv, scored):
    frame = read_card(fraud_card_csv).frame
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=1)
    again = predict(model_dir, shuffled)
    assert again["row"].to_list() == shuffled[ROW].to_list()
    by_row = dict(zip(scored.scores["row"].to_list(), scored.scores["score"].to_list()))
    assert np.allclose(again["score"].to_numpy(), [by_row[r] for r in again["row"].to_list()], atol=1e-6)


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
    expected = score_windows(model, fraud_cards, starts)
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
    assert written.columns == ["row", "entity", "score", "history_rows", "padded", "predicted"]
    assert written.height == pl.read_csv(fraud_card_csv, infer_schema=False).height
    assert main(["predict", "--model", str(model_dir), "--input", str(workdir / "none.csv"), "--out", str(out),
                 "--overwrite"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_predict_out_is_a_new_file_unless_overwrite(workdir, model_dir, fraud_card_csv, capsys):
    out = workdir / "kept.csv"
    out.write_text("keep me\n")
    command = ["predict", "--model", str(model_dir), "--input", str(fraud_card_csv), "--out", str(out)]
    assert main(command) == 2
    assert "kept.csv: exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "keep me\n"
    assert main([*command, "--overwrite"]) == 0
    assert pl.read_csv(out).columns[:3] == ["row", "entity", "score"]
    capsys.readouterr()
    assert main(["predict", "--model", str(model_dir), "--input", str(fraud_card_csv), "--out", str(workdir),
                 "--overwrite"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "is a directory" in error
