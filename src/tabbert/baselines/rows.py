"""The row-level LightGBM run: its inputs, its files, and scoring it on prepared or raw rows.

Every row is a prediction point scored from its entity's causal history. A row's inputs are its
:class:`~tabbert.baselines.history.HistoryFeatures`, then optionally the pre-trained encoder's
output at the row (``embeddings``), the surprise of the row and the expectation that scored it
under pre-trained models (``surprise``: one run, or one per fold, see :mod:`tabbert.anomaly`; out
of fold on a prepared dataset, the mean of the models on raw rows), and columns of an array aligned
with the prepared rows (``extra_features``, usable on that dataset only). The run directory holds::

    model.txt        the booster, LightGBM's text format
    features.json    the inputs: feature names, categorical ones, the history layout, the encoder
                     and extra-feature sources, the decision threshold
    tokenizer.json   the tokenizer of the training data (``predict`` encodes raw rows with it)
    metrics.json     options, training facts and the val and test figures

:func:`evaluate_rows` scores a split of a prepared dataset; :func:`predict_rows` scores raw rows
(the same features, so the same rows get the same scores).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl

from tabbert.baselines.history import HistoryFeatures
from tabbert.data.prepared import PreparedDataset
from tabbert.data.schema import ENTITY, ROW
from tabbert.data.tokenizer import TabularTokenizer
from tabbert.data.windows import SPLITS
from tabbert.errors import ArtifactError, TabbertError
from tabbert.runs import read_json_object
from tabbert.thresholds import stored_threshold

MODEL_FILE = "model.txt"
FEATURES_FILE = "features.json"
TOKENIZER_FILE = "tokenizer.json"


def is_row_run(path: str | Path) -> bool:
    """Whether ``path`` is the directory of a row-level LightGBM run."""
    path = Path(path)
    if not (path / MODEL_FILE).is_file() or not (path / FEATURES_FILE).is_file():
        return False
    return read_json_object(path / FEATURES_FILE).get("kind") == "history"


def entity_starts(entity_offsets: np.ndarray) -> np.ndarray:
    """The first row of each row's entity."""
    lengths = np.diff(entity_offsets)
    return np.repeat(np.asarray(entity_offsets[:-1], dtype=np.int64), lengths)


@dataclass
class RowInputs:
    """How a row-level run builds its feature matrix."""

    layout: HistoryFeatures
    embeddings: str | None = None  # the encoder, RUN/model
    extra_features: str | None = None  # a .npy aligned with the prepared rows
    extra_width: int = 0
    embedding_width: int = 0
    surprise: tuple[str, ...] = ()  # pre-training runs, RUN/model, one per fold
    surprise_context: int = 0  # rows of history the surprise is computed from
    surprise_width: int = 0
    surprise_expectation: bool = True  # the encoder output that predicts the row, after the surprise

    @property
    def names(self) -> list[str]:
        from tabbert.anomaly import surprise_columns

        surprise = surprise_columns(self.layout.tokenizer.field_names) if self.surprise_width else []
        expectation = [f"expectation.{k}" for k in range(self.surprise_width - len(surprise))]
        return [*self.layout.names, *(f"embedding.{k}" for k in range(self.embedding_width)), *surprise,
                *expectation, *(f"extra.{k}" for k in range(self.extra_width))]

    @property
    def categorical(self) -> list[int]:
        return self.layout.categorical

    def of_dataset(self, data: PreparedDataset, *, batch_size: int = 256, device: str | None = None,
                   surprise: np.ndarray | None = None, split: str = "all") -> np.ndarray:
        """The features of every row of a prepared dataset; ``surprise``: what :func:`~tabbert.anomaly.row_surprise`
        gave for these runs and this dataset with ``embeddings=True``, when already computed. Computed here,
        the surprise covers the rows of ``split`` only (the others' are NaN)."""
        parts = [self.layout.transform(data)]
        if self.embeddings:
            parts.append(self._embed(np.asarray(data.tokens), np.asarray(data.entity_offsets), batch_size, device,
                                     data=data))
        if self.surprise:
            if surprise is None:
                from tabbert.anomaly import row_surprise

                surprise, _ = row_surprise(list(self.surprise), data.path, split=split,
                                           context=self.surprise_context or None, device=device,
                                           embeddings=self.surprise_expectation, progress=False)
            parts.append(self._checked_surprise(surprise, data.n_rows))
        if self.extra_features:
            parts.append(self._extra(data.n_rows))
        return _joined(parts)

    def of_rows(self, codes, values, times, tokens, entity_offsets, *, batch_size: int = 256,
                device: str | None = None) -> np.ndarray:
        """The features of rows given as arrays in entity-then-time order (see :meth:`HistoryFeatures.compute`)."""
        if self.extra_features:
            raise TabbertError(f"this run reads extra features from {self.extra_features}, aligned with a prepared "
                               "dataset; raw rows have none: score it with `tabbert evaluate` on that dataset")
        parts = [self.layout.compute(codes, values, times, tokens, entity_offsets)]
        if self.embeddings:
            parts.append(self._embed(tokens, entity_offsets, batch_size, device))
        if self.surprise:
            from tabbert.anomaly import TokenRows, surprise_of_rows

            parts.append(self._checked_surprise(surprise_of_rows(
                list(self.surprise), TokenRows(tokens, entity_offsets), self.layout.tokenizer,
                context=self.surprise_context, device=device, embeddings=self.surprise_expectation), len(tokens)))
        return _joined(parts)

    def _checked_surprise(self, surprise: np.ndarray, n_rows: int) -> np.ndarray:
        if not self.surprise_expectation:
            surprise = surprise[:, :1 + len(self.layout.tokenizer.fields)]
        if surprise.ndim != 2 or surprise.shape[0] != n_rows or self.surprise_width not in (0, surprise.shape[1]):
            raise TabbertError(f"surprise features must be [n_rows={n_rows}, {self.surprise_width or 'k'}], got "
                               f"{list(surprise.shape)}")
        self.surprise_width = surprise.shape[1]
        return surprise.astype(np.float32, copy=False)

    def _embed(self, tokens, entity_offsets, batch_size, device, data: PreparedDataset | None = None) -> np.ndarray:
        from tabbert.embeddings import row_embeddings
        from tabbert.runs import check_compatible, choose_device, load_run

        run = load_run(self.embeddings, expect="encoder")
        if data is not None:
            check_compatible(run, data)
        elif run.tokenizer.fingerprint() != self.layout.tokenizer.fingerprint():
            raise ArtifactError(f"{self.embeddings}: the encoder's tokenizer is not the run's")
        encoder = run.model.to(choose_device(device))
        embedded = row_embeddings(encoder, tokens, entity_starts(entity_offsets), run.config.max_rows,
                                  batch_size=batch_size)
        self.embedding_width = embedded.shape[1]
        return embedded

    def _extra(self, n_rows: int) -> np.ndarray:
        path = Path(self.extra_features)
        if not path.is_file():
            raise TabbertError(f"{path}: extra features not found")
        extra = np.load(path, allow_pickle=False)
        if extra.ndim == 1:
            extra = extra[:, None]
        if extra.ndim != 2 or extra.shape[0] != n_rows:
            raise TabbertError(f"{path}: extra features must be [n_rows={n_rows}, k], got {list(extra.shape)}")
        self.extra_width = extra.shape[1]
        return extra.astype(np.float32, copy=False)

    def to_dict(self) -> dict:
        return {"history": self.layout.to_dict(), "embeddings": self.embeddings,
                "embedding_width": self.embedding_width, "extra_features": self.extra_features,
                "extra_width": self.extra_width, "surprise": list(self.surprise),
                "surprise_context": self.surprise_context, "surprise_width": self.surprise_width,
                "surprise_expectation": self.surprise_expectation}

    @classmethod
    def from_dict(cls, saved: dict, tokenizer: TabularTokenizer) -> RowInputs:
        return cls(HistoryFeatures.from_dict(saved["history"], tokenizer), saved["embeddings"],
                   saved["extra_features"], saved["extra_width"], saved["embedding_width"],
                   tuple(saved.get("surprise", ())), saved.get("surprise_context", 0),
                   saved.get("surprise_width", 0), saved.get("surprise_expectation", True))


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1, dtype=np.float32)


@dataclass
class RowModel:
    """A loaded row-level run: the booster, its inputs and its decision threshold."""

    run_dir: Path
    booster: lgb.Booster
    inputs: RowInputs
    threshold: float | None
    task: str

    @classmethod
    def load(cls, path: str | Path) -> RowModel:
        path = Path(path)
        if not is_row_run(path):
            raise ArtifactError(f"{path}: not a row-level LightGBM run (no model.txt, or features.json not of "
                                "kind history)")
        saved = read_json_object(path / FEATURES_FILE)
        tokenizer = TabularTokenizer.load(path / TOKENIZER_FILE)
        try:
            booster = lgb.Booster(model_file=str(path / MODEL_FILE))
        except lgb.basic.LightGBMError as exc:
            raise ArtifactError(f"{path / MODEL_FILE}: unreadable ({exc})") from exc
        return cls(path, booster, RowInputs.from_dict(saved["inputs"], tokenizer), saved.get("threshold"),
                   saved["task"])

    @property
    def tokenizer(self) -> TabularTokenizer:
        return self.inputs.layout.tokenizer

    def scores(self, features: np.ndarray) -> np.ndarray:
        return self.booster.predict(features)


def write_features_file(path: Path, inputs: RowInputs, task: str, threshold: float | None,
                        lightgbm_names: list[str]) -> None:
    from tabbert.atomic import write_json_atomic

    write_json_atomic(path, {
        "kind": "history", "task": task, "names": inputs.names, "lightgbm_names": lightgbm_names,
        "categorical": inputs.categorical, "inputs": inputs.to_dict(), "threshold": threshold,
        "tokenizer_fingerprint": inputs.layout.tokenizer.fingerprint(),
    })


def evaluate_rows(run_path: str | Path, data_dir: str | Path, split: str = "test", *, threshold=None,
                  batch_size: int = 256, device: str | None = None) -> dict:
    """Figures of a row-level run on every row of ``split`` of a prepared dataset at the threshold
    spec ``threshold`` (:mod:`tabbert.thresholds`), merged into the run's ``metrics.json``."""
    from tabbert.evaluation import merge_split, split_report

    if split not in SPLITS:
        raise TabbertError(f"unknown split {split!r}; choose from {SPLITS}")
    model = RowModel.load(run_path)
    chosen = stored_threshold(model.run_dir, task=model.task, saved=model.threshold, spec=threshold)
    data = PreparedDataset(data_dir)
    data.require_labels()
    if data.tokenizer.fingerprint() != model.tokenizer.fingerprint():
        raise ArtifactError(f"{data.path}: tokenized with another tokenizer than the run's; prepare the data with "
                            "the run's schema and training rows")
    rows = data.points(split)
    if rows.size == 0:
        raise TabbertError(f"{data.path}: split {split!r} has no rows to evaluate")
    scores = model.scores(model.inputs.of_dataset(data, batch_size=batch_size, device=device, split=split)[rows])
    truth = np.asarray(data.labels if model.task == "classification" else data.targets)[rows]
    chosen = {} if chosen is None else dict(threshold=chosen.value, threshold_spec=chosen.spec,
                                            threshold_source=chosen.source)
    result = split_report(truth, scores, task=model.task, split=split, data_path=data.path, run_dir=model.run_dir,
                          target_names=list(data.meta["labels"]), **chosen)
    merge_split(model.run_dir, split, result)
    return result


def predict_rows(run_path: str | Path, data, *, source: str | None = None, schema=None, threshold=None,
                 batch_size: int = 256, device: str | None = None):
    """Score raw rows (a file or a normalized frame) with a row-level run: a
    :class:`~tabbert.inference.Prediction` whose scores keep the input's rows and order."""
    from tabbert.inference import Prediction, encode_rows, read_rows

    started = time.perf_counter()
    model = RowModel.load(run_path)
    if model.task != "classification":
        raise TabbertError("predict scores classification runs; this run does regression")
    chosen = stored_threshold(model.run_dir, task=model.task, saved=model.threshold, spec=threshold)
    loaded = time.perf_counter()
    frame, dropped = read_rows(data, model.tokenizer, source=source, schema=schema)
    read = time.perf_counter()
    rows = encode_rows(frame, model.tokenizer, model.inputs.layout.value_columns)
    encoded = time.perf_counter()
    features = model.inputs.of_rows(rows.codes, rows.values, rows.times, rows.tokens, rows.entity_offsets,
                                    batch_size=batch_size, device=device)
    scores = np.empty(frame.height, dtype=np.float64)
    scores[rows.order] = model.scores(features)
    history = np.empty(frame.height, dtype=np.int64)
    history[rows.order] = np.arange(frame.height) - entity_starts(rows.entity_offsets) + 1
    columns = {"row": frame.get_column(ROW), "entity": frame.get_column(ENTITY), "score": scores,
               "history_rows": history}
    if chosen is not None:
        columns["predicted"] = (scores >= chosen.value).astype(np.int8)
    scored = time.perf_counter()
    seconds = {"load": loaded - started, "read": read - loaded, "tokenize": encoded - read, "model": scored - encoded,
               "total": scored - started}
    return Prediction(pl.DataFrame(columns), entities=len(rows.entity_offsets) - 1, padded_rows=0, unseen=rows.unseen,
                      dropped=dropped, seconds={step: round(v, 3) for step, v in seconds.items()}, threshold=chosen)
