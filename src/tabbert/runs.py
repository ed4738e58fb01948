"""Load a run, check it against a dataset, choose the device, and run one batched forward over windows.

Evaluation, fine-tuning, ``predict`` and ``embed`` all sit on this module; it imports nothing
from :mod:`tabbert.training`.

Runs
----
``pretrain`` and ``finetune`` write ``RUN/model/`` (``config.json``, ``model.safetensors``,
``weights.sha256.json`` and ``tokenizer.json``) and ``RUN/metrics.json``. :func:`load_run` takes
``RUN`` or ``RUN/model`` by one rule: a directory that holds ``config.json`` is the model directory,
else its ``model/`` subdirectory is; the run directory is the model directory's parent when the
model directory is named ``model``, else the model directory itself. The ``model_type`` in
``config.json`` says what is loaded: the TabBERT encoder of a pre-training run, or a fine-tuned
model (the class of its ``encoder_kind``). Weights that differ from their recorded SHA-256
(:mod:`tabbert.integrity`), or a missing, corrupt or foreign file, is an
:class:`~tabbert.errors.ArtifactError` naming it, whichever command loads the run.

Windows
-------
:func:`forward_batches` runs a step (a model's forward, or a part of it) over windows, batch by
batch, without gradients. A *gather* function ``gather(begin, end)`` returns the inputs of
windows ``begin`` to ``end`` (token ids ``[b, L, F]``, or whatever the step takes) and their
attention mask ``[b, L]`` (None: no padding). :func:`prepared_windows` gathers the windows of a
prepared dataset, :func:`prepared_points` the histories of its prediction points; :func:`padded_histories` gathers, for every row of an ordered token matrix,
the window that ends at that row, padded in front when the row's history is shorter.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel
from transformers.utils import logging as transformers_logging

from tabbert.data.prepared import PreparedDataset
from tabbert.data.tokenizer import PAD_ID, TabularTokenizer
from tabbert.errors import ArtifactError, TabbertError
from tabbert.integrity import check_weights_digest
from tabbert.models.classifier import (
    SequenceHeadModel,
    TabBertClassifierConfig,
    TabBertForSequenceClassification,
    without_progress_bars,
)
from tabbert.models.configuration import TabBertConfig
from tabbert.models.raw import RawFieldsForSequenceClassification
from tabbert.models.tabbert import TabBertForMaskedFieldModeling, TabBertForNextRowModeling, TabBertModel
from tabbert.progress import track
from tabbert.run_layout import run_paths

# what a model directory holds, by the model_type of its config.json: the run kind and how to name it
KINDS = {TabBertConfig.model_type: ("encoder", "pre-trained TabBERT"),
         TabBertClassifierConfig.model_type: ("classifier", "fine-tuned")}
MODEL_TYPES = {kind: model_type for model_type, (kind, _) in KINDS.items()}
# the fine-tuned model classes, by the encoder_kind of their configuration
CLASSIFIERS: dict[str, type[SequenceHeadModel]] = {
    model_class.encoder_kind: model_class
    for model_class in (TabBertForSequenceClassification, RawFieldsForSequenceClassification)
}

Gather = Callable[[int, int], tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor | None]]


@dataclass(frozen=True)
class Run:
    """A loaded model, the tokenizer saved beside it and the run's ``metrics.json`` (None when absent)."""

    run_dir: Path
    model_dir: Path
    kind: str
    model: PreTrainedModel
    tokenizer: TabularTokenizer
    metrics: dict | None

    @property
    def config(self) -> TabBertConfig:
        return self.model.config


def load_run(path: str | Path, *, expect: str | None = None, heads: bool = False) -> Run:
    """The run at ``path`` (``RUN`` or ``RUN/model``), its model in eval mode on the CPU.

    ``expect`` (``"encoder"`` or ``"classifier"``) refuses a model of the other kind. ``heads``
    loads a pre-training run's model with its field heads (masked-field or next-row, by the
    configuration's objective), not the bare encoder.
    """
    if expect not in (None, *MODEL_TYPES):
        raise ValueError(f"expect must be one of {tuple(MODEL_TYPES)} or None, got {expect!r}")
    run_dir, model_dir = run_paths(path)
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        from tabbert.baselines.rows import is_row_run

        if is_row_run(model_dir):
            raise ArtifactError(f"{model_dir}: a LightGBM run (load it with tabbert.baselines.rows.RowModel), "
                                "not a TabBERT model")
        raise ArtifactError(f"{model_dir}: not a model directory (no config.json)")
    config = read_json_object(config_file)
    model_type = config.get("model_type")
    if model_type not in KINDS or expect is not None and KINDS[model_type][0] != expect:
        wanted = KINDS[MODEL_TYPES[expect]][1] if expect else "tabbert"
        raise ArtifactError(f"{model_dir}: holds a {model_type!r} model, not a {wanted} model")
    kind, what = KINDS[model_type]
    if kind == "encoder":
        model_class: type[PreTrainedModel] = TabBertModel
        if heads:
            causal = config.get("objective") == "causal"
            model_class = TabBertForNextRowModeling if causal else TabBertForMaskedFieldModeling
    else:
        encoder_kind = config.get("encoder_kind", "pretrained")
        if encoder_kind not in CLASSIFIERS:
            raise ArtifactError(f"{config_file}: unknown encoder_kind {encoder_kind!r}")
        model_class = CLASSIFIERS[encoder_kind]
    model = _load_weights(model_class, model_dir, what)
    tokenizer = TabularTokenizer.load(model_dir / "tokenizer.json")
    metrics_file = run_dir / "metrics.json"
    metrics = read_json_object(metrics_file) if metrics_file.is_file() else None
    return Run(run_dir, model_dir, kind, model.eval(), tokenizer, metrics)


def read_json_object(path: Path) -> dict:
    """A JSON object from ``path``; ArtifactError when it is not one."""
    try:
        content = json.loads(path.read_text())
    except ValueError as exc:
        raise ArtifactError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(content, dict):
        raise ArtifactError(f"{path}: unreadable (not a JSON object)")
    return content


def _load_weights(model_class: type[PreTrainedModel], model_dir: Path, what: str) -> PreTrainedModel:
    """``model_class.from_pretrained(model_dir)``, with every way it can fail turned into an ArtifactError."""
    weights_file = model_dir / "model.safetensors"
    if not weights_file.is_file():
        raise ArtifactError(f"{weights_file}: missing")
    check_weights_digest(model_dir)
    try:
        with without_progress_bars(), quiet_transformers():
            # mis-shaped weights are listed in the loading info (and refused below) rather than raised
            model, info = model_class.from_pretrained(model_dir, output_loading_info=True, ignore_mismatched_sizes=True)
    except Exception as exc:  # safetensors, torch and transformers each raise their own types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(
            f"{model_dir}: cannot load the {what} model, the files are corrupt or incomplete ({reason})"
        ) from exc
    broken = sorted(info.get("missing_keys", ())) + [str(k[0] if isinstance(k, tuple) else k)
                                                     for k in info.get("mismatched_keys", ())]
    if broken:
        raise ArtifactError(f"{weights_file}: weights do not match config.json (missing or mis-shaped: {broken[:5]})")
    return model


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Keep transformers' reports off the output: missing and mis-shaped weights at loading (the
    ArtifactError that follows names what is wrong), and its notes while a model is traced."""
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)


def check_compatible(run: Run, data: PreparedDataset) -> None:
    """Raise :class:`ArtifactError` unless ``data`` was tokenized the way the run's model expects,
    its windows fit the model, and (for a fine-tuned model) it has the model's task."""
    tokenizer, config = data.tokenizer, run.config
    try:
        config.check_compatible(tokenizer.field_names, tokenizer.field_vocab_sizes, tokenizer.fingerprint())
    except ArtifactError as exc:
        raise ArtifactError(f"{run.model_dir} does not fit {data.path}: {exc}") from None
    if run.tokenizer.fingerprint() != tokenizer.fingerprint():
        raise ArtifactError(
            f"{data.path}: tokenized with another tokenizer than the model's "
            f"({tokenizer.fingerprint()} vs {run.tokenizer.fingerprint()}); prepare the data with the model's schema"
        )
    if data.seq_len > config.max_rows:
        raise ArtifactError(f"{run.model_dir}: the model takes windows of at most {config.max_rows} rows, "
                            f"{data.path} has {data.seq_len}")
    task = getattr(config, "task", None)
    if task is not None and data.task != task:
        raise ArtifactError(f"{data.path}: a {data.task} dataset, but the model does {task}")


def choose_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` (``cpu``, ``cuda``, ``cuda:1`` ...) as a torch device; None or ``auto``: CUDA when available,
    else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise TabbertError(f"unknown device {device!r} ({exc})") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise TabbertError(f"device {device!r} asked for, but torch sees no CUDA device")
    return chosen


# ---------------------------------------------------------------------------------------------- windows


def prepared_windows(data: PreparedDataset, starts: np.ndarray) -> Gather:
    """Batches of the windows of ``data`` that start at ``starts``: their token ids, no padding."""
    starts = np.asarray(starts, dtype=np.int64)
    return lambda begin, end: (data.window_tokens(starts[begin:end]).astype(np.int64), None)


def prepared_points(data: PreparedDataset, ends: np.ndarray, context: int) -> Gather:
    """Batches of the histories of ``context`` rows that end at the rows ``ends`` of ``data``,
    padded in front when a row's entity has fewer earlier rows."""
    ends = np.asarray(ends, dtype=np.int64)

    def gather(begin: int, end: int) -> tuple[np.ndarray, np.ndarray | None]:
        ids, mask = data.history_tokens(ends[begin:end], context)
        return ids.astype(np.int64), mask

    return gather


def padded_histories(tokens: np.ndarray, entity_start: np.ndarray, seq_len: int,
                     ends: np.ndarray | None = None) -> Gather:
    """Batches of the windows that end at each row of an entity-then-time ordered token matrix
    (``ends``: at those rows only).

    ``entity_start[i]`` is the first row of row ``i``'s entity: window rows before it are [PAD]
    and masked. Windows are built with index arithmetic, a batch at a time.
    """
    offsets = np.arange(1 - seq_len, 1)
    ends = np.arange(len(tokens)) if ends is None else np.asarray(ends, dtype=np.int64)

    def gather(begin: int, end: int) -> tuple[np.ndarray, np.ndarray | None]:
        rows = ends[begin:end, None] + offsets
        real = rows >= entity_start[ends[begin:end], None]
        ids = np.where(real[..., None], tokens[np.maximum(rows, 0)], PAD_ID).astype(np.int64)
        return ids, None if real.all() else real.astype(np.int64)

    return gather


def forward_batches(step: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], n_windows: int,
                    gather: Gather, *, device: torch.device, batch_size: int, progress: bool = False,
                    description: str = "scoring") -> Iterator[torch.Tensor]:
    """``step(inputs, attention_mask)`` on each batch of ``gather``'s windows, in order, without gradients.

    The inputs and mask of a batch are moved to ``device``; each output is yielded as the step returns it.
    """
    batches = range(0, n_windows, batch_size)
    for begin in track(batches, description=description, enabled=progress):
        inputs, mask = gather(begin, min(begin + batch_size, n_windows))
        with torch.inference_mode():
            yield step(torch.as_tensor(inputs).to(device), None if mask is None else torch.as_tensor(mask).to(device))


def forward_windows(step: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], n_windows: int,
                    gather: Gather, **options) -> torch.Tensor:
    """Every output of :func:`forward_batches` (same options), concatenated; ``n_windows`` must be positive."""
    if n_windows < 1:
        raise ValueError("no windows to run the model on")
    return torch.cat(list(forward_batches(step, n_windows, gather, **options)))


def classifier_logits(model: SequenceHeadModel) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """The step that gives a fine-tuned model's head outputs for a batch of windows."""
    if model.training:  # eval() walks every module: a cost a per-transaction caller should not pay twice
        model.eval()
    return lambda input_ids, attention_mask: model(input_ids, attention_mask=attention_mask).logits


class _Logits(torch.nn.Module):
    """A classifier's logits as a plain function of (ids, attention mask): the form TorchScript traces."""

    def __init__(self, model: SequenceHeadModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask=attention_mask).logits


def traced_logits(model: SequenceHeadModel, n_rows: int, n_fields: int) -> Callable[[torch.Tensor, torch.Tensor | None],
                                                                                    torch.Tensor]:
    """:func:`classifier_logits` as a frozen TorchScript trace (windows of ``n_rows`` rows of
    ``n_fields`` ids, any batch size): the same outputs with less Python per call, which is what
    scoring a few rows at a time spends its time on. The model must not be trained afterwards."""
    model.eval().requires_grad_(False)
    example_ids = torch.full((2, n_rows, n_fields), PAD_ID, dtype=torch.long, device=model.device)
    example_mask = torch.ones((2, n_rows), dtype=torch.long, device=model.device)
    example_mask[0, 0] = 0  # a padded window, so that the masking is part of the trace
    with torch.no_grad(), warnings.catch_warnings(), quiet_transformers():
        # the shape checks and the "is anything padded" branch become constants: the shapes are
        # fixed, and the padded branch traced here is exact for unpadded windows too; freezing
        # reads every attribute, deprecated ones and the unused loss function included
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.freeze(torch.jit.trace(_Logits(model).eval(), (example_ids, example_mask),
                                                  check_trace=False))

    def step(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape[:2], dtype=torch.long, device=input_ids.device)
        return traced(input_ids, attention_mask)

    return step


def score(model: SequenceHeadModel, n_windows: int, gather: Gather, *, batch_size: int, progress: bool = False,
          step: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None) -> np.ndarray:
    """The model's scores of ``gather``'s windows (see :meth:`SequenceHeadModel.scores`), as float32 on
    the CPU; ``step`` replaces :func:`classifier_logits` (a :func:`traced_logits`, say)."""
    logits = forward_windows(step or classifier_logits(model), n_windows, gather, device=model.device,
                             batch_size=batch_size, progress=progress)
    with torch.inference_mode():
        return model.scores(logits).float().cpu().numpy()
