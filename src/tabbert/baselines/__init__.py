"""The models TabBERT is compared with, on the same windows: LightGBM on window aggregates
(:mod:`tabbert.baselines.lightgbm`), and the paper's raw LSTM and MLP (fine-tuning on raw field
embeddings, :class:`~tabbert.models.raw.RawFieldsForSequenceClassification`)."""

from __future__ import annotations

from pathlib import Path

from tabbert.options import BaselineOptions


def train_baseline(data_dir: str | Path, out_dir: str | Path, options: BaselineOptions | None = None,
                   **settings) -> dict:
    """Train the baseline ``options.kind`` on the prepared dataset ``data_dir`` into the run ``out_dir``.

    ``options`` and ``settings`` (its fields by name) are :class:`~tabbert.options.BaselineOptions`.
    Returns the run's metrics (the same layout for every kind).
    """
    options = BaselineOptions.create(options, **settings)
    if options.kind == "lightgbm":
        from tabbert.baselines.lightgbm import train_lightgbm

        return train_lightgbm(data_dir, out_dir, options)
    from tabbert.training.finetune import finetune

    return finetune(data_dir, out_dir, options.finetune_options())
