"""Batches of windows for pre-training: the windows of a split, stacked and masked field by field.

:class:`WindowDataset` gives the windows of a split, read on access from the memory-mapped token
matrix. An example is a dict with ``input_ids`` ``[rows, fields]`` (global token ids, numpy or torch)
and optionally ``attention_mask`` ``[rows]``; when the mask is absent, rows made only of [PAD]
are taken as padding.

:class:`MaskedFieldCollator` follows BERT's recipe field by field: of the field tokens it
selects, 80 % become [MASK], 10 % a random value of the *same* field (so every corrupted row
is still a row the table could hold) and 10 % stay as they are. ``labels`` carry the local id
(position inside the field's range) of each selected token and -100 elsewhere. Special tokens
([PAD], [SEP], ...) and padding rows are never selected. All randomness comes from torch's
global generator, or from ``generator`` when given, so a seeded run masks the same way. Masks
are drawn on the batch's device, with a generator of that device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tabbert.data.prepared import PreparedDataset

IGNORE_INDEX = -100
FIRST_VALUE_ID = 2  # local ids 0 and 1 are the field's [UNK] and [MISSING]


class WindowDataset(Dataset):
    """The windows of ``split`` as ``{"input_ids": [seq_len, n_fields]}`` items, never materialized."""

    def __init__(self, data: PreparedDataset, split: str):
        self.data = data
        self.starts = data.windows(split)
        self.seq_len = data.seq_len

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict:
        start = self.starts[index]
        return {"input_ids": np.asarray(self.data.tokens[start : start + self.seq_len], dtype=np.int64)}


def stack_windows(examples: Sequence[Mapping[str, Any]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids [B, L, F]`` and ``attention_mask [B, L]`` (int64) from a list of examples."""
    input_ids = _stack([example["input_ids"] for example in examples]).long()
    if "attention_mask" in examples[0]:
        attention_mask = _stack([example["attention_mask"] for example in examples])
    else:
        attention_mask = (input_ids != pad_token_id).any(dim=-1)
    return input_ids, attention_mask.long()


def _stack(values: Sequence[Any]) -> torch.Tensor:
    if isinstance(values[0], torch.Tensor):
        return torch.stack(values)
    return torch.from_numpy(np.array(values))


@dataclass
class MaskedFieldCollator:
    """Collate windows and mask field tokens for masked-field modeling.

    Args:
        field_offsets: first global id of each field's range.
        field_vocab_sizes: size of each field's range.
        mlm_probability: chance that a field token (or, with ``mask_rows``, a row) is selected.
        mask_rows: select whole rows (every field of the row) instead of single fields.
        mask_token_id, pad_token_id: the special ids of the tokenizer.
        generator: optional torch generator (of the batches' device); torch's global one otherwise.
    """

    field_offsets: Sequence[int]
    field_vocab_sizes: Sequence[int]
    mlm_probability: float = 0.15
    mask_rows: bool = False
    mask_token_id: int = 4
    pad_token_id: int = 0
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if len(self.field_offsets) != len(self.field_vocab_sizes):
            raise ValueError("field_offsets and field_vocab_sizes must have one entry per field")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        self._offsets = torch.as_tensor(self.field_offsets, dtype=torch.long)
        self._sizes = torch.as_tensor(self.field_vocab_sizes, dtype=torch.long)
        # random replacements are drawn among a field's values; a field without any uses its whole range
        first_random = torch.where(self._sizes > FIRST_VALUE_ID, FIRST_VALUE_ID, 0)
        self._random_low = self._offsets + first_random
        self._random_span = self._sizes - first_random
        self._tables: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = stack_windows(examples, self.pad_token_id)
        input_ids, labels = self.mask(input_ids, attention_mask)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked copy of ``input_ids [B, L, F]`` and the MLM ``labels`` (local ids, -100 elsewhere).

        Everything happens on the batch's device; ``generator`` (of that device) replaces the collator's.
        """
        generator = generator or self.generator
        device = input_ids.device
        offsets, sizes, random_low, random_span = self._on(device)
        batch, rows, n_fields = input_ids.shape
        local_ids = input_ids - offsets
        is_field_token = (local_ids >= 0) & (local_ids < sizes) & attention_mask.bool().unsqueeze(-1)
        draw = torch.rand((batch, rows, 1 if self.mask_rows else n_fields), generator=generator, device=device)
        selected = (draw < self.mlm_probability) & is_field_token
        labels = torch.where(selected, local_ids, IGNORE_INDEX)

        # only the selected tokens (about mlm_probability of them) need more random draws
        flat_ids = input_ids.reshape(-1)
        positions = selected.reshape(-1).nonzero().squeeze(1)
        field = positions % n_fields
        split, value = torch.rand((2, positions.numel()), generator=generator, device=device)
        span = random_span.index_select(0, field)
        random_ids = random_low.index_select(0, field) + (value * span).long().clamp_(max=span - 1)
        original_ids = flat_ids.index_select(0, positions)
        replacement = torch.where(split < 0.8, self.mask_token_id, torch.where(split < 0.9, original_ids, random_ids))
        masked_ids = flat_ids.clone().index_copy_(0, positions, replacement)
        return masked_ids.view_as(input_ids), labels

    def _on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """The field tables on ``device``, copied there once."""
        if device not in self._tables:
            tables = (self._offsets, self._sizes, self._random_low, self._random_span)
            self._tables[device] = tuple(table.to(device) for table in tables)
        return self._tables[device]
