"""Masked-field pre-training, its run directory, resuming, and window embeddings."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import flip_weight_bytes, make_table
from safetensors.torch import load_file
from transformers import TrainerCallback

from tabbert.cli import main
from tabbert.data.preparation import prepare, prepare_table
from tabbert.data.prepared import PreparedDataset
from tabbert.data.synthetic import generate_transactions, write_transactions
from tabbert.data.tokenizer import TabularTokenizer
from tabbert.embeddings import write_embeddings
from tabbert.errors import ArtifactError, TabbertError
from tabbert.metrics import UndefinedMetricWarning
from tabbert.models.tabbert import TabBertForMaskedFieldModeling, TabBertModel
from tabbert.plots import plot_pr_roc
from tabbert.training.pretrain import model_config, pretrain

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(size="tiny", batch_size=16, lr=2e-3)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def card_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("card")
    write_transactions(generate_transactions(8, seed=0, rows_per_user=200), folder / "card.csv")
    return prepare("card", folder / "card.csv", folder / "prepared").path


@pytest.fixture(scope="module")
def run_dir(card_data, tmp_path_factory) -> Path:
    """A 50-step tiny run made through the command line."""
    run = tmp_path_factory.mktemp("runs") / "run"
    code = main(["pretrain", "--data", str(card_data), "--out", str(run), "--size", "tiny", "--batch-size", "16",
                 "--lr", "2e-3", "--max-steps", "50", "--save-steps", "25"])
    assert code == 0
    return run


def window_batch(data_dir: Path, n: int = 8) -> torch.Tensor:
    data = PreparedDataset(data_dir)
    return torch.from_numpy(data.window_tokens(data.windows("val")[:n])).long()


class StopAt(TrainerCallback):
    """Ends training after ``step`` steps, as an interruption would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_loss_falls_over_fifty_steps(run_dir):
    history = json.loads((run_dir / "metrics.json").read_text())["train_loss_history"]
    losses = np.array([loss for _, loss in history])
    assert len(losses) == 50
    assert losses[-10:].mean() < losses[:10].mean() - 0.15


def test_metrics_report_every_field_against_its_majority_baseline(run_dir, card_data):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    tokenizer = PreparedDataset(card_data).tokenizer
    assert metrics["steps"] == 50
    assert list(metrics["fields"]) == tokenizer.field_names
    for field in metrics["fields"].values():
        assert field["masked"] > 0
        assert 0.0 <= field["accuracy"] <= 1.0 and 0.0 <= field["majority_accuracy"] <= 1.0
    assert sum(field["masked"] for field in metrics["fields"].values()) == metrics["val_masked_tokens"]
    assert metrics["val_loss"] > 0 and metrics["windows_per_second"] > 0
    # the card number of a user's windows is nearly constant: the model must at least match the baseline
    assert metrics["fields"]["Card"]["accuracy"] >= metrics["fields"]["Card"]["majority_accuracy"]
    assert metrics["evaluations"] and metrics["evaluations"][-1]["step"] == 50
    assert (run_dir / "loss_curve.png").read_bytes()[:8] == PNG_MAGIC
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-25", "checkpoint-50"]


def test_validation_keeps_at_most_max_eval_windows_spread_over_the_split(card_data, tmp_path):
    val = PreparedDataset(card_data).windows("val")
    metrics = pretrain(card_data, tmp_path / "run", max_steps=2, max_eval_windows=5, seed=0, threads=1, **TINY)
    assert len(val) > 5 and metrics["val_windows"] == 5
    every = pretrain(card_data, tmp_path / "every", max_steps=2, max_eval_windows=len(val) + 1, seed=0, threads=1,
                     **TINY)
    assert every["val_windows"] == len(val)


def test_saved_model_reloads_with_identical_outputs(run_dir, card_data):
    model_dir = run_dir / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in model_dir.iterdir()}
    tokenizer = TabularTokenizer.load(model_dir / "tokenizer.json")
    assert tokenizer.fingerprint() == PreparedDataset(card_data).tokenizer.fingerprint()

    input_ids = window_batch(card_data)
    final = TabBertForMaskedFieldModeling.from_pretrained(model_dir).eval()
    checkpoint = TabBertForMaskedFieldModeling.from_pretrained(run_dir / "checkpoints" / "checkpoint-50").eval()
    encoder = TabBertModel.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        outputs = final(input_ids)
        for ours, theirs in zip(outputs.field_logits, checkpoint(input_ids).field_logits):
            assert torch.equal(ours, theirs)
        assert torch.equal(encoder(input_ids).last_hidden_state, outputs.last_hidden_state)
    assert final.config.schema_fingerprint == tokenizer.fingerprint()


def test_resumed_run_reaches_the_uninterrupted_weights(card_data, tmp_path):
    settings = dict(TINY, max_steps=12, save_steps=4, seed=3)
    whole = pretrain(card_data, tmp_path / "whole", **settings)
    pretrain(card_data, tmp_path / "cut", callbacks=[StopAt(6)], **settings)
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["steps"] == 6
    resumed = pretrain(card_data, tmp_path / "cut", resume=True, **settings)

    assert resumed["steps"] == whole["steps"] == 12
    expected = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    actual = load_file(tmp_path / "cut" / "model" / "model.safetensors")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert resumed["val_loss"] == whole["val_loss"]
    assert resumed["train_loss_history"] == whole["train_loss_history"]
    # 16 windows a step: this session trained steps 5 to 12, the run all 12
    assert whole["resumed_from_step"] is None and whole["windows_trained"] == whole["windows_trained_total"] == 192
    assert resumed["resumed_from_step"] == 4
    assert resumed["windows_trained"] == 128 and resumed["windows_trained_total"] == 192


def test_resume_from_a_checkpoint_without_a_window_count(card_data, tmp_path):
    settings = dict(TINY, max_steps=8, save_steps=4, seed=3)
    run = tmp_path / "run"
    pretrain(card_data, run, callbacks=[StopAt(6)], **settings)
    state_file = run / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["stateful_callbacks"]["WindowCount"]  # as written before windows were counted
    state_file.write_text(json.dumps(state))
    resumed = pretrain(card_data, run, resume=True, **settings)
    assert resumed["steps"] == 8 and resumed["resumed_from_step"] == 4
    assert resumed["windows_trained"] == 64 and resumed["windows_trained_total"] is None


def test_resume_skips_a_checkpoint_written_half(card_data, tmp_path):
    settings = dict(TINY, max_steps=12, save_steps=4, seed=3)
    run = tmp_path / "run"
    pretrain(card_data, run, callbacks=[StopAt(10)], **settings)
    # killed while writing checkpoint-8: the trainer state, written last, is missing
    (run / "checkpoints" / "checkpoint-8" / "trainer_state.json").unlink()
    with pytest.warns(UserWarning, match="checkpoint-8: incomplete checkpoint"):
        resumed = pretrain(card_data, run, resume=True, **settings)
    assert resumed["steps"] == 12 and resumed["resumed_from_step"] == 4
    assert resumed["windows_trained_total"] == 12 * 16
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-12", "checkpoint-8"]
    assert (run / "checkpoints" / "checkpoint-8" / "trainer_state.json").is_file()


def test_saved_weights_carry_their_digest_and_embed_checks_it(run_dir, card_data, tmp_path):
    record = json.loads((run_dir / "model" / "weights.sha256.json").read_text())
    assert record["sha256"] == hashlib.sha256((run_dir / "model" / "model.safetensors").read_bytes()).hexdigest()
    damaged = tmp_path / "damaged"
    shutil.copytree(run_dir / "model", damaged)
    flip_weight_bytes(damaged)
    with pytest.raises(ArtifactError, match="the file is corrupt .*SHA-256"):
        write_embeddings(damaged, card_data, tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()


def test_same_seed_same_result_and_flat_variant(card_data, tmp_path):
    settings = dict(TINY, max_steps=3, flat=True, mask_rows=True, num_hidden_layers=1)
    first = pretrain(card_data, tmp_path / "a", **settings)
    second = pretrain(card_data, tmp_path / "b", **settings)
    assert first["model"]["flat"] and first["model"]["num_hidden_layers"] == 1
    assert first["train_loss_history"] == second["train_loss_history"]
    assert first["fields"] == second["fields"]


def test_refuses_a_non_empty_run_directory(card_data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("keep me")
    with pytest.raises(TabbertError, match="not empty"):
        pretrain(card_data, run, **TINY, max_steps=1)
    assert main(["pretrain", "--data", str(card_data), "--out", str(run), "--model", "tiny", "--max-steps", "1"]) == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(ArtifactError, match="run.json"):
        pretrain(card_data, run, **TINY, max_steps=1, resume=True)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_resume_needs_the_same_settings(run_dir, card_data):
    with pytest.raises(TabbertError, match="lr"):
        pretrain(card_data, run_dir, size="tiny", batch_size=16, lr=1e-3, max_steps=50, save_steps=25, resume=True)


def test_unknown_model_setting_is_refused(card_data, tmp_path):
    with pytest.raises(TabbertError, match="num_layerz"):
        pretrain(card_data, tmp_path / "run", **TINY, max_steps=1, num_layerz=2)
    assert not (tmp_path / "run").exists()


def test_embed_writes_window_and_row_embeddings(run_dir, card_data, tmp_path):
    data = PreparedDataset(card_data)
    windows_out, rows_out = tmp_path / "windows.parquet", tmp_path / "rows.parquet"
    assert main(["embed", "--model", str(run_dir / "model"), "--data", str(card_data), "--out", str(windows_out)]) == 0
    assert main(["embed", "--model", str(run_dir / "model"), "--data", str(card_data), "--out", str(rows_out),
                 "--split", "val", "--level", "row"]) == 0

    windows = pl.read_parquet(windows_out)
    n_windows = sum(len(data.windows(split)) for split in ("train", "val", "test"))
    assert windows.height == n_windows
    assert windows.columns == ["start", "entity", "split", "row_id", "label", "last", "mean"]
    assert windows["split"].value_counts().sort("split").rows() == [
        ("test", len(data.windows("test"))), ("train", len(data.windows("train"))), ("val", len(data.windows("val")))]

    rows = pl.read_parquet(rows_out)
    val = data.windows("val")
    assert rows.height == len(val) * data.seq_len
    assert rows["position"].to_list()[: data.seq_len] == list(range(data.seq_len))

    encoder = TabBertModel.from_pretrained(run_dir / "model").eval()
    with torch.inference_mode():
        hidden = encoder(torch.from_numpy(data.window_tokens(val[:2])).long()).last_hidden_state.numpy()
    first_val = windows.filter(pl.col("split") == "val").head(2)
    np.testing.assert_allclose(np.stack(first_val["last"].to_numpy()), hidden[:, -1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.stack(first_val["mean"].to_numpy()), hidden.mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.stack(rows["embedding"].to_numpy()[: data.seq_len]), hidden[0], rtol=1e-5, atol=1e-6)


def test_embed_out_is_a_new_file_unless_overwrite(run_dir, card_data, tmp_path, capsys):
    out = tmp_path / "embeddings.parquet"
    out.write_bytes(b"keep me")
    command = ["embed", "--model", str(run_dir), "--data", str(card_data), "--split", "val", "--out", str(out)]
    assert main(command) == 2
    assert "embeddings.parquet: exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert main([*command, "--overwrite"]) == 0
    assert pl.read_parquet(out).height == len(PreparedDataset(card_data).windows("val"))
    capsys.readouterr()
    assert main(["embed", "--model", str(run_dir), "--data", str(card_data), "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "is a directory" in error
    with pytest.raises(TabbertError, match="is a directory"):
        write_embeddings(run_dir, card_data, tmp_path, overwrite=True)


def test_embed_refuses_a_model_of_another_schema(card_data, tmp_path, capsys):
    other = prepare_table(make_table({"a": 23, "b": 10, "c": 7}), tmp_path / "other", seq_len=5, stride=5)
    model_dir = tmp_path / "other_model"
    config = model_config(other.tokenizer, other.seq_len, "tiny", False, {})
    TabBertForMaskedFieldModeling(config).save_pretrained(model_dir)
    other.tokenizer.save(model_dir / "tokenizer.json")
    with pytest.raises(ArtifactError, match="fields"):
        write_embeddings(model_dir, card_data, tmp_path / "out.parquet")
    out = str(tmp_path / "out.parquet")
    assert main(["embed", "--model", str(model_dir), "--data", str(card_data), "--out", out]) == 2
    assert "error:" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.parquet")) and not list(tmp_path.glob(".out.parquet*"))
    with pytest.raises(ArtifactError, match="no config.json"):
        write_embeddings(tmp_path, card_data, tmp_path / "out.parquet")


def test_pr_and_roc_plots(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.1
    scores = labels + rng.normal(0, 0.7, 200)
    written = plot_pr_roc(labels, scores, tmp_path / "test_")
    assert [p.name for p in written] == ["test_pr_curve.png", "test_roc_curve.png"]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in written)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert plot_pr_roc(np.zeros(5), np.arange(5.0), tmp_path / "none_") == []
    assert any(issubclass(w.category, UndefinedMetricWarning) for w in caught)


@pytest.mark.slow
def test_torchrun_with_two_processes(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("bash is needed to run the benchmark script")
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "torchrun_pretrain.sh"), str(tmp_path)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 20
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
