"""``tabbert demo``: the whole pipeline on generated data, ending in the paper's table."""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import replace


def configure(parser: argparse.ArgumentParser) -> None:
    from tabbert.options import ComputeOptions, add_arguments

    parser.add_argument("--out", help="new run directory (default runs/demo-<date>-<time>)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of every step in about a minute")
    parser.add_argument("--users", type=int, help="card holders to generate (default 300; 60 with --quick)")
    parser.add_argument("--rows-per-user", type=int, help="average rows per card holder (default 800; 400 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, splits and training (default 0)")
    parser.add_argument("--pretrain-steps", type=int, help="pre-training steps of each model (default 300; 120 with --quick)")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs (default 2; 2 with --quick)")
    add_arguments(parser, ComputeOptions)


def run(args: argparse.Namespace) -> int:
    from tabbert.demo import DemoSettings, run_demo
    from tabbert.options import ComputeOptions

    compute = ComputeOptions.from_arguments(args)
    settings = DemoSettings.quick(args.seed) if args.quick else DemoSettings(seed=args.seed)
    overrides = {"users": args.users, "rows_per_user": args.rows_per_user, "pretrain_steps": args.pretrain_steps,
                 "finetune_epochs": args.epochs,
                 "threads": compute.threads, "device": compute.device}
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    out = args.out or f"runs/demo-{dt.datetime.now():%Y%m%d-%H%M%S}"
    run_demo(out, settings)
    return 0
