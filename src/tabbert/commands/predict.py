"""``tabbert predict``: one score per row of a raw input file, from the window ending at that row.

Example::

    tabbert predict --model runs/finetune --input new_transactions.csv --out scores.csv
    tabbert predict --model runs/finetune --input new_transactions.csv --out scores.csv --threshold fpr:0.001

Each row is scored from itself and the previous rows of its entity in the input (time order);
rows with a shorter history than a window are padded in front and flagged. The output CSV keeps
the input's rows and order: row, entity, the input's identifying columns (and its label, when it
has one), score, history_rows, padded and predicted (at the ``--threshold``, resolved on the run's
validation scores). Categories the model never saw are counted per field in the summary; on
labelled input the summary also gives the classification figures at the threshold.
"""

from __future__ import annotations

import argparse

from tabbert.reporting import format_table


def configure(parser: argparse.ArgumentParser) -> None:
    from tabbert.options import SOURCES, ComputeOptions, add_arguments, add_threshold_option

    parser.add_argument("--model", required=True, help="fine-tuning run directory, or its model/ subdirectory")
    parser.add_argument("--input", required=True, help="raw rows to score: CSV, .csv.gz or Parquet (a folder for prsa)")
    parser.add_argument("--out", required=True, help="output CSV file")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    parser.add_argument("--source", choices=SOURCES, help="input format (default: the format the model was trained on)")
    parser.add_argument("--schema", help="schema file for --source generic (default: the one stored with the model; "
                        "a file that differs from it is an error)")
    add_threshold_option(parser)
    parser.add_argument("--batch-size", type=int, default=512, help="windows per batch (default 512)")
    add_arguments(parser, ComputeOptions)


def run(args: argparse.Namespace) -> int:
    from tabbert.atomic import check_output_file
    from tabbert.inference import score_table, write_scores
    from tabbert.options import ComputeOptions
    from tabbert.threads import use_threads

    check_output_file(args.out, overwrite=args.overwrite)
    compute = ComputeOptions.from_arguments(args)
    use_threads(compute.threads)
    prediction = score_table(args.model, args.input, source=args.source, schema=args.schema, threshold=args.threshold,
                             batch_size=args.batch_size, device=compute.device, progress=True)
    write_scores(prediction.scores, args.out)
    print(summary(prediction))
    if prediction.metrics is not None:
        print(figures(prediction.metrics))
    print(f"scores written to {args.out}")
    return 0


def summary(prediction) -> str:
    """Rows, entities, padding, unseen categories, dropped rows and timings of a prediction."""
    rows = prediction.scores.height
    table = [("rows scored", rows), ("entities", prediction.entities),
             ("rows with a padded (short) history", prediction.padded_rows)]
    table += [(f"dropped by the reader: {reason}", count) for reason, count in sorted(prediction.dropped.items())]
    if prediction.threshold is not None:
        threshold = prediction.threshold
        table += [("threshold", threshold.value), ("threshold spec", threshold.spec),
                  ("threshold source", threshold.source),
                  ("predicted positive", int(prediction.scores["predicted"].sum()))]
    unseen = {name: count for name, count in prediction.unseen.items() if count}
    table += [(f"unseen categories: {name}", count) for name, count in unseen.items()] or [("unseen categories", 0)]
    seconds = prediction.seconds
    table += [(f"seconds {step}", seconds[step]) for step in ("load", "read", "tokenize", "model", "total")]
    table.append(("rows per second", round(rows / max(seconds["total"], 1e-9))))
    return format_table(table, headers=("predict", "value"))


def figures(metrics: dict) -> str:
    """The classification figures of labelled input at the threshold (undefined ones shown as n/a)."""
    rows = [(key, "n/a (undefined)" if value is None else value) for key, value in metrics.items()]
    return format_table(rows, headers=("labelled input", "value"))
