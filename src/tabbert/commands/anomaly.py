"""``tabbert anomaly``: row surprise, a label-free anomaly score of every row from its history
(masked-row surprise, or next-row surprise in one pass per window for a causal model).

Writes ``.npy`` (``[n_rows, 1 + fields]``: the total, then each field, rows in the prepared order;
ready for ``baseline --extra-features``) or ``.parquet``/``.csv`` (one record per row with its
source row, entity, split and label). See :mod:`tabbert.anomaly`.
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    from tabbert.anomaly import SURPRISE_BATCH_SIZE

    parser.add_argument("--model", required=True, nargs="+",
                        help="pre-training run (RUN or RUN/model), or one run per fold of `pretrain --folds K` for "
                        "out-of-fold scores")
    parser.add_argument("--data", required=True, help="prepared dataset directory made with the model's tokenizer")
    parser.add_argument("--out", required=True, help="file to write: .npy, .parquet or .csv")
    parser.add_argument("--split", choices=("all", "train", "val", "test"), default="all",
                        help="rows to score (default all)")
    parser.add_argument("--context", type=int, help="rows of history per row (default: the dataset's --seq-len)")
    parser.add_argument("--batch-size", type=int, default=SURPRISE_BATCH_SIZE,
                        help=f"rows per forward pass (default {SURPRISE_BATCH_SIZE})")
    parser.add_argument("--embeddings", action="store_true",
                        help="also write the encoder's output that predicts the row: at the masked row, or at the "
                        "row before for a causal model (the history's expectation of it)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads (default: torch's, or the cores left free when the machine is busy)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def run(args: argparse.Namespace) -> int:
    import sys
    import time
    from pathlib import Path

    import numpy as np

    from tabbert.anomaly import row_surprise, write_surprise
    from tabbert.data.prepared import PreparedDataset
    from tabbert.errors import TabbertError
    from tabbert.metrics import classification_metrics
    from tabbert.reporting import format_table

    from tabbert.threads import use_threads

    use_threads(args.threads)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise TabbertError(f"{out}: exists; choose a new --out or give --overwrite")
    started = time.perf_counter()
    surprise, summary = row_surprise(args.model, args.data, split=args.split, context=args.context,
                                     batch_size=args.batch_size, device=args.device, embeddings=args.embeddings,
                                     progress=sys.stderr.isatty())
    write_surprise(args.data, surprise, out)
    seconds = time.perf_counter() - started
    rows = [("rows scored", f"{summary['rows']:,}"), ("models", summary["models"]),
            ("context rows", summary["context"]), ("forward windows", f"{summary['forwards']:,}"),
            ("seconds", f"{seconds:.1f}"),
            ("rows/s", f"{summary['rows'] / max(seconds, 1e-9):,.0f}")]
    if summary["unscored_rows"]:
        rows.append(("unscored rows", f"{summary['unscored_rows']:,} (entities' first rows: no history to predict "
                     "them from)"))
    if summary["in_sample_rows"]:
        rows.append(("in-sample rows", f"{summary['in_sample_rows']:,} (training entities the model pre-trained "
                     "on; use --folds for out-of-fold scores)"))
    data = PreparedDataset(args.data)
    if data.labels is not None:
        for index, name in enumerate(("train", "val", "test")):
            scored = ~np.isnan(surprise[:, 0]) & (data.row_splits == index)
            labels = np.asarray(data.labels)[scored].astype(np.int64)
            if 0 < labels.sum() < labels.size:
                figures = classification_metrics(labels, surprise[scored, 0])
                rows.append((f"{name} PR-AUC / ROC-AUC (no labels used)",
                             f"{figures['pr_auc']:.4f} / {figures['roc_auc']:.4f} ({int(labels.sum())} positives)"))
    kind = "next-row" if summary["objective"] == "causal" else "masked-row"
    print(format_table(rows, [f"{kind} surprise", ""]))
    print(f"written to {out} (columns: {', '.join(summary['columns'][:4])}, ...)")
    return 0
