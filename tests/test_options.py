"""Options declared once: their checks, and the command line made from them."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from tabbert import options as options_module
from tabbert.cli import build_parser, main
from tabbert.errors import TabbertError
from tabbert.models.classifier import HEADS
from tabbert.options import (
    BaselineOptions,
    FinetuneOptions,
    Options,
    PrepareOptions,
    PretrainOptions,
    add_arguments,
)

STEPS = {"prepare": PrepareOptions, "pretrain": PretrainOptions, "finetune": FinetuneOptions,
         "baseline": BaselineOptions}
REQUIRED = {PrepareOptions: {"source": "card"}, BaselineOptions: {"kind": "lightgbm"},
            FinetuneOptions: {"encoder": "raw"}}


def parse(options_class: type[Options], argv: list[str]) -> Options:
    parser = argparse.ArgumentParser()
    add_arguments(parser, options_class)
    return options_class.from_arguments(parser.parse_args(argv))


def cli_fields(options_class: type[Options]) -> list[dataclasses.Field]:
    return [item for item in dataclasses.fields(options_class) if item.metadata["cli"]]


# ---------------------------------------------------------------------------------------------- checks


@pytest.mark.parametrize("options_class, settings, message", [
    (FinetuneOptions, {"batch_size": 0}, "batch_size must be at least 1, got 0"),
    (FinetuneOptions, {"lr": 0.0}, "lr must be above 0"),
    (FinetuneOptions, {"warmup_ratio": 1.0}, "warmup_ratio must be below 1"),
    (FinetuneOptions, {"upsample_ratio": 1.5}, "upsample_ratio must be below 1"),
    (FinetuneOptions, {"head": "gru"}, r"head must be one of \('lstm', 'mlp'\), got 'gru'"),
    (FinetuneOptions, {"label_mode": "first"}, "label_mode must be one of"),
    (FinetuneOptions, {"epochs": 2.5}, "epochs must be a whole number"),
    (FinetuneOptions, {"weight_decay": -0.1}, "weight_decay must be at least 0"),
    (PrepareOptions, {"split": "hash"}, "split must be one of"),
    (PrepareOptions, {"fractions": (0.5, 0.5, 0.5)}, "split fractions"),
    (PrepareOptions, {"seq_len": 0}, "seq_len must be at least 1"),
    (PrepareOptions, {"time_features": ("hour", "moon")}, "time_features must be one of .*'moon'"),
    (PretrainOptions, {"size": "huge"}, "size must be one of"),
    (PretrainOptions, {"mlm_probability": 1.0}, "mlm_probability must be below 1"),
    (PretrainOptions, {"epochs": 0, "max_steps": -1}, "positive number of epochs or of --max-steps"),
    (BaselineOptions, {"scale_pos_weight": "heavy"}, "scale_pos_weight must be a positive number or 'balanced'"),
    (BaselineOptions, {"scale_pos_weight": 0.0}, "scale_pos_weight must be a positive number"),
    (BaselineOptions, {"kind": "svm"}, "kind must be one of"),
])
def test_a_bad_value_names_its_option(options_class, settings, message):
    with pytest.raises(TabbertError, match=message):
        options_class.create(**{**REQUIRED.get(options_class, {}), **settings})


def test_unknown_options_are_refused():
    with pytest.raises(TabbertError, match=r"unknown finetune option\(s\) \['epoch'\]"):
        FinetuneOptions.create(encoder="raw", epoch=3)


def test_finetune_options_depend_on_the_task():
    options = FinetuneOptions.create(pretrained="runs/pre", unfreeze=True)
    classification = options.for_task("classification")
    assert (classification.loss, classification.imbalance, classification.metric) == ("ce", "none", "pr_auc")
    assert (classification.points, classification.label_mode, classification.negative_rate) == ("rows", "last", 0.1)
    assert classification.target_mode is None and classification.encoder_lr == 5e-5 and classification.size is None
    assert classification.layer_decay == 0.8
    paper = dataclasses.replace(options, points="windows").for_task("classification")
    assert (paper.imbalance, paper.label_mode, paper.negative_rate, paper.upsample_ratio) == ("upsample", "any", 1.0, 0.5)
    regression = options.for_task("regression", ("pm",))
    assert (regression.loss, regression.imbalance, regression.metric) == ("mse", "none", "rmse")
    assert regression.label_mode is None and regression.upsample_ratio is None and regression.points == "windows"
    with pytest.raises(TabbertError, match="negative_rate is a share"):
        FinetuneOptions.create(encoder="raw", negative_rate=2.0)
    assert dataclasses.replace(options, metric="rmse_pm").for_task("regression", ("pm",)).metric == "rmse_pm"
    for settings, message in (({"metric": "rmse"}, "metric must be one of"), ({"loss": "mse"}, "loss must be one of"),
                              ({"task": "regression"}, "cannot be fine-tuned for regression")):
        with pytest.raises(TabbertError, match=message):
            dataclasses.replace(options, **settings).for_task("classification")
    with pytest.raises(TabbertError, match="imbalance handling applies to classification only"):
        dataclasses.replace(options, imbalance="weights").for_task("regression", ("pm",))
    with pytest.raises(TabbertError, match="--pretrained"):
        FinetuneOptions.create()


def test_the_baseline_runs_the_fine_tuning_of_its_kind():
    options = BaselineOptions.create(kind="lstm", label_mode="last", epochs=2, size="tiny", lr=0.01)
    assert options.finetune_options() == FinetuneOptions.create(encoder="raw", head="lstm", label_mode="last",
                                                                negative_rate=0.1, epochs=2, size="tiny", lr=0.01)
    paper = BaselineOptions.create(kind="lstm", points="windows").finetune_options().for_task("classification")
    assert (paper.points, paper.label_mode, paper.negative_rate) == ("windows", "any", 1.0)
    assert BaselineOptions.create(kind="mlp").finetune_options().lr == FinetuneOptions.create(encoder="raw").lr
    lightgbm = BaselineOptions.create(kind="lightgbm")
    assert lightgbm.learning_rate == 0.05 and "epochs" not in lightgbm.to_dict() and "rounds" in lightgbm.to_dict()
    assert "rounds" not in options.to_dict() and options.to_dict()["epochs"] == 2


# ---------------------------------------------------------------------------------------------- command line


@pytest.mark.parametrize("options_class", list(STEPS.values()))
def test_the_command_line_defaults_are_the_options_defaults(options_class):
    required = [f"--{name}={value}" for name, value in REQUIRED.get(options_class, {}).items()]
    assert parse(options_class, required) == options_class.create(**REQUIRED.get(options_class, {}))


@pytest.mark.parametrize("command, options_class", list(STEPS.items()))
def test_every_option_is_a_flag_with_its_choices_and_help(command, options_class, capsys):
    parser = build_parser(command)
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for item in cli_fields(options_class):
        flag = "--" + item.name.replace("_", "-")
        assert flag in text
        assert " ".join(item.metadata["help"].split())[:40] in text
        if item.metadata["choices"]:
            assert "{" + ",".join(item.metadata["choices"]) + "}" in text
        if item.default not in (None, False, dataclasses.MISSING) and not isinstance(item.default, tuple):
            assert f"(default {item.default})" in text, item.name
    assert parser.prog.startswith("tabbert")


def test_values_and_aliases_reach_the_options():
    finetune = parse(FinetuneOptions, ["--encoder", "raw", "--label", "last", "--target", "all", "--epochs", "4",
                                       "--lr", "0.01", "--unfreeze"])
    assert (finetune.label_mode, finetune.target_mode, finetune.epochs, finetune.lr) == ("last", "all", 4, 0.01)
    assert finetune.unfreeze and isinstance(finetune.epochs, int)
    pretrain = parse(PretrainOptions, ["--model", "tiny", "--num-layers", "1", "--field-heads", "1"])
    assert (pretrain.size, pretrain.num_hidden_layers, pretrain.field_num_heads) == ("tiny", 1, 1)
    assert pretrain.model_overrides() == {"num_hidden_layers": 1, "field_num_heads": 1}
    assert parse(PretrainOptions, ["--size", "paper"]).size == "paper"
    prepare = parse(PrepareOptions, ["--source", "prsa", "--fractions", "0.5", "0.25", "0.25", "--keep-missing",
                                     "--cutoffs", "2015-03-01", "2016-03-01"])
    assert prepare.fractions == (0.5, 0.25, 0.25) and prepare.cutoffs == ("2015-03-01", "2016-03-01")
    assert prepare.reader_options() == {"keep_missing": True}
    assert parse(PrepareOptions, ["--source", "card", "--time-features", "hour"]).reader_options() == {
        "time_features": ("hour",)}
    baseline = parse(BaselineOptions, ["--kind", "lightgbm", "--learning-rate", "0.1", "--scale-pos-weight",
                                       "balanced"])
    assert (baseline.lr, baseline.scale_pos_weight) == (0.1, "balanced")


def test_bad_values_on_the_command_line(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["finetune", "--data", "d", "--out", "o", "--head", "gru"])
    assert "invalid choice: 'gru'" in capsys.readouterr().err
    assert main(["finetune", "--data", "d", "--out", str(tmp_path / "o"), "--encoder", "raw", "--batch-size", "0"]) == 2
    assert capsys.readouterr().err == "error: batch_size must be at least 1, got 0\n"
    with pytest.raises(SystemExit):
        main(["baseline", "--data", "d", "--out", "o", "--kind", "lightgbm", "--scale-pos-weight", "heavy"])
    assert "expected a number or 'balanced'" in capsys.readouterr().err


def test_head_names_are_the_model_heads():
    assert tuple(HEADS) == options_module.HEADS
