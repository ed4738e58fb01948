"""The paper's "raw" baselines: the downstream heads on field embeddings trained from scratch.

No TabBERT and no pre-training: every field token gets a learned embedding (``field_hidden``
wide), a row's embeddings are concatenated and projected to ``hidden_size``, and an LSTM or MLP
head reads the rows as it reads TabBERT's row vectors. The widths come from a named model size.
"""

from __future__ import annotations

import torch
from torch import nn

from tabbert.data.tokenizer import TabularTokenizer
from tabbert.models.classifier import SequenceHeadModel, TabBertClassifierConfig
from tabbert.models.configuration import TabBertConfig
from tabbert.models.tabbert import TabBertModelOutput


class RawFieldEncoder(nn.Module):
    """Field tokens → learned embeddings (``field_hidden`` each) → concatenated per row → ``hidden_size``."""

    def __init__(self, config: TabBertConfig):
        super().__init__()
        self.field_embeddings = nn.Embedding(config.vocab_size, config.field_hidden, padding_idx=config.pad_token_id)
        self.row_projection = nn.Linear(config.n_fields * config.field_hidden, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None) -> TabBertModelOutput:
        rows = self.field_embeddings(input_ids).flatten(start_dim=2)
        return TabBertModelOutput(last_hidden_state=self.dropout(self.row_projection(rows)))


class RawFieldsForSequenceClassification(SequenceHeadModel):
    """An LSTM or MLP head on :class:`RawFieldEncoder`, all of it trained on the task."""

    encoder_kind = "raw"

    def build_encoder(self, config: TabBertClassifierConfig) -> RawFieldEncoder:
        return RawFieldEncoder(config)

    @classmethod
    def for_tokenizer(cls, tokenizer: TabularTokenizer, size: str, *, seq_len: int,
                      **settings) -> RawFieldsForSequenceClassification:
        """A new model of the named size for a tokenizer's fields and windows of ``seq_len`` rows."""
        fields = TabBertConfig.for_tokenizer(tokenizer, size, seq_len=seq_len)
        config = TabBertClassifierConfig.from_encoder_config(fields, encoder_kind=cls.encoder_kind,
                                                             freeze_encoder=False, seq_len=seq_len, **settings)
        return cls(config)
