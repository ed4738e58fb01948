"""Downstream heads: from one encoder vector per row ``[batch, rows, hidden]`` to task outputs.

Both heads take the ``attention_mask`` ``[batch, rows]`` of the window (1 for a real row, 0 for a
padding row) so that padding never reaches the output:

* :class:`LSTMHead`, the reference recipe: an LSTM runs over the real rows, oldest first, and
  a linear layer reads its state after the newest real row.
* :class:`MLPHead`: the mean of the real rows' vectors through a two-layer perceptron.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


def masked_mean(states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the real rows: ``states [B, L, H]``, ``attention_mask [B, L]`` → ``[B, H]``."""
    if attention_mask is None:
        return states.mean(dim=1)
    weights = attention_mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class LSTMHead(nn.Module):
    """An LSTM (hidden → hidden) over the rows and a linear layer on its last real row."""

    def __init__(self, hidden: int, num_outputs: int, dropout: float = 0.1):
        super().__init__()
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden, num_outputs)

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None or bool(attention_mask.all()):
            _, (last_state, _) = self.lstm(states)
        else:
            # move each window's real rows to the front, in their order, and let packing skip the rest
            real = attention_mask.bool()
            order = torch.argsort((~real).to(torch.int8), dim=1, stable=True)
            states = states.gather(1, order.unsqueeze(-1).expand_as(states))
            lengths = real.sum(dim=1).clamp(min=1).cpu()
            packed = pack_padded_sequence(states, lengths, batch_first=True, enforce_sorted=False)
            _, (last_state, _) = self.lstm(packed)
        return self.output(self.dropout(last_state[-1]))


class MLPHead(nn.Module):
    """A two-layer perceptron on the mean of the real rows' vectors."""

    def __init__(self, hidden: int, num_outputs: int, dropout: float = 0.1):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden, num_outputs)

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        pooled = masked_mean(states, attention_mask)
        return self.output(self.dropout(self.activation(self.dense(pooled))))


HEADS: dict[str, type[nn.Module]] = {"lstm": LSTMHead, "mlp": MLPHead}
