"""The demo's Table 1 over several seeds: mean and spread of F1, PR-AUC and ROC-AUC per model.

Each seed is a full ``tabbert demo`` run (its own generated data, splits and training). A seed
whose run directory already holds a finished ``metrics.json`` is read, not rerun.

    python benchmarks/bench_demo_seeds.py --seeds 0 1 2      # results/demo_seeds.json and .md

Target: TabBERT LSTM's mean test F1 and PR-AUC at least those of the raw LSTM and of LightGBM.
The script prints them and exits with status 1 when one is missed. ``--quick`` writes its
results into the work folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
from targets import Target, check

from tabbert.atomic import write_json_atomic
from tabbert.demo import ROWS, DemoSettings, run_demo
from tabbert.reporting import markdown_table

HERE = Path(__file__).resolve().parent
METRICS = ("f1", "pr_auc", "roc_auc", "train_seconds")


def seed_table(work: Path, seed: int, settings: DemoSettings) -> dict:
    run = work / f"seed{seed}"
    if not (run / "metrics.json").is_file():
        run_demo(run, settings)
    return json.loads((run / "metrics.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=HERE / "_work" / "demo_seeds")
    parser.add_argument("--quick", action="store_true", help="the demo's --quick sizes")
    args = parser.parse_args()

    runs = {}
    for seed in args.seeds:
        settings = DemoSettings.quick(seed) if args.quick else DemoSettings(seed=seed)
        runs[seed] = seed_table(args.work, seed, settings)

    summary = {}
    for label, _ in ROWS:
        summary[label] = {}
        for metric in METRICS:
            values = [runs[s]["table"][label][metric] for s in args.seeds]
            values = np.array([np.nan if v is None else v for v in values], dtype=float)
            summary[label][metric] = {"mean": float(np.nanmean(values)), "std": float(np.nanstd(values)),
                                      "values": values.tolist()}
    rows = [(label, *(f"{summary[label][m]['mean']:.3f} ± {summary[label][m]['std']:.3f}" for m in METRICS[:3]),
             f"{summary[label]['train_seconds']['mean']:.0f}") for label, _ in ROWS]
    table = markdown_table(rows, headers=("model", "F1", "PR-AUC", "ROC-AUC", "train s"))
    fields = field_table(args.work, args.seeds)
    pretrain = [runs[s]["step_seconds"]["pre-train TabBERT"] for s in args.seeds]
    positives = [runs[s]["data"]["positive_windows"]["test"] for s in args.seeds]
    result = {
        "seeds": args.seeds,
        "settings": runs[args.seeds[0]]["settings"],
        "table": summary,
        "pretrain_seconds": pretrain,
        "test_positive_windows": positives,
        "pretrain_fields": fields,
        "total_seconds": [runs[s]["total_seconds"] for s in args.seeds],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    field_rows = [(name, f"{f['accuracy']:.3f}", f"{f['majority_accuracy']:.3f}",
                   f"{f['accuracy'] - f['majority_accuracy']:+.3f}") for name, f in fields.items()]
    fields_md = markdown_table(field_rows, headers=("field", "masked accuracy", "majority baseline", "gain"))
    print(table + "\n\n" + fields_md)
    out = args.work if args.quick else HERE / "results"
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "demo_seeds.json", result)
    (out / "demo_seeds.md").write_text(table + "\n\nValidation masked accuracy per field (mean over seeds):\n\n"
                                       + fields_md + "\n")
    return check(quality_targets(summary))


def quality_targets(summary: dict) -> list[Target]:
    """TabBERT LSTM's mean F1 and PR-AUC against the raw LSTM's and LightGBM's."""
    ours = summary["TabBERT LSTM"]
    return [Target(f"TabBERT LSTM {name} against {rival}", f"{ours[metric]['mean']:.3f}",
                   f">= {summary[rival][metric]['mean']:.3f}", ours[metric]["mean"] >= summary[rival][metric]["mean"])
            for metric, name in (("f1", "F1"), ("pr_auc", "PR-AUC")) for rival in ("raw LSTM", "LightGBM")]


def field_table(work: Path, seeds: list[int]) -> dict:
    """Per-field validation masked accuracy of each seed's pre-training, and the majority baseline."""
    per_seed = [json.loads((work / f"seed{s}" / "pretrain" / "metrics.json").read_text())["fields"] for s in seeds]
    return {
        name: {key: float(np.mean([fields[name][key] for fields in per_seed])) for key in ("accuracy", "majority_accuracy")}
        for name in per_seed[0]
    }


if __name__ == "__main__":
    sys.exit(main())
