"""Runs: one rule for RUN and RUN/model, one error for a broken model everywhere, the device, the batched forward."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import flip_weight_bytes

from tabbert.cli import main
from tabbert.data.tokenizer import PAD_ID
from tabbert.embeddings import write_embeddings
from tabbert.errors import ArtifactError, TabbertError
from tabbert.evaluation import evaluate, score_points
from tabbert.inference import predict
from tabbert.models.classifier import TabBertForSequenceClassification, save_classifier
from tabbert.models.configuration import TabBertConfig
from tabbert.models.raw import RawFieldsForSequenceClassification
from tabbert.models.tabbert import TabBertForMaskedFieldModeling
from tabbert.runs import (
    check_compatible,
    choose_device,
    classifier_logits,
    forward_batches,
    forward_windows,
    load_run,
    padded_histories,
    prepared_windows,
    run_paths,
    traced_logits,
)
from tabbert.training.finetune import finetune

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error for a CUDA device that is absent")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def pretrain_run(workdir, fraud_cards) -> Path:
    """A tiny TabBERT saved as a pre-training run saves it, with a metrics.json beside its model."""
    config = TabBertConfig.for_tokenizer(fraud_cards.tokenizer, "tiny", seq_len=fraud_cards.seq_len)
    torch.manual_seed(0)
    model_dir = workdir / "pretrain" / "model"
    TabBertForMaskedFieldModeling(config).save_pretrained(model_dir)
    fraud_cards.tokenizer.save(model_dir / "tokenizer.json")
    (workdir / "pretrain" / "metrics.json").write_text(json.dumps({"steps": 0}))
    return model_dir.parent


@pytest.fixture(scope="module")
def finetune_run(workdir, fraud_cards) -> Path:
    """An untrained raw-field classifier saved as a fine-tuning run saves it."""
    torch.manual_seed(0)
    model = RawFieldsForSequenceClassification.for_tokenizer(fraud_cards.tokenizer, "tiny", seq_len=fraud_cards.seq_len,
                                                             head="mlp", threshold=0.5)
    save_classifier(model, fraud_cards.tokenizer, workdir / "finetune" / "model")
    return workdir / "finetune"


def _broken_copy(run: Path, where: Path, damage) -> Path:
    copy = where / f"{run.name}-{damage.__name__}"
    shutil.copytree(run, copy)
    damage(copy / "model")
    return copy


def truncated_weights(model_dir: Path) -> None:
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def missing_weights(model_dir: Path) -> None:
    (model_dir / "model.safetensors").unlink()


def missing_tokenizer(model_dir: Path) -> None:
    (model_dir / "tokenizer.json").unlink()


def corrupt_config(model_dir: Path) -> None:
    (model_dir / "config.json").write_text("{not json")


def extra_layer_config(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    config["num_hidden_layers"] += 1
    (model_dir / "config.json").write_text(json.dumps(config))


def mismatched_config(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    config["field_hidden"] *= 2
    (model_dir / "config.json").write_text(json.dumps(config))


# ---------------------------------------------------------------------------------------------- one rule


def test_run_and_model_directory_resolve_alike(pretrain_run, finetune_run, workdir):
    for run in (pretrain_run, finetune_run):
        assert run_paths(run) == run_paths(run / "model") == (run, run / "model")
    bare = workdir / "bare"
    shutil.copytree(finetune_run / "model", bare)
    assert run_paths(bare) == (bare, bare)  # a model directory not named model is its own run


def test_load_run_gives_model_tokenizer_and_metrics(pretrain_run, finetune_run, fraud_cards):
    encoder = load_run(pretrain_run)
    assert encoder.kind == "encoder" and encoder.metrics == {"steps": 0}
    assert encoder.tokenizer.fingerprint() == fraud_cards.tokenizer.fingerprint()
    assert load_run(pretrain_run / "model").model.state_dict().keys() == encoder.model.state_dict().keys()
    classifier = load_run(finetune_run, expect="classifier")
    assert isinstance(classifier.model, RawFieldsForSequenceClassification) and not classifier.model.training
    assert classifier.metrics is None and classifier.config.head == "mlp"
    with pytest.raises(ArtifactError, match="not a fine-tuned model"):
        load_run(pretrain_run, expect="classifier")
    with pytest.raises(ArtifactError, match="not a pre-trained TabBERT model"):
        load_run(finetune_run, expect="encoder")


def test_missing_and_foreign_directories(workdir, finetune_run):
    with pytest.raises(ArtifactError, match="no such run or model directory"):
        load_run(workdir / "nowhere")
    empty = workdir / "empty"
    empty.mkdir()
    with pytest.raises(ArtifactError, match="no config.json"):
        load_run(empty)
    foreign = workdir / "foreign"
    shutil.copytree(finetune_run / "model", foreign)
    (foreign / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ArtifactError, match="holds a 'bert' model"):
        load_run(foreign)


@pytest.mark.parametrize("damage, message", [
    (truncated_weights, "corrupt or incomplete"),
    (missing_weights, "model.safetensors: missing"),
    (missing_tokenizer, "tokenizer file not found"),
    (corrupt_config, "config.json: unreadable"),
    (mismatched_config, "corrupt or incomplete|do not match"),
])
def test_a_broken_model_is_the_same_error_everywhere(workdir, pretrain_run, finetune_run, fraud_cards,
                                                     fraud_card_csv, damage, message):
    encoder_run = _broken_copy(pretrain_run, workdir, damage)
    errors = []
    for attempt in (lambda: finetune(fraud_cards.path, workdir / "never", pretrained=encoder_run, progress=False),
                    lambda: write_embeddings(encoder_run, fraud_cards.path, workdir / "never.parquet")):
        with pytest.raises(ArtifactError, match=message) as caught:
            attempt()
        errors.append(str(caught.value))
    classifier_run = _broken_copy(finetune_run, workdir, damage)
    for attempt in (lambda: evaluate(classifier_run, fraud_cards.path),
                    lambda: predict(classifier_run, fraud_card_csv)):
        with pytest.raises(ArtifactError, match=message) as caught:
            attempt()
        errors.append(str(caught.value))
    assert errors[0] == errors[1] and errors[2] == errors[3]
    assert not (workdir / "never").exists() and not (workdir / "never.parquet").exists()


def test_saved_weights_carry_their_digest_and_damage_is_found(workdir, finetune_run, fraud_cards, fraud_card_csv,
                                                              capsys):
    record = json.loads((finetune_run / "model" / "weights.sha256.json").read_text())
    weights = (finetune_run / "model" / "model.safetensors").read_bytes()
    assert record == {"file": "model.safetensors", "bytes": len(weights), "sha256": hashlib.sha256(weights).hexdigest()}
    damaged = _broken_copy(finetune_run, workdir, flip_weight_bytes)
    for attempt in (lambda: load_run(damaged), lambda: evaluate(damaged, fraud_cards.path),
                    lambda: predict(damaged, fraud_card_csv)):
        with pytest.raises(ArtifactError, match="model.safetensors: the file is corrupt .*SHA-256"):
            attempt()
    assert main(["evaluate", "--model", str(damaged), "--data", str(fraud_cards.path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error:") and "SHA-256" in error and "Traceback" not in error


def test_weights_that_do_not_fit_the_config_are_one_error_line(workdir, pretrain_run, fraud_cards, capfd):
    where = workdir / "one-line"
    where.mkdir()
    for damage in (mismatched_config, extra_layer_config):
        broken = _broken_copy(pretrain_run, where, damage)
        out = where / "embeddings.parquet"
        assert main(["embed", "--model", str(broken), "--data", str(fraud_cards.path), "--out", str(out)]) == 2
        captured = capfd.readouterr()
        assert captured.err.startswith("error:") and "weights do not match config.json" in captured.err
        assert len(captured.err.strip().splitlines()) == 1 and not captured.out and not out.exists()


# ---------------------------------------------------------------------------------------------- compatibility


def test_check_compatible(workdir, pretrain_run, finetune_run, fraud_cards):
    check_compatible(load_run(pretrain_run), fraud_cards)
    check_compatible(load_run(finetune_run), fraud_cards)
    short = workdir / "short" / "model"
    config = TabBertConfig.for_tokenizer(fraud_cards.tokenizer, "tiny", seq_len=fraud_cards.seq_len - 1)
    TabBertForMaskedFieldModeling(config).save_pretrained(short)
    fraud_cards.tokenizer.save(short / "tokenizer.json")
    with pytest.raises(ArtifactError, match="windows of at most 9 rows"):
        check_compatible(load_run(short), fraud_cards)
    regression = workdir / "regression"
    shutil.copytree(finetune_run, regression)
    config = json.loads((regression / "model" / "config.json").read_text())
    config.update(task="regression", loss="mse", target_names=["amount"], target_mean=[0.0], target_std=[1.0])
    (regression / "model" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="a classification dataset, but the model does regression"):
        check_compatible(load_run(regression), fraud_cards)


# ---------------------------------------------------------------------------------------------- the device


def test_choose_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert choose_device().type == expected and choose_device("cpu") == torch.device("cpu")
    with pytest.raises(TabbertError, match="unknown device 'abacus'"):
        choose_device("abacus")


@NO_CUDA
def test_every_command_honours_the_device_asked_for(finetune_run, pretrain_run, fraud_cards, fraud_card_csv, workdir,
                                                     capsys):
    attempts = [
        lambda: evaluate(finetune_run, fraud_cards.path, device="cuda"),
        lambda: predict(finetune_run, fraud_card_csv, device="cuda"),
        lambda: write_embeddings(pretrain_run, fraud_cards.path, workdir / "cuda.parquet", device="cuda"),
        lambda: finetune(fraud_cards.path, workdir / "cuda", encoder="raw", size="tiny", device="cuda", progress=False),
    ]
    for attempt in attempts:
        with pytest.raises(TabbertError, match="no CUDA device"):
            attempt()
    assert main(["evaluate", "--model", str(finetune_run), "--data", str(fraud_cards.path), "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- the forward


def test_forward_batches_cover_every_window_in_order(fraud_cards):
    starts = fraud_cards.windows("val")
    seen = []

    def gather(begin, end):
        seen.append((begin, end))
        return prepared_windows(fraud_cards, starts)(begin, end)

    outputs = list(forward_batches(lambda ids, mask: ids[:, -1, 0], len(starts), gather, device=torch.device("cpu"),
                                   batch_size=7))
    assert seen == [(b, min(b + 7, len(starts))) for b in range(0, len(starts), 7)]
    assert not torch.is_inference_mode_enabled()  # only the steps ran without gradients
    expected = fraud_cards.window_tokens(starts)[:, -1, 0]
    assert torch.cat(outputs).tolist() == expected.tolist()
    with pytest.raises(ValueError, match="no windows"):
        forward_windows(lambda ids, mask: ids, 0, gather, device=torch.device("cpu"), batch_size=7)


def test_padded_histories_are_the_windows_ending_at_each_row():
    tokens = np.arange(10, 70).reshape(20, 3)
    entity_start = np.repeat([0, 4, 12], [4, 8, 8])
    ids, mask = padded_histories(tokens, entity_start, seq_len=5)(0, 20)
    assert ids.shape == (20, 5, 3) and ids.dtype == np.int64 and mask.shape == (20, 5)
    assert (ids[13, :3] == PAD_ID).all() and mask[13].tolist() == [0, 0, 0, 1, 1]
    assert ids[13, 3:].tolist() == tokens[12:14].tolist()
    assert ids[11].tolist() == tokens[7:12].tolist() and mask[11].all()
    full_ids, no_mask = padded_histories(tokens, entity_start, seq_len=5)(8, 12)
    assert no_mask is None and full_ids.tolist() == ids[8:12].tolist()


def test_scores_are_independent_of_the_batch_size(finetune_run, fraud_cards):
    model = load_run(finetune_run).model
    starts = fraud_cards.windows("test")
    assert np.array_equal(score_points(model, fraud_cards, starts, batch_size=5),
                          score_points(model, fraud_cards, starts, batch_size=len(starts)))


def test_a_fine_tuned_model_of_each_encoder_kind_loads_as_its_class(workdir, fraud_cards, pretrain_run):
    encoder = load_run(pretrain_run, expect="encoder").model
    model = TabBertForSequenceClassification.from_encoder(encoder, seq_len=fraud_cards.seq_len)
    save_classifier(model, fraud_cards.tokenizer, workdir / "tabbert-classifier" / "model")
    loaded = load_run(workdir / "tabbert-classifier").model
    assert type(loaded) is TabBertForSequenceClassification and loaded.config.freeze_encoder


@pytest.mark.parametrize("head", ["lstm", "mlp"])
def test_a_traced_classifier_scores_like_the_eager_one(workdir, fraud_cards, pretrain_run, head):
    """Batches of one and of several windows, with and without padding, give the eager outputs."""
    encoder = load_run(pretrain_run, expect="encoder").model
    torch.manual_seed(0)
    model = TabBertForSequenceClassification.from_encoder(encoder, seq_len=fraud_cards.seq_len, head=head).eval()
    eager = classifier_logits(model)
    traced = traced_logits(model, fraud_cards.seq_len, len(fraud_cards.tokenizer.fields))
    gather = padded_histories(np.asarray(fraud_cards.tokens), fraud_cards.entity_offsets[:-1].repeat(
        np.diff(fraud_cards.entity_offsets)), fraud_cards.seq_len, np.arange(12))
    for begin, end in ((0, 1), (0, 5), (9, 10), (10, 12)):  # the first rows of an entity are padded
        ids, mask = gather(begin, end)
        ids = torch.as_tensor(ids)
        mask = None if mask is None else torch.as_tensor(mask)
        with torch.inference_mode():
            torch.testing.assert_close(traced(ids, mask), eager(ids, mask), rtol=1e-5, atol=1e-6)
