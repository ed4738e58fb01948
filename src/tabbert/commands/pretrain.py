"""``tabbert pretrain``: masked-field pre-training of TabBERT on a prepared dataset.

Runs unchanged on one process or under ``torchrun --nproc_per_node N`` (gloo on CPU, NCCL on
GPUs); ``--resume`` continues an interrupted run from its newest checkpoint when given the
same options again. The model size is ``--size`` (``--model`` is its older name).
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    from tabbert.options import PretrainOptions, add_arguments

    parser.add_argument("--data", required=True, help="prepared dataset directory (from `tabbert prepare`)")
    parser.add_argument("--out", required=True, help="new run directory (or the run to continue with --resume)")
    add_arguments(parser, PretrainOptions)


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from tabbert.options import PretrainOptions
    from tabbert.training.pretrain import pretrain, summary

    metrics = pretrain(args.data, args.out, PretrainOptions.from_arguments(args))
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(summary(metrics))
        print(f"model written to {args.out}/model, metrics to {args.out}/metrics.json")
    return 0
