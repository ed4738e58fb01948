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

One batch, followed through the code
------------------------------------
From a CSV row to the pre-training loss, through five files (``data/preparation.py`` and
``training/pretrain.py`` drive the steps):

1. ``data/sources.py``     the strict reader turns the row into a normalized row;
2. ``data/tokenizer.py``   each of its fields becomes a token id;
3. ``data/prepared.py``    the ids are stored in entity-then-time order, and read back as windows;
4. ``data/collate.py``     windows are stacked into a batch and field tokens are masked;
5. ``models/tabbert.py``   TabBERT encodes the batch and computes the masked-field loss.

From a CSV row to a fraud score, through five files (``inference.py`` drives the steps):

1. ``data/sources.py``     the same reader;
2. ``data/tokenizer.py``   the model's own tokenizer encodes the row;
3. ``runs.py``             the window that ends at the row (padded in front when its history is
   short) joins a batch, which runs through the model;
4. ``models/tabbert.py``   the encoder gives one vector per row of the window;
5. ``models/classifier.py`` the head reads those vectors, and its output becomes the score.
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
    "Scorer": "tabbert.serving.scorer",
    "write_embeddings": "tabbert.embeddings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tabbert' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
