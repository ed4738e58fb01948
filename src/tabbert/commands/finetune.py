"""``tabbert finetune``: train a head on a pre-trained TabBERT (or a raw-field baseline).

Examples::

    tabbert finetune --data prepared/cards --pretrained runs/pretrain/model --out runs/finetune
    tabbert finetune --data prepared/cards --pretrained runs/pretrain --out runs/ft-unfrozen --unfreeze
    tabbert finetune --data prepared/cards --encoder raw --head mlp --out runs/raw-mlp
    tabbert finetune --data prepared/prsa --pretrained runs/pretrain-prsa --out runs/prsa --target last

The run directory receives ``model/`` (config.json, model.safetensors, tokenizer.json),
``metrics.json`` (options, every epoch's validation figures, the best epoch, seconds and the test
figures), ``training_curve.png`` and, for classification, the test PR and ROC curves.
"""

from __future__ import annotations

import argparse

from tabbert.reporting import format_table

CLASSIFICATION_COLUMNS = (("pr_auc", "PR-AUC"), ("roc_auc", "ROC-AUC"), ("f1", "F1"),
                          ("recall_at_1pct_fpr", "recall@1%FPR"))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="prepared dataset directory (from `tabbert prepare`)")
    parser.add_argument("--pretrained", help="pre-training run, RUN or RUN/model (needed unless --encoder raw)")
    parser.add_argument("--out", required=True, help="new run directory")
    model = parser.add_argument_group("model")
    model.add_argument("--encoder", choices=("pretrained", "raw"), default="pretrained",
                       help="the pre-trained TabBERT (default) or field embeddings trained from scratch (baseline)")
    model.add_argument("--head", choices=("lstm", "mlp"), default="lstm",
                       help="LSTM over the rows, read at the last row (default, the reference recipe) or MLP on "
                       "the mean row")
    model.add_argument("--size", choices=("tiny", "small", "paper"), default="small",
                       help="with --encoder raw: embedding and row widths of that model size (default small)")
    model.add_argument("--unfreeze", action="store_true",
                       help="train the pre-trained encoder too, at --encoder-lr (default: frozen)")
    task = parser.add_argument_group("task")
    task.add_argument("--task", choices=("classification", "regression"), help="default: the dataset's task")
    task.add_argument("--label", choices=("any", "last"), default="any",
                      help="classification: a window is positive when any row is (default, the paper) or when "
                      "its last row is (score a row from its history)")
    task.add_argument("--target", choices=("last", "all"), default="last",
                      help="regression: predict the last row's targets (default) or every row's")
    task.add_argument("--loss", choices=("ce", "rmse", "mse"),
                      help="classification: ce (default) or rmse between softmax and one-hot; "
                      "regression: mse (default) or rmse, on standardized targets")
    task.add_argument("--imbalance", choices=("upsample", "weights", "none"),
                      help="classification: repeat positive windows (default), weigh the loss, or nothing")
    task.add_argument("--upsample-ratio", type=float, default=0.5,
                      help="share of positive windows in an upsampled epoch (default 0.5)")
    task.add_argument("--metric", help="validation figure that picks the best epoch: pr_auc (default), roc_auc, "
                      "f1, recall_at_1pct_fpr or loss; regression: rmse (default), mae, rmse_<target> or loss")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=10, help="most epochs (default 10)")
    train.add_argument("--patience", type=int, default=3,
                       help="stop after this many epochs without a better validation figure (default 3)")
    train.add_argument("--batch-size", type=int, default=64, help="windows per batch (default 64)")
    train.add_argument("--grad-accum", type=int, default=1, help="batches per optimizer step (default 1)")
    train.add_argument("--lr", type=float, default=1e-3, help="learning rate of the head (default 1e-3)")
    train.add_argument("--encoder-lr", type=float, default=5e-5,
                       help="learning rate of the encoder with --unfreeze (default 5e-5)")
    train.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    train.add_argument("--warmup-ratio", type=float, default=0.1,
                       help="share of the steps with a linear warm-up before the cosine decay (default 0.1)")
    train.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def run(args: argparse.Namespace) -> int:
    from tabbert.training.finetune import finetune

    metrics = finetune(
        args.data, args.out, pretrained=args.pretrained, encoder=args.encoder, head=args.head, task=args.task,
        size=args.size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, encoder_lr=args.encoder_lr,
        weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio, grad_accum=args.grad_accum,
        patience=args.patience, metric=args.metric, loss=args.loss, imbalance=args.imbalance,
        upsample_ratio=args.upsample_ratio, unfreeze=args.unfreeze, label=args.label, target=args.target,
        device=args.device, seed=args.seed,
    )
    print(summary(metrics))
    print(f"run written to {args.out}")
    return 0


def _shown(value: object) -> object:
    return "n/a" if value is None else value


def summary(metrics: dict) -> str:
    """One line per epoch (losses and validation figures), then the test figures and run facts."""
    regression = metrics["task"] == "regression"
    columns = (("rmse", "val RMSE"), ("mae", "val MAE")) if regression else tuple(
        (key, f"val {name}") for key, name in CLASSIFICATION_COLUMNS)
    rows = [(e["epoch"], e["train_loss"], e["val_loss"], *(_shown(e.get(k)) for k, _ in columns),
             "*" if e["epoch"] == metrics["best_epoch"] else "") for e in metrics["epochs"]]
    parts = [format_table(rows, headers=("epoch", "train loss", "val loss", *(n for _, n in columns), "best"))]
    test = metrics.get("evaluate", {}).get("test")
    if test:
        keys = ([k for k in test if k.startswith(("rmse", "mae"))] if regression
                else [k for k, _ in CLASSIFICATION_COLUMNS])
        facts = [("windows", test["n"])] + ([] if regression else [("positives", test["positives"]),
                                                                   ("threshold (best val F1)", test["threshold"])])
        facts += [(key, _shown(test[key])) for key in keys]
        if not regression:
            facts += [("precision", test["precision"]), ("recall", test["recall"]),
                      ("confusion [[tn, fp], [fn, tp]]", test["confusion_matrix"])]
        parts.append(format_table(facts, headers=("test", "value")))
    parts.append(format_table([
        ("best epoch", f"{metrics['best_epoch']} ({metrics['metric']} {metrics['best_value']:.4f})"),
        ("trainable parameters", f"{metrics['parameters']['trainable']:,} of {metrics['parameters']['total']:,}"),
        ("train seconds", metrics["train_seconds"]),
        ("device", metrics["device"]),
    ], headers=("run", "value")))
    return "\n\n".join(parts)
