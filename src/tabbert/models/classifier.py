"""Window-level tasks: fraud classification and regression, from one encoder vector per row.

A downstream model is an encoder that gives one vector per row ``[batch, rows, hidden]`` and a
head on those vectors. Both heads take the window's ``attention_mask`` ``[batch, rows]`` (1 for
a real row, 0 for a padding row) so that padding never reaches the output:

* :class:`LSTMHead`, the reference recipe: an LSTM runs over the real rows, oldest first, and
  a linear layer reads its state after the newest real row;
* :class:`MLPHead`: the mean of the real rows' vectors through a two-layer perceptron.

:class:`SequenceHeadModel` holds what every downstream model shares: the head, the losses and
the scores. :class:`TabBertForSequenceClassification` puts the head on the
:class:`~tabbert.models.tabbert.TabBertModel` of a pre-training run, frozen by default (a frozen
encoder has ``requires_grad`` off *and* stays in eval mode while the model trains, so its dropout
never fires). The paper's "raw" baselines are
:class:`~tabbert.models.raw.RawFieldsForSequenceClassification`.

Losses (``config.loss``): classification ``ce`` (cross-entropy over two classes, optionally
class-weighted) or ``rmse`` (the reference's: root mean squared error between the softmax
probabilities and the one-hot label); regression ``mse`` or ``rmse`` on targets standardized
with the training split's mean and standard deviation, which the configuration keeps, so
:meth:`SequenceHeadModel.scores` returns predictions in the targets' own units.

A fine-tuned directory holds ``config.json`` (the encoder's configuration plus the head's),
``model.safetensors`` and ``tokenizer.json``: :func:`save_classifier` writes it and
:func:`tabbert.runs.load_run` reads it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from transformers import AutoConfig
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import logging as transformers_logging

from tabbert.atomic import give_usual_mode
from tabbert.data.tokenizer import TabularTokenizer
from tabbert.errors import ArtifactError
from tabbert.integrity import record_weights_digest
from tabbert.models.configuration import TabBertConfig
from tabbert.models.surprise import RowsWithSurprise
from tabbert.models.tabbert import TabBertForMaskedFieldModeling, TabBertModel, TabBertPreTrainedModel
from tabbert.options import ENCODERS, LOSSES, TASKS

_NOT_INHERITED = ("model_type", "transformers_version", "architectures", "_name_or_path")


# ---------------------------------------------------------------------------------------------- heads


def masked_mean(states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the real rows: ``states [B, L, H]``, ``attention_mask [B, L]`` → ``[B, H]``."""
    if attention_mask is None:
        return states.mean(dim=1)
    weights = attention_mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class LSTMHead(nn.Module):
    """An LSTM (row vectors of ``input_size``, by default ``hidden``, → hidden) over the rows and a
    linear layer on its last real row."""

    def __init__(self, hidden: int, num_outputs: int, dropout: float = 0.1, input_size: int | None = None):
        super().__init__()
        self.lstm = nn.LSTM(input_size or hidden, hidden, batch_first=True)
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
    """A two-layer perceptron on the mean of the real rows' vectors (``input_size``, by default ``hidden``)."""

    def __init__(self, hidden: int, num_outputs: int, dropout: float = 0.1, input_size: int | None = None):
        super().__init__()
        self.dense = nn.Linear(input_size or hidden, hidden)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden, num_outputs)

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        pooled = masked_mean(states, attention_mask)
        return self.output(self.dropout(self.activation(self.dense(pooled))))


# the names are tabbert.options.HEADS, which the command line offers
HEADS: dict[str, type[nn.Module]] = {"lstm": LSTMHead, "mlp": MLPHead}


# ---------------------------------------------------------------------------------------------- models


class TabBertClassifierConfig(TabBertConfig):
    """The encoder's :class:`TabBertConfig` plus the downstream settings.

    Args:
        encoder_kind: ``pretrained`` (a TabBERT encoder) or ``raw`` (field embeddings from scratch).
        head: ``lstm`` or ``mlp``.
        task: ``classification`` or ``regression``.
        num_outputs: head outputs: 2 classes, or the number of regression values per window.
        freeze_encoder: keep the encoder's weights fixed and its dropout off.
        surprise_input: the head also reads each row's surprise under the pre-trained field heads
            (:class:`~tabbert.models.surprise.RowsWithSurprise`).
        head_dropout: dropout before the head's output layer.
        loss: see the module docstring; defaults to ``ce`` or ``mse`` by task.
        class_weights: per-class weights of the classification loss, or None.
        label_mode: a point's label, the ``last`` row's or 1 when ``any`` row of its history is positive.
        points: ``rows`` (every row from its history) or ``windows`` (the paper's stride windows).
        target_mode: regression target, the ``last`` row's or ``all`` rows'.
        target_names, target_mean, target_std: regression targets and their training statistics.
        seq_len: rows of history per point (the context) the model was trained on.
        threshold: score threshold for a positive prediction (best F1 on validation), if chosen.
    """

    model_type = "tabbert_classifier"

    def __init__(
        self,
        encoder_kind: str = "pretrained",
        head: str = "lstm",
        task: str = "classification",
        num_outputs: int = 2,
        freeze_encoder: bool = True,
        surprise_input: bool = False,
        head_dropout: float = 0.1,
        loss: str | None = None,
        class_weights: Sequence[float] | None = None,
        label_mode: str = "any",
        target_mode: str = "last",
        points: str = "windows",
        target_names: Sequence[str] = (),
        target_mean: Sequence[float] = (),
        target_std: Sequence[float] = (),
        seq_len: int = 10,
        threshold: float | None = None,
        **kwargs,
    ):
        self.encoder_kind = encoder_kind
        self.head = head
        self.task = task
        self.num_outputs = int(num_outputs)
        self.freeze_encoder = bool(freeze_encoder)
        self.surprise_input = bool(surprise_input)
        self.head_dropout = head_dropout
        self.loss = loss or LOSSES.get(task, ("ce",))[0]
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.label_mode = label_mode
        self.target_mode = target_mode
        self.points = points
        self.target_names = [str(name) for name in target_names]
        self.target_mean = [float(v) for v in target_mean]
        self.target_std = [float(v) for v in target_std]
        self.seq_len = int(seq_len)
        self.threshold = None if threshold is None else float(threshold)
        super().__init__(**kwargs)
        self._validate_head()

    @classmethod
    def from_encoder_config(cls, encoder_config: TabBertConfig, **settings) -> TabBertClassifierConfig:
        """The encoder's configuration with the downstream ``settings`` added."""
        inherited = {k: v for k, v in encoder_config.to_dict().items() if k not in _NOT_INHERITED}
        return cls(**inherited, **settings)

    @property
    def head_input_size(self) -> int:
        """Width of the vector the head reads per row: the encoder's, and one surprise per field."""
        return self.hidden_size + (self.n_fields if self.surprise_input else 0)

    def _validate_head(self) -> None:
        checks = (
            ("encoder_kind", self.encoder_kind, ENCODERS),
            ("head", self.head, tuple(HEADS)),
            ("task", self.task, TASKS),
            ("loss", self.loss, LOSSES.get(self.task, ())),
        )
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.encoder_kind == "raw" and self.freeze_encoder:
            raise ValueError("a raw encoder is trained from scratch and cannot be frozen")
        if self.encoder_kind == "raw" and self.surprise_input:
            raise ValueError("surprise comes from pre-trained field heads; a raw encoder has none")
        if self.task == "regression":
            n_targets = len(self.target_names)
            if not n_targets or len(self.target_mean) != n_targets or len(self.target_std) != n_targets:
                raise ValueError("regression needs target_names, target_mean and target_std of equal length")
            if self.num_outputs % n_targets:
                raise ValueError(f"num_outputs ({self.num_outputs}) must be a multiple of {n_targets} targets")


class SequenceHeadModel(TabBertPreTrainedModel):
    """An encoder that gives one vector per row, and an LSTM or MLP head on those vectors.

    ``forward(input_ids [B, L, F], attention_mask [B, L], labels)`` returns the head's ``logits``
    and, with ``labels`` (class ids ``[B]``, or targets ``[B, T]`` / ``[B, L, T]`` in their own
    units), the training ``loss``. A subclass names its ``encoder_kind`` and builds its encoder.
    """

    config_class = TabBertClassifierConfig
    base_model_prefix = "encoder"
    encoder_kind = ""

    def __init__(self, config: TabBertClassifierConfig):
        super().__init__(config)
        if config.encoder_kind != self.encoder_kind:
            raise ValueError(f"{type(self).__name__} has a {self.encoder_kind} encoder, not {config.encoder_kind}")
        self.encoder = self.build_encoder(config)
        self.head = HEADS[config.head](config.hidden_size, config.num_outputs, config.head_dropout,
                                       input_size=config.head_input_size)
        self.post_init()
        self.encoder.requires_grad_(not config.freeze_encoder)

    def build_encoder(self, config: TabBertClassifierConfig) -> nn.Module:
        raise NotImplementedError

    def train(self, mode: bool = True) -> SequenceHeadModel:
        """Switch the head (and an unfrozen encoder) to ``mode``; a frozen encoder stays in eval mode."""
        super().train(mode)
        if self.config.freeze_encoder:
            self.encoder.eval()
        return self

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_encoder):
            states = self.encoder(input_ids, attention_mask=attention_mask).last_hidden_state
        logits = self.head(states, attention_mask)
        loss = None if labels is None else self.compute_loss(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The configured loss of ``logits`` against ``labels`` (targets in their own units)."""
        if self.config.task == "regression":
            error = F.mse_loss(logits, self.standardize(labels).flatten(start_dim=1))
            return error.sqrt() if self.config.loss == "rmse" else error
        weights = self._as_tensor(self.config.class_weights, logits) if self.config.class_weights else None
        if self.config.loss == "ce":
            return F.cross_entropy(logits, labels, weight=weights)
        squared = (logits.softmax(dim=-1) - F.one_hot(labels, logits.shape[-1]).to(logits.dtype)).pow(2).mean(dim=-1)
        if weights is None:
            return squared.mean().sqrt()
        return ((squared * weights[labels]).sum() / weights[labels].sum()).sqrt()

    def standardize(self, targets: torch.Tensor) -> torch.Tensor:
        """Targets in their own units → the standardized scale the head is trained on."""
        mean, std = self._as_tensor(self.config.target_mean, targets), self._as_tensor(self.config.target_std, targets)
        return (targets - mean) / std

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Positive-class probability ``[B]``, or regression predictions in the targets' own units
        (``[B, T]``, or ``[B, L, T]`` for ``target_mode="all"``)."""
        if self.config.task == "classification":
            return logits.softmax(dim=-1)[:, 1]
        mean, std = self._as_tensor(self.config.target_mean, logits), self._as_tensor(self.config.target_std, logits)
        values = logits.unflatten(-1, (-1, len(self.config.target_names))) * std + mean
        return values.squeeze(1) if self.config.target_mode == "last" else values

    @staticmethod
    def _as_tensor(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=like.device)


class TabBertForSequenceClassification(SequenceHeadModel):
    """A head on a pre-trained TabBERT encoder (frozen unless ``freeze_encoder=False``); with
    ``surprise_input``, on the encoder with its field heads."""

    encoder_kind = "pretrained"

    def build_encoder(self, config: TabBertClassifierConfig) -> TabBertModel | RowsWithSurprise:
        return RowsWithSurprise(config) if config.surprise_input else TabBertModel(config)

    @classmethod
    def from_encoder(cls, encoder: TabBertModel | TabBertForMaskedFieldModeling,
                     **settings) -> TabBertForSequenceClassification:
        """A new model around the weights of a pre-trained ``encoder`` (the pre-training model with
        its field heads, for ``surprise_input``)."""
        config = TabBertClassifierConfig.from_encoder_config(encoder.config, encoder_kind=cls.encoder_kind, **settings)
        if config.surprise_input and not isinstance(encoder, TabBertForMaskedFieldModeling):
            raise ValueError("surprise_input needs the pre-training model with its field heads, not the bare encoder")
        model = cls(config)
        model.encoder.load_state_dict(encoder.state_dict())
        return model


# ---------------------------------------------------------------------------------------------- saving


@contextmanager
def without_progress_bars() -> Iterator[None]:
    """Silence the per-file progress bars transformers draws while saving and loading weights."""
    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def save_classifier(model: SequenceHeadModel, tokenizer: TabularTokenizer, path: str | Path) -> Path:
    """Write config.json, model.safetensors and tokenizer.json to the new directory ``path``, atomically."""
    path = Path(path)
    if path.exists():
        raise ArtifactError(f"{path}: already exists; a model directory is never overwritten")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial-"))
    try:
        give_usual_mode(staging)
        with without_progress_bars():
            model.save_pretrained(staging)
        tokenizer.save(staging / "tokenizer.json")
        record_weights_digest(staging)
        os.rename(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


AutoConfig.register(TabBertClassifierConfig.model_type, TabBertClassifierConfig, exist_ok=True)
