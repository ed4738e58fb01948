"""TabBERT configuration: the token layout it reads and the shape of its two transformers.

A configuration holds the tokenizer's layout (field names, the global id range each field
owns, the special ids) and the encoder's shape. Named sizes give sensible shapes:

=========  ============  ===========  ======  ======  =====  ============
size       field_hidden  field_heads  hidden  layers  heads  intermediate
=========  ============  ===========  ======  ======  =====  ============
``tiny``   8             2            32      2       2      64
``small``  32            2            256     4       4      1024
``paper``  64            8            64 × F  12      12     3072
=========  ============  ===========  ======  ======  =====  ============

``paper`` follows Padhi et al. (2021): the row width is ``field_hidden`` times the number of
fields F (768 for the 12 fields of the card data), rounded up to a multiple of the 12 heads
when F is not a multiple of 3. ``small`` is sized for CPU work: its fields are 32 wide, so a
row of 12 fields is projected from 384 to 256 rather than from 768, and the field transformer,
which runs over 12 tokens for every row the row BERT sees, costs half as much. Its 2 field
heads (of width 16) follow from the same aim: on a CPU a few wide heads train faster than many
narrow ones. Every value can be overridden::

    config = TabBertConfig.from_size("small", field_names=names, field_offsets=offsets,
                                     field_vocab_sizes=sizes, num_hidden_layers=2)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from transformers import PretrainedConfig

from tabbert.errors import ArtifactError, TabbertError
from tabbert.models.sizes import MODEL_SIZES

if TYPE_CHECKING:
    from tabbert.data.tokenizer import TabularTokenizer

N_SPECIAL_TOKENS = 5
OBJECTIVES = ("masked", "causal")


class TabBertConfig(PretrainedConfig):
    """Configuration of :class:`~tabbert.models.tabbert.TabBertModel` and its heads.

    Args:
        field_names: input fields, in the order of the last axis of ``input_ids``.
        field_offsets: first global id of each field's range.
        field_vocab_sizes: size of each field's range; local id 0 is the field's [UNK],
            1 its [MISSING], 2 and up its values or bins.
        vocab_size: size of the global id space; derived from the fields when omitted.
        pad_token_id, sep_token_id: the tokenizer's [PAD] id, and its [SEP] id, which closes each
            row of the flat model.
        max_rows: longest window (rows) the encoder accepts.
        field_hidden: width of a field embedding (hierarchical model).
        field_num_layers, field_num_heads, field_intermediate_size: the transformer that
            attends across the fields of one row (the feed-forward width defaults to
            ``field_hidden``, as in the reference implementation).
        field_dropout_prob: dropout on the field embeddings and inside the field transformer.
            Off by default: on a CPU it adds 5-10 % to a training step, for a layer that sees
            a dozen tokens at a time. The row BERT keeps ``hidden_dropout_prob`` and
            ``attention_probs_dropout_prob``.
        hidden_size: width of a row; defaults to ``field_hidden * n_fields``, rounded up to a
            multiple of ``num_attention_heads``.
        num_hidden_layers, num_attention_heads, intermediate_size: the BERT across rows
            (the feed-forward width defaults to ``4 * hidden_size``).
        flat: one BERT over all field tokens of the window, a [SEP] closing each row,
            instead of the hierarchical field transformer + row BERT.
        objective: ``masked`` (masked-field pre-training, rows attend to the whole window) or
            ``causal`` (next-row pre-training: row t attends to rows up to t only, and row
            positions count from the window's first real row, so left padding moves nothing).
            Hierarchical model only. Every use of the encoder follows it.
        size: the named size this configuration was made from, if any.
        schema_fingerprint: identifies the data schema the model was trained for.
    """

    model_type = "tabbert"
    # transformers.Trainer's prediction loop leaves these outputs out of the logits it gathers
    keys_to_ignore_at_inference = ["last_hidden_state"]

    def __init__(
        self,
        field_names: Sequence[str] = (),
        field_offsets: Sequence[int] = (),
        field_vocab_sizes: Sequence[int] = (),
        vocab_size: int | None = None,
        pad_token_id: int = 0,
        sep_token_id: int = 2,
        max_rows: int = 10,
        field_hidden: int = 64,
        field_num_layers: int = 1,
        field_num_heads: int = 8,
        field_intermediate_size: int | None = None,
        field_dropout_prob: float = 0.0,
        hidden_size: int | None = None,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int | None = None,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        layer_norm_eps: float = 1e-12,
        initializer_range: float = 0.02,
        flat: bool = False,
        objective: str = "masked",
        size: str | None = None,
        schema_fingerprint: str = "",
        **kwargs,
    ):
        self.field_names = [str(name) for name in field_names]
        self.field_offsets = [int(offset) for offset in field_offsets]
        self.field_vocab_sizes = [int(size) for size in field_vocab_sizes]
        self.vocab_size = self._global_vocab_size() if vocab_size is None else int(vocab_size)
        self.sep_token_id = sep_token_id
        self.max_rows = max_rows
        self.field_hidden = field_hidden
        self.field_num_layers = field_num_layers
        self.field_num_heads = field_num_heads
        self.field_intermediate_size = field_intermediate_size or field_hidden
        self.field_dropout_prob = field_dropout_prob
        self.hidden_size = hidden_size or self._row_width(field_hidden, num_attention_heads)
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size or 4 * self.hidden_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.flat = flat
        self.objective = objective
        self.size = size
        self.schema_fingerprint = schema_fingerprint
        self._validate()
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    @classmethod
    def from_size(
        cls,
        size: str,
        *,
        field_names: Sequence[str],
        field_offsets: Sequence[int],
        field_vocab_sizes: Sequence[int],
        flat: bool = False,
        **overrides,
    ) -> TabBertConfig:
        """A configuration of the named size (``tiny``, ``small``, ``paper``) for these fields."""
        if size not in MODEL_SIZES:
            raise TabbertError(f"unknown model size {size!r}; choose one of {', '.join(MODEL_SIZES)}")
        return cls(
            field_names=field_names,
            field_offsets=field_offsets,
            field_vocab_sizes=field_vocab_sizes,
            flat=flat,
            size=size,
            **{**MODEL_SIZES[size], **overrides},
        )

    @classmethod
    def for_tokenizer(cls, tokenizer: TabularTokenizer, size: str, *, seq_len: int, flat: bool = False,
                      **overrides) -> TabBertConfig:
        """A configuration of the named size for a tokenizer's fields and windows of ``seq_len`` rows."""
        return cls.from_size(
            size, field_names=tokenizer.field_names, field_offsets=tokenizer.field_offsets,
            field_vocab_sizes=tokenizer.field_vocab_sizes, flat=flat, max_rows=seq_len,
            schema_fingerprint=tokenizer.fingerprint(), **overrides,
        )

    @property
    def n_fields(self) -> int:
        return len(self.field_names)

    @property
    def causal(self) -> bool:
        """Whether row t of a window attends to rows up to t only (next-row pre-training)."""
        return self.objective == "causal"

    def check_compatible(
        self,
        field_names: Sequence[str],
        field_vocab_sizes: Sequence[int],
        schema_fingerprint: str | None = None,
    ) -> None:
        """Raise :class:`ArtifactError` unless data with this layout can be fed to the model."""
        names, sizes = [str(name) for name in field_names], [int(size) for size in field_vocab_sizes]
        if names != self.field_names:
            raise ArtifactError(f"model was trained on fields {self.field_names} but the data has {names}")
        for name, ours, theirs in zip(names, self.field_vocab_sizes, sizes):
            if ours != theirs:
                raise ArtifactError(
                    f"field {name!r} has {ours} tokens in the model but {theirs} in the data's tokenizer; "
                    "the model was trained with another tokenizer"
                )
        if schema_fingerprint and self.schema_fingerprint and schema_fingerprint != self.schema_fingerprint:
            raise ArtifactError(
                f"model was trained on schema {self.schema_fingerprint} but the data has schema {schema_fingerprint}"
            )

    def _row_width(self, field_hidden: int, num_heads: int) -> int:
        concatenated = field_hidden * max(self.n_fields, 1)
        return -(-concatenated // num_heads) * num_heads

    def _global_vocab_size(self) -> int:
        if not self.field_offsets:
            return N_SPECIAL_TOKENS
        return self.field_offsets[-1] + self.field_vocab_sizes[-1]

    def _validate(self) -> None:
        n = self.n_fields
        if len(self.field_offsets) != n or len(self.field_vocab_sizes) != n:
            raise ValueError(
                f"field_names, field_offsets and field_vocab_sizes must have the same length, got "
                f"{n}, {len(self.field_offsets)} and {len(self.field_vocab_sizes)}"
            )
        ends = [offset + size for offset, size in zip(self.field_offsets, self.field_vocab_sizes)]
        starts = [N_SPECIAL_TOKENS, *ends[:-1]]
        if any(size < 1 for size in self.field_vocab_sizes) or any(
            offset < start for offset, start in zip(self.field_offsets, starts)
        ):
            raise ValueError(
                f"field id ranges must be non-empty, above the {N_SPECIAL_TOKENS} special ids and in order, "
                f"got offsets {self.field_offsets} and sizes {self.field_vocab_sizes}"
            )
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.causal and self.flat:
            raise ValueError("the causal objective needs the hierarchical model: the flat model's rows are "
                             "[SEP]-closed token runs that a row-level causal mask does not fit")
        if self.vocab_size < self._global_vocab_size():
            raise ValueError(f"vocab_size {self.vocab_size} is smaller than the fields' ids need")
        for width, heads, what in (
            (self.hidden_size, self.num_attention_heads, "hidden_size"),
            (self.field_hidden, self.field_num_heads, "field_hidden"),
        ):
            if width % heads:
                raise ValueError(f"{what} ({width}) must be a multiple of its number of attention heads ({heads})")
