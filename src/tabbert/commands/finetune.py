"""``tabbert finetune``: train a head on a pre-trained TabBERT (or a raw-field baseline).

Examples::

    tabbert finetune --data prepared/cards --pretrained runs/pretrain/model --out runs/finetune
    tabbert finetune --data prepared/cards --pretrained runs/pretrain --out runs/ft-unfrozen --unfreeze
    tabbert finetune --data prepared/cards --encoder raw --head mlp --out runs/raw-mlp
    tabbert finetune --data prepared/prsa --pretrained runs/pretrain-prsa --out runs/prsa --target-mode last

The run directory receives ``model/`` (config.json, model.safetensors, tokenizer.json),
``metrics.json`` (options, every epoch's validation figures, the best epoch, seconds, and the
validation and test figures), ``training_curve.png`` and, for classification, the PR and ROC
curves of both splits.
"""

from __future__ import annotations

import argparse

from tabbert.reporting import format_table

CLASSIFICATION_COLUMNS = (("pr_auc", "PR-AUC"), ("roc_auc", "ROC-AUC"), ("f1", "F1"),
                          ("recall_at_1pct_fpr", "recall@1%FPR"))


def configure(parser: argparse.ArgumentParser) -> None:
    from tabbert.options import FinetuneOptions, add_arguments

    parser.add_argument("--data", required=True, help="prepared dataset directory (from `tabbert prepare`)")
    parser.add_argument("--out", required=True, help="new run directory")
    add_arguments(parser, FinetuneOptions)


def run(args: argparse.Namespace) -> int:
    from tabbert.options import FinetuneOptions
    from tabbert.training.finetune import finetune

    metrics = finetune(args.data, args.out, FinetuneOptions.from_arguments(args))
    print(summary(metrics))
    print(f"run written to {args.out}")
    return 0


def _shown(value: object) -> object:
    return "n/a" if value is None else value


def summary(metrics: dict) -> str:
    """One line per epoch (losses and validation figures), then the test figures and run facts."""
    regression = metrics["task"] == "regression"
    training = metrics["training"]
    columns = (("rmse", "val RMSE"), ("mae", "val MAE")) if regression else tuple(
        (key, f"val {name}") for key, name in CLASSIFICATION_COLUMNS)
    rows = [(e["epoch"], e["train_loss"], e["val_loss"], *(_shown(e.get(k)) for k, _ in columns),
             "*" if e["epoch"] == training["best_epoch"] else "") for e in training["epochs"]]
    parts = [format_table(rows, headers=("epoch", "train loss", "val loss", *(n for _, n in columns), "best"))]
    test = metrics["splits"].get("test")
    if test:
        keys = ([k for k in test if k.startswith(("rmse", "mae"))] if regression
                else [k for k, _ in CLASSIFICATION_COLUMNS])
        facts = [("windows", test["n"])] + ([] if regression else [("positives", test["positives"]),
                                                                   ("threshold (best val F1)", test["threshold"])])
        facts += [(key, _shown(test[key])) for key in keys]
        if not regression:
            facts += [("precision", test["precision"]), ("recall", _shown(test["recall"])),
                      ("confusion [[tn, fp], [fn, tp]]", test["confusion_matrix"])]
        parts.append(format_table(facts, headers=("test", "value")))
    parts.append(format_table([
        ("best epoch", f"{training['best_epoch']} ({training['metric']} {training['best_value']:.4f})"),
        ("trainable parameters", f"{training['parameters']['trainable']:,} of {training['parameters']['total']:,}"),
        ("train seconds", training["train_seconds"]),
        ("device", training["device"]),
    ], headers=("run", "value")))
    return "\n\n".join(parts)
