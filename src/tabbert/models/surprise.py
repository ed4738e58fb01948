"""Surprise of rows under a pre-trained TabBERT's field heads.

The surprise of a field is the negative log-probability (nats) of its true value under that
field's head. Two ways give the heads a row to predict from its history alone:

* :func:`masked_row_surprise`: the newest row of each window masked whole, predicted by a
  masked-field model from the rows before it (one forward per row scored);
* :func:`next_row_surprise`: a causal model's heads at row t predicting row t+1 (one forward
  scores every row of a window but the first).

:mod:`tabbert.anomaly` ranks rows by these scores; a classifier with ``surprise_input`` reads
them beside the encoder's row vectors (:class:`RowsWithSurprise`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from tabbert.data.tokenizer import MASK_ID
from tabbert.models.configuration import TabBertConfig
from tabbert.models.tabbert import (
    TabBertModel,
    TabBertModelOutput,
    TabBertRowToFieldHeads,
    TabBertTokenHeads,
)


def field_surprise(field_logits: Sequence[torch.Tensor], truth: torch.Tensor) -> torch.Tensor:
    """``[..., F]`` surprise of each field's true local id ``truth [..., F]`` under its logits
    (one ``[..., V_f]`` tensor per field)."""
    return torch.stack([
        -F.log_softmax(logits.float(), dim=-1).gather(-1, truth[..., field:field + 1]).squeeze(-1)
        for field, logits in enumerate(field_logits)
    ], dim=-1)


def _field_offsets(config: TabBertConfig, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(config.field_offsets, dtype=torch.long, device=device)


def masked_row_surprise(tabbert: TabBertModel, heads: nn.Module, input_ids: torch.LongTensor,
                        attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, TabBertModelOutput]:
    """``[B, F]`` surprise of the newest row of each window, masked whole, and the encoder's output
    of the masked windows."""
    truth = input_ids[:, -1, :] - _field_offsets(tabbert.config, input_ids.device)
    masked = input_ids.clone()
    masked[:, -1, :] = MASK_ID
    encoded = tabbert(masked, attention_mask=attention_mask)
    states = encoded.token_hidden_states[:, -1:] if tabbert.config.flat else encoded.last_hidden_state[:, -1:]
    return field_surprise([logits[:, 0] for logits in heads(states)], truth), encoded


def next_row_surprise(tabbert: TabBertModel, heads: nn.Module, input_ids: torch.LongTensor,
                      attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, L - 1, F]`` surprise of rows 1 .. L-1 of each window under a causal model's heads at
    the row before, and the encoder's output at every row ``[B, L, H]``. Where the row before is
    padding, the values are meaningless."""
    states = tabbert(input_ids, attention_mask=attention_mask).last_hidden_state
    truth = (input_ids[:, 1:] - _field_offsets(tabbert.config, input_ids.device)).clamp(min=0)  # padding: negative
    return field_surprise(heads(states[:, :-1]), truth), states


class RowsWithSurprise(nn.Module):
    """A pre-trained TabBERT with its field heads, giving each row's vector followed by the
    row's surprise given the window's rows before it, field by field ``[B, L, H + F]``.

    A causal model scores every row after the first in the same forward. A masked-field model
    scores the newest row only, in a second forward with that row masked whole. Rows left
    unscored (and rows after padding) read 0. Each field's surprise is divided by the log of its
    vocabulary size (a uniform guess scores 1), so that every field reads on a similar scale.
    The parameter names are those of the pre-training model, whose weights load as they are.
    """

    def __init__(self, config: TabBertConfig):
        super().__init__()
        self.config = config
        self.tabbert = TabBertModel(config)
        self.heads = TabBertTokenHeads(config) if config.flat else TabBertRowToFieldHeads(config)

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None) -> BaseModelOutput:
        if self.config.causal:
            surprise, states = next_row_surprise(self.tabbert, self.heads, input_ids, attention_mask)
            if attention_mask is not None:
                surprise = surprise * attention_mask[:, :-1, None].to(surprise.dtype)
            scored = F.pad(surprise, (0, 0, 1, 0))  # the first row has none before it
        else:
            states = self.tabbert(input_ids, attention_mask=attention_mask).last_hidden_state
            surprise, _ = masked_row_surprise(self.tabbert, self.heads, input_ids, attention_mask)
            scored = F.pad(surprise[:, None], (0, 0, input_ids.shape[1] - 1, 0))  # the newest row only
        scale = torch.tensor([1.0 / math.log(max(size, 2)) for size in self.config.field_vocab_sizes],
                             device=input_ids.device)
        return BaseModelOutput(last_hidden_state=torch.cat([states, (scored * scale).to(states.dtype)], dim=-1))
