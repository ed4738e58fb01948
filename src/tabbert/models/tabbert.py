"""TabBERT (Padhi et al., 2021): transformers for windows of table rows.

A window is ``input_ids`` of shape ``[batch, rows, fields]`` in the tokenizer's global id space,
oldest row first, with ``attention_mask`` ``[batch, rows]`` marking real rows (padding rows come
first, for entities with a short history).

Two encoders, chosen by ``config.flat``:

* **hierarchical** (default): each field token is embedded (``field_hidden`` wide, plus a
  learned field-position vector); a small transformer attends across the fields of one row;
  the row's field vectors are concatenated and projected to ``hidden_size``; a BERT then
  attends across the rows of the window (position = row index).
* **flat**: the window becomes one token sequence, each row's fields followed by a [SEP]; a
  plain BERT runs over it and a row is represented by the output at its [SEP].

Both return one vector per row in ``last_hidden_state`` ``[batch, rows, hidden]``, so downstream
heads do not depend on the variant. :class:`TabBertForMaskedFieldModeling` adds per-field heads
that predict a masked field over that field's own vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, BertConfig, BertModel, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.models.bert.modeling_bert import BertEncoder
from transformers.utils import ModelOutput

from tabbert.models.configuration import TabBertConfig

IGNORE_INDEX = -100


@dataclass
class TabBertModelOutput(ModelOutput):
    """Encoder output.

    Args:
        last_hidden_state: ``[batch, rows, hidden]``, one vector per row.
        row_embeddings: hierarchical only, the row vectors fed to the row BERT ``[batch, rows, hidden]``.
        token_hidden_states: flat only, the output at every field token ``[batch, rows, fields, hidden]``.
    """

    last_hidden_state: torch.FloatTensor | None = None
    row_embeddings: torch.FloatTensor | None = None
    token_hidden_states: torch.FloatTensor | None = None


@dataclass
class TabBertMaskedFieldOutput(ModelOutput):
    """Masked-field-modeling output.

    Args:
        loss: mean cross-entropy over all masked field positions (when ``labels`` are given).
        field_logits: one tensor per field, over that field's vocabulary: ``[n_masked_in_field, V_f]``
            when ``labels`` are given, else ``[batch, rows, V_f]``.
        field_labels: one tensor per field, the local ids aligned with ``field_logits``
            (when ``labels`` are given).
        last_hidden_state: the encoder's row vectors ``[batch, rows, hidden]``.
    """

    loss: torch.FloatTensor | None = None
    field_logits: tuple[torch.FloatTensor, ...] | None = None
    field_labels: tuple[torch.LongTensor, ...] | None = None
    last_hidden_state: torch.FloatTensor | None = None


def _bert_config(config: TabBertConfig, **shape) -> BertConfig:
    """A BertConfig sharing our activation, dropout, init and attention settings."""
    return BertConfig(
        hidden_act=config.hidden_act,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        initializer_range=config.initializer_range,
        layer_norm_eps=config.layer_norm_eps,
        pad_token_id=config.pad_token_id,
        type_vocab_size=1,
        attn_implementation=config._attn_implementation,
        **shape,
    )


class TabBertPreTrainedModel(PreTrainedModel):
    config_class = TabBertConfig
    base_model_prefix = "tabbert"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["BertLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class TabBertModel(TabBertPreTrainedModel):
    """The TabBERT encoder: ``input_ids [B, L, F]`` → one vector per row ``[B, L, hidden]``."""

    def __init__(self, config: TabBertConfig):
        super().__init__(config)
        n_fields = config.n_fields
        if config.flat:
            self.bert = BertModel(
                _bert_config(
                    config,
                    vocab_size=config.vocab_size,
                    max_position_embeddings=config.max_rows * (n_fields + 1),
                    **self._row_shape(config),
                ),
                add_pooling_layer=False,
            )
        else:
            self.field_embeddings = nn.Embedding(config.vocab_size, config.field_hidden)
            self.field_position_embeddings = nn.Embedding(n_fields, config.field_hidden)
            self.field_layer_norm = nn.LayerNorm(config.field_hidden, eps=config.layer_norm_eps)
            self.field_dropout = nn.Dropout(config.hidden_dropout_prob)
            self.field_encoder = BertEncoder(
                _bert_config(
                    config,
                    hidden_size=config.field_hidden,
                    num_hidden_layers=config.field_num_layers,
                    num_attention_heads=config.field_num_heads,
                    intermediate_size=config.field_intermediate_size,
                )
            )
            self.row_projection = nn.Linear(n_fields * config.field_hidden, config.hidden_size)
            # Rows enter the row BERT as inputs_embeds, so its word table is a frozen 1-entry stub.
            self.bert = BertModel(
                _bert_config(config, vocab_size=1, max_position_embeddings=config.max_rows, **self._row_shape(config)),
                add_pooling_layer=False,
            )
            self.bert.embeddings.word_embeddings.requires_grad_(False)
        self.post_init()

    @staticmethod
    def _row_shape(config: TabBertConfig) -> dict[str, int]:
        return dict(
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
        )

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
    ) -> TabBertModelOutput:
        self._check_shape(input_ids, attention_mask)
        if self.config.flat:
            return self._forward_flat(input_ids, attention_mask)
        return self._forward_hierarchical(input_ids, attention_mask)

    def embed_rows(self, input_ids: torch.LongTensor) -> torch.FloatTensor:
        """Hierarchical row vectors ``[B, L, hidden]``; each depends on its own row's fields only."""
        batch, rows, n_fields = input_ids.shape
        fields = self.field_embeddings(input_ids) + self.field_position_embeddings.weight
        fields = self.field_dropout(self.field_layer_norm(fields))
        # attention runs across the F fields of one row: rows are the batch axis here
        fields = self.field_encoder(fields.view(batch * rows, n_fields, -1)).last_hidden_state
        return self.row_projection(fields.reshape(batch, rows, -1))

    def _forward_hierarchical(self, input_ids, attention_mask) -> TabBertModelOutput:
        row_embeddings = self.embed_rows(input_ids)
        hidden = self.bert(inputs_embeds=row_embeddings, attention_mask=attention_mask).last_hidden_state
        return TabBertModelOutput(last_hidden_state=hidden, row_embeddings=row_embeddings)

    def _forward_flat(self, input_ids, attention_mask) -> TabBertModelOutput:
        batch, rows, n_fields = input_ids.shape
        separators = input_ids.new_full((batch, rows, 1), self.config.sep_token_id)
        tokens = torch.cat([input_ids, separators], dim=2).view(batch, rows * (n_fields + 1))
        token_mask = None if attention_mask is None else attention_mask.repeat_interleave(n_fields + 1, dim=1)
        hidden = self.bert(input_ids=tokens, attention_mask=token_mask).last_hidden_state
        hidden = hidden.view(batch, rows, n_fields + 1, -1)
        return TabBertModelOutput(last_hidden_state=hidden[:, :, -1], token_hidden_states=hidden[:, :, :-1])

    def _check_shape(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        if input_ids.dim() != 3 or input_ids.shape[2] != self.config.n_fields:
            raise ValueError(
                f"input_ids must be [batch, rows, {self.config.n_fields} fields], got {list(input_ids.shape)}"
            )
        if input_ids.shape[1] > self.config.max_rows:
            raise ValueError(f"windows of {input_ids.shape[1]} rows exceed max_rows={self.config.max_rows}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape[:2]:
            raise ValueError(
                f"attention_mask must be [batch, rows] = {list(input_ids.shape[:2])}, got {list(attention_mask.shape)}"
            )


class TabBertRowToFieldHeads(nn.Module):
    """Hierarchical heads: a row vector → one ``field_hidden`` vector per field → that field's logits."""

    def __init__(self, config: TabBertConfig):
        super().__init__()
        self.field_hidden = config.field_hidden
        self.dense = nn.Linear(config.hidden_size, config.n_fields * config.field_hidden)
        self.activation = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.field_hidden, eps=config.layer_norm_eps)
        self.decoders = nn.ModuleList(nn.Linear(config.field_hidden, size) for size in config.field_vocab_sizes)

    def forward(self, row_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Logits of every field at every row: ``row_states [B, L, hidden]`` → F × ``[B, L, V_f]``."""
        fields = self.dense(row_states).unflatten(-1, (len(self.decoders), self.field_hidden))
        fields = self.LayerNorm(self.activation(fields))
        return tuple(decoder(fields[..., field, :]) for field, decoder in enumerate(self.decoders))

    def masked_logits(self, row_states: torch.Tensor, selected: torch.Tensor, field: int) -> torch.Tensor:
        """Logits of one field at the selected rows: ``row_states [B, L, hidden]``, ``selected [B, L]``
        → ``[n_selected, V_f]``. Only this field's slice of ``dense`` is computed."""
        outputs = slice(field * self.field_hidden, (field + 1) * self.field_hidden)
        states = F.linear(row_states[selected], self.dense.weight[outputs], self.dense.bias[outputs])
        return self.decoders[field](self.LayerNorm(self.activation(states)))


class TabBertTokenHeads(nn.Module):
    """Flat heads: each field token's output → that field's logits."""

    def __init__(self, config: TabBertConfig):
        super().__init__()
        self.decoders = nn.ModuleList(nn.Linear(config.hidden_size, size) for size in config.field_vocab_sizes)

    def forward(self, token_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``token_states [B, L, F, hidden]`` → F × ``[B, L, V_f]``."""
        return tuple(decoder(token_states[:, :, field]) for field, decoder in enumerate(self.decoders))

    def masked_logits(self, token_states: torch.Tensor, selected: torch.Tensor, field: int) -> torch.Tensor:
        """Logits of one field at the selected rows: ``token_states [B, L, F, hidden]``, ``selected [B, L]``
        → ``[n_selected, V_f]``."""
        return self.decoders[field](token_states[:, :, field][selected])


class TabBertForMaskedFieldModeling(TabBertPreTrainedModel):
    """TabBERT with per-field masked-token heads, for self-supervised pre-training.

    ``labels [B, L, F]`` hold the field-local id of each masked token and -100 elsewhere. With
    labels, head logits are computed at masked positions only.
    """

    def __init__(self, config: TabBertConfig):
        super().__init__(config)
        self.tabbert = TabBertModel(config)
        self.heads = TabBertTokenHeads(config) if config.flat else TabBertRowToFieldHeads(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
    ) -> TabBertMaskedFieldOutput:
        encoded = self.tabbert(input_ids, attention_mask=attention_mask)
        states = encoded.token_hidden_states if self.config.flat else encoded.last_hidden_state
        if labels is None:
            return TabBertMaskedFieldOutput(field_logits=self.heads(states), last_hidden_state=encoded.last_hidden_state)

        masked = labels != IGNORE_INDEX
        field_logits, field_labels = [], []
        for field in range(self.config.n_fields):
            selected = masked[:, :, field]
            field_logits.append(self.heads.masked_logits(states, selected, field))
            field_labels.append(labels[:, :, field][selected])
        total = sum(
            F.cross_entropy(logits, target, reduction="sum") for logits, target in zip(field_logits, field_labels)
        )
        loss = total / masked.sum().clamp(min=1)
        return TabBertMaskedFieldOutput(
            loss=loss,
            field_logits=tuple(field_logits),
            field_labels=tuple(field_labels),
            last_hidden_state=encoded.last_hidden_state,
        )


AutoConfig.register(TabBertConfig.model_type, TabBertConfig, exist_ok=True)
AutoModel.register(TabBertConfig, TabBertModel, exist_ok=True)
