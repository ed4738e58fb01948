"""Throughput of ``tabbert predict`` against the bare model forward on the same windows.

Generates a card file, prepares it (for the tokenizer and the windows), saves an untrained
classifier (speed does not depend on the weights), then alternates, trial by trial:

* **bare forward**: the loaded model over exactly the windows predict scores, one per row
  ending at it with [PAD] rows in front for a short history, built beforehand from the
  prepared token matrix and fed in predict's batch size;
* **predict**: ``score_table(model_dir, csv)``, everything from loading the model and reading
  the CSV to the finished score frame.

Both run in one process so a busy machine slows them alike; medians over the trials give rows
per second and their ratio, in wall time and, steadier on a shared machine, in CPU time.
Predict's own step timings (load, read, tokenize, model) are reported too. The first trial
also checks that both score every row alike, which proves the bare forward saw predict's windows.

    python benchmarks/bench_predict.py --threads 1                     # 100 users, ~100k rows
    python benchmarks/bench_predict.py --users 20 --threads 1          # results/predict_speed.json

Target: predict runs at 0.5 or more of the bare forward's rows per second (tokenizing and I/O cost
at most as much as the model). The script prints it and exits with status 1 when it is missed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from targets import Target, check

from tabbert.atomic import write_json_atomic
from tabbert.data.preparation import prepare
from tabbert.data.prepared import PreparedDataset
from tabbert.data.synthetic import generate_transactions, write_transactions
from tabbert.data.tokenizer import PAD_ID
from tabbert.inference import PREDICT_BATCH_SIZE, Prediction, score_table
from tabbert.models.classifier import TabBertForSequenceClassification, save_classifier
from tabbert.models.configuration import TabBertConfig
from tabbert.models.tabbert import TabBertModel
from tabbert.options import SIZES
from tabbert.reporting import format_table
from tabbert.runs import load_run

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "bench_predict"
TARGET_RATIO = 0.5
SCORE_TOLERANCE = 1e-4
STEPS = ("load", "read", "tokenize", "model")


def clock() -> tuple[float, float]:
    """A reading of the wall clock and of this process's CPU clock."""
    return time.perf_counter(), time.process_time()


def since(started: tuple[float, float]) -> tuple[float, float]:
    """Wall and CPU seconds since ``started`` (a :func:`clock` reading)."""
    wall, cpu = clock()
    return wall - started[0], cpu - started[1]


def prepared_card_data(users: int, rows_per_user: int, seed: int) -> tuple[Path, PreparedDataset]:
    """A freshly generated card CSV and its prepared dataset, under the work directory."""
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    csv = WORK / "card.csv"
    write_transactions(generate_transactions(users, seed=seed, rows_per_user=rows_per_user), csv)
    return csv, prepare("card", csv, WORK / "prepared", seed=seed)


def save_untrained_classifier(data: PreparedDataset, size: str, seed: int) -> Path:
    """An untrained ``size`` classifier for ``data``'s tokenizer, saved as a model directory."""
    tokenizer = data.tokenizer
    config = TabBertConfig.for_tokenizer(tokenizer, size, seq_len=data.seq_len)
    torch.manual_seed(seed)
    model = TabBertForSequenceClassification.from_encoder(TabBertModel(config), seq_len=data.seq_len)
    return save_classifier(model, tokenizer, WORK / "model")


def windows_ending_at_each_row(data: PreparedDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids [n_rows, L, F]`` and ``real [n_rows, L]`` of the window that ends at every row,
    in the prepared (entity-then-time) order; rows before the entity's first are [PAD]."""
    entity_start = np.repeat(data.entity_offsets[:-1], np.diff(data.entity_offsets))
    rows = np.arange(data.n_rows)[:, None] + np.arange(1 - data.seq_len, 1)
    real = rows >= entity_start[:, None]
    ids = np.where(real[..., None], data.tokens[np.maximum(rows, 0)], PAD_ID).astype(np.int64)
    return torch.from_numpy(ids), torch.from_numpy(real)


def bare_forward(model: TabBertForSequenceClassification, ids: torch.Tensor, real: torch.Tensor,
                 batch_size: int) -> tuple[tuple[float, float], np.ndarray]:
    """Wall and CPU seconds to score all windows in batches (a mask only where a batch has padding),
    and the scores."""
    scores = []
    started = clock()
    with torch.inference_mode():
        for begin in range(0, len(ids), batch_size):
            batch_real = real[begin : begin + batch_size]
            mask = None if bool(batch_real.all()) else batch_real.long()
            scores.append(model.scores(model(ids[begin : begin + batch_size], attention_mask=mask).logits))
    return since(started), torch.cat(scores).numpy()


def timed_predict(model_dir: Path, csv: Path, batch_size: int) -> tuple[tuple[float, float], Prediction]:
    """Wall and CPU seconds of ``score_table`` on the CSV, and its result."""
    started = clock()
    prediction = score_table(model_dir, csv, batch_size=batch_size)
    return since(started), prediction


def score_difference(prediction: Prediction, bare_scores: np.ndarray, row_ids: np.ndarray) -> float:
    """Largest difference between predict's score and the bare forward's for the same row.

    Exits when predict and the prepared dataset hold different rows, or the scores disagree:
    then the two did not score the same windows and the comparison would be void.
    """
    rows = prediction.scores.get_column("row").to_numpy().astype(np.int64)
    order = np.argsort(rows)
    found = order[np.searchsorted(rows, row_ids, sorter=order).clip(max=len(rows) - 1)]
    if len(rows) != len(row_ids) or not np.array_equal(rows[found], row_ids):
        raise SystemExit("predict and the prepared dataset hold different rows; the comparison would be void")
    difference = float(np.abs(prediction.scores.get_column("score").to_numpy()[found] - bare_scores).max())
    if difference > SCORE_TOLERANCE:
        raise SystemExit(f"predict and the bare forward disagree by up to {difference:.2e} on a row's score")
    return difference


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100, help="generated card holders (default 100)")
    parser.add_argument("--rows-per-user", type=int, default=1000, help="average rows per holder (default 1000)")
    parser.add_argument("--size", default="small", choices=SIZES, help="model size (default small)")
    parser.add_argument("--trials", type=int, default=3, help="alternating trials of each (default 3)")
    parser.add_argument("--batch-size", type=int, default=PREDICT_BATCH_SIZE,
                        help=f"windows per forward, predict's and the bare one's (default {PREDICT_BATCH_SIZE})")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "predict_speed.json")
    args = parser.parse_args()
    if min(args.users, args.rows_per_user, args.trials, args.batch_size) < 1:
        parser.error("--users, --rows-per-user, --trials and --batch-size must be at least 1")

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    csv, data = prepared_card_data(args.users, args.rows_per_user, args.seed)
    model_dir = save_untrained_classifier(data, args.size, args.seed)
    model = load_run(model_dir).model
    ids, real = windows_ending_at_each_row(data)
    bare_forward(model, ids[: args.batch_size], real[: args.batch_size], args.batch_size)  # warm-up
    n_rows = data.n_rows
    print(f"{n_rows:,} rows of {args.users} users, {args.size} model, {torch.get_num_threads()} torch threads",
          flush=True)

    runs = {
        "bare": lambda: bare_forward(model, ids, real, args.batch_size),
        "predict": lambda: timed_predict(model_dir, csv, args.batch_size),
    }
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    steps: dict[str, list[float]] = {step: [] for step in STEPS}
    for trial in range(args.trials):
        outputs = {}
        for name in runs if trial % 2 == 0 else reversed(runs):
            elapsed, outputs[name] = runs[name]()
            seconds[name].append(elapsed)
        prediction = outputs["predict"]
        for step in STEPS:
            steps[step].append(prediction.seconds[step])
        if trial == 0:
            max_difference = score_difference(prediction, outputs["bare"], data.row_ids)
        print(f"trial {trial + 1}: bare forward {n_rows / seconds['bare'][-1][0]:,.0f} rows/s, "
              f"predict {n_rows / seconds['predict'][-1][0]:,.0f} rows/s", flush=True)

    (bare_s, bare_cpu), (predict_s, predict_cpu) = (
        (statistics.median(wall for wall, _ in seconds[name]), statistics.median(cpu for _, cpu in seconds[name]))
        for name in ("bare", "predict")
    )
    ratio = bare_s / predict_s
    step_medians = {step: round(statistics.median(values), 3) for step, values in steps.items()}
    print(format_table([
        ["bare forward", f"{bare_s:.2f}", f"{bare_cpu:.2f}", round(n_rows / bare_s)],
        ["predict", f"{predict_s:.2f}", f"{predict_cpu:.2f}", round(n_rows / predict_s)],
        *([f"  {step}", f"{value:.2f}", "", ""] for step, value in step_medians.items()),
    ], ["run", "wall s", "CPU s", "rows/s"]))
    print(f"predict / bare forward: {ratio:.2f} in wall time, {bare_cpu / predict_cpu:.2f} in CPU time "
          f"(target >= {TARGET_RATIO})")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, {
        "machine": {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "polars_threads": pl.thread_pool_size(),
                    "load_average_before": [round(v, 2) for v in load_before],
                    "load_average_after": [round(v, 2) for v in os.getloadavg()]},
        "users": args.users, "rows_per_user": args.rows_per_user, "rows": n_rows, "entities": prediction.entities,
        "padded_rows": prediction.padded_rows, "model": args.size, "parameters": model.num_parameters(),
        "batch_size": args.batch_size, "trials": args.trials,
        "bare_forward_s": round(bare_s, 3), "predict_s": round(predict_s, 3),
        "bare_forward_rows_per_second": round(n_rows / bare_s, 1),
        "predict_rows_per_second": round(n_rows / predict_s, 1),
        "predict_to_bare_ratio": round(ratio, 3), "target_ratio_at_least": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "bare_forward_cpu_s": round(bare_cpu, 3), "predict_cpu_s": round(predict_cpu, 3),
        "predict_to_bare_cpu_ratio": round(bare_cpu / predict_cpu, 3),
        "predict_steps_s": step_medians,
        "max_score_difference": max_difference,
    })
    return check([Target("predict / bare forward", f"{ratio:.2f}", f">= {TARGET_RATIO}", ratio >= TARGET_RATIO)])


if __name__ == "__main__":
    sys.exit(main())
