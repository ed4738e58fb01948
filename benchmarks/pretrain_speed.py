"""Pre-training speed (windows per second) of each model size, and where its loss stands after it.

Generates a card dataset, prepares it, then runs ``pretrain`` for a fixed number of steps per
model size and thread count. Speed excludes evaluation; each run starts from the same seed.

    python benchmarks/pretrain_speed.py                                  # tiny and small, 1 and 2 threads
    python benchmarks/pretrain_speed.py --sizes paper --steps 10 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
from pathlib import Path

import torch

from tabbert.data.preparation import prepare
from tabbert.data.synthetic import generate_transactions, write_transactions
from tabbert.reporting import markdown_table
from tabbert.training.pretrain import pretrain

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "pretrain_speed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=60, help="generated card holders (default 60, ~60k rows)")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=("tiny", "small", "paper"))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="torch threads to try")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run (default 40)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "pretrain_speed.json")
    args = parser.parse_args()

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    write_transactions(generate_transactions(args.users, seed=0), WORK / "card.csv")
    data = prepare("card", WORK / "card.csv", WORK / "prepared")

    results = []
    for size in args.sizes:
        for threads in args.threads:
            torch.set_num_threads(threads)
            metrics = pretrain(data.path, WORK / f"run_{size}_{threads}", size=size, batch_size=args.batch_size,
                               max_steps=args.steps, save_steps=10**9)
            results.append({
                "model": size, "parameters": metrics["model"]["parameters"], "threads": threads,
                "steps": metrics["steps"], "windows_per_second": round(metrics["windows_per_second"], 1),
                "train_loss": round(metrics["train_loss"], 4), "val_loss": round(metrics["val_loss"], 4),
            })
    headers = list(results[0])
    print(markdown_table([[row[key] for key in headers] for row in results], headers))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__},
        "rows": data.n_rows, "train_windows": data.meta["windows"]["train"], "batch_size": args.batch_size,
        "results": results,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
