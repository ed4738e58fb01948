import datetime as dt
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from conftest import make_table

import tabbert.data.prepared as prepared
from tabbert.data.preparation import entity_runs, prepare_table, row_order, row_times, source_digest
from tabbert.data.schema import ENTITY, TIME
from tabbert.data.prepared import PreparedDataset
from tabbert.data.tokenizer import TabularTokenizer, id_dtype
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
        "entities.json", "entity_offsets.npy", "labels.npy", "meta.json", "row_ids.npy", "times.npy",
        "tokenizer.json", "tokens.npy", "values.npy", "windows_test.npy", "windows_train.npy", "windows_val.npy",
    ])
    meta = json.loads((data.path / "meta.json").read_text())
    assert meta["fields"] == TabularTokenizer.load(data.path).field_names
    assert np.load(data.path / "tokens.npy", mmap_mode="r").dtype == id_dtype(data.tokenizer.vocab_size)
    assert meta["value_columns"] == ["amount", "gap_seconds"]
    # raw amounts in entity-then-time order; the gap is NaN on each entity's first row
    np.testing.assert_array_equal(data.values[:23, 0], np.arange(23))
    assert np.isnan(data.values[[0, 23, 33], 1]).all() and data.values[1, 1] == 3600


def _entity_time_order(frame):
    """The row order by entity, then time, the entity offsets, the entities and the times in that order."""
    entities, offsets, entity_of_run, run_lengths = entity_runs(frame)
    order, times = row_order(entity_of_run, run_lengths, row_times(frame))
    return order, offsets, entities, times


def test_entity_time_order_sorts_by_entity_text_then_time_stably():
    hours = [5, 1, 3, 0, 3, 2]
    frame = pl.DataFrame({
        ENTITY: ["b", "b", "a", "10", "a", "b"],
        TIME: [dt.datetime(2021, 1, 1) + dt.timedelta(hours=h) for h in hours],
    })
    order, offsets, entities, times = _entity_time_order(frame)
    # "10" < "a" < "b" as text; the two rows of "a" at the same time keep their source order
    assert order.tolist() == [3, 2, 4, 1, 5, 0]
    assert offsets.tolist() == [0, 1, 3, 6] and entities == ["10", "a", "b"]
    assert np.array_equal(times, frame[TIME].dt.epoch("us").to_numpy()[order])
    in_order, same_offsets, _, _ = _entity_time_order(frame[order])
    assert in_order is None and same_offsets.tolist() == offsets.tolist()


@pytest.mark.parametrize("odd_microsecond", [False, True])
def test_entity_time_order_over_millennia_matches_a_lexicographic_sort(odd_microsecond):
    """Times too wide for a microsecond key are counted in minutes, or sorted pairwise when they must be."""
    rng = np.random.default_rng(0)
    n, entities = 400, [f"e{i:02d}" for i in range(40)]
    minutes = rng.integers(0, 4_000 * 525_600, n)  # four thousand years, from the year 3000
    times = [dt.datetime(3000, 1, 1) + dt.timedelta(minutes=int(m)) for m in minutes]
    if odd_microsecond:
        times[7] += dt.timedelta(microseconds=1)
    frame = pl.DataFrame({ENTITY: rng.choice(entities, n), TIME: times})
    order, offsets, names, sorted_times = _entity_time_order(frame)
    epoch_us = frame[TIME].dt.epoch("us").to_numpy()
    assert order.tolist() == np.lexsort((epoch_us, frame[ENTITY].to_numpy())).tolist()
    assert np.array_equal(sorted_times, epoch_us[order]) and names == sorted(set(frame[ENTITY].to_list()))
    assert offsets[-1] == n


def test_source_digest_hashes_each_file_of_a_folder_in_name_order(tmp_path):
    contents = {"b.csv": b"x,y\n1,2\n", "a.csv": b"", "c.csv": bytes(range(256)) * 5000}
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    expected = hashlib.sha256(b"".join(hashlib.sha256(contents[n]).digest() for n in sorted(contents))).hexdigest()
    assert source_digest(tmp_path) == expected
    single = hashlib.sha256(hashlib.sha256(contents["c.csv"]).digest()).hexdigest()
    assert source_digest(tmp_path / "c.csv") == single
