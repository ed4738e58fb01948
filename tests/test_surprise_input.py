"""A fine-tuned head that also reads each row's surprise under the pre-trained field heads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from tabbert.anomaly import masked_row_step, next_row_step
from tabbert.errors import TabbertError
from tabbert.evaluation import score_points
from tabbert.inference import score_table
from tabbert.models.classifier import TabBertForSequenceClassification
from tabbert.models.surprise import RowsWithSurprise
from tabbert.runs import load_run, traced_logits
from tabbert.training.finetune import finetune, parameter_groups
from tabbert.training.pretrain import pretrain

PRETRAINING = dict(size="tiny", batch_size=16, lr=2e-3, max_steps=30, save_steps=100, seed=0)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, fraud_cards):
    """Tiny pre-training runs of both objectives (the masked one with whole rows masked)."""
    root = tmp_path_factory.mktemp("surprise_input")
    pretrain(fraud_cards.path, root / "causal", objective="causal", **PRETRAINING)
    pretrain(fraud_cards.path, root / "masked", mask_rows=True, **PRETRAINING)
    return {"causal": root / "causal", "masked": root / "masked"}


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, fraud_cards, pretrained):
    out = tmp_path_factory.mktemp("surprise_finetuned") / "run"
    metrics = finetune(fraud_cards.path, out, pretrained=pretrained["causal"], surprise_input=True, epochs=1,
                       batch_size=64, lr=3e-3, progress=False)
    return out, metrics


def windows(data, ends: list[int]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(data.tokens[end - data.seq_len + 1:end + 1]) for end in ends])
                            .astype(np.int64))


def surprise_channels(model: TabBertForSequenceClassification, ids: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """The encoder's surprise channels, back in nats."""
    with torch.inference_mode():
        rows = model.encoder(ids, attention_mask=mask).last_hidden_state[..., model.config.hidden_size:]
    return rows * torch.tensor([math.log(size) for size in model.config.field_vocab_sizes])


def classifier_on(run) -> TabBertForSequenceClassification:
    return TabBertForSequenceClassification.from_encoder(load_run(run, heads=True).model, surprise_input=True,
                                                         seq_len=10).eval()


def test_a_causal_encoder_gives_every_rows_next_row_surprise(pretrained, fraud_cards):
    model = classifier_on(pretrained["causal"])
    ids = windows(fraud_cards, [40, 75])
    channels = surprise_channels(model, ids)
    with torch.inference_mode():
        expected = next_row_step(load_run(pretrained["causal"], heads=True).model)(ids, None)
    assert channels.shape == (2, fraud_cards.seq_len, len(fraud_cards.tokenizer.fields))
    assert torch.allclose(channels[:, 1:], expected, atol=1e-4) and (channels[:, 0] == 0).all()
    # a left-padded window: the rows after padding have no row before them to be predicted from
    mask = torch.ones(2, fraud_cards.seq_len, dtype=torch.long)
    mask[:, :3] = 0
    padded = surprise_channels(model, ids, mask)
    assert (padded[:, :4] == 0).all() and (padded[:, 4:] > 0).all()


def test_a_masked_encoder_gives_the_newest_rows_masked_row_surprise(pretrained, fraud_cards):
    model = classifier_on(pretrained["masked"])
    ids = windows(fraud_cards, [40, 75])
    channels = surprise_channels(model, ids)
    with torch.inference_mode():
        expected = masked_row_step(load_run(pretrained["masked"], heads=True).model)(ids, None)
    assert torch.allclose(channels[:, -1], expected, atol=1e-4)
    assert (channels[:, :-1] == 0).all()


def test_finetuning_with_surprise_input_saves_scores_and_serves_alike(finetuned, fraud_cards, fraud_card_csv):
    out, metrics = finetuned
    assert metrics["options"]["surprise_input"] and set(metrics["splits"]) == {"val", "test"}
    model = load_run(out).model
    assert isinstance(model.encoder, RowsWithSurprise) and model.config.surprise_input
    assert model.head.lstm.input_size == model.config.hidden_size + len(fraud_cards.tokenizer.fields)
    # the reloaded model scores the test points as fine-tuning evaluated them in memory
    test = fraud_cards.points("test")
    scores = score_points(model, fraud_cards, test)
    assert metrics["splits"]["test"]["pr_auc"] == pytest.approx(
        average_precision_score(np.asarray(fraud_cards.labels)[test], scores), abs=1e-6)
    # raw rows through predict, and the traced model the service runs, give the same scores
    by_row = score_table(out, fraud_card_csv).scores.sort("row")["score"].to_numpy()
    assert np.allclose(by_row[fraud_cards.row_ids[test]], scores, atol=1e-5)
    full = test[test - fraud_cards.first_rows[test] >= fraud_cards.seq_len - 1]
    ids = windows(fraud_cards, full[:8].tolist())
    with torch.inference_mode():
        eager = model(ids).logits
    assert torch.allclose(traced_logits(model, fraud_cards.seq_len, ids.shape[2])(ids, None), eager, atol=1e-5)


def test_unfrozen_layers_under_the_field_heads_learn_at_decayed_rates(pretrained):
    model = TabBertForSequenceClassification.from_encoder(load_run(pretrained["causal"], heads=True).model,
                                                          surprise_input=True, freeze_encoder=False, seq_len=10)
    groups = parameter_groups(model, lr=1e-3, encoder_lr=1e-4, weight_decay=0.01, layer_decay=0.5)
    rates = {group["lr"] for group in groups}
    layers = model.config.num_hidden_layers
    assert rates == {1e-3, *(1e-4 * 0.5 ** depth for depth in range(layers + 1))}


def test_surprise_input_needs_pretrained_field_heads(pretrained, fraud_cards, tmp_path):
    with pytest.raises(TabbertError, match="--encoder raw"):
        finetune(fraud_cards.path, tmp_path / "raw", encoder="raw", surprise_input=True, progress=False)
    with pytest.raises(ValueError, match="field heads"):
        TabBertForSequenceClassification.from_encoder(load_run(pretrained["causal"]).model, surprise_input=True)
