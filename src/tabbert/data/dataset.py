"""A PyTorch view of one split of a prepared dataset: one item per window."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from tabbert.data.prepared import PreparedDataset


class WindowDataset(Dataset):
    """Windows of ``split`` as ``{"input_ids": [seq_len, n_fields]}`` items.

    With ``label_mode`` ("any" or "last") items carry a class label; with ``target_mode``
    ("last" or "all") they carry regression targets. Windows are read from the memory-mapped
    token matrix on access, never materialized.
    """

    def __init__(self, data: PreparedDataset, split: str, *, label_mode: str | None = None,
                 target_mode: str | None = None, starts: np.ndarray | None = None):
        self.data = data
        self.split = split
        self.starts = data.windows(split) if starts is None else np.asarray(starts, dtype=np.int64)
        self.seq_len = data.seq_len
        self.labels = data.window_labels(self.starts, label_mode) if label_mode else None
        self.targets = data.window_targets(self.starts, target_mode).astype(np.float32) if target_mode else None

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict:
        start = self.starts[index]
        item = {"input_ids": np.asarray(self.data.tokens[start : start + self.seq_len], dtype=np.int64)}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        elif self.targets is not None:
            item["labels"] = self.targets[index]
        return item
