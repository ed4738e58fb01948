"""Threads and device: every command that computes takes --threads and --device; a busy machine is noticed."""

from __future__ import annotations

import pytest
import torch

from tabbert import threads
from tabbert.cli import build_parser
from tabbert.errors import TabbertError
from tabbert.options import ComputeOptions, FinetuneOptions, PrepareOptions, PretrainOptions

COMPUTING = {
    "pretrain": ["--data", "d", "--out", "o"],
    "finetune": ["--data", "d", "--out", "o", "--encoder", "raw"],
    "baseline": ["--data", "d", "--out", "o", "--kind", "lstm"],
    "evaluate": ["--model", "m", "--data", "d"],
    "predict": ["--model", "m", "--input", "i", "--out", "o"],
    "embed": ["--model", "m", "--data", "d", "--out", "o"],
    "demo": [],
    "anomaly": ["--model", "m", "--data", "d", "--out", "o.npy"],
}


@pytest.mark.parametrize("command", COMPUTING)
def test_every_computing_command_takes_threads_and_device(command):
    args = build_parser(command).parse_args([command, *COMPUTING[command], "--threads", "3", "--device", "cpu"])
    assert (args.threads, args.device) == (3, "cpu")


def test_prepare_takes_threads_and_gives_the_same_dataset_with_any(tmp_path, fraud_card_csv):
    from tabbert.data.preparation import prepare

    args = build_parser("prepare").parse_args(["prepare", "--input", "i", "--out", "o", "--source", "card",
                                               "--threads", "3", "--device", "cpu"])
    assert (args.threads, args.device) == (3, "cpu")
    with pytest.raises(TabbertError, match="prepare runs on the CPU"):
        PrepareOptions.create(source="card", device="cuda")
    one = prepare("card", fraud_card_csv, tmp_path / "one", threads=1).path
    two = prepare("card", fraud_card_csv, tmp_path / "two", threads=2).path
    for array in sorted(one.glob("*.npy")):
        assert array.read_bytes() == (two / array.name).read_bytes(), array.name


def test_device_names():
    for name in ("auto", "cpu", "cuda", "cuda:1"):
        assert ComputeOptions.create(device=name).device == name
    with pytest.raises(TabbertError, match="device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        FinetuneOptions.create(encoder="raw", device="gpu")
    with pytest.raises(TabbertError, match="CUDA_VISIBLE_DEVICES"):
        PretrainOptions.create(device="cuda:1")
    with pytest.raises(TabbertError, match="threads must be at least 1"):
        ComputeOptions.create(threads=0)


@pytest.mark.parametrize(("load", "cores", "expected"), [
    (0.3, 2, None), (0.9, 2, None), (1.0, 2, 1), (1.6, 2, 1), (3.9, 8, None), (6.2, 8, 2), (30.0, 8, 1),
])
def test_busy_default(load, cores, expected):
    assert threads.busy_default(load, cores) == expected


def test_a_busy_machine_is_announced_once(monkeypatch, capsys):
    monkeypatch.setattr(threads, "machine_load", lambda: (3.0, 4))
    monkeypatch.setattr(threads, "_told", False)
    assert threads.resolve_threads(None) == 1 and threads.resolve_threads(None) == 1
    assert threads.resolve_threads(3) == 3
    err = capsys.readouterr().err
    assert err == "machine busy: load 3.0 on 4 cores; using 1 thread; --threads to change\n"


def test_quiet_machine_keeps_torch_default(monkeypatch, capsys):
    monkeypatch.setattr(threads, "machine_load", lambda: (0.1, 4))
    before = torch.get_num_threads()
    assert threads.resolve_threads(None) is None and threads.use_threads(None) == before
    assert capsys.readouterr().err == ""
    try:
        assert threads.use_threads(2) == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_the_process_own_work_is_not_counted_as_load(monkeypatch):
    """A step after a busy step of the same process sees the other processes' load only."""
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.0, 2.0, 2.0))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    now, cpu = threads.time.monotonic(), threads.time.process_time()
    monkeypatch.setattr(threads, "_last_reading", (now - 60.0, cpu - 90.0))  # 1.5 cores busy for a minute
    load, cores = threads.machine_load()
    assert cores == 2 and load == pytest.approx(0.5, abs=0.05)
    assert threads.busy_default(load, cores) is None
