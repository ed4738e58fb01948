"""PRSA air quality end to end: preparing the twelve real station files, then regression
fine-tuning (TabBERT and the raw baselines) on a slice of two stations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tabbert.data.preparation import prepare
from tabbert.metrics import regression_metrics
from tabbert.training.finetune import finetune
from tabbert.training.pretrain import pretrain

PRSA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "prsa"
STATIONS = ("PRSA_Data_Aotizhongxin_20130301-20170228.csv", "PRSA_Data_Changping_20130301-20170228.csv")
SLICE_ROWS = 3000
FIELDS = ["SO2", "NO2", "CO", "O3", "TEMP", "PRES", "DEWP", "RAIN", "wd", "WSPM", "time.timestamp"]
TARGETS = ["PM2.5", "PM10"]
CUTOFFS = ("2015-03-01", "2016-03-01")


def _prsa_dir():
    if not PRSA_DIR.is_dir():
        pytest.skip(f"PRSA station files not found at {PRSA_DIR}; place ../shared/data/prsa beside the project")
    return PRSA_DIR


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("prsa")


@pytest.fixture(scope="module")
def prepared_random(workdir):
    return prepare("prsa", _prsa_dir(), workdir / "random", split="random", seed=0)


# ---------------------------------------------------------------------------------- preparation


def test_all_stations_row_accounting(prepared_random):
    meta = prepared_random.meta
    assert meta["rows_in"] == 420_768
    assert meta["rows_kept"] == 382_168 == prepared_random.n_rows
    assert meta["rows_in"] == meta["rows_kept"] + sum(meta["dropped"].values())
    assert all(reason.startswith("missing ") and count > 0 for reason, count in meta["dropped"].items())
    assert {"missing PM2.5", "missing PM10", "missing CO"} <= set(meta["dropped"])
    assert prepared_random.entities == sorted(name.split("_")[2] for name in (p.name for p in PRSA_DIR.glob("*.csv")))


def test_fields_bins_task_and_windows(prepared_random):
    data = prepared_random
    assert data.meta["fields"] == FIELDS == data.tokenizer.field_names
    assert data.task == "regression" and data.meta["labels"] == TARGETS
    assert data.targets.shape == (data.n_rows, 2) and np.isfinite(data.targets).all()
    for vocab in data.tokenizer.fields:
        if vocab.name == "wd":
            assert vocab.kind == "categorical" and vocab.n_tokens == 16  # the compass points
        else:
            assert vocab.kind == "numeric" and 2 <= vocab.n_tokens <= 50
    # quantile bins: fields with many distinct values get all 50, tied ones fewer
    assert all(data.tokenizer.fields[FIELDS.index(name)].n_tokens == 50 for name in ("NO2", "TEMP", "DEWP"))
    assert (data.seq_len, data.meta["stride"]) == (10, 5)
    # the reference protocol: windows shuffled 60/20/20 (the paper counts 45 K train, 15 K test)
    windows = data.meta["windows"]
    assert windows == {"train": 45_856, "val": 15_285, "test": 15_285}
    starts = np.concatenate([data.windows(split) for split in ("train", "val", "test")])
    assert np.unique(starts).size == starts.size


def test_keep_missing_keeps_more_rows(workdir, prepared_random):
    kept = prepare("prsa", _prsa_dir(), workdir / "missing", split="random", keep_missing=True)
    assert kept.meta["rows_in"] == 420_768
    assert kept.meta["rows_kept"] > prepared_random.meta["rows_kept"]
    assert kept.meta["rows_in"] == kept.meta["rows_kept"] + sum(kept.meta["dropped"].values())
    # only rows without a target are dropped
    assert set(kept.meta["dropped"]) == {"missing PM2.5", "missing PM10"}
    assert np.isfinite(kept.targets).all()


def test_time_split_puts_last_twelve_months_in_test(workdir):
    data = prepare("prsa", _prsa_dir(), workdir / "time", split="time", cutoffs=CUTOFFS)
    ends = {split: data.times[data.windows(split) + data.seq_len - 1].astype("datetime64[us]")
            for split in ("train", "val", "test")}
    val_start, test_start = (np.datetime64(day, "us") for day in CUTOFFS)
    assert ends["train"].max() < val_start <= ends["val"].min()
    assert ends["val"].max() < test_start <= ends["test"].min()
    assert ends["test"].min() < test_start + np.timedelta64(1, "D")
    assert ends["test"].max() == np.datetime64("2017-02-28T23:00", "us")
    assert data.meta["tokenizer_rows"] == int((data.times < val_start.astype(np.int64)).sum())


# ---------------------------------------------------------------------------------- fine-tuning


@pytest.fixture(scope="module")
def station_slice(workdir):
    """The first rows of two station files, byte for byte (quoted names, CRLF, "NA")."""
    folder = workdir / "slice"
    folder.mkdir()
    for name in STATIONS:
        source = _prsa_dir() / name
        with open(source, "rb") as handle:
            (folder / name).write_bytes(b"".join(handle.readline() for _ in range(SLICE_ROWS + 1)))
    return folder


@pytest.fixture(scope="module")
def slice_data(workdir, station_slice):
    return prepare("prsa", station_slice, workdir / "slice_data", split="random", seed=0)


@pytest.fixture(scope="module")
def pretrained(workdir, slice_data):
    metrics = pretrain(slice_data.path, workdir / "pretrain", size="tiny", max_steps=4, batch_size=32,
                       save_steps=10**6, seed=0)
    assert metrics["steps"] == 4 and set(metrics["fields"]) == set(FIELDS)
    return workdir / "pretrain"


def _test_truth(data, mode="last"):
    return data.window_targets(data.windows("test"), mode)


def _check_regression_figures(figures, data, mode="last"):
    """Finite RMSE/MAE per target and combined, in µg/m³, against predicting the training mean."""
    truth = _test_truth(data, mode).reshape(-1, 2).astype(np.float64)
    mean = data.window_targets(data.windows("train"), mode).reshape(-1, 2).mean(axis=0)
    constant = regression_metrics(truth, np.broadcast_to(mean, truth.shape), TARGETS)
    assert figures["n"] == truth.shape[0]
    for name in TARGETS:
        rmse, mae = figures[f"rmse_{name}"], figures[f"mae_{name}"]
        assert np.isfinite(rmse) and np.isfinite(mae) and 0 < mae <= rmse
        # a barely trained model predicts near the training mean: an error of the targets' spread
        assert 0.3 * constant[f"rmse_{name}"] < rmse < 2.0 * constant[f"rmse_{name}"]
    combined = np.sqrt((figures["rmse_PM2.5"] ** 2 + figures["rmse_PM10"] ** 2) / 2)
    assert figures["rmse"] == pytest.approx(combined, rel=1e-6)
    return constant


def test_constant_prediction_rmse_is_the_target_spread(slice_data):
    truth = _test_truth(slice_data).astype(np.float64)
    mean = slice_data.window_targets(slice_data.windows("train"), "last").mean(axis=0)
    figures = regression_metrics(truth, np.broadcast_to(mean, truth.shape), TARGETS)
    for j, name in enumerate(TARGETS):
        assert 20 < truth[:, j].std() < 200  # µg/m³
        assert figures[f"rmse_{name}"] == pytest.approx(truth[:, j].std(), rel=0.1)


def test_tabbert_lstm_regression_last_row(workdir, slice_data, pretrained):
    metrics = finetune(slice_data.path, workdir / "tabbert_lstm", pretrained=pretrained, task="regression",
                       head="lstm", epochs=1, size="tiny", progress=False)
    training = metrics["training"]
    assert metrics["task"] == "regression" and metrics["options"]["target_mode"] == "last"
    assert training["train_seconds"] > 0 and training["parameters"]["trainable"] < training["parameters"]["total"]
    _check_regression_figures(metrics["splits"]["test"], slice_data)
    assert {"rmse_PM2.5", "rmse_PM10", "rmse"} <= set(training["epochs"][0])


def test_tabbert_mlp_regression_all_rows(workdir, slice_data, pretrained):
    metrics = finetune(slice_data.path, workdir / "tabbert_all", pretrained=pretrained, task="regression",
                       head="mlp", target_mode="all", epochs=1, size="tiny", progress=False)
    assert metrics["options"]["target_mode"] == "all"
    test = metrics["splits"]["test"]
    _check_regression_figures(test, slice_data, mode="all")
    assert test["n"] == slice_data.meta["windows"]["test"] * slice_data.seq_len


@pytest.mark.parametrize("head", ["lstm", "mlp"])
def test_raw_baselines_regression(workdir, slice_data, head):
    metrics = finetune(slice_data.path, workdir / f"raw_{head}", encoder="raw", head=head, task="regression",
                       epochs=1, size="tiny", progress=False)
    assert metrics["options"]["encoder"] == "raw"
    assert metrics["training"]["parameters"]["trainable"] == metrics["training"]["parameters"]["total"]
    _check_regression_figures(metrics["splits"]["test"], slice_data)
