"""``tabbert pretrain``: masked-field pre-training of TabBERT on a prepared dataset.

Runs unchanged on one process or under ``torchrun --nproc_per_node N`` (gloo on CPU, NCCL on
GPUs); ``--resume`` continues an interrupted run from its newest checkpoint when given the
same options again.
"""

from __future__ import annotations

import argparse

from tabbert.models.configuration import MODEL_SIZES

# command-line option -> TabBertConfig setting
SIZE_OVERRIDES = {
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "field_hidden": "field_hidden",
    "field_heads": "field_num_heads",
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="prepared dataset directory (from `tabbert prepare`)")
    parser.add_argument("--out", required=True, help="new run directory (or the run to continue with --resume)")
    parser.add_argument("--model", choices=tuple(MODEL_SIZES), default="small",
                        help="model size: tiny (tests), small (default), paper (Padhi et al. 2021)")
    parser.add_argument("--flat", action="store_true",
                        help="flat TabBERT: one BERT over all field tokens instead of field then row transformers")
    parser.add_argument("--epochs", type=float, default=1, help="training epochs (default 1)")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per batch and process (default 64)")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default 5e-4)")
    parser.add_argument("--max-steps", type=int, default=-1,
                        help="stop after this many optimizer steps (overrides --epochs)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialization, data order and masks (default 0)")
    parser.add_argument("--mlm-probability", type=float, default=0.15,
                        help="share of field tokens (rows with --mask-rows) selected for prediction (default 0.15)")
    parser.add_argument("--mask-rows", action="store_true", help="mask whole rows instead of single fields")
    parser.add_argument("--save-steps", type=int, default=500, help="checkpoint every this many steps (default 500)")
    parser.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept (default 2)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast on a CUDA device (ignored on CPU)")
    sizes = parser.add_argument_group("size overrides", "change single values of the --model size")
    sizes.add_argument("--hidden-size", type=int, help="width of a row vector")
    sizes.add_argument("--num-layers", type=int, help="layers of the row BERT")
    sizes.add_argument("--num-heads", type=int, help="attention heads of the row BERT")
    sizes.add_argument("--intermediate-size", type=int, help="feed-forward width of the row BERT")
    sizes.add_argument("--field-hidden", type=int, help="width of a field embedding")
    sizes.add_argument("--field-heads", type=int, help="attention heads of the field transformer")


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from tabbert.training.pretrain import pretrain, summary

    overrides = {setting: getattr(args, option) for option, setting in SIZE_OVERRIDES.items()
                 if getattr(args, option) is not None}
    metrics = pretrain(
        args.data, args.out, model=args.model, flat=args.flat, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, max_steps=args.max_steps, resume=args.resume, seed=args.seed,
        mlm_probability=args.mlm_probability, mask_rows=args.mask_rows, save_steps=args.save_steps,
        save_total_limit=args.save_total_limit, bf16=args.bf16, **overrides,
    )
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(summary(metrics))
        print(f"model written to {args.out}/model, metrics to {args.out}/metrics.json")
    return 0
