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
that predict a masked field over that field's own vocabulary. With ``config.objective ==
"causal"`` the hierarchical row BERT is a decoder (row t attends to rows up to t), and
:class:`TabBertForNextRowModeling` reads the same heads at row t as a prediction of row t+1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, BertConfig, BertModel, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.models.bert.modeling_bert import BertEncoder, BertPreTrainedModel
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


def _bert_config(config: TabBertConfig, **settings) -> BertConfig:
    """A BertConfig sharing our activation, dropout, init and attention settings, unless overridden."""
    shared = dict(
        hidden_act=config.hidden_act,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        initializer_range=config.initializer_range,
        layer_norm_eps=config.layer_norm_eps,
        pad_token_id=config.pad_token_id,
        type_vocab_size=1,
        attn_implementation=config._attn_implementation,
    )
    return BertConfig(**{**shared, **settings})


def row_bert_config(config: TabBertConfig) -> BertConfig:
    """The BertConfig of the hierarchical model's BERT across rows (fed with ``inputs_embeds``)."""
    return _bert_config(
        config,
        vocab_size=1,
        max_position_embeddings=config.max_rows,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        is_decoder=config.causal,
        use_cache=False,
    )


def row_positions(attention_mask: torch.Tensor) -> torch.LongTensor:
    """Position of each row counted from its window's first real row ``[B, L]`` (padding rows in front take 0)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def next_row_labels(input_ids: torch.LongTensor, attention_mask: torch.Tensor | None,
                    field_offsets: torch.Tensor) -> torch.LongTensor:
    """Labels ``[B, L, F]`` of next-row prediction: at row t, the field-local ids of row t+1, and
    -100 where row t or row t+1 is padding (and at the last row)."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    targets = input_ids[:, 1:] - field_offsets
    if attention_mask is not None:
        real = attention_mask[:, :-1].bool() & attention_mask[:, 1:].bool()
        targets = targets.masked_fill(~real.unsqueeze(-1), IGNORE_INDEX)
    labels[:, :-1] = targets
    return labels


class TabBertPreTrainedModel(PreTrainedModel):
    """Weight initialization and loading for the TabBERT models."""

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


class TabBertFieldEncoder(BertPreTrainedModel):
    """The transformer across the fields of one row: BERT layers without embeddings.

    A sub-model of its own so that attention-implementation and checkpointing switches reach it.
    """

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.encoder = BertEncoder(config)
        self.post_init()

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        """``fields [rows, F, field_hidden]`` → same shape, each row's fields attending to each other."""
        return self.encoder(fields).last_hidden_state


class TabBertModel(TabBertPreTrainedModel):
    """The TabBERT encoder: ``input_ids [B, L, F]`` → one vector per row ``[B, L, hidden]``."""

    # an encoder loaded from a pre-training checkpoint leaves the masked-field heads behind
    _keys_to_ignore_on_load_unexpected = [r"^heads\."]

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
            self.field_dropout = nn.Dropout(config.field_dropout_prob)
            self.field_encoder = TabBertFieldEncoder(
                _bert_config(
                    config,
                    hidden_dropout_prob=config.field_dropout_prob,
                    attention_probs_dropout_prob=config.field_dropout_prob,
                    hidden_size=config.field_hidden,
                    num_hidden_layers=config.field_num_layers,
                    num_attention_heads=config.field_num_heads,
                    intermediate_size=config.field_intermediate_size,
                )
            )
            self.row_projection = nn.Linear(n_fields * config.field_hidden, config.hidden_size)
            self.bert = BertModel(row_bert_config(config), add_pooling_layer=False)
            # rows enter the row BERT as inputs_embeds: it has no use for a word table
            self.bert.embeddings.word_embeddings = None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.bert.embeddings.word_embeddings if self.config.flat else self.field_embeddings

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
        """Hierarchical row vectors ``[B, L, hidden]``; each depends on its own row's fields only.

        Outside training a row that occurs more than once in the batch is encoded once: the
        histories of consecutive prediction points share all but one row, and padding rows are alike.
        """
        if self.training:
            return self._encode_rows(input_ids)
        batch, rows, n_fields = input_ids.shape
        distinct, where = torch.unique(input_ids.reshape(-1, n_fields), dim=0, return_inverse=True)
        return self._encode_rows(distinct.unsqueeze(0))[0][where].view(batch, rows, -1)

    def _encode_rows(self, input_ids: torch.LongTensor) -> torch.FloatTensor:
        """The field transformer and projection over every row of ``input_ids [B, L, F]``."""
        batch, rows, n_fields = input_ids.shape
        fields = self.field_embeddings(input_ids) + self.field_position_embeddings.weight
        fields = self.field_dropout(self.field_layer_norm(fields))
        # attention runs across the F fields of one row: rows are the batch axis here
        fields = self.field_encoder(fields.view(batch * rows, n_fields, -1))
        return self.row_projection(fields.reshape(batch, rows, -1))

    def _forward_hierarchical(self, input_ids, attention_mask) -> TabBertModelOutput:
        row_embeddings = self.embed_rows(input_ids)
        positions = None
        if self.config.causal and attention_mask is not None:
            positions = row_positions(attention_mask)
        hidden = self.bert(inputs_embeds=row_embeddings, attention_mask=attention_mask,
                           position_ids=positions).last_hidden_state
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

    def masked_logits(self, states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Logits at masked positions: F × ``[n_f, hidden]`` row vectors → F × ``[n_f, V_f]``.

        Each field's rows only go through that field's part of ``dense``.
        """
        weights = self.dense.weight.view(len(self.decoders), self.field_hidden, -1).unbind(0)
        biases = self.dense.bias.view(len(self.decoders), self.field_hidden).unbind(0)
        fields = torch.cat([F.linear(rows, weight, bias) for rows, weight, bias in zip(states, weights, biases)])
        fields = self.LayerNorm(self.activation(fields)).split([len(rows) for rows in states])
        return tuple(decoder(field_states) for decoder, field_states in zip(self.decoders, fields))


class TabBertTokenHeads(nn.Module):
    """Flat heads: each field token's output → that field's logits."""

    def __init__(self, config: TabBertConfig):
        super().__init__()
        self.decoders = nn.ModuleList(nn.Linear(config.hidden_size, size) for size in config.field_vocab_sizes)

    def forward(self, token_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``token_states [B, L, F, hidden]`` → F × ``[B, L, V_f]``."""
        return tuple(decoder(token_states[:, :, field]) for field, decoder in enumerate(self.decoders))

    def masked_logits(self, states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Logits at masked positions: F × ``[n_f, hidden]`` token vectors → F × ``[n_f, V_f]``."""
        return tuple(decoder(field_states) for decoder, field_states in zip(self.decoders, states))


class TabBertForMaskedFieldModeling(TabBertPreTrainedModel):
    """TabBERT with per-field masked-token heads, for self-supervised pre-training.

    ``labels [B, L, F]`` hold the field-local id of each masked token and -100 elsewhere. With
    labels, head logits are computed at masked positions only: the output vectors of the masked
    positions are gathered once, field by field, and each field's head sees only its own.
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
        row_states = encoded.last_hidden_state
        if labels is None:
            states = encoded.token_hidden_states if self.config.flat else row_states
            return TabBertMaskedFieldOutput(field_logits=self.heads(states), last_hidden_state=row_states)

        n_fields = self.config.n_fields
        by_field = (labels != IGNORE_INDEX).permute(2, 0, 1).reshape(n_fields, -1)  # [F, B*L]
        field, row = by_field.nonzero(as_tuple=True)
        counts = by_field.sum(dim=1).tolist()
        if self.config.flat:
            vectors, index = encoded.token_hidden_states.flatten(0, 2), row * n_fields + field
        else:
            vectors, index = row_states.flatten(0, 1), row
        field_logits = self.heads.masked_logits(vectors.index_select(0, index).split(counts))
        field_labels = labels.reshape(-1).index_select(0, row * n_fields + field).split(counts)
        total = sum(
            F.cross_entropy(logits, target, reduction="sum") for logits, target in zip(field_logits, field_labels)
        )
        return TabBertMaskedFieldOutput(
            loss=total / max(len(row), 1),
            field_logits=field_logits,
            field_labels=field_labels,
            last_hidden_state=row_states,
        )


class TabBertForNextRowModeling(TabBertForMaskedFieldModeling):
    """Causal TabBERT with per-field heads that predict the next row (the TabGPT2 direction).

    The encoder runs with the causal mask, so the heads at row t see rows up to t only; their
    logits are the model's distribution of each field of row t+1. Training passes
    :meth:`next_row_labels` of the unmasked inputs as ``labels``: the loss is then the mean
    cross-entropy over every field of every real next row. Without labels the logits at every
    row are returned, as for the masked model.
    """

    def __init__(self, config: TabBertConfig):
        if not config.causal:
            raise ValueError("next-row modeling needs a configuration with objective='causal'")
        super().__init__(config)

    def next_row_labels(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None) -> torch.LongTensor:
        offsets = torch.as_tensor(self.config.field_offsets, dtype=torch.long, device=input_ids.device)
        return next_row_labels(input_ids, attention_mask, offsets)


AutoConfig.register(TabBertConfig.model_type, TabBertConfig, exist_ok=True)
AutoModel.register(TabBertConfig, TabBertModel, exist_ok=True)
