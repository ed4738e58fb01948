#!/usr/bin/env bash
# Multi-process check of `tabbert pretrain`: the unchanged command under torchrun, two processes
# (gloo on CPU, NCCL on GPUs). Generates and prepares a small card dataset, runs 20 steps of the
# tiny model, and checks that the main process alone wrote the run's files.
#
# usage: benchmarks/torchrun_pretrain.sh [WORK_DIR]   (default: a new temporary directory)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${TABBERT_BIN:-$root/.venv/bin}"
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

"$bin/tabbert" generate-data --users 16 --rows-per-user 300 --seed 0 --out "$work/card.csv"
"$bin/tabbert" prepare --source card --input "$work/card.csv" --out "$work/prepared"

started=$(date +%s)
"$bin/torchrun" --standalone --nproc_per_node 2 -m tabbert.cli pretrain \
    --data "$work/prepared" --out "$work/run" --size tiny --batch-size 16 --max-steps 20 --save-steps 10
echo "torchrun pretrain: $(( $(date +%s) - started )) s"

"$bin/python" - "$work/run" <<'PY'
import json, sys
from pathlib import Path

run = Path(sys.argv[1])
metrics = json.loads((run / "metrics.json").read_text())
assert metrics["world_size"] == 2, metrics["world_size"]
assert metrics["steps"] == 20, metrics["steps"]
for name in ("model/config.json", "model/model.safetensors", "model/tokenizer.json", "loss_curve.png", "run.json"):
    assert (run / name).is_file(), name
leftovers = [p.name for p in run.iterdir() if p.name.startswith(".")]
assert not leftovers, leftovers
print(f"2 processes: {metrics['steps']} steps, {metrics['windows_trained']} windows, "
      f"{metrics['windows_per_second']:.1f} windows/s, val loss {metrics['val_loss']:.4f}")
PY
