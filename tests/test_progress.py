"""Progress on a terminal is a bar; in a file or pipe it is a few plain lines, never carriage returns."""

from __future__ import annotations

import io
import sys

from tabbert.training.finetune import finetune
from tabbert.training.pretrain import pretrain


def test_track_writes_a_line_at_every_tenth(capsys):
    from tabbert.progress import track

    assert list(track(range(95), description="scoring")) == list(range(95))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and "\r" not in "".join(lines)
    assert lines[0].startswith("scoring: 10% (10/95") and lines[-1].startswith("scoring: 100% (95/95")
    assert list(track(range(3), description="short")) == [0, 1, 2]
    assert len(capsys.readouterr().err.splitlines()) == 3
    assert list(track(range(50), description="quiet", enabled=False)) == list(range(50))
    assert capsys.readouterr().err == ""


def test_pretraining_into_a_file_writes_sparse_lines(fraud_cards, tmp_path, capfd):
    pretrain(fraud_cards.path, tmp_path / "run", size="tiny", batch_size=16, max_steps=20, save_steps=20)
    captured = capfd.readouterr()
    assert "\r" not in captured.err + captured.out
    steps = [line for line in captured.err.splitlines() if line.startswith("pretrain: step")]
    assert len(steps) == 10 and steps[0].startswith("pretrain: step 2/20 (10%), loss ")
    assert any(line.startswith("pretrain: epoch") and "val loss" in line for line in captured.err.splitlines())
    assert "{'loss'" not in captured.out + captured.err  # no log entry printed per logging step


def test_fine_tuning_into_a_file_writes_sparse_lines(fraud_cards, tmp_path, capfd):
    finetune(fraud_cards.path, tmp_path / "run", encoder="raw", size="tiny", epochs=2, batch_size=64)
    captured = capfd.readouterr()
    assert "\r" not in captured.err + captured.out
    lines = captured.err.splitlines() + captured.out.splitlines()
    first_epoch = [line for line in lines if line.startswith("epoch 1/2: ")]
    assert 1 <= len(first_epoch) <= 10 and first_epoch[-1].startswith("epoch 1/2: 100%")
    assert any(line.startswith("epoch 2: train loss") for line in lines)
    assert len(lines) < 60


def test_a_terminal_gets_a_redrawn_bar(monkeypatch):
    from tabbert.progress import track

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(track(range(95), description="scoring")) == list(range(95))
    assert "\r" in terminal.getvalue() and "scoring: 10% (10/95" not in terminal.getvalue()
