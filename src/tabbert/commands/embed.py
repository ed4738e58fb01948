"""``tabbert embed``: encoder outputs of a pre-trained TabBERT for the windows of a prepared dataset.

One Parquet file, written atomically. Every record names its window: ``start`` (first row of the
window in the prepared token matrix), ``entity`` and ``split``. Then, by ``--level``:

* ``window`` (one record per window): ``row_id`` of the window's newest row in the source,
  ``label`` (1 when any row of the window is positive, classification data) or ``target`` (the
  newest row's targets, regression data), ``last`` (the encoder output at the newest row) and
  ``mean`` (the mean output over the window's rows).
* ``row`` (one record per row of each window, so rows shared by overlapping windows repeat):
  ``position`` in the window (0 = oldest), the row's ``row_id``, its ``label``/``target`` and
  ``embedding`` (the encoder output at that row).

Embeddings are fixed-size lists of float32, e.g. ``np.stack(polars.read_parquet(f)["mean"])``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from tabbert.atomic import atomic_path
from tabbert.data.prepared import PreparedDataset
from tabbert.data.tokenizer import PAD_ID
from tabbert.data.windows import SPLITS
from tabbert.errors import ArtifactError, TabbertError
from tabbert.models.configuration import TabBertConfig
from tabbert.models.tabbert import TabBertModel

LEVELS = ("window", "row")
SPLIT_CHOICES = ("all", "train", "val", "test")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory (RUN/model of `tabbert pretrain`)")
    parser.add_argument("--data", required=True, help="prepared dataset directory made with the model's tokenizer")
    parser.add_argument("--out", required=True, help="Parquet file to write")
    parser.add_argument("--split", choices=SPLIT_CHOICES, default="all", help="windows to embed (default all)")
    parser.add_argument("--level", choices=LEVELS, default="window",
                        help="window: last-row and mean vectors per window (default); "
                        "row: a vector per row of each window")
    parser.add_argument("--batch-size", type=int, default=256, help="windows per forward pass (default 256)")


def run(args: argparse.Namespace) -> int:
    summary = write_embeddings(args.model, args.data, args.out, split=args.split, level=args.level,
                               batch_size=args.batch_size)
    print(f"{summary['records']:,} {args.level} embeddings of width {summary['hidden_size']} "
          f"({summary['windows']:,} windows) written to {args.out}")
    return 0


def load_encoder(model_dir: str | Path):
    """The TabBERT encoder saved in ``model_dir``, in eval mode; ArtifactError when it is not one."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ArtifactError(f"{model_dir}: not a model directory (no config.json)")
    try:
        config = TabBertConfig.from_pretrained(model_dir)
        encoder = TabBertModel.from_pretrained(model_dir, config=config)
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"{model_dir}: cannot load the model ({exc})") from exc
    return encoder.eval()


def write_embeddings(model_dir: str | Path, data_dir: str | Path, out: str | Path, *, split: str = "all",
                     level: str = "window", batch_size: int = 256) -> dict:
    """Embed the windows of ``split`` with the encoder in ``model_dir``; write the Parquet ``out``.

    Returns counts: ``windows``, ``records`` and ``hidden_size``.
    """
    if level not in LEVELS:
        raise TabbertError(f"unknown level {level!r}; choose from {LEVELS}")
    if split not in SPLIT_CHOICES:
        raise TabbertError(f"unknown split {split!r}; choose from {SPLIT_CHOICES}")
    if batch_size < 1:
        raise TabbertError(f"the batch size must be at least 1, got {batch_size}")
    data = PreparedDataset(data_dir)
    encoder = load_encoder(model_dir)
    tokenizer = data.tokenizer
    encoder.config.check_compatible(tokenizer.field_names, tokenizer.field_vocab_sizes, tokenizer.fingerprint())
    if data.seq_len > encoder.config.max_rows:
        raise ArtifactError(f"{model_dir}: the model takes windows of up to {encoder.config.max_rows} rows, "
                            f"the dataset has {data.seq_len}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder.to(device)

    splits = SPLITS if split == "all" else (split,)
    starts = [data.windows(name) for name in splits]
    split_names = np.repeat(np.array(splits, dtype=object), [len(s) for s in starts])
    starts = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
    schema = _schema(data, encoder.config.hidden_size, level)
    records = 0
    with atomic_path(out) as temporary:
        with pq.ParquetWriter(temporary, schema) as writer, torch.inference_mode():
            for begin in tqdm(range(0, len(starts), batch_size), desc="embedding", unit="batch",
                              total=-(-len(starts) // batch_size)):
                chunk = slice(begin, begin + batch_size)
                input_ids = torch.from_numpy(data.window_tokens(starts[chunk]).astype(np.int64)).to(device)
                attention_mask = (input_ids != PAD_ID).any(dim=-1).long()
                hidden = encoder(input_ids, attention_mask=attention_mask).last_hidden_state.float()
                batch = _records(data, starts[chunk], split_names[chunk], hidden, attention_mask, schema)
                writer.write_table(batch)
                records += batch.num_rows
    return {"windows": int(len(starts)), "records": records, "hidden_size": int(encoder.config.hidden_size)}


def _schema(data: PreparedDataset, width: int, level: str) -> pa.Schema:
    vector = pa.list_(pa.float32(), width)
    outcome = (pa.field("label", pa.int8()) if data.task == "classification"
               else pa.field("target", pa.list_(pa.float32(), data.targets.shape[1])))
    identity = [pa.field("start", pa.int64()), pa.field("entity", pa.string()), pa.field("split", pa.string())]
    if level == "window":
        return pa.schema([*identity, pa.field("row_id", pa.int64()), outcome,
                          pa.field("last", vector), pa.field("mean", vector)])
    return pa.schema([*identity, pa.field("position", pa.int16()), pa.field("row_id", pa.int64()), outcome,
                      pa.field("embedding", vector)])


def _records(data: PreparedDataset, starts: np.ndarray, splits: np.ndarray, hidden: torch.Tensor,
             attention_mask: torch.Tensor, schema: pa.Schema) -> pa.Table:
    """The records of a batch of windows, with the columns of ``schema``."""
    hidden = hidden.cpu().numpy()
    width = hidden.shape[-1]
    seq_len = data.seq_len
    entities = np.asarray(data.entities, dtype=object)[np.searchsorted(data.entity_offsets, starts, side="right") - 1]
    if "embedding" not in schema.names:
        newest = starts + seq_len - 1
        mask = attention_mask.cpu().numpy().astype(np.float32)[:, :, None]
        columns = {
            "start": starts, "entity": entities, "split": splits, "row_id": np.asarray(data.row_ids)[newest],
            **_outcome(data, newest, window_starts=starts),
            "last": _vectors(hidden[:, -1]),
            "mean": _vectors((hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0)),
        }
    else:
        rows = (starts[:, None] + np.arange(seq_len)).ravel()
        columns = {
            "start": np.repeat(starts, seq_len), "entity": np.repeat(entities, seq_len),
            "split": np.repeat(splits, seq_len), "position": np.tile(np.arange(seq_len, dtype=np.int16), len(starts)),
            "row_id": np.asarray(data.row_ids)[rows], **_outcome(data, rows),
            "embedding": _vectors(hidden.reshape(-1, width)),
        }
    return pa.table(columns, schema=schema)


def _outcome(data: PreparedDataset, rows: np.ndarray, window_starts: np.ndarray | None = None) -> dict:
    """``label`` of the rows (of the windows: positive when any row is) or ``target`` of the rows."""
    if data.task == "classification":
        labels = np.asarray(data.labels)[rows] if window_starts is None else data.window_labels(window_starts, "any")
        return {"label": labels.astype(np.int8)}
    return {"target": _vectors(np.asarray(data.targets)[rows])}


def _vectors(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """Rows of a float matrix as a fixed-size list column."""
    flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).ravel(), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])
