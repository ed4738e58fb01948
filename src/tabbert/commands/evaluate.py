"""``tabbert evaluate``: metrics, curves and the decision threshold of a fine-tuned model on one split.

Example::

    tabbert evaluate --model runs/finetune --data prepared/cards --split test
    tabbert evaluate --model runs/finetune --data prepared/cards --threshold fpr:0.001

Classification: F1, precision and recall at the threshold resolved on the validation split from
``--threshold`` (a number, ``fpr:RATE``, ``alerts:N`` per day, or ``best-f1``: the default),
ROC-AUC, PR-AUC, recall and precision at 0.1 % and 1 % false-positive rate, the confusion matrix,
and PR and ROC curves as PNG in the run directory. Regression: RMSE and MAE per target, in
their own units. Every figure is merged into the run's ``metrics.json`` under ``"splits"``.
"""

from __future__ import annotations

import argparse

from tabbert.reporting import format_table

SKIPPED = ("split", "data", "plots")


def configure(parser: argparse.ArgumentParser) -> None:
    from tabbert.options import ComputeOptions, add_arguments, add_threshold_option

    parser.add_argument("--model", required=True, help="fine-tuning run directory, or its model/ subdirectory")
    parser.add_argument("--data", required=True, help="prepared dataset directory (the model's schema)")
    parser.add_argument("--split", choices=("train", "val", "test"), default="test",
                        help="split to score (default test)")
    add_threshold_option(parser)
    parser.add_argument("--batch-size", type=int, default=256, help="windows per batch (default 256)")
    add_arguments(parser, ComputeOptions)


def run(args: argparse.Namespace) -> int:
    from tabbert.evaluation import evaluate
    from tabbert.options import ComputeOptions
    from tabbert.runs import run_paths
    from tabbert.threads import use_threads

    compute = ComputeOptions.from_arguments(args)
    use_threads(compute.threads)
    result = evaluate(args.model, args.data, args.split, threshold=args.threshold, batch_size=args.batch_size,
                      device=compute.device)
    print(summary(result))
    run_dir, _ = run_paths(args.model)
    written = ", ".join(result.get("plots", [])) or "no curves"
    print(f"figures merged into {run_dir / 'metrics.json'}; {written}")
    return 0


def summary(result: dict) -> str:
    """The split's figures as a two-column table (undefined ones shown as n/a)."""
    rows = [(key, "n/a (undefined)" if value is None else value)
            for key, value in result.items() if key not in SKIPPED]
    return format_table(rows, headers=(f"{result['split']}", "value"))
