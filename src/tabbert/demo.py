"""The whole pipeline on generated card transactions, ending in the paper's Table 1.

generate -> prepare -> pre-train TabBERT -> fine-tune (LSTM and MLP heads) -> baselines
(LightGBM, raw LSTM, raw MLP) -> test figures of all five on the same windows, in one run
directory with a ``report.md`` that shows every plot and one comparing the five.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tabbert.atomic import atomic_path, write_json_atomic
from tabbert.data.preparation import prepare
from tabbert.data.prepared import check_output_dir
from tabbert.data.synthetic import generate_transactions, write_transactions
from tabbert.plots import FEW_POSITIVES, plot_model_comparison
from tabbert.reporting import format_table, markdown_table


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run; :meth:`quick` is the smoke-test preset."""

    users: int = 300
    rows_per_user: int = 1000
    seed: int = 0
    size: str = "small"
    pretrain_steps: int = 600
    pretrain_batch_size: int = 64
    finetune_epochs: int = 3
    finetune_batch_size: int = 128
    raw_size: str = "small"
    threads: int | None = None
    device: str = "auto"

    @classmethod
    def quick(cls, seed: int = 0) -> DemoSettings:
        return cls(users=60, rows_per_user=400, seed=seed, size="tiny", pretrain_steps=120,
                   finetune_epochs=2, raw_size="tiny")


COMPARISON_PLOT = "models.png"
ROWS = (
    ("LightGBM", "lightgbm"),
    ("raw MLP", "raw_mlp"),
    ("raw LSTM", "raw_lstm"),
    ("TabBERT MLP", "tabbert_mlp"),
    ("TabBERT LSTM", "tabbert_lstm"),
)


def run_demo(out: str | Path, settings: DemoSettings = DemoSettings(), log=print) -> dict:
    """Run every step into ``out`` (a new directory) and return the table's figures."""
    from tabbert.baselines import train_baseline
    from tabbert.training.finetune import finetune
    from tabbert.training.pretrain import pretrain

    out = Path(out)
    check_output_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    def step(name: str, action):
        log(f"\n== {name}")
        begin = time.perf_counter()
        result = action()
        seconds[name] = round(time.perf_counter() - begin, 1)
        return result

    csv = out / "transactions.csv"
    step("generate data", lambda: write_transactions(
        generate_transactions(settings.users, seed=settings.seed, rows_per_user=settings.rows_per_user), csv))
    data = step("prepare", lambda: prepare("card", csv, out / "prepared", seed=settings.seed))
    data_dir = data.path
    log(f"{data.n_rows:,} rows, windows {data.meta['windows']}, positive windows {data.meta['positive_windows']}")

    step("pre-train TabBERT", lambda: pretrain(
        data_dir, out / "pretrain", size=settings.size, max_steps=settings.pretrain_steps,
        batch_size=settings.pretrain_batch_size, seed=settings.seed, save_steps=settings.pretrain_steps,
        threads=settings.threads, device=settings.device))
    pretrained = out / "pretrain" / "model"
    common = dict(epochs=settings.finetune_epochs, batch_size=settings.finetune_batch_size, seed=settings.seed,
                  threads=settings.threads, device=settings.device)
    runs = {
        "tabbert_lstm": lambda: finetune(data_dir, out / "tabbert_lstm", pretrained=pretrained, head="lstm", **common),
        "tabbert_mlp": lambda: finetune(data_dir, out / "tabbert_mlp", pretrained=pretrained, head="mlp", **common),
        "raw_lstm": lambda: train_baseline(data_dir, out / "raw_lstm", kind="lstm", size=settings.raw_size, **common),
        "raw_mlp": lambda: train_baseline(data_dir, out / "raw_mlp", kind="mlp", size=settings.raw_size, **common),
        "lightgbm": lambda: train_baseline(data_dir, out / "lightgbm", kind="lightgbm", seed=settings.seed, threads=1),
    }
    results = {name: step(name, action) for name, action in runs.items()}

    table = {}
    for label, name in ROWS:
        test, training = results[name]["splits"]["test"], results[name]["training"]
        table[label] = {"f1": test["f1"], "pr_auc": test["pr_auc"], "roc_auc": test["roc_auc"],
                        "train_seconds": training["train_seconds"], "run": name}
    summary = {
        "settings": asdict(settings),
        "data": {"rows": data.n_rows, "windows": data.meta["windows"], "positive_windows": data.meta["positive_windows"]},
        "table": table,
        "step_seconds": seconds,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(out / "metrics.json", summary)
    positives = data.meta["positive_windows"]["test"]
    plot_model_comparison(table, out / COMPARISON_PLOT,
                          title=f"{len(table)} models, test split: {positives:,} positive windows"
                          + (" (few: the figures are noisy)" if positives < FEW_POSITIVES else ""))
    with atomic_path(out / "report.md") as temporary:
        temporary.write_text(report(summary, out))
    log("\n" + results_table(table))
    log(f"(TabBERT rows: plus {seconds['pre-train TabBERT']:.0f} s of pre-training shared by both)")
    log(f"\ntotal {summary['total_seconds']:.0f} s; report: {out / 'report.md'}")
    return summary


def _rows(table: dict) -> list[tuple]:
    def figure(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    return [(label, figure(r["f1"]), figure(r["pr_auc"]), figure(r["roc_auc"]), f"{r['train_seconds']:.1f}")
            for label, r in table.items()]


def results_table(table: dict) -> str:
    return format_table(_rows(table), headers=("test windows", "F1", "PR-AUC", "ROC-AUC", "train s"))


def report(summary: dict, out: Path) -> str:
    """``report.md``: the table, the comparison plot, settings and data as tables, and every plot of the run."""
    data = summary["data"]
    splits = list(data["windows"])
    lines = [
        "# tabbert demo",
        "",
        "Test-split figures; each model's F1 threshold is chosen on the validation split.",
        "",
        markdown_table(_rows(summary["table"]), headers=("model", "F1", "PR-AUC", "ROC-AUC", "train s")),
        "",
        f"Train seconds are the fitting time of each model; the TabBERT rows share a pre-training of "
        f"{summary['step_seconds']['pre-train TabBERT']:.0f} s on top of theirs.",
        "",
        f"![{COMPARISON_PLOT}]({COMPARISON_PLOT})",
        "",
        "## Data",
        "",
        f"Generated card transactions: {data['rows']:,} rows.",
        "",
        markdown_table([("windows", *(data["windows"][s] for s in splits)),
                        ("positive windows", *(data["positive_windows"][s] for s in splits))],
                       headers=("", *splits)),
        "",
        "## Settings",
        "",
        markdown_table([(f"`{key}`", "default" if value is None else value)
                        for key, value in summary["settings"].items()], headers=("setting", "value")),
        "",
        "## Plots",
    ]
    for run in sorted({png.parent for png in out.rglob("*.png")} - {out}):
        lines += ["", f"### {run.relative_to(out).as_posix()}", ""]
        for png in sorted(run.glob("*.png")):
            relative = png.relative_to(out).as_posix()
            lines.append(f"![{relative}]({relative})")
    lines += ["", f"Total time: {summary['total_seconds']:.0f} s.", ""]
    return "\n".join(lines)
