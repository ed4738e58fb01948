"""``tabbert baseline``: the reference models TabBERT is compared with, on the same windows.

Kinds
-----
``lightgbm``  gradient-boosted trees on window aggregates (amount statistics, gaps, category
              counts, distinct merchants, novelty of the last row, last row's categories).
``lstm``      field embeddings trained from scratch, then the LSTM head of the TabBERT recipe.
``mlp``       field embeddings trained from scratch, then the MLP head.

Example::

    tabbert baseline --data prepared/cards --kind lightgbm --out runs/lightgbm --label any --seed 0

The run directory receives the model, ``metrics.json`` (validation and test figures; the
classification threshold is the best-F1 one on validation, applied unchanged to test) and the
PR/ROC curves.
"""

from __future__ import annotations

import argparse

from tabbert.reporting import format_table

KINDS = ("lightgbm", "lstm", "mlp")
CLASSIFICATION_COLUMNS = (
    ("pr_auc", "PR-AUC"), ("roc_auc", "ROC-AUC"), ("f1", "F1"), ("precision", "precision"),
    ("recall", "recall"), ("recall_at_1pct_fpr", "recall@1%FPR"),
)  # fmt: skip


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="prepared dataset directory (from `tabbert prepare`)")
    parser.add_argument("--kind", required=True, choices=KINDS, help="which baseline to train")
    parser.add_argument("--out", required=True, help="new run directory")
    parser.add_argument("--label", choices=("any", "last"), default="any",
                        help="window label: any row positive (default, the paper) or the last row's label")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--learning-rate", type=float,
                        help="learning rate (default 0.05 for lightgbm, the fine-tuning default of the head otherwise)")
    trees = parser.add_argument_group("lightgbm")
    trees.add_argument("--rounds", type=int, help="most boosting rounds (default 2000)")
    trees.add_argument("--early-stopping", type=int,
                       help="stop after this many rounds without a better validation score (default 100)")
    trees.add_argument("--num-leaves", type=int, help="leaves per tree (default 31)")
    trees.add_argument("--scale-pos-weight", type=_pos_weight,
                       help="weight of positive windows: a number, or 'balanced' for negatives/positives (default 1)")
    trees.add_argument("--threads", type=int, help="LightGBM threads (default: all cores; results do not depend on it)")
    neural = parser.add_argument_group("lstm and mlp")
    neural.add_argument("--epochs", type=int, help="most epochs (default: the fine-tuning default)")
    neural.add_argument("--batch-size", type=int, help="windows per batch (default: the fine-tuning default)")
    neural.add_argument("--size", choices=("tiny", "small", "paper"),
                        help="embedding and row widths of that model size (default: the fine-tuning default)")
    neural.add_argument("--device", help="cpu or cuda (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    if args.kind == "lightgbm":
        from tabbert.baselines.lightgbm import train_lightgbm

        options = _given(args, "learning_rate", "rounds", "early_stopping", "num_leaves", "scale_pos_weight", "threads")
        metrics = train_lightgbm(args.data, args.out, label=args.label, seed=args.seed, **options)
        print(summary(metrics))
    else:
        from tabbert.commands.finetune import summary as finetune_summary
        from tabbert.training.finetune import finetune

        options = _given(args, "epochs", "batch_size", "size", "device")
        if args.learning_rate is not None:
            options["lr"] = args.learning_rate
        metrics = finetune(args.data, args.out, encoder="raw", head=args.kind, label=args.label, seed=args.seed,
                           **options)
        print(finetune_summary(metrics))
    print(f"run written to {args.out}")
    return 0


def _given(args: argparse.Namespace, *names: str) -> dict:
    """The options among ``names`` set on the command line (the rest keep the library defaults)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _pos_weight(text: str) -> float | str:
    if text == "balanced":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'balanced', got {text!r}") from None


def summary(metrics: dict) -> str:
    """Validation and test figures of a LightGBM run, then run facts and the top features."""
    splits = ("val", "test")
    if metrics["task"] == "regression":
        keys = [key for key in metrics["test"] if key.startswith(("rmse", "mae"))]
        rows = [(split, metrics[split]["n"], *(metrics[split][key] for key in keys)) for split in splits]
        table = format_table(rows, headers=("lightgbm", "windows", *keys))
    else:
        rows = [(split, metrics[split]["n"], metrics[split]["positives"],
                 *("n/a" if metrics[split][key] is None else metrics[split][key] for key, _ in CLASSIFICATION_COLUMNS))
                for split in splits]
        table = format_table(rows, headers=("lightgbm", "windows", "positives", *(n for _, n in CLASSIFICATION_COLUMNS)))
    features = metrics["features"]
    best = metrics["best_iteration"]
    facts = [
        ("features", f"{features['count']} ({features['categorical']} categorical)"),
        ("feature seconds", f"{features['seconds']} ({features['windows_per_second']:,.0f} windows/s)"),
        ("train seconds", metrics["train_seconds"]),
        ("best iteration", ", ".join(f"{k} {v}" for k, v in best.items()) if isinstance(best, dict) else best),
    ]
    if "threshold" in metrics:
        facts.append(("threshold (best val F1)", metrics["threshold"]))
    top = [(item["feature"], item["gain_share"]) for item in metrics["feature_importance"]]
    return "\n\n".join([table, format_table(facts, headers=("run", "value")),
                        format_table(top, headers=("feature", "gain share"))])
