"""``tabbert serve``: score transactions over HTTP as they come, keeping each entity's state.

Example::

    tabbert serve --model runs/finetune --port 8000 --state state/ --warm-start history.csv
    curl -s localhost:8000/score -H 'content-type: application/json' -d @transaction.json

``POST /score`` takes one transaction (a JSON object of the source's columns) or a list;
``GET /health`` and ``GET /model`` describe the service. With ``--state`` the entities' state is
kept in SQLite in that folder and survives a restart; ``--warm-start`` loads the entities' past
rows from a file (the formats ``predict`` reads) before serving.
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    from tabbert.options import ComputeOptions, add_arguments, add_threshold_option
    from tabbert.serving.app import BATCH_WAIT_MS

    parser.add_argument("--model", required=True, help="fine-tuning run directory, or its model/ subdirectory")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument("--state", help="folder for the entities' durable state (SQLite); default: in memory")
    parser.add_argument("--warm-start", help="history file whose rows give the entities' state before serving")
    parser.add_argument("--batch-wait-ms", type=float, default=BATCH_WAIT_MS,
                        help=f"how long concurrent requests are collected into one batch (default {BATCH_WAIT_MS})")
    parser.add_argument("--synchronous", choices=("NORMAL", "FULL"), default="NORMAL",
                        help="SQLite durability of --state: NORMAL survives a crash of the process (kill -9), FULL "
                        "a power loss too, at a disk sync per batch (default NORMAL)")
    add_threshold_option(parser)
    add_arguments(parser, ComputeOptions)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from tabbert.options import ComputeOptions
    from tabbert.serving.app import create_app
    from tabbert.serving.scorer import Scorer
    from tabbert.threads import use_threads

    compute = ComputeOptions.from_arguments(args)
    use_threads(compute.threads)
    scorer = Scorer(args.model, state=args.state, threshold=args.threshold, device=compute.device,
                    synchronous=args.synchronous)
    if args.warm_start:
        print(f"warm start: {scorer.warm_start(args.warm_start)} entities from {args.warm_start}", flush=True)
    print(f"serving {scorer.run.run_dir} on http://{args.host}:{args.port} (POST /score, GET /health, GET /model)",
          flush=True)
    uvicorn.run(create_app(scorer, batch_wait_ms=args.batch_wait_ms), host=args.host, port=args.port,
                log_level="warning")
    return 0
