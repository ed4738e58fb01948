"""Causal (next-row) pre-training, its causal encoder, next-row surprise and fine-tuning from it."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F
from test_pretrain import StopAt

from tabbert.anomaly import next_row_step, next_row_windows, row_surprise
from tabbert.cli import main
from tabbert.data.tokenizer import PAD_ID
from tabbert.errors import TabbertError
from tabbert.models.classifier import TabBertForSequenceClassification
from tabbert.models.tabbert import IGNORE_INDEX, TabBertForNextRowModeling, TabBertModel, next_row_labels
from tabbert.runs import load_run
from tabbert.training.finetune import finetune
from tabbert.training.pretrain import pretrain

SETTINGS = dict(size="tiny", objective="causal", batch_size=16, lr=2e-3, save_steps=100, seed=0)


@pytest.fixture(scope="module")
def causal_run(tmp_path_factory, fraud_cards):
    """A 40-step tiny causal run made through the command line."""
    run = tmp_path_factory.mktemp("causal") / "run"
    assert main(["pretrain", "--data", str(fraud_cards.path), "--out", str(run), "--objective", "causal",
                 "--size", "tiny", "--batch-size", "16", "--lr", "2e-3", "--save-steps", "100",
                 "--max-steps", "40"]) == 0
    return run, json.loads((run / "metrics.json").read_text())


def window(data, start: int, length: int) -> torch.Tensor:
    return torch.from_numpy(np.asarray(data.tokens[start:start + length]).astype(np.int64))[None]


def test_causal_pretraining_learns_and_reports_next_row_accuracy(causal_run, fraud_cards):
    run, metrics = causal_run
    losses = np.array([loss for _, loss in metrics["train_loss_history"]])
    assert np.isfinite(losses).all() and losses[-10:].mean() < losses[:10].mean() - 0.1
    assert metrics["model"]["objective"] == "causal"
    assert list(metrics["fields"]) == fraud_cards.tokenizer.field_names
    for field in metrics["fields"].values():
        assert field["masked"] > 0 and 0.0 <= field["accuracy"] <= 1.0 and 0.0 <= field["majority_accuracy"] <= 1.0
    assert json.loads((run / "model" / "config.json").read_text())["objective"] == "causal"
    assert isinstance(load_run(run, heads=True).model, TabBertForNextRowModeling)


def test_same_seed_same_causal_run_from_the_python_api(causal_run, fraud_cards, tmp_path):
    _, metrics = causal_run
    again = pretrain(fraud_cards.path, tmp_path / "again", max_steps=40, **SETTINGS)
    assert again["train_loss_history"] == metrics["train_loss_history"] and again["val_loss"] == metrics["val_loss"]


def test_a_run_recorded_before_objectives_resumes_as_masked(fraud_cards, tmp_path):
    settings = dict(size="tiny", batch_size=16, max_steps=4, save_steps=2, seed=0)
    run = tmp_path / "run"
    pretrain(fraud_cards.path, run, callbacks=[StopAt(2)], **settings)
    record = json.loads((run / "run.json").read_text())
    del record["settings"]["objective"]  # as written before the objective was an option
    (run / "run.json").write_text(json.dumps(record))
    assert pretrain(fraud_cards.path, run, resume=True, **settings)["resumed_from_step"] == 2
    with pytest.raises(TabbertError, match="objective"):
        pretrain(fraud_cards.path, run, resume=True, objective="causal", **settings)


def test_next_row_labels_are_the_following_rows_local_ids():
    ids = torch.tensor([[[PAD_ID, PAD_ID], [7, 12], [8, 13]]])
    labels = next_row_labels(ids, torch.tensor([[0, 1, 1]]), torch.tensor([5, 10]))
    assert labels.tolist() == [[[IGNORE_INDEX] * 2, [3, 3], [IGNORE_INDEX] * 2]]


def test_a_row_never_sees_the_rows_after_it(causal_run, fraud_cards):
    encoder = load_run(causal_run[0]).model
    ids = window(fraud_cards, 0, fraud_cards.seq_len)
    changed = ids.clone()
    changed[0, 6:] = ids[0, :4]
    padded = torch.cat([torch.full_like(ids[:, :3], PAD_ID), ids[:, :7]], dim=1)
    mask = torch.tensor([[0] * 3 + [1] * 7])
    with torch.inference_mode():
        before, after = encoder(ids).last_hidden_state, encoder(changed).last_hidden_state
        left_padded = encoder(padded, attention_mask=mask).last_hidden_state
    assert torch.allclose(before[:, :6], after[:, :6], atol=1e-6)
    assert not torch.allclose(before[:, 6:], after[:, 6:])
    # left padding neither moves the rows' positions nor reaches them
    assert torch.allclose(left_padded[:, 3:], before[:, :7], atol=1e-5)


def test_flat_or_row_masking_with_the_causal_objective_is_refused(fraud_cards, tmp_path):
    with pytest.raises(TabbertError, match="hierarchical"):
        pretrain(fraud_cards.path, tmp_path / "flat", flat=True, max_steps=1, **SETTINGS)
    with pytest.raises(TabbertError, match="--mask-rows"):
        pretrain(fraud_cards.path, tmp_path / "rows", mask_rows=True, max_steps=1, **SETTINGS)


def test_windows_score_each_wanted_row_once():
    offsets = np.array([0, 1, 6, 16])  # entities of 1, 5 and 10 rows
    wanted = np.ones(16, dtype=bool)
    starts, ends = next_row_windows(offsets, wanted, context=4)
    assert starts.tolist() == [1, 4, 6, 9, 12] and ends.tolist() == [5, 6, 10, 13, 16]
    scored = np.concatenate([np.arange(start + 1, end) for start, end in zip(starts, ends)])
    assert sorted(scored.tolist()) == [r for r in range(16) if r not in (0, 1, 6)]
    wanted[:] = False
    wanted[[8]] = True
    assert next_row_windows(offsets, wanted, context=4)[0].tolist() == [6]


def test_next_row_surprise_is_the_negative_log_likelihood_from_the_row_before(causal_run, fraud_cards):
    run, _ = causal_run
    surprise, summary = row_surprise([run], fraud_cards.path, progress=False)
    n_fields = len(fraud_cards.tokenizer.fields)
    first_rows = fraud_cards.entity_offsets[:-1]
    assert surprise.shape == (fraud_cards.n_rows, 1 + n_fields) and summary["objective"] == "causal"
    assert np.isnan(surprise[first_rows]).all() and summary["unscored_rows"] == first_rows.size
    scored = np.delete(surprise, first_rows, axis=0)
    assert np.isfinite(scored).all() and (scored >= 0).all()
    assert np.allclose(scored[:, 0], scored[:, 1:].sum(axis=1), rtol=1e-5)
    assert summary["forwards"] < fraud_cards.n_rows / (fraud_cards.seq_len - 2)

    model = load_run(run, heads=True).model
    row = int(first_rows[1]) + fraud_cards.seq_len + 3  # the fifth row of the second entity's second window
    start = int(first_rows[1]) + fraud_cards.seq_len - 1
    ids = window(fraud_cards, start, row - start + 1)
    truth = ids[0, -1] - torch.tensor(fraud_cards.tokenizer.field_offsets)
    with torch.inference_mode():
        logits = model(ids).field_logits
    expected = [-F.log_softmax(field[0, -2], dim=-1)[value].item() for field, value in zip(logits, truth)]
    assert np.allclose(surprise[row, 1:], expected, atol=1e-4)


def test_a_row_scores_the_same_alone_or_inside_a_longer_window(causal_run, fraud_cards):
    run, _ = causal_run
    model = load_run(run, heads=True).model
    step = next_row_step(model)
    with torch.inference_mode():
        longer = step(window(fraud_cards, 0, fraud_cards.seq_len), None)[0]
        for length in range(2, fraud_cards.seq_len):
            ids = window(fraud_cards, 0, fraud_cards.seq_len)
            mask = torch.ones(1, fraud_cards.seq_len, dtype=torch.long)
            ids[0, length:], mask[0, length:] = PAD_ID, 0
            alone = step(ids, mask)[0]
            assert torch.allclose(alone[length - 2], longer[length - 2], atol=1e-5)
    # the same through row_surprise: the first rows of each entity fall in windows of 4 and of 10 rows alike
    short, _ = row_surprise([run], fraud_cards.path, context=4, progress=False)
    full, _ = row_surprise([run], fraud_cards.path, progress=False)
    early = (fraud_cards.entity_offsets[:-1, None] + np.arange(1, 4)).ravel()
    assert np.allclose(short[early], full[early], atol=1e-5)
    assert not np.allclose(np.nan_to_num(short), np.nan_to_num(full))


def test_anomaly_command_with_a_causal_model(causal_run, fraud_cards, tmp_path, capsys):
    run, _ = causal_run
    out = tmp_path / "surprise.parquet"
    assert main(["anomaly", "--model", str(run / "model"), "--data", str(fraud_cards.path), "--out", str(out),
                 "--split", "test", "--embeddings"]) == 0
    printed = capsys.readouterr().out
    assert "next-row surprise" in printed and "PR-AUC" in printed
    frame = pl.read_parquet(out)
    names = fraud_cards.tokenizer.field_names
    hidden = load_run(run).config.hidden_size
    assert frame.columns == ["row", "entity", "split", "label", "surprise", *(f"surprise.{n}" for n in names),
                             *(f"embedding.{i}" for i in range(hidden))]
    assert set(frame["split"]) == {"test"} and frame.select(pl.all().is_null().any()).row(0) == (False,) * frame.width


def test_finetune_from_a_causal_model_keeps_the_causal_encoder(causal_run, fraud_cards, tmp_path):
    run, _ = causal_run
    metrics = finetune(fraud_cards.path, tmp_path / "finetuned", pretrained=run, epochs=1, batch_size=64,
                       lr=3e-3, progress=False)
    assert set(metrics["splits"]) >= {"val", "test"}
    model = load_run(tmp_path / "finetuned").model
    assert isinstance(model, TabBertForSequenceClassification) and model.config.causal
    assert isinstance(model.encoder, TabBertModel) and model.encoder.bert.config.is_decoder
