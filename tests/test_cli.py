import json
import warnings

import pytest

from tabbert.cli import COMMANDS, main
from tabbert.metrics import UndefinedMetricWarning


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_explains_its_options(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: tabbert " + command in out and "--" in out


def test_errors_are_one_line_not_a_traceback(tmp_path, capsys):
    code = main(["prepare", "--source", "card", "--input", str(tmp_path / "absent.csv"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "absent.csv" in err and "Traceback" not in err


def test_quick_demo_runs_every_step(tmp_path, capsys):
    """The quick demo's own data size: fewer users leave the validation split without positives."""
    out = tmp_path / "demo"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedMetricWarning)
        assert main(["demo", "--quick", "--out", str(out), "--pretrain-steps", "40", "--threads", "1"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert list(summary["table"]) == ["history LightGBM", "raw LSTM", "TabBERT LSTM (reference)", "TabBERT fine-tuned",
                                      "LightGBM + TabBERT", "next-row surprise (no labels)"]
    for label, row in summary["table"].items():
        assert row["train_seconds"] > 0 or label.startswith("next-row")
        assert row["roc_auc"] is None or 0.0 <= row["roc_auc"] <= 1.0
    assert summary["data"]["test_positives"] > 0
    report = (out / "report.md").read_text()
    assert "| TabBERT fine-tuned |" in report and "![pretrain/loss_curve.png](pretrain/loss_curve.png)" in report
    assert "![models.png](models.png)" in report and "| `users` | 60 |" in report and "{'" not in report
    images = [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert len(images) > 10 and all((out / image).is_file() for image in images)
    assert "LightGBM + TabBERT" in capsys.readouterr().out
