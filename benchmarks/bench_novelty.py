"""Label-free surprise on frauds that only the card's own history gives away.

The built-in generator's frauds come in bursts with odd amounts, MCCs and errors. This benchmark
makes another kind: the generator's cards without fraud, where isolated rows are then taken over.
A taken-over row gets the merchant, city, state, zip and time of day of a random row of another
card with the same channel, and keeps its own card, date, amount, channel, MCC and errors. Only
the card's history tells these rows apart: a merchant, a place and often an hour it never used.
With ``--donors unseen`` the donor row must bring a merchant, an hour of day and (in person) a city
the card holder never used before the taken-over row, as in a card suddenly used where and when
its holder never goes.

Per seed: prepare (entity split 60/20/20), pre-train TabBERT ``small`` with next-row prediction on
the training entities without labels, and rank every test row by its next-row surprise (an
entity's first row at the median). Beside it, a practitioner's label-free rule (how many of the
row's values its entity never used before, from the history features) and the history LightGBM
trained with every label.

    python benchmarks/bench_novelty.py                    # 300 users x 400 rows, seeds 0 1 2
    python benchmarks/bench_novelty.py --donors unseen    # results/novelty_unseen.json
    python benchmarks/bench_novelty.py --donors unseen --users 100 --rows-per-user 2000
                                                          # results/novelty_unseen_100u_2000r.json
    python benchmarks/bench_novelty.py --quick            # a smoke test

Goal (printed, exit status 1 when missed): the label-free score's mean test PR-AUC is at least
0.9, the level an open-source next-transaction model reaches without labels on tables of this kind.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.metrics import average_precision_score, roc_auc_score
from targets import Target, check, log

from tabbert.anomaly import row_surprise
from tabbert.atomic import write_json_atomic
from tabbert.baselines import train_baseline
from tabbert.baselines.history import HistoryFeatures
from tabbert.data.preparation import prepare
from tabbert.data.synthetic import generate_transactions, write_transactions
from tabbert.metrics import classification_metrics
from tabbert.reporting import markdown_table
from tabbert.training.pretrain import pretrain

HERE = Path(__file__).resolve().parent
TAKEN_OVER = ("Merchant Name", "Merchant City", "Merchant State", "Zip", "Time")
GOAL = 0.9
MAX_DRAWS = 20_000  # donor rows tried for one taken-over row
DONORS = ("any", "unseen")


def take_over(frame: pl.DataFrame, rate: float, seed: int, min_history: int = 20,
              donors: str = "any") -> tuple[pl.DataFrame, int]:
    """``frame`` (no fraud, rows grouped by user) with a seeded ``rate`` of its rows taken over and
    labelled fraud, and the number of chosen rows left alone for want of a donor. A user's first
    ``min_history`` rows in time are left alone, so that every taken-over row has a history.
    ``donors``: ``any`` row of another user with the same channel, or only one whose merchant, hour
    of day and (in person) city the user never used before the taken-over row (``unseen``)."""
    rng = np.random.default_rng(seed)
    n = frame.height
    user = frame["User"].to_numpy()
    first = np.searchsorted(user, user)
    clock = pl.datetime(pl.col("Year"), pl.col("Month"), pl.col("Day"))
    minute = clock.dt.epoch("s") // 60 + pl.col("Time").str.slice(0, 2).cast(pl.Int64) * 60 + pl.col(
        "Time").str.slice(3, 2).cast(pl.Int64)
    when = frame.select(minute).to_series().to_numpy()
    rank = frame.select(minute.rank("ordinal").over("User") - 1).to_series().to_numpy()  # place in the user's time
    chosen = np.flatnonzero((rng.random(n) < rate) & (rank >= min_history))
    chosen = chosen[np.argsort(when[chosen], kind="stable")]  # in time: a row's history holds the earlier takeovers
    channel = frame["Use Chip"].to_numpy()
    merchant, city = frame["Merchant Name"].to_numpy().copy(), frame["Merchant City"].to_numpy().copy()
    hour = frame["Time"].str.slice(0, 2).to_numpy().copy()

    def history(row: int) -> tuple[set, set, set] | None:
        """The merchants, cities (in person) and hours the row's user had before it; None: any donor will do."""
        if donors == "any":
            return None
        users_rows = np.arange(first[row], np.searchsorted(user, user[row], side="right"))
        earlier = users_rows[when[users_rows] < when[row]]
        in_person = channel[row] != "Online Transaction"
        return set(merchant[earlier]), set(city[earlier]) if in_person else set(), set(hour[earlier])

    def acceptable(donor: int, row: int, seen: tuple[set, set, set] | None) -> bool:
        if user[donor] == user[row] or channel[donor] != channel[row]:
            return False
        return seen is None or (merchant[donor] not in seen[0] and city[donor] not in seen[1]
                                and hour[donor] not in seen[2])

    found = np.full(chosen.size, -1, dtype=np.int64)
    for k, row in enumerate(chosen):  # a few hundred rows: a loop over them is cheap
        seen = history(row)
        for donor in rng.integers(n, size=MAX_DRAWS):
            if acceptable(int(donor), row, seen):
                found[k] = donor
                merchant[row], city[row], hour[row] = merchant[donor], city[donor], hour[donor]
                break
    taken = found >= 0
    chosen, found = chosen[taken], found[taken]
    replaced = {name: frame[name].scatter(chosen, frame[name].gather(found)) for name in TAKEN_OVER}
    fraud = np.zeros(n, dtype=bool)
    fraud[chosen] = True
    frame = frame.with_columns(**replaced, **{"Is Fraud?": pl.Series(np.where(fraud, "Yes", "No"))})
    return frame, int((~taken).sum())


def run_seed(work: Path, seed: int, args: argparse.Namespace) -> dict:
    shutil.rmtree(work, ignore_errors=True)  # a new table each run
    work.mkdir(parents=True)
    csv = work / "cards.csv"
    frame = generate_transactions(args.users, seed=seed, rows_per_user=args.rows_per_user, fraud_rate=0.0)
    frame, no_donor = take_over(frame, args.rate, seed, donors=args.donors)
    write_transactions(frame, csv)
    data = prepare("card", csv, work / "prepared", seed=seed)
    log(f"seed {seed}: {data.n_rows:,} rows, {int(np.asarray(data.labels).sum())} taken over; pre-training")
    started = time.perf_counter()
    pretrain(data.path, work / "pretrain", size=args.size, objective="causal", max_steps=args.pretrain_steps,
             batch_size=64, seed=seed, save_steps=args.pretrain_steps)
    pretrain_seconds = time.perf_counter() - started
    surprise, summary = row_surprise([work / "pretrain"], data.path, split="test", progress=False)
    test = data.points("test")
    labels = np.asarray(data.labels)[test].astype(np.int64)
    scores = np.where(np.isnan(surprise[test]), np.nanmedian(surprise[test], axis=0), surprise[test])
    label_free = classification_metrics(labels, scores[:, 0])
    per_field = {name: {"pr_auc": float(average_precision_score(labels, scores[:, k])),
                        "roc_auc": float(roc_auc_score(labels, scores[:, k]))}
                 for k, name in enumerate(summary["columns"])}
    history = HistoryFeatures.fit(data, data.row_splits == 0)
    matrix = history.transform(data)[test]
    seen = [k for k, name in enumerate(history.names) if name.endswith(".seen_before")]
    unseen = np.nansum(1.0 - matrix[:, seen], axis=1)  # a first row has no history: NaN, counted as 0
    novelty = classification_metrics(labels, unseen)
    log(f"seed {seed}: history LightGBM")
    lightgbm = train_baseline(data.path, work / "lightgbm", kind="lightgbm", seed=seed)
    return {
        "rows": data.n_rows, "rows_without_donor": no_donor, "test_rows": int(test.size),
        "test_positives": int(np.asarray(data.labels)[test].sum()),
        "pretrain_seconds": round(pretrain_seconds, 1),
        "next-row surprise (no labels)": {key: label_free[key] for key in ("pr_auc", "roc_auc", "recall_at_1pct_fpr")},
        "values never used before, counted (no labels)": {key: novelty[key]
                                                          for key in ("pr_auc", "roc_auc", "recall_at_1pct_fpr")},
        "history LightGBM (every label)": {key: lightgbm["splits"]["test"][key]
                                           for key in ("pr_auc", "roc_auc", "recall_at_1pct_fpr")},
        "surprise by column": per_field,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--rows-per-user", type=int, default=400)
    parser.add_argument("--rate", type=float, default=0.003, help="share of the rows taken over")
    parser.add_argument("--donors", choices=DONORS, default="any",
                        help="any: a row of another card with the same channel; unseen: one whose merchant, hour "
                             "and (in person) city the card never used before")
    parser.add_argument("--size", default="small")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--work", type=Path, default=HERE / "_work" / "novelty")
    parser.add_argument("--quick", action="store_true", help="60 users of 200 rows, tiny, 40 steps, one seed")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.users, args.rows_per_user, args.size, args.pretrain_steps = [0], 60, 200, "tiny", 40
        args.rate = 0.01

    started = time.perf_counter()
    tag = ("quick" if args.quick else "full") + ("" if args.donors == "any" else f"_{args.donors}")
    runs = {seed: run_seed(args.work / tag / f"seed{seed}", seed, args)
            for seed in args.seeds}
    rows = ("next-row surprise (no labels)", "values never used before, counted (no labels)",
            "history LightGBM (every label)")
    summary = {row: {key: {"mean": float(np.mean([runs[s][row][key] for s in runs])),
                           "std": float(np.std([runs[s][row][key] for s in runs]))}
                     for key in ("pr_auc", "roc_auc", "recall_at_1pct_fpr")} for row in rows}
    meta = {"donors": args.donors, "users": args.users, "rows_per_user": args.rows_per_user, "rate": args.rate,
            "size": args.size,
            "pretrain_steps": args.pretrain_steps, "seeds": args.seeds,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "seconds": round(time.perf_counter() - started, 1)}
    table = markdown_table([(row, *(f"{summary[row][key]['mean']:.3f} ± {summary[row][key]['std']:.3f}"
                                    for key in ("pr_auc", "roc_auc", "recall_at_1pct_fpr"))) for row in rows],
                           headers=("model", "test PR-AUC", "ROC-AUC", "recall at 1 % FPR"))
    columns = runs[args.seeds[0]]["surprise by column"]
    by_column = {name: {key: float(np.mean([runs[s]["surprise by column"][name][key] for s in runs]))
                        for key in ("pr_auc", "roc_auc")} for name in columns}
    print(table)
    print("\nEach surprise column alone, mean over the seeds (how each field's surprise ranks the taken-over rows):")
    print(markdown_table([(name, f"{r['pr_auc']:.4f}", f"{r['roc_auc']:.3f}") for name, r in by_column.items()],
                         headers=("column", "test PR-AUC", "ROC-AUC")))
    default_sizes = (parser.get_default("users"), parser.get_default("rows_per_user"))
    sizes = "" if (args.users, args.rows_per_user) == default_sizes else f"_{args.users}u_{args.rows_per_user}r"
    name = f"novelty{'' if args.donors == 'any' else '_' + args.donors}{sizes}.json"
    out = args.work / tag / name if args.quick else HERE / "results" / name
    write_json_atomic(out, {"meta": meta, "summary": summary, "surprise_by_column": by_column, "runs": runs})
    print(f"{meta['seconds']:.0f} s; results in {out}")
    measured = summary[rows[0]]["pr_auc"]
    return check([Target("label-free test PR-AUC", f"{measured['mean']:.3f} ± {measured['std']:.3f}", f">= {GOAL}",
                         measured["mean"] >= GOAL)])


if __name__ == "__main__":
    sys.exit(main())
