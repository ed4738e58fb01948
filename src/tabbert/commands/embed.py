"""``tabbert embed``: encoder outputs of a pre-trained TabBERT for the windows of a prepared dataset.

Writes one Parquet file: per window the newest row's and the mean encoder output, or with
``--level row`` one vector per row of each window (see :mod:`tabbert.embeddings`).
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    from tabbert.embeddings import EMBED_BATCH_SIZE, LEVELS, SPLIT_CHOICES
    from tabbert.options import ComputeOptions, add_arguments

    parser.add_argument("--model", required=True, help="pre-training run, RUN or RUN/model")
    parser.add_argument("--data", required=True, help="prepared dataset directory made with the model's tokenizer")
    parser.add_argument("--out", required=True, help="Parquet file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    parser.add_argument("--split", choices=SPLIT_CHOICES, default="all", help="windows to embed (default all)")
    parser.add_argument("--level", choices=LEVELS, default="window",
                        help="window: last-row and mean vectors per window (default); "
                        "row: a vector per row of each window")
    parser.add_argument("--batch-size", type=int, default=EMBED_BATCH_SIZE,
                        help=f"windows per forward pass (default {EMBED_BATCH_SIZE})")
    add_arguments(parser, ComputeOptions)


def run(args: argparse.Namespace) -> int:
    from tabbert.embeddings import write_embeddings
    from tabbert.options import ComputeOptions
    from tabbert.threads import use_threads

    compute = ComputeOptions.from_arguments(args)
    use_threads(compute.threads)
    summary = write_embeddings(args.model, args.data, args.out, split=args.split, level=args.level,
                               batch_size=args.batch_size, device=compute.device,
                               overwrite=args.overwrite)
    print(f"{summary['records']:,} {args.level} embeddings of width {summary['hidden_size']} "
          f"({summary['windows']:,} windows) written to {args.out}")
    return 0
