"""Speed and memory of ``prepare`` against a bare Polars read of the same card CSV.

Each measurement runs in a fresh Python process (so peak RSS is that step's own), alternating
the reference and ours, and the median of the repeats is reported as a ratio. Prepare's own
reading step (the strict reader) is reported beside it, as ``reading_ratio``; so are prepare
without the recency fields (``--recency none``) and, from one more run, the seconds of each stage.

    python benchmarks/bench_prepare.py --users 1000                  # ~1 M rows
    python benchmarks/bench_prepare.py --users 24000 --repeats 1     # ~24 M rows

Targets (printed, exit status 1 when one is missed): prepare takes at most twice the bare read, and
its peak memory stays under 1 GB per million rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from targets import Target, check

WORK = Path(__file__).resolve().parent / "_work"
MAX_RATIO = 2.0
MAX_PEAK_MB_PER_MILLION_ROWS = 1024

# Peak memory is the child's own high-water mark (VmHWM): unlike ru_maxrss, it does not carry
# the parent's size over from the fork that started the child.
PEAK_MB = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024"

READ_ONLY = f"""
import sys, time, polars as pl
t = time.perf_counter()
frame = pl.read_csv(sys.argv[1], infer_schema=False)
print(time.perf_counter() - t, frame.height, {PEAK_MB}, 0.0)
"""

# argv[3]: "default", or "none" for no recency fields (the reference setting's fields)
PREPARE = f"""
import os, sys, time
from tabbert.data.preparation import prepare
recency = {{"recency": ()}} if sys.argv[3] == "none" else {{}}
t = time.perf_counter()
data = prepare("card", sys.argv[1], sys.argv[2], threads=os.cpu_count(), **recency)
print(time.perf_counter() - t, data.n_rows, {PEAK_MB}, data.meta["source"]["read_seconds"])
"""

# one prepare with a timer around each stage (wall seconds; the stages overlap on two threads)
STAGES = """
import functools, json, os, sys, threading, time
import tabbert.data.preparation as preparation
seconds, lock = {}, threading.Lock()
def timed(name, function):
    @functools.wraps(function)
    def run(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            with lock:
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
    return run
for name in ("_order_rows", "raw_codes", "with_recency", "_fit_encode", "_write_rows_and_windows"):
    setattr(preparation, name, timed(name.strip("_"), getattr(preparation, name)))
started = time.perf_counter()
data = preparation.prepare("card", sys.argv[1], sys.argv[2], threads=os.cpu_count())
seconds["reading"] = data.meta["source"]["read_seconds"]
seconds["total"] = time.perf_counter() - started
print(json.dumps({name: round(value, 3) for name, value in seconds.items()}))
"""


def run_child(code: str, *args: str) -> tuple[float, int, float, float]:
    """Seconds, rows, peak MB and (prepare only) seconds of its reading step, from a fresh process."""
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True).stdout
    seconds, rows, peak_mb, read_seconds = out.split()
    return float(seconds), int(rows), float(peak_mb), float(read_seconds)


def ensure_csv(users: int, seed: int) -> Path:
    path = WORK / f"card_{users}u_seed{seed}.csv"
    if not path.exists():
        from tabbert.data.synthetic import generate_transactions, write_transactions

        WORK.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        frame = generate_transactions(users, seed=seed)
        write_transactions(frame, path)
        print(f"generated {frame.height:,} rows in {time.perf_counter() - started:.1f} s -> {path}")
        del frame  # the children's memory is measured on its own, but keep the machine free
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the generated CSV for later runs")
    args = parser.parse_args()

    csv = ensure_csv(args.users, args.seed)
    out = WORK / f"prepared_{args.users}u"
    reads, prepares, without_recency = [], [], []
    for _ in range(args.repeats):
        reads.append(run_child(READ_ONLY, str(csv)))
        for recency, runs in (("default", prepares), ("none", without_recency)):
            shutil.rmtree(out, ignore_errors=True)
            runs.append(run_child(PREPARE, str(csv), str(out), recency))
    shutil.rmtree(out, ignore_errors=True)
    stages = json.loads(subprocess.run([sys.executable, "-c", STAGES, str(csv), str(out)], check=True,
                                       capture_output=True, text=True).stdout)
    shutil.rmtree(out, ignore_errors=True)
    read_s = statistics.median(r[0] for r in reads)
    prep_s = statistics.median(p[0] for p in prepares)
    without_s = statistics.median(p[0] for p in without_recency)
    result = {
        "rows": reads[0][1],
        "csv_mb": round(csv.stat().st_size / 2**20, 1),
        "polars_read_s": round(read_s, 3),
        "prepare_s": round(prep_s, 3),
        "ratio": round(prep_s / read_s, 2),
        "prepare_reading_s": round(statistics.median(p[3] for p in prepares), 3),
        "reading_ratio": round(statistics.median(p[3] for p in prepares) / read_s, 2),
        "polars_read_peak_mb": round(max(r[2] for r in reads)),
        "prepare_peak_mb": round(max(p[2] for p in prepares)),
        "prepare_without_recency_s": round(without_s, 3),
        "ratio_without_recency": round(without_s / read_s, 2),
        "stages_s": stages,
        "repeats": args.repeats,
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, Python {platform.python_version()}",
    }
    print(json.dumps(result, indent=2))
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / f"prepare_{args.users}u.json").write_text(json.dumps(result, indent=2) + "\n")
    if not args.keep:
        csv.unlink()
    peak_limit = MAX_PEAK_MB_PER_MILLION_ROWS * result["rows"] / 1e6
    return check([
        Target("prepare against a bare Polars read", f"{result['ratio']}x", f"<= {MAX_RATIO}x",
               result["ratio"] <= MAX_RATIO),
        Target("prepare peak memory", f"{result['prepare_peak_mb']} MB", f"<= {peak_limit:.0f} MB",
               result["prepare_peak_mb"] <= peak_limit),
    ])


if __name__ == "__main__":
    sys.exit(main())
