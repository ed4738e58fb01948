"""One ``metrics.json`` layout for every kind of run: fine-tuned, raw baseline, LightGBM, and evaluate's merge."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_regression_table

from tabbert.baselines import train_baseline
from tabbert.data.preparation import prepare_table
from tabbert.errors import TabbertError
from tabbert.evaluation import evaluate
from tabbert.models.configuration import TabBertConfig
from tabbert.models.tabbert import TabBertForMaskedFieldModeling
from tabbert.thresholds import ValidationScores, resolve_threshold
from tabbert.training.finetune import finetune

LAYOUT = {"kind", "task", "data", "options", "training", "threshold", "splits"}
CLASSIFICATION_FIGURES = {"split", "data", "n", "positives", "threshold", "f1", "precision", "recall",
                          "confusion_matrix", "roc_auc", "pr_auc", "recall_at_0.1pct_fpr", "precision_at_0.1pct_fpr",
                          "recall_at_1pct_fpr", "precision_at_1pct_fpr", "threshold_spec", "threshold_source", "plots"}
REGRESSION_FIGURES = {"split", "data", "n", "rmse", "mae", "rmse_pm", "mae_pm", "rmse_pm_coarse", "mae_pm_coarse"}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, fraud_cards):
    model_dir = tmp_path_factory.mktemp("layout") / "pretrain" / "model"
    torch.manual_seed(0)
    config = TabBertConfig.for_tokenizer(fraud_cards.tokenizer, "tiny", seq_len=fraud_cards.seq_len)
    TabBertForMaskedFieldModeling(config).save_pretrained(model_dir)
    fraud_cards.tokenizer.save(model_dir / "tokenizer.json")
    return model_dir.parent


def _check_layout(run, metrics: dict, figures: set[str]) -> None:
    assert set(metrics) == LAYOUT
    assert json.loads((run / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert set(metrics["splits"]) == {"val", "test"}
    for split, entry in metrics["splits"].items():
        assert set(entry) == figures and entry["split"] == split
        assert entry.get("threshold") == metrics["threshold"]
        assert entry.get("threshold_spec", "best-f1") == "best-f1"
    assert metrics["training"]["train_seconds"] > 0


def test_classification_runs_of_every_kind(tmp_path, fraud_cards, pretrained):
    runs = {
        "finetune": lambda out: finetune(fraud_cards.path, out, pretrained=pretrained, epochs=1, progress=False),
        "raw": lambda out: train_baseline(fraud_cards.path, out, kind="mlp", size="tiny", epochs=1),
        "lightgbm": lambda out: train_baseline(fraud_cards.path, out, kind="lightgbm", rounds=20, threads=1),
    }
    kinds = {}
    for name, train in runs.items():
        metrics = train(tmp_path / name)
        _check_layout(tmp_path / name, metrics, CLASSIFICATION_FIGURES)
        assert metrics["task"] == "classification" and metrics["threshold"] is not None
        kinds[name] = (metrics["kind"], metrics["options"].get("encoder"))
        if name == "finetune":  # the validation scores that later thresholds are resolved on
            stored, val = ValidationScores.load(tmp_path / name), metrics["splits"]["val"]
            assert (stored.scores.size, int(stored.labels.sum())) == (val["n"], val["positives"])
            assert resolve_threshold("best-f1", stored).value == metrics["threshold"]
            assert np.array_equal(stored.times, fraud_cards.times[fraud_cards.points("val")])
    assert kinds == {"finetune": ("finetune", "pretrained"), "raw": ("finetune", "raw"), "lightgbm": ("lightgbm", None)}

    result = evaluate(tmp_path / "finetune", fraud_cards.path, "train", threshold="fpr:0.01")
    merged = json.loads((tmp_path / "finetune" / "metrics.json").read_text())
    assert set(merged) == LAYOUT and set(merged["splits"]) == {"train", "val", "test"}
    assert merged["splits"]["train"] == json.loads(json.dumps(result)) and set(result) == CLASSIFICATION_FIGURES
    assert result["threshold_spec"] == "fpr:0.01" and result["threshold"] != merged["threshold"]
    assert result["threshold"] == resolve_threshold("fpr:0.01", ValidationScores.load(tmp_path / "finetune")).value
    for file in (tmp_path / "finetune").glob("val_*.npy"):  # a run without them: scored on the data's val split
        file.unlink()
    again = evaluate(tmp_path / "finetune", fraud_cards.path, "train", threshold="fpr:0.01")
    assert again["threshold"] == pytest.approx(result["threshold"], abs=1e-6)


def test_regression_runs_of_every_kind(tmp_path):
    data = prepare_table(make_regression_table(), tmp_path / "data", seq_len=4, stride=2, split="random")
    for name, settings in (("raw", {"kind": "lstm", "size": "tiny", "epochs": 1}),
                           ("lightgbm", {"kind": "lightgbm", "rounds": 20, "threads": 1})):
        metrics = train_baseline(data.path, tmp_path / name, **settings)
        _check_layout(tmp_path / name, metrics, REGRESSION_FIGURES)
        assert metrics["task"] == "regression" and metrics["threshold"] is None
    with pytest.raises(TabbertError, match="a threshold applies to classification models only"):
        evaluate(tmp_path / "raw", data.path, threshold="0.5")
