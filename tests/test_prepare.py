import datetime as dt
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from conftest import make_table, with_tied_times

import tabbert.data.prepared as prepared
from tabbert.data.preparation import prepare_table, source_digest
from tabbert.data.schema import ENTITY, ROW, TIME
from tabbert.data.sources import read_card
from tabbert.data.prepared import PreparedDataset
from tabbert.data.ordering import order_rows
from tabbert.data.encoders import id_dtype
from tabbert.data.tokenizer import TabularTokenizer
from tabbert.errors import ArtifactError, DataError, TabbertError


def test_three_entity_table_windows_and_labels(tmp_path, three_entity_table):
    data = prepare_table(three_entity_table, tmp_path / "ds", seq_len=10, stride=5, split="random", seed=0)
    assert data.entities == ["a", "b", "c"]
    assert data.entity_offsets.tolist() == [0, 23, 33, 40]
    # rows are ordered by entity then time, whatever the input order
    assert np.all(np.diff(data.times[:23]) > 0)
    starts = np.sort(np.concatenate([data.windows(s) for s in ("train", "val", "test")]))
    assert starts.tolist() == [0, 5, 10, 13, 23]  # c (7 rows) is shorter than a window
    # a's fraud row 12 lies in windows 5 and 10 (13 starts after it); b's row 0 in b's only window
    assert data.window_labels(starts).tolist() == [0, 1, 1, 0, 1]
    assert data.window_labels(starts, "last").tolist() == [0, 0, 0, 0, 0]
    assert data.meta["short_entities"] == {"count": 1, "rows": 7}
    assert data.meta["rows_in"] == data.meta["rows_kept"] == 40
    assert data.meta["positive_rows"] == 2
    window = data.window_tokens(np.array([13]))
    np.testing.assert_array_equal(window[0], data.tokens[13:23])


def test_entity_split_is_disjoint_and_tokenizer_sees_train_only(tmp_path):
    table = make_table({f"e{i}": 12 + i for i in range(30)})
    data = prepare_table(table, tmp_path / "ds", split="entity", seed=4)
    owner = np.searchsorted(data.entity_offsets, np.arange(data.n_rows), side="right") - 1
    seen = [set(owner[data.windows(s)]) for s in ("train", "val", "test")]
    assert seen[0] and seen[1] and seen[2]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    train_entities = sorted({data.entities[i] for i in seen[0]})
    train_rows = sum(12 + int(e[1:]) for e in train_entities)
    # entities too short for any window still belong to a split; the tokenizer rows are a subset
    assert data.meta["tokenizer_rows"] >= train_rows
    assert data.meta["tokenizer_rows"] < data.n_rows


def test_entities_of_each_split_are_recorded(tmp_path):
    table = make_table({f"e{i}": 3 + i for i in range(30)})  # e0 .. e6 are shorter than a window
    data = prepare_table(table, tmp_path / "entity", split="entity", seed=4)
    members = json.loads((data.path / "splits.json").read_text())
    assert data.split_entities == members and list(members) == ["train", "val", "test"]
    assert sorted(sum(members.values(), [])) == sorted(data.entities)  # each entity, short ones too, once
    owner = np.searchsorted(data.entity_offsets, np.arange(data.n_rows), side="right") - 1
    for split, keys in members.items():
        assert {data.entities[i] for i in owner[data.windows(split)]} <= set(keys)

    by_time = prepare_table(make_table({"a": 40, "b": 10}), tmp_path / "time", split="time",
                            cutoffs=("2020-01-01 05:00", "2020-01-01 20:00"))
    assert by_time.split_entities == {"train": ["a", "b"], "val": ["a", "b"], "test": ["a"]}  # b ends at 09:00
    at_random = prepare_table(make_table({"a": 40, "b": 10, "c": 4}), tmp_path / "random", split="random", seed=0)
    owner = np.searchsorted(at_random.entity_offsets, np.arange(at_random.n_rows), side="right") - 1
    assert at_random.split_entities == {split: sorted({at_random.entities[i] for i in owner[at_random.windows(split)]})
                                        for split in ("train", "val", "test")}
    (at_random.path / "splits.json").unlink()
    with pytest.raises(ArtifactError, match="splits.json: missing"):
        PreparedDataset(at_random.path).split_entities


def test_time_split_orders_windows_by_time(tmp_path):
    table = make_table({f"e{i}": 40 for i in range(5)})
    data = prepare_table(table, tmp_path / "ds", split="time", stride=2)
    last = {s: data.times[data.windows(s) + data.seq_len - 1] for s in ("train", "val", "test")}
    assert last["train"].max() < last["val"].min() <= last["val"].max() < last["test"].min()


def test_same_seed_same_dataset(tmp_path, three_entity_table):
    one = prepare_table(three_entity_table, tmp_path / "one", split="random", seed=7)
    two = prepare_table(three_entity_table, tmp_path / "two", split="random", seed=7)
    np.testing.assert_array_equal(one.tokens, two.tokens)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(one.windows(split), two.windows(split))


def test_refuses_non_empty_output_dir(tmp_path, three_entity_table):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(TabbertError, match="not empty"):
        prepare_table(three_entity_table, out)


def test_failed_prepare_leaves_nothing_a_later_step_accepts(tmp_path, three_entity_table, monkeypatch):
    import tabbert.data.prepared as prepared

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(prepared.TabularTokenizer, "save", crash)
    with pytest.raises(OSError):
        prepare_table(three_entity_table, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ArtifactError, match="not a prepared dataset"):
        PreparedDataset(tmp_path)


def test_an_error_after_some_parts_were_written_leaves_nothing(tmp_path, three_entity_table):
    # ordering hands the offsets and times to the writer before the split finds no training rows
    with pytest.raises(TabbertError, match="training split has no rows"):
        prepare_table(three_entity_table, tmp_path / "ds", split="time", cutoffs=("1900-01-01", "1900-01-02"))
    assert list(tmp_path.iterdir()) == []


def _finished_process_id() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_staging_left_by_a_killed_prepare_is_removed_by_the_next(tmp_path, three_entity_table):
    # a prepare killed during its final rename leaves its complete staging folder behind
    left = tmp_path / f".ds.partial-{_finished_process_id()}-x1y2"
    left.mkdir()
    (left / "meta.json").write_text("{}")
    running = tmp_path / f".ds.partial-{os.getpid()}-a3b4"  # another prepare, still writing
    running.mkdir()
    unrelated = tmp_path / ".ds.partial-notes"
    unrelated.mkdir()
    data = prepare_table(three_entity_table, tmp_path / "ds")
    assert data.meta["rows_kept"] == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ds", running.name, unrelated.name])


def test_staging_folders_carry_the_writer_process_id(tmp_path, three_entity_table, monkeypatch):
    seen = []
    original = prepared.PreparedWriter.commit

    def look(writer, meta):
        seen.extend(p.name for p in tmp_path.iterdir())
        return original(writer, meta)

    monkeypatch.setattr(prepared.PreparedWriter, "commit", look)
    prepare_table(three_entity_table, tmp_path / "ds")
    assert len(seen) == 1 and seen[0].startswith(f".ds.partial-{os.getpid()}-")


def test_two_prepares_to_one_out_the_second_gets_a_clear_error(tmp_path, three_entity_table, monkeypatch):
    out = tmp_path / "ds"
    original = prepared.PreparedWriter.commit

    def overtaken(writer, meta):
        # the other prepare started after this one's check and finishes first
        monkeypatch.setattr(prepared.PreparedWriter, "commit", original)
        prepare_table(three_entity_table, out, seed=1)
        return original(writer, meta)

    monkeypatch.setattr(prepared.PreparedWriter, "commit", overtaken)
    with pytest.raises(TabbertError, match="exists and is not empty"):
        prepare_table(three_entity_table, out, seed=2)
    assert PreparedDataset(out).meta["split"]["seed"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_empty_table_is_a_clear_error(tmp_path):
    table = make_table({"a": 3})
    table.frame = table.frame.clear()
    with pytest.raises(DataError, match="no rows left"):
        prepare_table(table, tmp_path / "ds")


def test_artifacts_are_json_and_npy(tmp_path, three_entity_table):
    data = prepare_table(three_entity_table, tmp_path / "ds")
    names = sorted(p.name for p in data.path.iterdir())
    assert names == sorted([
        "codes.npy", "entities.json", "entity_offsets.npy", "labels.npy", "meta.json", "row_ids.npy", "splits.json", "times.npy",
        "tokenizer.json", "tokens.npy", "values.npy", "windows_test.npy", "windows_train.npy", "windows_val.npy",
    ])
    meta = json.loads((data.path / "meta.json").read_text())
    assert meta["fields"] == TabularTokenizer.load(data.path).field_names
    assert np.load(data.path / "tokens.npy", mmap_mode="r").dtype == id_dtype(data.tokenizer.vocab_size)
    assert meta["value_columns"] == ["amount", "gap_seconds"]
    # raw amounts in entity-then-time order; the gap is NaN on each entity's first row
    np.testing.assert_array_equal(data.values[:23, 0], np.arange(23))
    assert np.isnan(data.values[[0, 23, 33], 1]).all() and data.values[1, 1] == 3600


def test_source_digest_hashes_each_file_of_a_folder_in_name_order(tmp_path):
    contents = {"b.csv": b"x,y\n1,2\n", "a.csv": b"", "c.csv": bytes(range(256)) * 5000}
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    expected = hashlib.sha256(b"".join(hashlib.sha256(contents[n]).digest() for n in sorted(contents))).hexdigest()
    assert source_digest(tmp_path) == expected
    single = hashlib.sha256(hashlib.sha256(contents["c.csv"]).digest()).hexdigest()
    assert source_digest(tmp_path / "c.csv") == single


@pytest.fixture(scope="module")
def tied_cards(fraud_card_csv):
    """Generated card rows where a quarter of the rows share their time with the row before them."""
    table = read_card(fraud_card_csv, time_features=("timestamp", "hour", "weekday", "gap"))
    table.frame = with_tied_times(table.frame)
    return table


def _shuffled(table, seed: int):
    """The table with its rows in another order, numbered again as a file in that order would number them."""
    frame = table.frame.sample(fraction=1.0, shuffle=True, seed=seed)
    frame = frame.with_columns(pl.int_range(pl.len(), dtype=pl.UInt64).alias(ROW))
    return type(table)(frame, table.schema, table.path, table.rows_in)


@pytest.mark.parametrize("split", ["entity", "time"])
def test_rows_in_any_order_give_the_same_dataset(tmp_path, tied_cards, split):
    frame = tied_cards.frame
    ties = frame.group_by([ENTITY, TIME]).len().filter(pl.col("len") > 1)
    assert ties.height > 50  # the times tie often, and the rows that tie differ in their values
    one = prepare_table(tied_cards, tmp_path / "one", split=split, seed=1)
    two = prepare_table(_shuffled(tied_cards, seed=2), tmp_path / "two", split=split, seed=1)
    for name in sorted(p.name for p in one.path.iterdir() if p.suffix == ".npy" and p.name != "row_ids.npy"):
        assert (one.path / name).read_bytes() == (two.path / name).read_bytes(), name
    assert (one.path / "tokenizer.json").read_bytes() == (two.path / "tokenizer.json").read_bytes()
    # the same source rows in the same places, by their content
    columns = [ENTITY, TIME, *tied_cards.schema.field_names]
    first = frame.sort(ROW)[one.row_ids].select(columns)
    second = _shuffled(tied_cards, seed=2).frame.sort(ROW)[two.row_ids].select(columns)
    assert first.equals(second)


@pytest.mark.parametrize("split", ["random", "time"])
def test_prepared_tokens_are_the_tokenizers_ids_in_its_row_order(tmp_path, tied_cards, split):
    data = prepare_table(tied_cards, tmp_path / "ds", split=split, seed=0)
    frame, schema = tied_cards.frame, tied_cards.schema
    train_rows = np.ones(frame.height, dtype=bool)
    if split == "time":
        train_rows = (frame[TIME] < dt.datetime.fromisoformat(data.meta["split"]["cutoffs"][0])).to_numpy()
    tokenizer = TabularTokenizer(schema).fit(frame, train_rows)
    assert tokenizer.to_dict() == data.tokenizer.to_dict()
    order = order_rows(frame, by=schema.field_names).order
    np.testing.assert_array_equal(data.tokens, tokenizer.encode(frame)[order])
    assert data.tokens.dtype == id_dtype(tokenizer.vocab_size)
