"""tabbert: TabBERT for multivariate time-series tables.

The pipeline as functions (imported on first use, so ``import tabbert`` stays light)::

    tabbert.generate_transactions(300, seed=0)        # built-in card transactions
    tabbert.prepare("card", "cards.csv", "data/")      # -> PreparedDataset
    tabbert.pretrain("data/", "runs/pre")              # masked-field pre-training
    tabbert.finetune("data/", "runs/ft", pretrained="runs/pre/model")
    tabbert.evaluate("runs/ft", "data/", split="test")
    tabbert.predict("runs/ft", "new.csv")              # -> polars DataFrame of scores

Each step's options are declared once in :mod:`tabbert.options`; runs are loaded and scored by
:mod:`tabbert.runs`.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "generate_transactions": "tabbert.data.synthetic",
    "write_transactions": "tabbert.data.synthetic",
    "read_source": "tabbert.data.sources",
    "prepare": "tabbert.data.preparation",
    "PreparedDataset": "tabbert.data.prepared",
    "TabularTokenizer": "tabbert.data.tokenizer",
    "TabBertConfig": "tabbert.models.configuration",
    "TabBertModel": "tabbert.models.tabbert",
    "TabBertForMaskedFieldModeling": "tabbert.models.tabbert",
    "TabBertForSequenceClassification": "tabbert.models.classifier",
    "RawFieldsForSequenceClassification": "tabbert.models.raw",
    "PrepareOptions": "tabbert.options",
    "PretrainOptions": "tabbert.options",
    "FinetuneOptions": "tabbert.options",
    "BaselineOptions": "tabbert.options",
    "pretrain": "tabbert.training.pretrain",
    "finetune": "tabbert.training.finetune",
    "train_baseline": "tabbert.baselines",
    "evaluate": "tabbert.evaluation",
    "load_run": "tabbert.runs",
    "predict": "tabbert.inference",
    "write_embeddings": "tabbert.embeddings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tabbert' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
