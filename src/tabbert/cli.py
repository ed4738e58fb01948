"""The ``tabbert`` command line: one entry point, one module per command.

Each command lives in ``tabbert.commands.<module>`` with ``configure(parser)`` and ``run(args)``;
modules are imported only when their command runs, so ``tabbert --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tabbert.errors import TabbertError

COMMANDS: dict[str, tuple[str, str]] = {
    "generate-data": ("generate_data", "write synthetic card transactions in the IBM card format"),
    "prepare": ("prepare", "tokenize a raw table into a prepared, windowed dataset"),
    "pretrain": ("pretrain", "masked-field pre-training of TabBERT on a prepared dataset"),
    "embed": ("embed", "row and window embeddings from a pre-trained model, as Parquet"),
    "finetune": ("finetune", "supervised fine-tuning (fraud classification or regression)"),
    "evaluate": ("evaluate", "metrics, curves and a threshold for a fine-tuned model on one split"),
    "predict": ("predict", "one score per transaction of a raw input file"),
    "serve": ("serve", "score transactions over HTTP as they come, keeping each entity's state"),
    "anomaly": ("anomaly", "label-free surprise of every row from its history (masked-row or next-row)"),
    "baseline": ("baseline", "LightGBM, raw LSTM or raw MLP baselines on the same splits"),
    "demo": ("demo", "the whole pipeline on generated data, ending in the paper's table"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tabbert",
        description="Tabular transformers (TabBERT) for multivariate time series: "
        "prepare -> pretrain -> finetune -> evaluate -> predict.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            _command_module(module_name).configure(sub)
    return parser


def _command_module(module_name: str):
    return importlib.import_module(f"tabbert.commands.{module_name}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if arg in COMMANDS), None)
    args = build_parser(command).parse_args(argv)
    try:
        return int(_command_module(COMMANDS[args.command][0]).run(args) or 0)
    except TabbertError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
