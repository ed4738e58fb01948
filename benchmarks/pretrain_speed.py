"""Pre-training speed (windows per second) of each model size against a bare training loop of the same model.

Generates a card dataset, prepares it, then runs ``pretrain`` for a fixed number of steps per
model size and thread count. Speed excludes evaluation; each run starts from the same seed. The
reference, in the same process and on the same threads, is a plain PyTorch loop (forward,
backward, AdamW step) over the same number of batches of the same windows, masked beforehand:
their ratio is what the Trainer, the data loading and the masking add to the model's own step.

    python benchmarks/pretrain_speed.py                                  # tiny and small, 1 and 2 threads
    python benchmarks/pretrain_speed.py --sizes paper --steps 10 --threads 2

Target (printed, exit status 1 when missed): ``pretrain`` keeps at least 85 % of the bare loop's
speed at every thread count for the sizes meant for real data (``small``, ``paper``). ``tiny`` is
reported beside them: its step takes a few tens of milliseconds, so the run's one-time costs (the
final checkpoint, the accelerator's memory release) and the Trainer's few milliseconds per step
weigh on it as they do on no real run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
from targets import Target, check

from tabbert.data.collate import MaskedFieldCollator, WindowDataset
from tabbert.data.prepared import PreparedDataset
from tabbert.data.preparation import prepare
from tabbert.data.synthetic import generate_transactions, write_transactions
from tabbert.data.tokenizer import MASK_ID, PAD_ID
from tabbert.models.tabbert import TabBertForMaskedFieldModeling
from tabbert.reporting import markdown_table
from tabbert.training.pretrain import model_config, pretrain

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "pretrain_speed"
MIN_SHARE = 0.85  # of the bare loop's speed, for the sizes meant for real data


def bare_loop_speed(data: PreparedDataset, size: str, steps: int, batch_size: int, lr: float = 5e-4) -> float:
    """Windows per second of forward, backward and AdamW step alone, on ``steps`` batches masked beforehand."""
    torch.manual_seed(0)
    tokenizer = data.tokenizer
    model = TabBertForMaskedFieldModeling(model_config(tokenizer, data.seq_len, size, False, {})).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    masker = MaskedFieldCollator(tokenizer.field_offsets, tokenizer.field_vocab_sizes, mask_token_id=MASK_ID,
                                 pad_token_id=PAD_ID, generator=torch.Generator().manual_seed(0))
    windows = WindowDataset(data, "train")
    batches = [masker([windows[k % len(windows)] for k in range(step * batch_size, (step + 1) * batch_size)])
               for step in range(steps)]
    started = time.perf_counter()
    for batch in batches:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * batch_size / (time.perf_counter() - started)


def main() -> int:
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
            bare = bare_loop_speed(data, size, args.steps, args.batch_size)
            results.append({
                "model": size, "parameters": metrics["model"]["parameters"], "threads": threads,
                "steps": metrics["steps"], "windows_per_second": round(metrics["windows_per_second"], 1),
                "bare_loop_windows_per_second": round(bare, 1),
                "share_of_bare_loop": round(metrics["windows_per_second"] / bare, 3),
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
    targeted = [row for row in results if row["model"] != "tiny"] or results
    return check([Target(f"pretrain speed ({row['model']}, {row['threads']} threads)",
                         f"{row['share_of_bare_loop']:.0%} of the bare loop", f">= {MIN_SHARE:.0%}",
                         row["share_of_bare_loop"] >= MIN_SHARE) for row in targeted])


if __name__ == "__main__":
    sys.exit(main())
