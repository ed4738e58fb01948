"""``tabbert generate-data``: synthetic card transactions in the IBM card file's layout.

Example::

    tabbert generate-data --users 300 --seed 0 --out data/cards.csv

The suffix of ``--out`` picks the format: ``.csv`` (the real file's layout), ``.csv.gz`` or
``.parquet``. The same flags always write the same rows.
"""

from __future__ import annotations

import argparse
import time

import polars as pl

from tabbert.reporting import format_table


def configure(parser: argparse.ArgumentParser) -> None:
    from tabbert.data.synthetic import DEFAULT_FRAUD_RATE

    parser.add_argument("--users", type=int, default=300, help="number of card holders (default 300)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed; the same seed writes the same file (default 0)")
    parser.add_argument("--out", required=True, help="output file: .csv, .csv.gz or .parquet")
    parser.add_argument("--rows-per-user", type=int, default=1000,
                        help="average transactions per user; each user's count varies around it (default 1000)")
    parser.add_argument("--fraud-rate", type=float, default=DEFAULT_FRAUD_RATE,
                        help="share of fraudulent rows, which come in episodes on compromised cards "
                        f"(default {DEFAULT_FRAUD_RATE})")


def run(args: argparse.Namespace) -> int:
    from tabbert.data.synthetic import (
        generate_transactions,
        output_format,
        write_transactions,
    )

    output_format(args.out)  # a bad suffix fails before any work

    began = time.perf_counter()
    frame = generate_transactions(args.users, args.seed, rows_per_user=args.rows_per_user, fraud_rate=args.fraud_rate)
    generated = time.perf_counter()
    write_transactions(frame, args.out)
    seconds = time.perf_counter() - began
    print(summary(frame, seconds, generated - began))
    print(f"transactions written to {args.out}")
    return 0


def summary(frame: pl.DataFrame, seconds: float, generate_seconds: float) -> str:
    """Rows, users, cards, fraud, time span and speed of a generated frame, as a table."""
    stats = frame.select(
        users=pl.col("User").n_unique(),
        cards=pl.struct("User", "Card").n_unique(),
        fraud=(pl.col("Is Fraud?") == "Yes").sum(),
        first=pl.date("Year", "Month", "Day").min(),
        last=pl.date("Year", "Month", "Day").max(),
    ).row(0, named=True)
    rows = frame.height
    return format_table([
        ("rows", f"{rows:,}"),
        ("users", f"{stats['users']:,}"),
        ("cards", f"{stats['cards']:,}"),
        ("fraud rows", f"{stats['fraud']:,} ({100 * stats['fraud'] / max(rows, 1):.3f} %)"),
        ("time span", f"{stats['first']} to {stats['last']}"),
        ("seconds", f"{seconds:.2f} (generate {generate_seconds:.2f}, write {seconds - generate_seconds:.2f})"),
        ("rows/s", f"{rows / max(seconds, 1e-9):,.0f}"),
    ])
