"""Pre-training on rows without labels, and preparing labelled rows with a pre-training run's tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tabbert.cli import main
from tabbert.data.preparation import prepare
from tabbert.data.prepared import PreparedDataset
from tabbert.data.sources import read_card
from tabbert.data.synthetic import generate_transactions, write_transactions
from tabbert.data.tokenizer import TabularTokenizer
from tabbert.errors import ArtifactError, DataError, TabbertError
from tabbert.evaluation import evaluate
from tabbert.training.finetune import finetune
from tabbert.training.pretrain import pretrain

TINY_PRETRAIN = dict(size="tiny", batch_size=16, max_steps=2)


def write_cards(path: Path, *, seed: int, labelled: bool, users: int = 6) -> Path:
    """Generated card transactions, with or without the ``Is Fraud?`` column."""
    frame = generate_transactions(users, seed=seed, rows_per_user=120, fraud_rate=0.05)
    write_transactions(frame if labelled else frame.drop("Is Fraud?"), path)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("unlabelled")


@pytest.fixture(scope="module")
def unlabelled(workdir) -> PreparedDataset:
    return prepare("card", write_cards(workdir / "unlabelled.csv", seed=0, labelled=False), workdir / "unlabelled")


@pytest.fixture(scope="module")
def pretrained(workdir, unlabelled) -> Path:
    """A two-step tiny pre-training run on the unlabelled rows."""
    pretrain(unlabelled.path, workdir / "pre", **TINY_PRETRAIN)
    return workdir / "pre"


def test_card_rows_without_labels_prepare_for_pretraining_only(unlabelled, pretrained):
    assert unlabelled.meta["labelled"] is False and unlabelled.labels is None
    assert not (unlabelled.path / "labels.npy").exists()
    assert "positive_rows" not in unlabelled.meta
    assert (pretrained / "model" / "model.safetensors").is_file()
    embeddings = pretrained.parent / "embeddings.parquet"
    assert main(["embed", "--model", str(pretrained), "--data", str(unlabelled.path), "--out", str(embeddings)]) == 0
    assert pl.read_parquet(embeddings).columns == ["start", "entity", "split", "row_id", "last", "mean"]
    surprise = pretrained.parent / "surprise.parquet"
    assert main(["anomaly", "--model", str(pretrained), "--data", str(unlabelled.path), "--out", str(surprise)]) == 0
    assert "label" not in pl.read_parquet(surprise).columns
    with pytest.raises(TabbertError, match=f"{unlabelled.path}: the dataset has no labels"):
        finetune(unlabelled.path, pretrained.parent / "refused", pretrained=pretrained, progress=False)
    assert not (pretrained.parent / "refused").exists()


def test_cli_refuses_to_finetune_or_baseline_without_labels(unlabelled, pretrained, workdir, capsys):
    commands = (["finetune", "--pretrained", str(pretrained)], ["baseline", "--kind", "lightgbm"],
                ["baseline", "--kind", "mlp"])
    for command in commands:
        assert main([*command, "--data", str(unlabelled.path), "--out", str(workdir / "refused")]) == 2
        error = capsys.readouterr().err
        assert str(unlabelled.path) in error and "has no labels" in error


def test_unlabelled_rows_are_read_as_strictly_as_labelled_ones(tmp_path):
    source = write_cards(tmp_path / "cards.csv", seed=0, labelled=False, users=2)
    raw = pl.read_csv(source, infer_schema=False)
    raw.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("$1x")).otherwise("Amount").alias("Amount")
                     ).write_csv(tmp_path / "bad.csv")
    with pytest.raises(DataError, match="Amount.*row 4"):
        prepare("card", tmp_path / "bad.csv", tmp_path / "bad")
    folder = tmp_path / "mixed"
    folder.mkdir()
    raw.write_csv(folder / "a.csv")
    write_cards(folder / "b.csv", seed=1, labelled=True, users=2)
    with pytest.raises(DataError, match="some files hold the label columns \\['Is Fraud\\?'\\] and others do not"):
        prepare("card", folder, tmp_path / "mixed-out")


def generic_cards(tmp_path: Path, *, labelled: bool) -> tuple[Path, Path]:
    """Generated card rows as a generic CSV (labels in ``fraud``, when kept) and its schema."""
    cards = read_card(write_cards(tmp_path / "cards.csv", seed=0, labelled=True)).frame
    frame = cards.select(pl.col("_entity").alias("user"), pl.col("_time").dt.strftime("%Y-%m-%d %H:%M").alias("when"),
                         pl.col("MCC").alias("category"), pl.col("Amount").alias("amount"),
                         pl.col("Is Fraud?").alias("fraud"))
    data = tmp_path / "rows.csv"
    (frame if labelled else frame.drop("fraud")).write_csv(data)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"entity": ["user"], "time": "when", "categorical": ["category"],
                                  "numeric": {"amount": 8}, "labels": ["fraud"]}))
    return data, schema


def test_generic_rows_without_their_label_column_prepare_for_pretraining(tmp_path):
    data, schema = generic_cards(tmp_path, labelled=False)
    dataset = prepare("generic", data, tmp_path / "unlabelled", schema=str(schema), seq_len=5)
    assert dataset.meta["labelled"] is False and dataset.labels is None
    assert dataset.meta["rows_kept"] == dataset.meta["rows_in"] and dataset.meta["dropped"] == {}
    pretrain(dataset.path, tmp_path / "pre", **{**TINY_PRETRAIN, "max_steps": 1})
    with pytest.raises(TabbertError, match="has no labels \\(its rows were read without \\['fraud'\\]\\)"):
        finetune(dataset.path, tmp_path / "ft", encoder="raw", size="tiny", progress=False)
    pl.read_csv(data).with_columns(fraud=pl.lit("0")).write_csv(tmp_path / "half.csv")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.csv").write_bytes(data.read_bytes())
    (folder / "b.csv").write_bytes((tmp_path / "half.csv").read_bytes())
    with pytest.raises(DataError, match="some files hold the label columns"):
        prepare("generic", folder, tmp_path / "mixed", schema=str(schema), seq_len=5)


def test_reused_tokenizer_gives_the_pretraining_ids_and_finetunes(workdir, unlabelled, pretrained):
    labelled_rows = write_cards(workdir / "labelled.csv", seed=0, labelled=True)
    reused = prepare("card", labelled_rows, workdir / "reused", tokenizer=pretrained, split="random")
    assert reused.meta["labelled"] is True and reused.labels is not None
    assert reused.meta["tokenizer_from"] == str(pretrained / "model" / "tokenizer.json")
    np.testing.assert_array_equal(np.asarray(reused.row_ids), np.asarray(unlabelled.row_ids))
    np.testing.assert_array_equal(np.asarray(reused.tokens), np.asarray(unlabelled.tokens))
    assert reused.tokenizer.fingerprint() == unlabelled.tokenizer.fingerprint()
    metrics = finetune(reused.path, workdir / "finetuned", pretrained=pretrained / "model", epochs=1, batch_size=64,
                       progress=False)
    assert metrics["splits"]["test"]["n"] > 0 and metrics["training"]["best_epoch"] == 1


def test_values_the_reused_tokenizer_never_saw_are_unknown(workdir, pretrained):
    other_users = write_cards(workdir / "other.csv", seed=7, labelled=True)
    dataset = prepare("card", other_users, workdir / "other", tokenizer=pretrained / "model")
    tokenizer = TabularTokenizer.load(pretrained / "model")
    field = tokenizer.field_names.index("Merchant Name")
    vocabulary = tokenizer.fields[field].values
    names = read_card(other_users).frame["Merchant Name"].cast(pl.String)
    unseen = int((names.is_not_null() & ~names.is_in(vocabulary)).sum())
    assert unseen > 0 and dataset.meta["unseen"]["Merchant Name"] == unseen
    assert int((np.asarray(dataset.tokens[:, field]) == tokenizer.fields[field].offset).sum()) == unseen


def test_a_tokenizer_of_another_schema_is_refused(tmp_path, workdir, pretrained):
    data, schema = generic_cards(tmp_path, labelled=True)
    with pytest.raises(TabbertError, match="schema does not match the tokenizer's \\(source generic here, card"):
        prepare("generic", data, tmp_path / "generic", schema=str(schema), tokenizer=pretrained)
    with pytest.raises(TabbertError, match="time features \\['hour'\\] here, \\['hour', 'weekday', 'gap'\\]"):
        prepare("card", workdir / "labelled.csv", tmp_path / "card", tokenizer=pretrained, time_features=("hour",))
    with pytest.raises(ArtifactError, match="no tokenizer.json"):
        prepare("card", workdir / "labelled.csv", tmp_path / "card", tokenizer=tmp_path)
    assert not (tmp_path / "generic").exists() and not (tmp_path / "card").exists()


def test_the_card_time_features_follow_the_reused_tokenizer(tmp_path, workdir):
    source = write_cards(tmp_path / "cards.csv", seed=0, labelled=False, users=3)
    fitted = prepare("card", source, tmp_path / "fitted", time_features=("timestamp",))
    fitted.tokenizer.save(tmp_path / "run" / "tokenizer.json")  # a directory holding a tokenizer, as a run's model/
    reused = prepare("card", source, tmp_path / "reused", tokenizer=tmp_path / "run")
    assert reused.tokenizer.schema.time_features == ("timestamp",)
    np.testing.assert_array_equal(np.asarray(reused.tokens), np.asarray(fitted.tokens))


def test_pretrain_unlabelled_users_then_finetune_labelled_ones_end_to_end(tmp_path, capsys):
    users_a = write_cards(tmp_path / "a.csv", seed=1, labelled=False)
    users_b = write_cards(tmp_path / "b.csv", seed=2, labelled=True)
    data_a, data_b, pre, run = (str(tmp_path / name) for name in ("data-a", "data-b", "pre", "run"))
    assert main(["prepare", "--source", "card", "--input", str(users_a), "--out", data_a]) == 0
    assert "none: for pre-training only" in capsys.readouterr().out
    assert main(["pretrain", "--data", data_a, "--out", pre, "--size", "tiny", "--batch-size", "16",
                 "--max-steps", "2"]) == 0
    assert main(["prepare", "--source", "card", "--input", str(users_b), "--out", data_b, "--tokenizer", pre,
                 "--split", "random"]) == 0
    printed = capsys.readouterr().out
    assert "tokenizer reused from" in printed and "for pre-training only" not in printed
    assert main(["finetune", "--data", data_b, "--out", run, "--pretrained", f"{pre}/model", "--epochs", "1"]) == 0
    assert main(["evaluate", "--model", run, "--data", data_b]) == 0
    assert "test" in json.loads((Path(run) / "metrics.json").read_text())["splits"]
    capsys.readouterr()
    assert main(["evaluate", "--model", run, "--data", data_a]) == 2
    assert f"{data_a}: the dataset has no labels" in capsys.readouterr().err
    with pytest.raises(TabbertError, match="has no labels"):
        evaluate(run, data_a)
