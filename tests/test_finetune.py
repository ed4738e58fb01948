"""Fine-tuning, evaluation and their bad inputs, on tiny models and a few hundred windows."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from conftest import make_regression_table

from tabbert.cli import main
from tabbert.data.preparation import prepare_table
from tabbert.errors import ArtifactError, TabbertError
from tabbert.evaluation import evaluate, score_points
from tabbert.metrics import UndefinedMetricWarning, classification_metrics
from tabbert.models.classifier import LSTMHead, MLPHead, TabBertForSequenceClassification
from tabbert.models.configuration import TabBertConfig
from tabbert.models.tabbert import TabBertForMaskedFieldModeling
from tabbert.options import FinetuneOptions
from tabbert.runs import load_run
from tabbert.training.finetune import (
    PointSplit,
    build_model,
    finetune,
    parameter_groups,
    training_order,
    upsampled_indices,
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("finetune")


@pytest.fixture(scope="module")
def pretrained(workdir, fraud_cards):
    """A tiny TabBERT saved as a pre-training run would save it."""
    tokenizer = fraud_cards.tokenizer
    config = TabBertConfig.for_tokenizer(tokenizer, "tiny", seq_len=fraud_cards.seq_len)
    torch.manual_seed(0)
    model_dir = workdir / "pretrain" / "model"
    TabBertForMaskedFieldModeling(config).save_pretrained(model_dir)
    tokenizer.save(model_dir / "tokenizer.json")
    return model_dir


@pytest.fixture(scope="module")
def run(workdir, fraud_cards, pretrained):
    """A frozen-encoder LSTM fine-tuning run of three epochs."""
    out = workdir / "run"
    finetune(fraud_cards.path, out, pretrained=pretrained.parent, epochs=3, batch_size=64, lr=3e-3, progress=False)
    return out


def load_encoder(path):
    return load_run(path, expect="encoder").model


def load_classifier(path):
    return load_run(path, expect="classifier").model


def _encoder_weights(model) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------- heads


def test_heads_ignore_padding_rows():
    torch.manual_seed(0)
    states = torch.randn(2, 5, 8)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    for head in (LSTMHead(8, 2).eval(), MLPHead(8, 2).eval()):
        padded = head(states, mask)
        assert torch.allclose(padded[0], head(states[:1, 2:])[0], atol=1e-6)
        assert torch.allclose(padded[1], head(states[1:])[0], atol=1e-6)


# ------------------------------------------------------------------------------------- frozen/unfrozen


def test_frozen_encoder_stays_in_eval_mode_without_gradients(pretrained):
    model = TabBertForSequenceClassification.from_encoder(load_encoder(pretrained), seq_len=10)
    model.train()
    assert model.head.training
    assert not any(module.training for module in model.encoder.modules())
    assert not any(p.requires_grad for p in model.encoder.parameters())
    ids = torch.randint(5, 20, (4, 10, model.config.n_fields))
    first = model.encoder(ids).last_hidden_state
    assert torch.equal(first, model.encoder(ids).last_hidden_state)  # dropout off while training


def test_frozen_encoder_is_unchanged_by_training(run, pretrained):
    before = _encoder_weights(load_encoder(pretrained))
    after = _encoder_weights(load_classifier(run).encoder)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["training"]["parameters"]["trainable"] < metrics["training"]["parameters"]["total"]


def test_unfreeze_trains_the_encoder_and_label_last(workdir, fraud_cards, pretrained):
    metrics = finetune(fraud_cards.path, workdir / "unfrozen", pretrained=pretrained, unfreeze=True, label_mode="last",
                       epochs=1, batch_size=64, encoder_lr=1e-3, progress=False)
    before = _encoder_weights(load_encoder(pretrained))
    model = load_classifier(workdir / "unfrozen")
    after = _encoder_weights(model.encoder)
    assert any(not torch.equal(before[name], after[name]) for name in before)
    assert metrics["training"]["parameters"]["trainable"] == metrics["training"]["parameters"]["total"]
    # every test row is a point, labelled by its own label
    assert model.config.label_mode == "last" and model.config.points == "rows"
    test_rows = fraud_cards.row_splits == 2
    assert metrics["splits"]["test"]["n"] == test_rows.sum()
    assert metrics["splits"]["test"]["positives"] == fraud_cards.labels[test_rows].sum()


# ------------------------------------------------------------------------------- selection, imbalance


def test_best_epoch_is_kept(run, fraud_cards):
    training = json.loads((run / "metrics.json").read_text())["training"]
    pr_aucs = [epoch["pr_auc"] for epoch in training["epochs"]]
    assert len(pr_aucs) == 3 and training["metric"] == "pr_auc"
    assert training["best_epoch"] == 1 + int(np.argmax(pr_aucs))
    model = load_classifier(run)
    val = fraud_cards.points("val")
    scores = score_points(model, fraud_cards, val)
    again = classification_metrics(fraud_cards.labels[val].astype(np.int64), scores)
    assert again["pr_auc"] == pytest.approx(training["best_value"], abs=1e-6)
    assert model.config.threshold == pytest.approx(again["threshold"])


def test_same_seed_same_run(workdir, fraud_cards, pretrained, run):
    again = finetune(fraud_cards.path, workdir / "again", pretrained=pretrained, epochs=3, batch_size=64, lr=3e-3,
                     progress=False)
    first = json.loads((run / "metrics.json").read_text())
    assert [e["val_loss"] for e in again["training"]["epochs"]] == [e["val_loss"] for e in first["training"]["epochs"]]


def test_upsampling_raises_the_positive_share():
    labels = np.zeros(1000, dtype=np.int64)
    labels[:10] = 1
    rng = np.random.default_rng(0)
    order = upsampled_indices(labels, 0.5, rng)
    assert labels[order].mean() == pytest.approx(0.5, abs=0.001)
    assert set(np.flatnonzero(labels == 0)) <= set(order.tolist())  # every negative once
    batches = [labels[order[i:i + 64]].mean() for i in range(0, len(order), 64)]
    assert np.mean(batches) > 0.4
    no_upsampling = FinetuneOptions.create(encoder="raw", imbalance="none").for_task("classification")
    assert np.sort(training_order(labels, no_upsampling, rng)).tolist() == list(range(1000))
    # nothing to repeat when positives already reach the share
    assert len(upsampled_indices(labels, 0.005, rng)) == 1000


def test_class_weights_and_rmse_loss(workdir, fraud_cards, pretrained):
    metrics = finetune(fraud_cards.path, workdir / "weights", pretrained=pretrained, imbalance="weights", loss="rmse",
                       head="mlp", epochs=1, batch_size=128, progress=False)
    config = load_classifier(workdir / "weights").config
    assert config.loss == "rmse" and config.head == "mlp"
    assert config.class_weights[1] > config.class_weights[0]
    assert 0 < metrics["training"]["epochs"][0]["train_loss"] < 1


def test_validation_windows_of_one_class(workdir, fraud_cards, capsys):
    """Undefined validation figures are n/a with one warning, and the lowest loss picks the best epoch."""
    copy = workdir / "one-class-val"
    shutil.copytree(fraud_cards.path, copy)
    labels = np.array(fraud_cards.labels)
    labels[fraud_cards.row_splits == 1] = 1
    np.save(copy / "labels.npy", labels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = finetune(copy, workdir / "one-class-run", encoder="raw", size="tiny", epochs=2, batch_size=128)
    undefined = [w for w in caught if issubclass(w.category, UndefinedMetricWarning)]
    assert len(undefined) == 1 and "pr_auc is undefined (shown as n/a)" in str(undefined[0].message)
    training = metrics["training"]
    losses = [epoch["val_loss"] for epoch in training["epochs"]]
    assert training["metric"] == "loss" and len(losses) == 2
    assert training["best_epoch"] == 1 + int(np.argmin(losses)) and training["best_value"] == min(losses)
    assert all(epoch["pr_auc"] is None for epoch in training["epochs"])
    assert metrics["splits"]["val"]["pr_auc"] is None and metrics["splits"]["test"]["pr_auc"] is not None
    capsys.readouterr()
    out = workdir / "one-class-lstm"
    assert main(["baseline", "--data", str(copy), "--kind", "lstm", "--out", str(out), "--epochs", "2", "--size",
                 "tiny", "--batch-size", "128"]) == 0
    printed = capsys.readouterr().out
    assert "n/a" in printed and "best epoch" in printed


# ------------------------------------------------------------------------------------------ regression


def test_regression_standardizes_and_reports_original_units(workdir):
    data = prepare_table(make_regression_table(), workdir / "regression", seq_len=4, stride=2, split="random")
    metrics = finetune(data.path, workdir / "regression-run", encoder="raw", size="tiny", epochs=2, batch_size=32,
                       lr=1e-2, progress=False)
    model = load_classifier(workdir / "regression-run")
    train_targets = data.window_targets(data.windows("train"))
    assert model.config.target_mean == pytest.approx(train_targets.mean(axis=0).tolist(), rel=1e-5)
    assert model.config.target_std == pytest.approx(train_targets.std(axis=0).tolist(), rel=1e-4)
    # standardize -> the head's scale -> scores() back in the targets' own units
    targets = torch.from_numpy(train_targets[:5])
    assert torch.allclose(model.scores(model.standardize(targets)), targets, rtol=1e-5)
    test = data.windows("test")
    predictions = score_points(model, data, test + data.seq_len - 1)
    truth = data.window_targets(test)
    figures = metrics["splits"]["test"]
    rmse = float(np.sqrt(np.mean((predictions[:, 0] - truth[:, 0]) ** 2)))
    assert figures["rmse_pm"] == pytest.approx(rmse, rel=1e-4)
    assert figures["mae_pm_coarse"] == pytest.approx(float(np.mean(np.abs(predictions[:, 1] - truth[:, 1]))), rel=1e-4)
    assert metrics["training"]["metric"] == "rmse" and "threshold" not in figures


# ------------------------------------------------------------------------------------------- evaluate


def test_evaluate_writes_metrics_and_curves(run, fraud_cards):
    for name in ("training_curve.png", "test_pr_curve.png", "test_roc_curve.png"):
        assert (run / name).stat().st_size > 1000
    figures = evaluate(run / "model", fraud_cards.path, "val")
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["splits"]) == {"test", "val"}
    assert metrics["splits"]["val"] == json.loads(json.dumps(figures))
    for key in ("f1", "precision", "recall", "roc_auc", "pr_auc", "recall_at_1pct_fpr", "confusion_matrix"):
        assert metrics["splits"]["test"][key] is not None
    # the threshold comes from validation and is applied unchanged to test
    assert metrics["splits"]["test"]["threshold"] == metrics["threshold"] == figures["threshold"]
    assert (run / "val_pr_curve.png").is_file()


def test_split_without_positives_gives_none_and_a_warning(workdir, run, fraud_cards):
    copy = workdir / "no-positives"
    shutil.copytree(fraud_cards.path, copy)
    labels = np.array(fraud_cards.labels)
    labels[fraud_cards.row_splits == 2] = 0
    np.save(copy / "labels.npy", labels)
    with pytest.warns(UndefinedMetricWarning, match="undefined"):
        figures = evaluate(run, copy, "test")
    assert figures["positives"] == 0
    assert figures["roc_auc"] is None and figures["pr_auc"] is None and figures["recall_at_1pct_fpr"] is None
    assert figures["plots"] == []


# ------------------------------------------------------------------------------------------ bad input


def test_model_for_another_schema_is_refused(workdir, run, pretrained):
    other = prepare_table(make_regression_table(), workdir / "other-schema", seq_len=4, stride=2, split="random")
    with pytest.raises(ArtifactError, match="fields"):
        evaluate(run, other.path)
    with pytest.raises(ArtifactError, match="fields"):
        finetune(other.path, workdir / "mismatch", pretrained=pretrained, progress=False)


def test_corrupt_or_truncated_weights(workdir, run, fraud_cards):
    broken = workdir / "broken"
    shutil.copytree(run, broken)
    weights = broken / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ArtifactError, match="corrupt"):
        evaluate(broken, fraud_cards.path)
    weights.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        evaluate(broken, fraud_cards.path)
    with pytest.raises(ArtifactError, match="not a fine-tuned"):
        load_classifier(run.parent / "pretrain")


def test_bad_options(workdir, fraud_cards, pretrained):
    with pytest.raises(TabbertError, match="--pretrained"):
        finetune(fraud_cards.path, workdir / "x1", progress=False)
    with pytest.raises(TabbertError, match="takes no --pretrained"):
        finetune(fraud_cards.path, workdir / "x2", encoder="raw", pretrained=pretrained, progress=False)
    with pytest.raises(TabbertError, match="metric"):
        finetune(fraud_cards.path, workdir / "x3", pretrained=pretrained, metric="rmse", progress=False)
    with pytest.raises(TabbertError, match="regression"):
        finetune(fraud_cards.path, workdir / "x4", pretrained=pretrained, task="regression", progress=False)
    with pytest.raises(TabbertError, match="not empty"):
        finetune(fraud_cards.path, fraud_cards.path, pretrained=pretrained, progress=False)


# ------------------------------------------------------------------------------------------- commands


def test_finetune_and_evaluate_commands(workdir, fraud_cards, capsys):
    out = workdir / "cli-raw"
    assert main(["finetune", "--data", str(fraud_cards.path), "--out", str(out), "--encoder", "raw", "--size", "tiny",
                 "--head", "mlp", "--epochs", "1", "--batch-size", "128"]) == 0
    printed = capsys.readouterr().out
    assert "val PR-AUC" in printed and "best epoch" in printed
    assert load_classifier(out).config.encoder_kind == "raw"
    assert main(["evaluate", "--model", str(out / "model"), "--data", str(fraud_cards.path), "--split", "val"]) == 0
    assert "pr_auc" in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["evaluate", "--model", str(workdir / "nowhere"), "--data", str(fraud_cards.path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


# ------------------------------------------------------------------------------------ prediction points


def test_negatives_subsampled_and_labels_of_a_share_of_entities(fraud_cards):
    options = FinetuneOptions.create(encoder="raw", negative_rate=0.2, label_fraction=0.5).for_task("classification")
    train = PointSplit.read(fraud_cards, "train", options, 10, np.random.default_rng(0))
    every = fraud_cards.points("train")
    entity = np.searchsorted(fraud_cards.entity_offsets, every, side="right") - 1
    kept_entities = np.unique(np.searchsorted(fraud_cards.entity_offsets, train.ends, side="right") - 1)
    assert kept_entities.size == round(0.5 * np.unique(entity).size)
    of_kept = every[np.isin(entity, kept_entities)]
    labels = fraud_cards.labels[of_kept]
    # every positive of the labelled entities stays; about a fifth of their negatives
    assert train.truth.sum() == labels.sum()
    assert abs((train.truth == 0).sum() / (labels == 0).sum() - 0.2) < 0.05
    val = PointSplit.read(fraud_cards, "val", options, 10)
    assert val.ends.size == (fraud_cards.row_splits == 1).sum()  # never subsampled


def test_context_beyond_the_pretrained_rows_is_refused(workdir, fraud_cards, pretrained):
    with pytest.raises(TabbertError, match="exceeds the"):
        finetune(fraud_cards.path, workdir / "too-long", pretrained=pretrained, context=64, progress=False)


def test_layer_decay_lowers_the_rate_layer_by_layer(fraud_cards, pretrained):
    options = FinetuneOptions.create(pretrained=str(pretrained), unfreeze=True, layer_decay=0.5).for_task(
        "classification")
    model = build_model(fraud_cards, None, options, 10)
    groups = parameter_groups(model, lr=1e-3, encoder_lr=1e-4, weight_decay=0.0, layer_decay=0.5)
    rate = {id(p): group["lr"] for group in groups for p in group["params"]}
    named = dict(model.named_parameters())
    layers = model.config.num_hidden_layers
    top = named[f"encoder.bert.encoder.layer.{layers - 1}.output.dense.weight"]
    assert rate[id(top)] == pytest.approx(1e-4)
    if layers > 1:
        below = named[f"encoder.bert.encoder.layer.{layers - 2}.output.dense.weight"]
        assert rate[id(below)] == pytest.approx(5e-5)
    assert rate[id(named["encoder.field_embeddings.weight"])] == pytest.approx(1e-4 * 0.5 ** layers)
    assert rate[id(named["head.output.weight"])] == 1e-3
