"""``tabbert prepare``: raw table -> tokenized, windowed dataset directory."""

from __future__ import annotations

import argparse

from tabbert.data.windows import SPLIT_METHODS, SPLITS
from tabbert.reporting import format_table


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, choices=("card", "prsa", "generic"),
                        help="input format: IBM card transactions, UCI PRSA air quality, or generic with --schema")
    parser.add_argument("--input", required=True, help="CSV, .csv.gz or Parquet file (a folder for prsa)")
    parser.add_argument("--out", required=True, help="new directory for the prepared dataset")
    parser.add_argument("--schema", help="schema file (JSON or YAML) for --source generic")
    parser.add_argument("--seq-len", type=int, default=10, help="rows per window (default 10)")
    parser.add_argument("--stride", type=int, default=5, help="rows between window starts (default 5)")
    parser.add_argument("--split", choices=SPLIT_METHODS, default="entity",
                        help="entity (default, no leakage), time (by the window's newest row), or random "
                        "(the reference protocol; overlapping windows leak across splits)")
    parser.add_argument("--fractions", type=float, nargs=3, default=(0.6, 0.2, 0.2), metavar=("TRAIN", "VAL", "TEST"),
                        help="split fractions (default 0.6 0.2 0.2)")
    parser.add_argument("--cutoffs", nargs=2, metavar=("VAL_START", "TEST_START"),
                        help="with --split time: dates where validation and test begin (default: quantiles)")
    parser.add_argument("--keep-missing", action="store_true",
                        help="prsa: keep rows with missing inputs as a [MISSING] token instead of dropping them")
    parser.add_argument("--time-features", nargs="+", choices=("timestamp", "hour", "weekday", "gap"),
                        help="card: time fields to derive (default hour weekday gap; 'timestamp' is the reference's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")


def run(args: argparse.Namespace) -> int:
    from tabbert.data.preparation import prepare

    options = {}
    if args.keep_missing:
        options["keep_missing"] = True
    if args.time_features:
        options["time_features"] = tuple(args.time_features)
    dataset = prepare(
        args.source, args.input, args.out, schema=args.schema, seq_len=args.seq_len, stride=args.stride,
        split=args.split, fractions=tuple(args.fractions), cutoffs=args.cutoffs, seed=args.seed, **options,
    )
    print(summary(dataset.meta))
    print(f"prepared dataset written to {dataset.path}")
    return 0


def summary(meta: dict) -> str:
    """The preparation summary: rows in/kept/dropped, entities, windows per split, positives."""
    rows = [("rows read", meta["rows_in"]), ("rows kept", meta["rows_kept"])]
    rows += [(f"dropped: {reason}", count) for reason, count in sorted(meta["dropped"].items())]
    rows += [
        ("entities", meta["entities"]),
        (f"entities shorter than {meta['seq_len']} rows", meta["short_entities"]["count"]),
        ("fields", len(meta["fields"])),
    ]
    for split in SPLITS:
        rows.append((f"windows {split}", meta["windows"][split]))
    if "positive_windows" in meta:
        rows.append(("positive rows", meta["positive_rows"]))
        rate = meta["positive_rows"] / max(meta["rows_kept"], 1)
        rows.append(("positive row rate", f"{100 * rate:.3f} %"))
        for split in SPLITS:
            n, pos = meta["windows"][split], meta["positive_windows"][split]
            rows.append((f"positive windows {split}", f"{pos:,} ({100 * pos / max(n, 1):.2f} %)"))
    rows.append(("seconds", meta["seconds"]["total"]))
    return format_table(rows, headers=("prepare", "value"))
