"""The entity's whole past against a window of rows: what the recency fields cost and what they bring.

A window of 10 rows cannot tell a merchant the card never used from one it used 30 rows ago.
tabbert gives every row recency fields (``prepare --recency``, on by default): for the merchant,
city, zip, MCC, channel and hour of the row, how long ago the card last used the same value, over
its whole past. This benchmark sets that choice beside the reference's 10 rows (``--recency
none``) and beside the other way to look further back, a longer window (``--seq-len 40``, no
recency fields), in one run on the same tables:

* cost: pre-training seconds for the same steps of the same number of windows, and the seconds
  of next-row surprise of every test row;
* what the model learns of the past, with no labels: the next-row surprise of the test rows
  ranked against their labels, on two tables of the built-in generator (seed 0): its own fraud,
  and its cards without fraud with rows taken over by a merchant, hour and (in person) city the
  card never used before (``bench_novelty.py --donors unseen``), which only the card's past
  gives away.

    python benchmarks/bench_context.py            # 300 users x 400 rows: results/context.json
    python benchmarks/bench_context.py --quick    # a smoke test

Target (printed; exit status 1 when missed): on the taken-over rows, the recency fields rank
better than the reference's 10 rows (test PR-AUC), for at most 1.5 times its pre-training time.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from bench_novelty import take_over
from targets import Target, check, log

from tabbert.anomaly import row_surprise
from tabbert.atomic import write_json_atomic
from tabbert.data.preparation import prepare
from tabbert.data.synthetic import generate_transactions, write_transactions
from tabbert.metrics import classification_metrics
from tabbert.reporting import markdown_table
from tabbert.training.pretrain import pretrain

HERE = Path(__file__).resolve().parent
REFERENCE, RECENCY, LONGER = "10 rows (reference)", "10 rows + recency fields (default)", "40 rows"
VARIANTS = {
    REFERENCE: {"seq_len": 10, "recency": ("none",)},
    RECENCY: {"seq_len": 10},
    LONGER: {"seq_len": 40, "recency": ("none",)},
}
TABLES = ("generator's fraud", "rows taken over")
MAX_PRETRAIN_RATIO = 1.5


def write_table(name: str, csv: Path, args: argparse.Namespace) -> None:
    if name == TABLES[0]:
        own = {} if args.fraud_rate is None else {"fraud_rate": args.fraud_rate}
        frame = generate_transactions(args.users, seed=args.seed, rows_per_user=args.rows_per_user, **own)
    else:
        clean = generate_transactions(args.users, seed=args.seed, rows_per_user=args.rows_per_user, fraud_rate=0.0)
        frame, _ = take_over(clean, args.rate, args.seed, donors="unseen")
    write_transactions(frame, csv)


def run_variant(work: Path, csv: Path, settings: dict, args: argparse.Namespace) -> dict:
    """Prepare, pre-train with next-row prediction and score the test rows; the figures and seconds."""
    data = prepare("card", csv, work / "prepared", seed=args.seed, **settings)
    started = time.perf_counter()
    pretrain(data.path, work / "pretrain", size=args.size, objective="causal", max_steps=args.pretrain_steps,
             batch_size=64, seed=args.seed, save_steps=args.pretrain_steps)
    pretrain_seconds = time.perf_counter() - started
    started = time.perf_counter()
    surprise, _ = row_surprise([work / "pretrain"], data.path, split="test", progress=False)
    surprise_seconds = time.perf_counter() - started
    test = data.points("test")
    scores = surprise[test, 0]
    scores = np.where(np.isnan(scores), np.nanmedian(scores), scores)  # an entity's first row
    figures = classification_metrics(np.asarray(data.labels)[test].astype(np.int64), scores)
    return {"fields": len(data.tokenizer.fields), "test_rows": int(test.size),
            "test_positives": int(np.asarray(data.labels)[test].sum()),
            "pretrain_seconds": round(pretrain_seconds, 1), "surprise_seconds": round(surprise_seconds, 1),
            "pr_auc": figures["pr_auc"], "roc_auc": figures["roc_auc"],
            "recall_at_1pct_fpr": figures["recall_at_1pct_fpr"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--rows-per-user", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0.003, help="share of the rows taken over")
    parser.add_argument("--fraud-rate", type=float, help="share of fraud rows in the first table (default: the "
                        "generator's own)")
    parser.add_argument("--size", default="small")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--work", type=Path, default=HERE / "_work" / "context")
    parser.add_argument("--quick", action="store_true", help="60 users of 200 rows, 1 %% fraud, tiny, 40 steps")
    args = parser.parse_args()
    if args.quick:
        args.users, args.rows_per_user, args.size, args.pretrain_steps = 60, 200, "tiny", 40
        args.rate = args.fraud_rate = 0.01
    work = args.work / ("quick" if args.quick else "full")
    shutil.rmtree(work, ignore_errors=True)

    started = time.perf_counter()
    results: dict[str, dict[str, dict]] = {}
    for table in TABLES:
        folder = work / table.replace(" ", "_").replace("'", "")
        folder.mkdir(parents=True)
        csv = folder / "cards.csv"
        write_table(table, csv, args)
        for variant, settings in VARIANTS.items():
            log(f"{table}: {variant}")
            results.setdefault(table, {})[variant] = run_variant(folder / variant.split(" (")[0].replace(" ", "_"),
                                                                 csv, settings, args)
    figure = lambda value: "n/a" if value is None else f"{value:.3f}"  # noqa: E731
    rows = [(table, variant, r["fields"], f"{r['pretrain_seconds']:.0f}", f"{r['surprise_seconds']:.1f}",
             figure(r["pr_auc"]), figure(r["roc_auc"]), figure(r["recall_at_1pct_fpr"]), r["test_positives"])
            for table, variants in results.items() for variant, r in variants.items()]
    print(markdown_table(rows, headers=("table", "context", "fields", "pre-training s", "surprise s",
                                        "test PR-AUC", "ROC-AUC", "recall at 1 % FPR", "test positives")))
    meta = {"users": args.users, "rows_per_user": args.rows_per_user, "seed": args.seed, "rate": args.rate,
            "fraud_rate": args.fraud_rate,
            "size": args.size, "pretrain_steps": args.pretrain_steps, "variants": VARIANTS,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "seconds": round(time.perf_counter() - started, 1)}
    out = work / "context.json" if args.quick else HERE / "results" / "context.json"
    write_json_atomic(out, {"meta": meta, "results": results})
    print(f"{meta['seconds']:.0f} s; results in {out}")

    taken = results[TABLES[1]]
    ratio = taken[RECENCY]["pretrain_seconds"] / taken[REFERENCE]["pretrain_seconds"]
    return check([
        Target("recency fields' label-free PR-AUC on the taken-over rows",
               f"{taken[RECENCY]['pr_auc']:.3f}", f"> the reference's {taken[REFERENCE]['pr_auc']:.3f}",
               taken[RECENCY]["pr_auc"] > taken[REFERENCE]["pr_auc"]),
        Target("recency fields' pre-training time", f"{ratio:.2f}x the reference's", f"<= {MAX_PRETRAIN_RATIO}x",
               ratio <= MAX_PRETRAIN_RATIO),
    ])


if __name__ == "__main__":
    sys.exit(main())
