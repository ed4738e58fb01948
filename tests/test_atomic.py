"""Artifacts written through a private staging name get the usual mode under the umask."""

from __future__ import annotations

import os
import stat

import torch

from tabbert.atomic import UMASK, write_json_atomic
from tabbert.models.classifier import save_classifier
from tabbert.models.configuration import TabBertConfig
from tabbert.models.raw import RawFieldsForSequenceClassification
from tabbert.models.tabbert import TabBertForMaskedFieldModeling
from tabbert.training.pretrain import save_model

FOLDER, FILE = 0o777 & ~UMASK, 0o666 & ~UMASK


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_umask_is_the_process_umask():
    current = os.umask(UMASK)
    assert current == UMASK


def test_json_file_mode(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"a": 1})
    assert mode(tmp_path / "a.json") == FILE


def test_prepared_dataset_mode(fraud_cards):
    assert mode(fraud_cards.path) == FOLDER
    assert mode(fraud_cards.path / "meta.json") == FILE


def test_model_folder_modes(tmp_path, fraud_cards):
    tokenizer = fraud_cards.tokenizer
    torch.manual_seed(0)
    classifier = RawFieldsForSequenceClassification.for_tokenizer(tokenizer, "tiny", seq_len=fraud_cards.seq_len,
                                                                  head="mlp", threshold=0.5)
    save_classifier(classifier, tokenizer, tmp_path / "finetune" / "model")
    config = TabBertConfig.for_tokenizer(tokenizer, "tiny", seq_len=fraud_cards.seq_len)
    save_model(TabBertForMaskedFieldModeling(config), tokenizer, tmp_path / "pretrain-model")
    for folder in (tmp_path / "finetune" / "model", tmp_path / "pretrain-model"):
        assert mode(folder) == FOLDER, folder
        assert mode(folder / "tokenizer.json") == FILE
