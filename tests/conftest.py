"""Shared fixtures: tiny normalized tables and the location of the shared real data."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tabbert.data.schema import ENTITY, ROW, TIME, FieldSpec, Table, TableSchema

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found at {path}; place ../shared/data beside the project to run this test")
    return path


def make_table(entity_lengths: dict[str, int], positives: dict[str, list[int]] | None = None) -> Table:
    """A hand-made table: entities with the given row counts, hourly rows, one label per row."""
    rows = []
    for entity, length in entity_lengths.items():
        for i in range(length):
            rows.append({
                ENTITY: entity,
                TIME: dt.datetime(2020, 1, 1) + dt.timedelta(hours=i),
                "shop": f"s{i % 3}",
                "amount": float(i),
                "fraud": int(i in (positives or {}).get(entity, [])),
            })
    frame = pl.DataFrame(rows).with_row_index(ROW).with_columns(
        pl.col(ROW).cast(pl.UInt64), pl.col("fraud").cast(pl.Int8)
    )
    schema = TableSchema(
        fields=(FieldSpec("shop", "categorical"), FieldSpec("amount", "numeric", n_bins=4)),
        labels=("fraud",),
    )
    # shuffle so that preparation has to order the rows itself
    frame = frame.sample(fraction=1.0, shuffle=True, seed=3)
    return Table(frame=frame, schema=schema, path="hand-made", rows_in=frame.height)


def make_regression_table(n_entities: int = 6, rows: int = 60) -> Table:
    """Hourly readings of a few stations with two regression targets that depend on one input."""
    rng = np.random.default_rng(0)
    n = n_entities * rows
    temp = rng.normal(10.0, 5.0, n)
    frame = pl.DataFrame({
        ROW: np.arange(n, dtype=np.uint64),
        ENTITY: np.repeat([f"s{i}" for i in range(n_entities)], rows),
        TIME: np.tile(np.datetime64("2020-01-01T00:00", "us") + np.arange(rows) * np.timedelta64(1, "h"), n_entities),
        "wind": rng.choice(["N", "S", "E"], n),
        "temp": temp,
        "pm": 200.0 + 30.0 * temp + rng.normal(0.0, 5.0, n),
        "pm_coarse": 500.0 - 10.0 * temp,
    })
    schema = TableSchema(fields=(FieldSpec("wind", "categorical"), FieldSpec("temp", "numeric", n_bins=8)),
                         labels=("pm", "pm_coarse"), task="regression", time_features=("hour",))
    return Table(frame, schema, "regression table", rows_in=n)


def flip_weight_bytes(model_dir: Path, count: int = 1000) -> None:
    """Invert ``count`` bytes in the middle of the tensor data, leaving the header intact."""
    weights = model_dir / "model.safetensors"
    content = bytearray(weights.read_bytes())
    data_start = 8 + int.from_bytes(content[:8], "little")
    middle = data_start + (len(content) - data_start - count) // 2
    content[middle:middle + count] = bytes(b ^ 0xFF for b in content[middle:middle + count])
    weights.write_bytes(bytes(content))


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy machine threads make them much slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fraud_card_csv(tmp_path_factory) -> Path:
    """Generated card transactions with 5 % fraud rows, so that every split has positives."""
    from tabbert.data.synthetic import generate_transactions, write_transactions

    path = tmp_path_factory.mktemp("fraud-cards") / "cards.csv"
    write_transactions(generate_transactions(10, seed=0, rows_per_user=200, fraud_rate=0.05), path)
    return path


@pytest.fixture(scope="session")
def fraud_cards(fraud_card_csv):
    """``fraud_card_csv`` prepared with the random window split (positives in every split)."""
    from tabbert.data.preparation import prepare

    return prepare("card", fraud_card_csv, fraud_card_csv.parent / "prepared", split="random", seed=0)


@pytest.fixture
def three_entity_table() -> Table:
    return make_table({"a": 23, "b": 10, "c": 7}, positives={"a": [12], "b": [0]})


def with_tied_times(frame: pl.DataFrame, every: int = 4) -> pl.DataFrame:
    """``frame`` with every ``every``-th row of an entity (in time order) moved to the time of the row before it."""
    position = pl.int_range(pl.len()).over(ENTITY, order_by=[TIME, ROW])
    previous = pl.col(TIME).shift(1).over(ENTITY, order_by=[TIME, ROW])
    return frame.with_columns(pl.when(position % every == 1).then(previous).otherwise(pl.col(TIME)).alias(TIME))
