"""``tabbert baseline``: the reference models TabBERT is compared with, on the same windows.

Kinds
-----
``lightgbm``  gradient-boosted trees on window aggregates (amount statistics, gaps, category
              counts, distinct merchants, novelty of the last row, last row's categories).
``lstm``      field embeddings trained from scratch, then the LSTM head of the TabBERT recipe.
``mlp``       field embeddings trained from scratch, then the MLP head.

Example::

    tabbert baseline --data prepared/cards --kind lightgbm --out runs/lightgbm --label-mode any --seed 0

The run directory receives the model, ``metrics.json`` (validation and test figures; the
classification threshold is the best-F1 one on validation, applied unchanged to test) and the
PR/ROC curves.
"""

from __future__ import annotations

import argparse

from tabbert.reporting import format_table

CLASSIFICATION_COLUMNS = (
    ("pr_auc", "PR-AUC"), ("roc_auc", "ROC-AUC"), ("f1", "F1"), ("precision", "precision"),
    ("recall", "recall"), ("recall_at_1pct_fpr", "recall@1%FPR"),
)  # fmt: skip


def configure(parser: argparse.ArgumentParser) -> None:
    from tabbert.options import BaselineOptions, add_arguments

    parser.add_argument("--data", required=True, help="prepared dataset directory (from `tabbert prepare`)")
    parser.add_argument("--out", required=True, help="new run directory")
    add_arguments(parser, BaselineOptions)


def run(args: argparse.Namespace) -> int:
    from tabbert.baselines import train_baseline
    from tabbert.commands.finetune import summary as finetune_summary
    from tabbert.options import BaselineOptions

    metrics = train_baseline(args.data, args.out, BaselineOptions.from_arguments(args))
    print(summary(metrics) if metrics["kind"] == "lightgbm" else finetune_summary(metrics))
    print(f"run written to {args.out}")
    return 0


def summary(metrics: dict) -> str:
    """Validation and test figures of a LightGBM run, then run facts and the top features."""
    splits, training = metrics["splits"], metrics["training"]
    if metrics["task"] == "regression":
        keys = [key for key in splits["test"] if key.startswith(("rmse", "mae"))]
        rows = [(split, figures["n"], *(figures[key] for key in keys)) for split, figures in splits.items()]
        table = format_table(rows, headers=("lightgbm", "windows", *keys))
    else:
        rows = [(split, figures["n"], figures["positives"],
                 *("n/a" if figures[key] is None else figures[key] for key, _ in CLASSIFICATION_COLUMNS))
                for split, figures in splits.items()]
        headers = ("lightgbm", "windows", "positives", *(name for _, name in CLASSIFICATION_COLUMNS))
        table = format_table(rows, headers=headers)
    features = training["features"]
    best = training["best_iteration"]
    facts = [
        ("features", f"{features['count']} ({features['categorical']} categorical)"),
        ("feature seconds", f"{features['seconds']} ({features['windows_per_second']:,.0f} windows/s)"),
        ("train seconds", training["train_seconds"]),
        ("best iteration", ", ".join(f"{k} {v}" for k, v in best.items()) if isinstance(best, dict) else best),
    ]
    if metrics["threshold"] is not None:
        facts.append(("threshold (best val F1)", metrics["threshold"]))
    top = [(item["feature"], item["gain_share"]) for item in training["feature_importance"]]
    return "\n\n".join([table, format_table(facts, headers=("run", "value")),
                        format_table(top, headers=("feature", "gain share"))])
