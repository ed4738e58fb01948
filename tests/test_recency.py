"""Recency fields: time since the entity's latest earlier row with the same value, causal and order-free."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from tabbert.data.recency import BOUNDS_MICROSECONDS, LEVELS, NEVER, recency_levels, with_recency
from tabbert.data.schema import ENTITY, ROW, TIME, FieldSpec, SchemaError, TableSchema
from tabbert.data.tokenizer import row_order

SCHEMA = TableSchema(fields=(FieldSpec("shop", "categorical"), FieldSpec("amount", "numeric")),
                     recency=("shop", "hour"))
START = dt.datetime(2020, 1, 1, 9)


def recency(table: pl.DataFrame, schema: TableSchema) -> pl.DataFrame:
    """The recency fields as prepare and predict derive them: in the tokenizer's row order."""
    rows = row_order(table, schema)
    return with_recency(table, schema, np.arange(table.height) if rows.order is None else rows.order)


def frame(rows: list[tuple[str, float, str | None]]) -> pl.DataFrame:
    """Rows of (entity, hours after START, shop)."""
    return pl.DataFrame({
        ROW: list(range(len(rows))),
        ENTITY: [entity for entity, _, _ in rows],
        TIME: [START + dt.timedelta(hours=hours) for _, hours, _ in rows],
        "shop": [shop for _, _, shop in rows],
        "amount": [1.0] * len(rows),
    })


def test_buckets_per_entity_and_value():
    rows = [("a", 0, "s1"), ("a", 0.5, "s1"), ("a", 30, "s1"), ("a", 31, "s2"), ("a", 24 * 400, "s1"),
            ("b", 0.25, "s1"), ("a", 32, None)]
    result = recency(frame(rows), SCHEMA).sort(ROW)
    assert result["recency.shop"].cast(pl.String).to_list() == [NEVER, "<1h", "<7d", NEVER, ">=1y", NEVER, None]
    # hour of day: 09:00, 09:30 (same hour, 30 min later), 15:00 next day (never at 15), ...
    assert result["recency.hour"].cast(pl.String).to_list()[:3] == [NEVER, "<1h", NEVER]


def test_only_earlier_rows_count_and_file_order_does_not_matter():
    rows = [("a", 0, "s1"), ("a", 2, "s1"), ("a", 2, "s2"), ("a", 3, "s2"), ("a", 2, "s3"), ("a", 4, "s3")]
    base = recency(frame(rows), SCHEMA).sort(ROW)
    later_changed = frame(rows).with_columns(
        pl.when(pl.col(ROW) == 3).then(pl.lit("s9")).otherwise(pl.col("shop")).alias("shop"))
    assert recency(later_changed, SCHEMA).sort(ROW)["recency.shop"][:3].to_list() == base["recency.shop"][:3].to_list()
    for seed in range(5):
        shuffled = recency(frame(rows).sample(fraction=1.0, shuffle=True, seed=seed), SCHEMA).sort(ROW)
        assert shuffled.select("recency.shop", "recency.hour").equals(base.select("recency.shop", "recency.hour"))


def test_recency_names_categorical_fields_or_hour():
    with pytest.raises(SchemaError, match="recency applies to categorical fields"):
        TableSchema(fields=(FieldSpec("amount", "numeric"),), recency=("amount",))
    names = [spec.name for spec in SCHEMA.token_fields]
    assert names == ["shop", "amount", "recency.shop", "recency.hour"]


def reference_levels(entity: np.ndarray, codes: np.ndarray, times: np.ndarray) -> list[int]:
    """Row by row: the bucket of the time since the same entity's latest earlier row with the same code."""
    levels, last_seen = [], {}
    for key, time, code in zip(zip(entity.tolist(), codes.tolist()), times.tolist(), codes.tolist()):
        if code == -1:
            levels.append(-1)
            continue
        elapsed = None if key not in last_seen else time - last_seen[key]
        levels.append(len(LEVELS) - 1 if elapsed is None else int(np.searchsorted(BOUNDS_MICROSECONDS, elapsed, "right")))
        last_seen[key] = time
    return levels


@pytest.mark.parametrize("highest", [3, 300, 70_000, 1 << 60])  # each way of grouping the values
def test_levels_match_a_row_by_row_reference(highest):
    rng = np.random.default_rng(highest % 1000)
    entity = np.repeat(np.arange(5), 40)
    codes = rng.choice(np.array([-1, 0, 1, 2, highest]), size=entity.size)
    times = np.concatenate([np.sort(rng.integers(0, 400 * 86_400 * 10**6, 40)) for _ in range(5)])
    assert recency_levels(entity, codes, times).tolist() == reference_levels(entity, codes, times)


def test_card_recency_fields_are_chosen_at_prepare_and_follow_a_reused_tokenizer(fraud_card_csv, tmp_path,
                                                                                  capsys):
    from tabbert.cli import main
    from tabbert.data.prepared import PreparedDataset
    from tabbert.data.sources import CARD_FIELDS, CARD_RECENCY

    def prepare(out: str, *options: str) -> PreparedDataset:
        assert main(["prepare", "--source", "card", "--input", str(fraud_card_csv), "--out", str(tmp_path / out),
                     *options]) == 0
        return PreparedDataset(tmp_path / out)

    time_fields = ["time.hour", "time.weekday", "time.gap"]
    default = prepare("default")
    assert default.tokenizer.field_names == [*CARD_FIELDS, *(f"recency.{name}" for name in CARD_RECENCY), *time_fields]
    reference = prepare("reference", "--recency", "none")
    assert reference.tokenizer.field_names == [*CARD_FIELDS, *time_fields]
    assert np.array_equal(np.asarray(reference.codes), np.asarray(default.codes))
    chosen = prepare("chosen", "--recency", "Merchant City", "hour")
    assert [n for n in chosen.tokenizer.field_names if n.startswith("recency.")] == ["recency.Merchant City",
                                                                                      "recency.hour"]
    np.testing.assert_array_equal(  # the same fields as the default's, token for token
        chosen.tokenizer.decode(np.asarray(chosen.tokens))["recency.hour"].to_numpy(),
        default.tokenizer.decode(np.asarray(default.tokens))["recency.hour"].to_numpy())

    # a pre-training run's tokenizer brings its recency fields along
    run = tmp_path / "run" / "model"
    run.mkdir(parents=True)
    reference.tokenizer.save(run / "tokenizer.json")
    reused = prepare("reused", "--tokenizer", str(run))
    assert reused.tokenizer.field_names == reference.tokenizer.field_names

    for options, message in (
        (["--source", "card", "--recency", "Amount"], "recency applies to categorical fields and 'hour'"),
        (["--source", "prsa", "--recency", "wd"], "--recency applies to --source card"),
        (["--source", "card", "--recency", "none", "MCC"], "'none' or field names, not both"),
    ):
        assert main(["prepare", "--input", str(fraud_card_csv), "--out", str(tmp_path / "bad"), *options]) != 0
        assert message in capsys.readouterr().err
