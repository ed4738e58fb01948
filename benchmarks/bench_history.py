"""Cost of the causal history features of every row against ``prepare``, in one process.

Generates card transactions with the built-in generator (``--users 1000``: about 1 M rows),
writes them as CSV, then alternates ``prepare`` of that CSV and the history features of the
prepared rows (:class:`~tabbert.baselines.history.HistoryFeatures`: fitted, then computed from
the prepared arrays), and reports the median of each and their ratio.

    python benchmarks/bench_history.py --users 1000

Target: the features of every row cost at most twice ``prepare``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from targets import Target, check

from tabbert.baselines.history import HistoryFeatures
from tabbert.data.preparation import prepare
from tabbert.data.synthetic import generate_transactions, write_transactions

TARGET_RATIO = 2.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-history-") as work:
        work = Path(work)
        csv = work / "cards.csv"
        write_transactions(generate_transactions(args.users, seed=args.seed), csv)
        prepares, histories = [], []
        for repeat in range(args.repeats):
            out = work / f"prepared-{repeat}"
            began = time.perf_counter()
            data = prepare("card", csv, out)
            prepares.append(time.perf_counter() - began)
            began = time.perf_counter()
            layout = HistoryFeatures.fit(data)
            matrix = layout.transform(data)
            histories.append(time.perf_counter() - began)
            rows, n_features = matrix.shape
            del matrix, data
            shutil.rmtree(out)
    prepare_s, history_s = statistics.median(prepares), statistics.median(histories)
    ratio = history_s / prepare_s
    result = {
        "rows": rows,
        "features": n_features,
        "prepare_s": round(prepare_s, 3),
        "history_s": round(history_s, 3),
        "ratio": round(ratio, 2),
        "runs": {"prepare_s": [round(s, 3) for s in prepares], "history_s": [round(s, 3) for s in histories]},
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, Python {platform.python_version()}",
    }
    print(json.dumps(result, indent=2))
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / f"history_{args.users}u.json").write_text(json.dumps(result, indent=2) + "\n")
    return check([Target(f"history features of {rows:,} rows vs prepare", f"{ratio:.2f}x",
                         f"<= {TARGET_RATIO:g}x", ratio <= TARGET_RATIO)])


if __name__ == "__main__":
    sys.exit(main())
