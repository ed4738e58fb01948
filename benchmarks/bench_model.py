"""Training throughput of hierarchical TabBERT against a plain BERT of the same encoder shape.

Each model size is timed against a ``transformers`` ``BertModel`` with the row BERT's shape
(hidden, layers, heads, intermediate, one position per window row) fed random row vectors
through ``inputs_embeds`` and trained on the mean square of its last hidden state. Both take
the same batches, the same AdamW and the same batch size, in the same process, in alternating
blocks of steps after a warm-up, so a busy machine slows both alike; a step is forward,
backward and optimizer update, and the median step time of each gives its windows per second.
Our extra cost is everything TabBERT adds: field embeddings, the field transformer, the row
projection and the masked-field heads and loss. Medians of CPU time per step are reported
beside wall time: with one torch thread they are the steadier figure on a shared machine.

The data path (``WindowDataset`` indexing + ``MaskedFieldCollator``, index to batch dict, no
model) is timed on its own and compared with what each model consumes.

The file in ``benchmarks/results/`` comes from::

    python benchmarks/bench_model.py --threads 1                   # model_speed.json: small and paper

Targets: TabBERT's step costs at most 25 % more than the plain BERT's, and the data path delivers
at least 10 times the windows the model consumes. The script prints both and exits with status 1
when one is missed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from targets import Target, check
from transformers import BertModel

from tabbert.atomic import write_json_atomic
from tabbert.data.collate import MaskedFieldCollator, WindowDataset
from tabbert.data.preparation import prepare
from tabbert.data.prepared import PreparedDataset
from tabbert.data.synthetic import generate_transactions, write_transactions
from tabbert.models.configuration import TabBertConfig
from tabbert.models.tabbert import TabBertForMaskedFieldModeling, row_bert_config
from tabbert.reporting import format_table

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "bench_model"
DEFAULT_STEPS = {"tiny": 20, "small": 10, "paper": 2}
TARGET_EXTRA_COST_PERCENT = 25.0
TARGET_DATA_PATH_RATIO = 10.0
LEARNING_RATE = 1e-4
DISTINCT_BATCHES = 16

Batch = dict[str, torch.Tensor]


def prepared_card_data(users: int, seed: int) -> PreparedDataset:
    """A freshly generated and prepared card dataset under the work directory."""
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    write_transactions(generate_transactions(users, seed=seed), WORK / "card.csv")
    return prepare("card", WORK / "card.csv", WORK / "prepared", seed=seed)


def make_batches(dataset: WindowDataset, collator: MaskedFieldCollator, batch_size: int, count: int,
                 rng: np.random.Generator) -> list[Batch]:
    """``count`` masked batches of randomly drawn training windows."""
    return [collator([dataset[i] for i in indices]) for indices in rng.integers(len(dataset), size=(count, batch_size))]


def reference_bert(config: TabBertConfig) -> BertModel:
    """A plain BERT with the shape, dropout and attention implementation of TabBERT's row BERT."""
    return BertModel(row_bert_config(config), add_pooling_layer=False)


def training_step(model: torch.nn.Module, loss_of: Callable[[Batch], torch.Tensor]) -> Callable[[Batch], None]:
    """One forward, backward and AdamW update of ``model`` on a batch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    model.train()

    def step(batch: Batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_of(batch).backward()
        optimizer.step()

    return step


def time_steps(step: Callable[[Batch], None], batches: Sequence[Batch], steps: int,
               offset: int) -> list[tuple[float, float]]:
    """Wall and CPU seconds of each of ``steps`` calls of ``step``, cycling through ``batches`` from ``offset``."""
    seconds = []
    for k in range(steps):
        wall, cpu = time.perf_counter(), time.process_time()
        step(batches[(offset + k) % len(batches)])
        seconds.append((time.perf_counter() - wall, time.process_time() - cpu))
    return seconds


def compare_size(size: str, data: PreparedDataset, batches: Sequence[Batch], *, steps: int, repeats: int,
                 warmup: int, seed: int, overrides: dict | None = None) -> dict:
    """Median step time of TabBERT ``size`` and its plain-BERT reference, timed in alternating blocks."""
    tokenizer = data.tokenizer
    config = TabBertConfig.for_tokenizer(tokenizer, size, seq_len=data.seq_len, **(overrides or {}))
    torch.manual_seed(seed)
    ours = TabBertForMaskedFieldModeling(config)
    reference = reference_bert(config)
    shape = (len(batches[0]["input_ids"]), data.seq_len, config.hidden_size)
    row_vectors = [torch.randn(shape) for _ in batches]
    reference_batches = [{"inputs_embeds": rows, "attention_mask": batch["attention_mask"]}
                         for rows, batch in zip(row_vectors, batches)]
    steppers = {
        "tabbert": (training_step(ours, lambda batch: ours(**batch).loss), batches),
        "reference": (training_step(reference, lambda batch: reference(**batch).last_hidden_state.pow(2).mean()),
                      reference_batches),
    }
    for step, model_batches in steppers.values():
        time_steps(step, model_batches, warmup, 0)
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in steppers}
    for repeat in range(repeats):
        order = list(steppers) if repeat % 2 == 0 else list(reversed(steppers))
        for name in order:
            step, model_batches = steppers[name]
            seconds[name] += time_steps(step, model_batches, steps, repeat * steps)
    (ours_wall, ours_cpu), (reference_wall, reference_cpu) = (
        (statistics.median(wall for wall, _ in seconds[name]), statistics.median(cpu for _, cpu in seconds[name]))
        for name in ("tabbert", "reference")
    )
    extra = 100.0 * (ours_wall / reference_wall - 1.0)
    batch_size = shape[0]
    return {
        "size": size,
        "hidden": config.hidden_size, "layers": config.num_hidden_layers, "heads": config.num_attention_heads,
        "intermediate": config.intermediate_size, "field_hidden": config.field_hidden,
        "attention": config._attn_implementation,
        "parameters": ours.num_parameters(), "reference_parameters": reference.num_parameters(),
        "steps_timed": len(seconds["tabbert"]),
        "tabbert_step_s": round(ours_wall, 4), "reference_step_s": round(reference_wall, 4),
        "tabbert_windows_per_second": round(batch_size / ours_wall, 1),
        "reference_windows_per_second": round(batch_size / reference_wall, 1),
        "extra_cost_percent": round(extra, 1),
        "meets_target": extra <= TARGET_EXTRA_COST_PERCENT,
        "tabbert_step_cpu_s": round(ours_cpu, 4), "reference_step_cpu_s": round(reference_cpu, 4),
        "extra_cost_cpu_percent": round(100.0 * (ours_cpu / reference_cpu - 1.0), 1),
    }


def data_path_speed(dataset: WindowDataset, collator: MaskedFieldCollator, batch_size: int, batches: int,
                    repeats: int, rng: np.random.Generator) -> float:
    """Median windows per second from shuffled indices to masked batch dicts."""
    rates = []
    for _ in range(repeats):
        order = rng.integers(len(dataset), size=(batches, batch_size))
        started = time.perf_counter()
        for indices in order:
            collator([dataset[i] for i in indices])
        rates.append(order.size / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["small", "paper"], choices=tuple(DEFAULT_STEPS))
    parser.add_argument("--users", type=int, default=50, help="generated card holders (default 50, ~50k rows)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per model per repeat (default: "
                             + ", ".join(f"{size} {n}" for size, n in DEFAULT_STEPS.items()) + ")")
    parser.add_argument("--repeats", type=int, default=5, help="alternating blocks per model (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--field-hidden", type=int,
                        help="override the sizes' field_hidden (the field transformer's width)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "model_speed.json")
    args = parser.parse_args()
    if min(args.batch_size, args.repeats, args.users) < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--users, --batch-size, --steps and --repeats must be at least 1")

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    data = prepared_card_data(args.users, args.seed)
    dataset = WindowDataset(data, "train")
    tokenizer = data.tokenizer
    collator = MaskedFieldCollator(tokenizer.field_offsets, tokenizer.field_vocab_sizes,
                                   generator=torch.Generator().manual_seed(args.seed))
    rng = np.random.default_rng(args.seed)
    batches = make_batches(dataset, collator, args.batch_size, DISTINCT_BATCHES, rng)

    overrides = {"field_hidden": args.field_hidden} if args.field_hidden else None
    results = []
    for size in args.sizes:
        steps = args.steps or DEFAULT_STEPS[size]
        results.append(compare_size(size, data, batches, steps=steps, repeats=args.repeats, warmup=args.warmup,
                                    seed=args.seed, overrides=overrides))
        row = results[-1]
        print(f"{size}: tabbert {row['tabbert_windows_per_second']} windows/s, "
              f"reference {row['reference_windows_per_second']} windows/s, extra {row['extra_cost_percent']} %",
              flush=True)
    data_rate = data_path_speed(dataset, collator, args.batch_size, batches=20, repeats=args.repeats, rng=rng)
    data_path = {"windows_per_second": round(data_rate, 1)}
    for row in results:
        ratio = data_rate / row["tabbert_windows_per_second"]
        data_path[f"ratio_to_{row['size']}"] = round(ratio, 1)
        data_path[f"meets_target_{row['size']}"] = ratio >= TARGET_DATA_PATH_RATIO

    headers = ["size", "parameters", "tabbert windows/s", "reference windows/s", "extra cost", "extra CPU",
               "data path"]
    print(format_table([[row["size"], row["parameters"], round(row["tabbert_windows_per_second"]),
                         round(row["reference_windows_per_second"]), f"{row['extra_cost_percent']:+.1f} %",
                         f"{row['extra_cost_cpu_percent']:+.1f} %",
                         f"{data_rate / row['tabbert_windows_per_second']:.0f}x"] for row in results], headers))
    print(f"data path: {data_rate:,.0f} windows/s (WindowDataset + MaskedFieldCollator)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, {
        "machine": {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "load_average_before": [round(v, 2) for v in load_before],
                    "load_average_after": [round(v, 2) for v in os.getloadavg()]},
        "rows": data.n_rows, "train_windows": len(dataset), "seq_len": data.seq_len,
        "fields": len(tokenizer.field_names), "batch_size": args.batch_size, "repeats": args.repeats,
        "warmup_steps": args.warmup, "distinct_batches": len(batches),
        "targets": {"extra_cost_percent_at_most": TARGET_EXTRA_COST_PERCENT,
                    "data_path_ratio_at_least": TARGET_DATA_PATH_RATIO},
        "results": results, "data_path": data_path,
    })
    return check(speed_targets(results, data_path))


def speed_targets(results: list[dict], data_path: dict) -> list[Target]:
    """Each size's extra cost over the plain BERT, and the data path against what it consumes."""
    extra = [Target(f"{row['size']} extra cost", f"{row['extra_cost_percent']:+.1f} %",
                    f"<= +{TARGET_EXTRA_COST_PERCENT:.0f} %", row["meets_target"]) for row in results]
    feeding = []
    for row in results:
        size = row["size"]
        feeding.append(Target(f"data path against {size}", f"{data_path['ratio_to_' + size]:.0f}x",
                              f">= {TARGET_DATA_PATH_RATIO:.0f}x", data_path["meets_target_" + size]))
    return extra + feeding


if __name__ == "__main__":
    sys.exit(main())
