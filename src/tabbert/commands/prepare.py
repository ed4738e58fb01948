"""``tabbert prepare``: raw table -> tokenized, windowed dataset directory."""

from __future__ import annotations

import argparse

from tabbert.data.windows import SPLITS
from tabbert.reporting import format_table


def configure(parser: argparse.ArgumentParser) -> None:
    from tabbert.options import PrepareOptions, add_arguments

    parser.add_argument("--input", required=True, help="CSV, .csv.gz or Parquet file (a folder for prsa)")
    parser.add_argument("--out", required=True, help="new directory for the prepared dataset")
    add_arguments(parser, PrepareOptions)


def run(args: argparse.Namespace) -> int:
    from tabbert.data.preparation import prepare
    from tabbert.options import PrepareOptions

    options = PrepareOptions.from_arguments(args)
    dataset = prepare(options.source, args.input, args.out, options)
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
    if "tokenizer_from" in meta:
        rows.append(("tokenizer reused from", meta["tokenizer_from"]))
        rows += [(f"unseen values ([UNK]): {name}", count) for name, count in meta["unseen"].items()]
    for split in SPLITS:
        rows.append((f"windows {split}", meta["windows"][split]))
    if not meta.get("labelled", True):
        rows.append(("labels", "none: for pre-training only"))
    if "positive_windows" in meta:
        rows.append(("positive rows", meta["positive_rows"]))
        rate = meta["positive_rows"] / max(meta["rows_kept"], 1)
        rows.append(("positive row rate", f"{100 * rate:.3f} %"))
        rule = {"any": "any row positive", "last": "last row positive"}[meta.get("positive_window_rule", "any")]
        for split in SPLITS:
            n, pos = meta["windows"][split], meta["positive_windows"][split]
            rows.append((f"positive windows {split} ({rule})", f"{pos:,} ({100 * pos / max(n, 1):.2f} %)"))
    rows.append(("seconds", meta["seconds"]["total"]))
    return format_table(rows, headers=("prepare", "value"))
