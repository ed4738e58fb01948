"""Masked-row surprise: what it computes, that it is causal, and out-of-fold scoring."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from tabbert.anomaly import row_surprise
from tabbert.cli import main
from tabbert.data.preparation import prepare
from tabbert.data.tokenizer import MASK_ID
from tabbert.errors import TabbertError
from tabbert.runs import load_run
from tabbert.training.pretrain import pretrain

SETTINGS = dict(size="tiny", max_steps=2, batch_size=16, save_steps=100, seed=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fraud_cards):
    root = tmp_path_factory.mktemp("anomaly")
    whole = pretrain(fraud_cards.path, root / "whole", mask_rows=True, **SETTINGS)
    folds = [pretrain(fraud_cards.path, root / f"fold{k}", folds=2, fold=k, **SETTINGS) for k in range(2)]
    return root, whole, folds


def test_surprise_is_the_masked_rows_negative_log_likelihood(runs, fraud_cards):
    root, _, _ = runs
    surprise, summary = row_surprise([root / "whole"], fraud_cards.path, progress=False)
    assert surprise.shape == (fraud_cards.n_rows, 1 + len(fraud_cards.tokenizer.fields))
    assert not np.isnan(surprise).any() and (surprise >= 0).all()
    assert np.allclose(surprise[:, 0], surprise[:, 1:].sum(axis=1), rtol=1e-5)
    assert summary["in_sample_rows"] == (fraud_cards.row_splits == 0).sum()

    model = load_run(root / "whole", heads=True).model
    row = int(fraud_cards.entity_offsets[1]) + 4  # the fifth row of the second entity: left-padded history
    ids, mask = fraud_cards.history_tokens(np.array([row]), fraud_cards.seq_len)
    truth = ids[0, -1] - np.asarray(fraud_cards.tokenizer.field_offsets)
    ids[0, -1] = MASK_ID
    with torch.inference_mode():
        logits = model(torch.from_numpy(ids.astype(np.int64)), attention_mask=torch.from_numpy(mask)).field_logits
    expected = [-F.log_softmax(field[0, -1], dim=-1)[value].item() for field, value in zip(logits, truth)]
    assert np.allclose(surprise[row, 1:], expected, atol=1e-4)


def test_surprise_never_looks_ahead(runs, fraud_cards, tmp_path):
    import shutil

    root, _, _ = runs
    copy = tmp_path / "changed-later-rows"
    shutil.copytree(fraud_cards.path, copy)
    tokens = np.array(fraud_cards.tokens)
    first, last = fraud_cards.entity_offsets[0], fraud_cards.entity_offsets[1] - 1
    tokens[last] = tokens[first]  # rewrite the first entity's newest row
    np.save(copy / "tokens.npy", tokens)
    before, _ = row_surprise([root / "whole"], fraud_cards.path, progress=False)
    after, _ = row_surprise([root / "whole"], copy, progress=False)
    assert np.array_equal(before[:last], after[:last])
    assert not np.array_equal(before[last], after[last])


def test_out_of_fold_models_score_the_rows_of_their_fold(runs, fraud_cards):
    root, whole, folds = runs
    assert all(f["train_windows"] < whole["train_windows"] for f in folds)
    assert sum(f["train_windows"] for f in folds) == whole["train_windows"]
    surprise, summary = row_surprise([root / "fold1", root / "fold0"], fraud_cards.path, progress=False)
    assert summary["models"] == 2 and summary["in_sample_rows"] == 0
    in_order, _ = row_surprise([root / "fold0", root / "fold1"], fraud_cards.path, progress=False)
    assert np.array_equal(surprise, in_order)  # the order of the runs does not matter
    # with a random split every entity has training rows: each row is scored by the model that left
    # its entity's fold out of pre-training
    assert summary["mean_of_models_rows"] == 0
    entity_fold = np.repeat(fraud_cards.entity_folds(2), np.diff(fraud_cards.entity_offsets))
    for fold in range(2):
        model = load_run(root / f"fold{fold}", heads=True).model
        row = int(np.flatnonzero((fraud_cards.row_splits == 2) & (entity_fold == fold))[3])
        assert surprise[row, 0] == pytest.approx(_masked_row_surprise(model, fraud_cards, row), rel=1e-4)
    with pytest.raises(TabbertError, match="one run per fold"):
        row_surprise([root / "fold0"], fraud_cards.path, progress=False)
    with pytest.raises(TabbertError, match="one run per fold"):
        row_surprise([root / "whole", root / "fold0"], fraud_cards.path, progress=False)
    with pytest.raises(TabbertError, match="--fold"):
        pretrain(fraud_cards.path, root / "bad", folds=2, **SETTINGS)


def test_entities_no_model_pre_trained_on_get_the_mean_of_the_models(fraud_card_csv, tmp_path):
    data = prepare("card", fraud_card_csv, tmp_path / "entity_split", split="entity", seed=0)
    paths = [tmp_path / f"fold{k}" for k in range(2)]
    for k, path in enumerate(paths):
        pretrain(data.path, path, folds=2, fold=k, **SETTINGS)
    surprise, summary = row_surprise(paths, data.path, progress=False)
    assert summary["mean_of_models_rows"] == (data.row_splits != 0).sum() > 0
    models = [load_run(path, heads=True).model for path in paths]
    entity_fold = np.repeat(data.entity_folds(2), np.diff(data.entity_offsets))
    for fold, model in enumerate(models):  # a training row: the model that left its fold out
        row = int(np.flatnonzero((data.row_splits == 0) & (entity_fold == fold))[5])
        assert surprise[row, 0] == pytest.approx(_masked_row_surprise(model, data, row), rel=1e-4)
    row = int(np.flatnonzero(data.row_splits == 2)[7])  # a test row: the mean of both
    assert surprise[row, 0] == pytest.approx(np.mean([_masked_row_surprise(m, data, row) for m in models]), rel=1e-4)


def _masked_row_surprise(model, data, row: int) -> float:
    ids, mask = data.history_tokens(np.array([row]), data.seq_len)
    truth = ids[0, -1] - np.asarray(data.tokenizer.field_offsets)
    ids[0, -1] = MASK_ID
    with torch.inference_mode():
        logits = model(torch.from_numpy(ids.astype(np.int64)),
                       attention_mask=None if mask is None else torch.from_numpy(mask)).field_logits
    return sum(-F.log_softmax(field[0, -1], dim=-1)[value].item() for field, value in zip(logits, truth))


def test_anomaly_command_writes_each_format(runs, fraud_cards, tmp_path, capsys):
    root, _, _ = runs
    npy, parquet = tmp_path / "s.npy", tmp_path / "s.parquet"
    assert main(["anomaly", "--model", str(root / "whole"), "--data", str(fraud_cards.path), "--out", str(npy)]) == 0
    assert "PR-AUC" in capsys.readouterr().out
    assert np.load(npy).shape == (fraud_cards.n_rows, 1 + len(fraud_cards.tokenizer.fields))
    assert main(["anomaly", "--model", str(root / "whole"), "--data", str(fraud_cards.path), "--out", str(npy)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["anomaly", "--model", str(root / "whole"), "--data", str(fraud_cards.path), "--out", str(parquet),
                 "--split", "test"]) == 0
    frame = pl.read_parquet(parquet)
    assert frame.height == (fraud_cards.row_splits == 2).sum() and set(frame["split"]) == {"test"}
    assert {"row", "entity", "label", "surprise"} <= set(frame.columns)
    assert json.loads(json.dumps(frame["surprise"].to_list()))  # finite numbers


def test_embeddings_follow_the_surprise_columns(runs, fraud_cards):
    root, _, _ = runs
    plain, _ = row_surprise([root / "whole"], fraud_cards.path, split="test", progress=False)
    both, summary = row_surprise([root / "whole"], fraud_cards.path, split="test", embeddings=True, progress=False)
    n_fields = len(fraud_cards.tokenizer.fields)
    hidden = load_run(root / "whole").config.hidden_size
    assert both.shape[1] == 1 + n_fields + hidden and summary["columns"][-1] == f"embedding.{hidden - 1}"
    assert np.allclose(both[:, :1 + n_fields], plain, equal_nan=True, atol=1e-5)
    test = fraud_cards.row_splits == 2
    assert np.isfinite(both[test]).all() and np.isnan(both[~test]).all()
