import numpy as np
import pytest
import torch

from tabbert.data.collate import IGNORE_INDEX, MaskedFieldCollator

PAD, SEP, MASK = 0, 2, 4
FIELD_SIZES = [3, 1000, 50, 2]  # the last field has no value ids, only [UNK] and [MISSING]
FIELD_OFFSETS = np.cumsum([5, *FIELD_SIZES[:-1]]).tolist()
OFFSETS, SIZES = torch.tensor(FIELD_OFFSETS), torch.tensor(FIELD_SIZES)


def make_examples(n: int, rows: int = 10, padded_rows: int = 3, seed: int = 0) -> list[dict]:
    """Windows of valid field tokens; every other window starts with ``padded_rows`` PAD rows."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(n):
        ids = np.asarray(FIELD_OFFSETS) + rng.integers(0, FIELD_SIZES, size=(rows, len(FIELD_SIZES)))
        mask = np.ones(rows, dtype=np.int64)
        if i % 2:
            ids[:padded_rows], mask[:padded_rows] = PAD, 0
        examples.append({"input_ids": ids, "attention_mask": mask})
    return examples


def collate(examples, **kwargs):
    torch.manual_seed(0)
    return MaskedFieldCollator(FIELD_OFFSETS, FIELD_SIZES, **kwargs)(examples)


@pytest.fixture(scope="module")
def examples():
    return make_examples(1000)


@pytest.fixture(scope="module")
def original(examples):
    return torch.from_numpy(np.stack([e["input_ids"] for e in examples]))


def test_output_shapes_and_dtypes(examples):
    batch = collate(examples[:8])
    assert batch["input_ids"].shape == batch["labels"].shape == (8, 10, 4)
    assert batch["attention_mask"].shape == (8, 10)
    assert all(t.dtype == torch.long for t in batch.values())


def test_masking_rate_is_mlm_probability(examples, original):
    batch = collate(examples)
    real_tokens = batch["attention_mask"].sum() * len(FIELD_SIZES)
    rate = (batch["labels"] != IGNORE_INDEX).sum() / real_tokens
    assert abs(rate.item() - 0.15) < 0.01


def test_eighty_ten_ten_split(examples, original):
    batch = collate(examples, mlm_probability=0.5)
    big_field = 1  # 1000 ids: a random replacement almost never equals the original
    selected = batch["labels"][..., big_field] != IGNORE_INDEX
    new, old = batch["input_ids"][..., big_field][selected], original[..., big_field][selected]
    masked = (new == MASK).float().mean().item()
    kept = (new == old).float().mean().item()
    randomized = ((new != MASK) & (new != old)).float().mean().item()
    assert abs(masked - 0.8) < 0.02
    assert abs(kept - 0.1) < 0.015
    assert abs(randomized - 0.1) < 0.015


def test_random_replacements_stay_in_their_field(examples, original):
    batch = collate(examples, mlm_probability=0.5)
    ids, labels = batch["input_ids"], batch["labels"]
    replaced = (labels != IGNORE_INDEX) & (ids != MASK) & (ids != original)
    local = ids - OFFSETS
    assert ((local >= 0) & (local < SIZES))[replaced].all()
    has_values = (SIZES > 2).expand_as(ids)
    assert (local[replaced & has_values] >= 2).all(), "fields with values draw replacements among them"
    assert (ids[labels == IGNORE_INDEX] == original[labels == IGNORE_INDEX]).all()


def test_labels_are_local_ids_of_the_original_tokens(examples, original):
    batch = collate(examples)
    selected = batch["labels"] != IGNORE_INDEX
    expected = (original - OFFSETS)[selected]
    assert torch.equal(batch["labels"][selected], expected)


def test_special_tokens_and_padding_rows_are_never_selected():
    examples = make_examples(400)
    for example in examples:
        example["input_ids"][5, 0] = SEP
        example["input_ids"][6, 2] = PAD
    batch = collate(examples, mlm_probability=0.9)
    labels, mask = batch["labels"], batch["attention_mask"]
    assert (labels[mask == 0] == IGNORE_INDEX).all()
    assert (batch["input_ids"][mask == 0] == PAD).all()
    assert (labels[:, 5, 0] == IGNORE_INDEX).all() and (labels[:, 6, 2] == IGNORE_INDEX).all()
    assert (batch["input_ids"][:, 5, 0] == SEP).all() and (batch["input_ids"][:, 6, 2] == PAD).all()


def test_row_masking_selects_whole_rows(examples):
    batch = collate(examples, mask_rows=True)
    selected = batch["labels"] != IGNORE_INDEX
    per_row = selected.sum(-1)
    assert ((per_row == 0) | (per_row == len(FIELD_SIZES))).all()
    real_rows = batch["attention_mask"].bool()
    rate = (per_row[real_rows] > 0).float().mean().item()
    assert abs(rate - 0.15) < 0.015


def test_missing_attention_mask_is_derived_from_padding(examples):
    without_mask = [{"input_ids": e["input_ids"]} for e in examples[:6]]
    assert torch.equal(collate(without_mask)["attention_mask"], collate(examples[:6])["attention_mask"])


def test_same_seed_same_masks(examples):
    assert all(torch.equal(a, b) for a, b in zip(collate(examples).values(), collate(examples).values()))
    first, second = (
        MaskedFieldCollator(FIELD_OFFSETS, FIELD_SIZES, generator=torch.Generator().manual_seed(7))(examples)
        for _ in range(2)
    )
    assert torch.equal(first["labels"], second["labels"]) and torch.equal(first["input_ids"], second["input_ids"])


def test_accepts_tensors(examples):
    as_tensors = [{k: torch.as_tensor(v) for k, v in e.items()} for e in examples[:16]]
    assert torch.equal(collate(as_tensors)["input_ids"], collate(examples[:16])["input_ids"])


def test_a_generator_passed_to_mask_replaces_the_collators(examples, original):
    attention_mask = torch.from_numpy(np.stack([e["attention_mask"] for e in examples]))
    collator = MaskedFieldCollator(FIELD_OFFSETS, FIELD_SIZES)
    input_ids, labels = collator.mask(original, attention_mask, torch.Generator().manual_seed(7))
    expected = MaskedFieldCollator(FIELD_OFFSETS, FIELD_SIZES, generator=torch.Generator().manual_seed(7))(examples)
    assert torch.equal(input_ids, expected["input_ids"]) and torch.equal(labels, expected["labels"])
    assert input_ids.device == labels.device == original.device
