"""``tabbert predict``: one score per row of a raw input file, from the window ending at that row.

Example::

    tabbert predict --model runs/finetune --input new_transactions.csv --out scores.csv

Each row is scored from itself and the previous rows of its entity in the input (time order);
rows with a shorter history than a window are padded in front and flagged. The output CSV keeps
the input's rows and order: row, entity, score, history_rows, padded (and predicted, at the
model's threshold). Categories the model never saw are counted per field in the summary.
"""

from __future__ import annotations

import argparse

from tabbert.reporting import format_table


def configure(parser: argparse.ArgumentParser) -> None:
    from tabbert.options import SOURCES

    parser.add_argument("--model", required=True, help="fine-tuning run directory, or its model/ subdirectory")
    parser.add_argument("--input", required=True, help="raw rows to score: CSV, .csv.gz or Parquet (a folder for prsa)")
    parser.add_argument("--out", required=True, help="output CSV file")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    parser.add_argument("--source", choices=SOURCES, help="input format (default: the format the model was trained on)")
    parser.add_argument("--schema", help="schema file for --source generic")
    parser.add_argument("--batch-size", type=int, default=512, help="windows per batch (default 512)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    from tabbert.atomic import check_output_file
    from tabbert.inference import score_table, write_scores

    check_output_file(args.out, overwrite=args.overwrite)
    prediction = score_table(args.model, args.input, source=args.source, schema=args.schema,
                             batch_size=args.batch_size, device=args.device, progress=True)
    write_scores(prediction.scores, args.out)
    print(summary(prediction))
    print(f"scores written to {args.out}")
    return 0


def summary(prediction) -> str:
    """Rows, entities, padding, unseen categories, dropped rows and timings of a prediction."""
    rows = prediction.scores.height
    table = [("rows scored", rows), ("entities", prediction.entities),
             ("rows with a padded (short) history", prediction.padded_rows)]
    table += [(f"dropped by the reader: {reason}", count) for reason, count in sorted(prediction.dropped.items())]
    if "predicted" in prediction.scores.columns:
        table.append(("predicted positive", int(prediction.scores["predicted"].sum())))
    unseen = {name: count for name, count in prediction.unseen.items() if count}
    table += [(f"unseen categories: {name}", count) for name, count in unseen.items()] or [("unseen categories", 0)]
    seconds = prediction.seconds
    table += [(f"seconds {step}", seconds[step]) for step in ("load", "read", "tokenize", "model", "total")]
    table.append(("rows per second", round(rows / max(seconds["total"], 1e-9))))
    return format_table(table, headers=("predict", "value"))
