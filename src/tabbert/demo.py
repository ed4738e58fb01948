"""The whole pipeline on generated card transactions, every transaction scored from its history.

generate -> prepare -> pre-train TabBERT (masked fields on all training rows; next-row prediction
once per fold, for out-of-fold features) -> next-row surprise -> fine-tune and baselines -> test
figures of every row on the same prediction points (every test transaction), in one run
directory with a ``report.md``:

* history LightGBM: causal per-card history features, the strongest simple baseline;
* raw LSTM: field embeddings trained from scratch;
* TabBERT LSTM: the reference recipe, a frozen pre-trained encoder read by an LSTM;
* TabBERT fine-tuned: the encoder trained too, with layer-wise learning-rate decay;
* LightGBM + TabBERT: the history features plus TabBERT's out-of-fold surprise and expectation
  of each row;
* next-row surprise: no labels at all (one forward per window, where masked-row surprise takes
  one per row).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tabbert.atomic import atomic_path, write_json_atomic
from tabbert.data.preparation import prepare
from tabbert.data.prepared import check_output_dir
from tabbert.data.synthetic import generate_transactions, write_transactions
from tabbert.plots import FEW_POSITIVES, plot_model_comparison
from tabbert.reporting import format_table, markdown_table

FOLDS = 2


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run; :meth:`quick` is the smoke-test preset."""

    users: int = 300
    rows_per_user: int = 800
    seed: int = 0
    size: str = "small"
    pretrain_steps: int = 300
    pretrain_batch_size: int = 64
    pretrain_eval_windows: int = 2048  # the validation loss of pre-training is only reported
    finetune_epochs: int = 2
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
    ("history LightGBM", "lightgbm"),
    ("raw LSTM", "raw_lstm"),
    ("TabBERT LSTM (reference)", "tabbert_lstm"),
    ("TabBERT fine-tuned", "tabbert_finetuned"),
    ("LightGBM + TabBERT", "lightgbm_tabbert"),
    ("next-row surprise (no labels)", "surprise"),
)


def run_demo(out: str | Path, settings: DemoSettings = DemoSettings(), log=print) -> dict:
    """Run every step into ``out`` (a new directory) and return the table's figures."""
    from tabbert.anomaly import row_surprise
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
    test = data.row_splits == 2
    log(f"{data.n_rows:,} rows; {int(test.sum()):,} test transactions, {int(np.asarray(data.labels)[test].sum())} "
        "of them fraud")

    def pretrained(name: str, **options) -> Path:
        step(f"pre-train TabBERT ({name})", lambda: pretrain(
            data_dir, out / name, size=settings.size, max_steps=settings.pretrain_steps,
            batch_size=settings.pretrain_batch_size, max_eval_windows=settings.pretrain_eval_windows,
            seed=settings.seed, save_steps=settings.pretrain_steps,
            threads=settings.threads, device=settings.device, **options))
        return out / name / "model"

    encoder = pretrained("pretrain", mask_rows=True)
    folds = [pretrained(f"pretrain_fold{k}", objective="causal", folds=FOLDS, fold=k) for k in range(FOLDS)]
    features = out / "tabbert_features.npy"
    surprise, _ = step("next-row surprise, out of fold", lambda: row_surprise(
        folds, data_dir, embeddings=True, device=settings.device))
    np.save(features, surprise)

    runs = supervised_runs(data_dir, out, settings, encoder, folds, features)
    results = {name: step(name, action) for name, action in runs.items()}
    results["surprise"] = surprise_run(data, surprise)

    test_positives = int(np.asarray(data.labels)[test].sum())
    summary = {
        "settings": asdict(settings),
        "data": {"rows": data.n_rows, "test_rows": int(test.sum()), "test_positives": test_positives},
        "table": figures_table(results),
        "step_seconds": seconds,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    write_outputs(summary, out)
    log("\n" + results_table(summary["table"]))
    pretraining = sum(v for k, v in seconds.items() if k.startswith(("pre-train", "next-row")))
    log(f"(TabBERT rows: plus {pretraining:.0f} s of pre-training and surprise, shared)")
    log(f"\ntotal {summary['total_seconds']:.0f} s; report: {out / 'report.md'}")
    return summary


def supervised_runs(data_dir: Path, out: Path, settings: DemoSettings, encoder: Path, folds: list[Path],
                    features: Path) -> dict:
    """Run name -> the action that trains it and returns its metrics: the baselines and the TabBERT recipes."""
    from tabbert.baselines import train_baseline
    from tabbert.training.finetune import finetune

    common = dict(epochs=settings.finetune_epochs, batch_size=settings.finetune_batch_size, seed=settings.seed,
                  threads=settings.threads, device=settings.device)
    lightgbm = dict(seed=settings.seed, threads=settings.threads)
    return {
        "lightgbm": lambda: train_baseline(data_dir, out / "lightgbm", kind="lightgbm", **lightgbm),
        "raw_lstm": lambda: train_baseline(data_dir, out / "raw_lstm", kind="lstm", size=settings.raw_size, **common),
        "tabbert_lstm": lambda: finetune(data_dir, out / "tabbert_lstm", pretrained=encoder, **common),
        "tabbert_finetuned": lambda: finetune(data_dir, out / "tabbert_finetuned", pretrained=encoder, unfreeze=True,
                                              **common),
        "lightgbm_tabbert": lambda: train_baseline(data_dir, out / "lightgbm_tabbert", kind="lightgbm",
                                                   surprise=tuple(map(str, folds)), surprise_features=str(features),
                                                   **lightgbm),
    }


def figures_table(results: dict) -> dict:
    """Each row of the table (:data:`ROWS`): its test figures and training time, from its run's metrics."""
    table = {}
    for label, name in ROWS:
        test_figures, training = results[name]["splits"]["test"], results[name]["training"]
        table[label] = {metric: test_figures[metric] for metric in ("pr_auc", "recall_at_1pct_fpr", "f1", "roc_auc")}
        table[label].update(train_seconds=training["train_seconds"], run=name)
    return table


def write_outputs(summary: dict, out: Path) -> None:
    """``metrics.json``, the comparison plot and ``report.md`` of a finished demo."""
    write_json_atomic(out / "metrics.json", summary)
    table, positives = summary["table"], summary["data"]["test_positives"]
    plot_model_comparison(table, out / COMPARISON_PLOT,
                          title=f"{len(table)} models, test split: {positives:,} fraudulent transactions"
                          + (" (few: the figures are noisy)" if positives < FEW_POSITIVES else ""))
    with atomic_path(out / "report.md") as temporary:
        temporary.write_text(report(summary, out))


def surprise_run(data, surprise: np.ndarray) -> dict:
    """The label-free row: the test transactions ranked by their next-row surprise (a card's first
    row, which has no row before it, ranks at the median)."""
    from tabbert.metrics import classification_metrics

    test = data.row_splits == 2
    scores = surprise[test, 0]
    scores = np.where(np.isnan(scores), np.nanmedian(scores), scores)
    figures = classification_metrics(np.asarray(data.labels)[test].astype(np.int64), scores)
    return {"splits": {"test": figures}, "training": {"train_seconds": 0.0}}


def _rows(table: dict) -> list[tuple]:
    def figure(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    return [(label, figure(r["pr_auc"]), figure(r["recall_at_1pct_fpr"]), figure(r["f1"]), figure(r["roc_auc"]),
             f"{r['train_seconds']:.1f}") for label, r in table.items()]


HEADERS = ("PR-AUC", "recall at 1 % FPR", "F1", "ROC-AUC", "train s")


def results_table(table: dict) -> str:
    return format_table(_rows(table), headers=("test transactions", *HEADERS))


def report(summary: dict, out: Path) -> str:
    """``report.md``: the table, the comparison plot, data and settings as tables, and every plot of the run."""
    data, seconds = summary["data"], summary["step_seconds"]
    shared = sum(v for k, v in seconds.items() if k.startswith(("pre-train", "next-row")))
    lines = [
        "# tabbert demo",
        "",
        "Every test transaction is scored from its own card's history; each model's F1 threshold is "
        "chosen on the validation split.",
        "",
        markdown_table(_rows(summary["table"]), headers=("model", *HEADERS)),
        "",
        f"Train seconds are the fitting time of each model; the TabBERT rows share {shared:.0f} s of "
        "pre-training and surprise scoring on top of theirs.",
        "",
        f"![{COMPARISON_PLOT}]({COMPARISON_PLOT})",
        "",
        "## Data",
        "",
        markdown_table([("rows", f"{data['rows']:,}"), ("test transactions", f"{data['test_rows']:,}"),
                        ("fraudulent test transactions", data["test_positives"])], headers=("", "")),
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
