"""``tabbert baseline``: the reference models TabBERT is compared with, on the same windows.

Kinds
-----
``lightgbm``  gradient-boosted trees. Default (``--features history``): one example per row, from
              its entity's causal history (counts and sums over the last hour, day and week,
              values against the entity's earlier ones, whether it used this raw merchant,
              city, hour ... before, errors so far); negatives subsampled for training
              (``--negative-rate``), every row scored in evaluation; the run is scored by
              ``tabbert evaluate`` and ``tabbert predict``. ``--features window``: aggregates of
              the paper's windows (amount statistics, category counts, novelty in the window).
``lstm``      field embeddings trained from scratch, then the LSTM head of the TabBERT recipe.
``mlp``       field embeddings trained from scratch, then the MLP head.

Example::

    tabbert baseline --data prepared/cards --kind lightgbm --out runs/lightgbm --negative-rate 0.1
    tabbert baseline --data prepared/cards --kind lightgbm --out runs/lgbm-emb --embeddings runs/pretrain/model
    tabbert baseline --data prepared/cards --kind lightgbm --features window --label-mode any --out runs/paper

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
        table = format_table(rows, headers=("lightgbm", "examples", *keys))
    else:
        rows = [(split, figures["n"], figures["positives"],
                 *("n/a" if figures[key] is None else figures[key] for key, _ in CLASSIFICATION_COLUMNS))
                for split, figures in splits.items()]
        headers = ("lightgbm", "examples", "positives", *(name for _, name in CLASSIFICATION_COLUMNS))
        table = format_table(rows, headers=headers)
    features = training["features"]
    best = training["best_iteration"]
    unit = "rows" if "rows_per_second" in features else "windows"
    facts = [
        ("features", f"{features['count']} ({features['categorical']} categorical)"),
        ("feature seconds", f"{features['seconds']} ({features[unit + '_per_second']:,.0f} {unit}/s)"),
        ("train seconds", training["train_seconds"]),
        ("best iteration", ", ".join(f"{k} {v}" for k, v in best.items()) if isinstance(best, dict) else best),
    ]
    if metrics["threshold"] is not None:
        facts.append(("threshold (best val F1)", metrics["threshold"]))
    top = [(item["feature"], item["gain_share"]) for item in training["feature_importance"]]
    return "\n\n".join([table, format_table(facts, headers=("run", "value")),
                        format_table(top, headers=("feature", "gain share"))])
