import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel

from tabbert.data.collate import IGNORE_INDEX, MaskedFieldCollator
from tabbert.errors import ArtifactError
from tabbert.models.configuration import TabBertConfig
from tabbert.models.tabbert import TabBertForMaskedFieldModeling, TabBertModel

NAMES = ["merchant", "amount", "hour", "chip"]
SIZES = [12, 9, 6, 4]
OFFSETS = np.cumsum([5, *SIZES[:-1]]).tolist()
BATCH, ROWS = 3, 6


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors gain nothing from intra-op threads, and lose a lot on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(flat: bool = False, **overrides) -> TabBertConfig:
    return TabBertConfig.from_size(
        "tiny", field_names=NAMES, field_offsets=OFFSETS, field_vocab_sizes=SIZES, flat=flat, max_rows=ROWS,
        **overrides,
    )


def tiny_model(cls=TabBertForMaskedFieldModeling, flat: bool = False, **overrides):
    torch.manual_seed(0)
    return cls(tiny_config(flat, **overrides)).eval()


def random_windows(batch: int = BATCH, rows: int = ROWS, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    local = torch.stack([torch.randint(0, size, (batch, rows), generator=generator) for size in SIZES], dim=-1)
    return local + torch.tensor(OFFSETS)


@pytest.mark.parametrize("flat", [False, True])
def test_encoder_output_shapes(flat):
    out = tiny_model(TabBertModel, flat)(random_windows(), attention_mask=torch.ones(BATCH, ROWS))
    assert out.last_hidden_state.shape == (BATCH, ROWS, 32)
    if flat:
        assert out.row_embeddings is None
        assert out.token_hidden_states.shape == (BATCH, ROWS, len(NAMES), 32)
    else:
        assert out.row_embeddings.shape == (BATCH, ROWS, 32)
        assert out.token_hidden_states is None


def test_field_transformer_attends_within_a_row_only():
    model = tiny_model(TabBertModel)
    ids = random_windows()
    changed = ids.clone()
    changed[1, 2, 0] = OFFSETS[0] + (ids[1, 2, 0] - OFFSETS[0] + 1) % SIZES[0]
    with torch.no_grad():
        before, after = model(ids), model(changed)

    row_moved = (before.row_embeddings - after.row_embeddings).abs().amax(-1) > 1e-6
    expected = torch.zeros(BATCH, ROWS, dtype=torch.bool)
    expected[1, 2] = True
    assert torch.equal(row_moved, expected), "a field change must move its own row's embedding and no other"

    output_moved = (before.last_hidden_state - after.last_hidden_state).abs().amax(-1) > 1e-6
    assert output_moved[1].all(), "the row BERT spreads the change to the other rows of the window"
    assert not output_moved[[0, 2]].any(), "other windows are untouched"
    with torch.no_grad():
        for out in (before, after):
            through_bert = model.bert(inputs_embeds=out.row_embeddings).last_hidden_state
            torch.testing.assert_close(through_bert, out.last_hidden_state)


def test_repeated_rows_are_encoded_once_outside_training_with_the_same_vectors():
    model = tiny_model(TabBertModel)
    ids = random_windows()
    ids[1, 1:] = ids[0, :-1]  # overlapping histories, as consecutive prediction points have
    ids[2] = ids[0, 0]
    calls = []
    hook = model.field_encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    with torch.no_grad():
        shared = model.embed_rows(ids)
        one_by_one = torch.stack([model.embed_rows(ids[b, r].view(1, 1, -1))[0, 0]
                                  for b in range(BATCH) for r in range(ROWS)]).view(BATCH, ROWS, -1)
        model.train()  # dropout draws per position: in training every row is encoded where it stands
        model.embed_rows(ids)
    hook.remove()
    assert calls[0] == len({tuple(row) for row in ids.view(-1, len(NAMES)).tolist()}) == ROWS + 1
    assert calls[-1] == BATCH * ROWS
    torch.testing.assert_close(shared, one_by_one)


@pytest.mark.parametrize("flat", [False, True])
def test_padding_rows_do_not_change_real_rows(flat):
    model = tiny_model(TabBertModel, flat)
    mask = torch.ones(BATCH, ROWS, dtype=torch.long)
    mask[:, :2] = 0
    padded = random_windows()
    padded[:, :2] = 0
    garbage = padded.clone()
    garbage[:, :2] = random_windows(seed=1)[:, :2]
    with torch.no_grad():
        clean, noisy = model(padded, attention_mask=mask), model(garbage, attention_mask=mask)
    torch.testing.assert_close(clean.last_hidden_state[:, 2:], noisy.last_hidden_state[:, 2:])


@pytest.mark.parametrize("flat", [False, True])
def test_heads_predict_over_each_fields_own_vocabulary(flat):
    model = tiny_model(flat=flat)
    ids = random_windows()
    full = model(ids)
    assert [logits.shape for logits in full.field_logits] == [(BATCH, ROWS, size) for size in SIZES]
    assert full.loss is None

    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 1, 0], labels[2, 3, 0], labels[1, 5, 2] = 3, 0, 5
    out = model(ids, labels=labels)
    assert [logits.shape for logits in out.field_logits] == [(2, 12), (0, 9), (1, 6), (0, 4)]
    assert [lab.tolist() for lab in out.field_labels] == [[3, 0], [], [5], []]
    torch.testing.assert_close(out.field_logits[0], full.field_logits[0][[0, 2], [1, 3]])
    torch.testing.assert_close(out.field_logits[2], full.field_logits[2][[1], [5]])
    cross_entropy = torch.nn.functional.cross_entropy
    summed = cross_entropy(out.field_logits[0], torch.tensor([3, 0]), reduction="sum") + cross_entropy(
        out.field_logits[2], torch.tensor([5]), reduction="sum"
    )
    torch.testing.assert_close(out.loss, summed / 3)


def structured_windows(n: int, seed: int = 0) -> list[dict]:
    """Rows where 'amount' is a function of 'merchant' and 'hour' repeats the previous row's 'hour'."""
    rng = np.random.default_rng(seed)
    merchant = rng.integers(2, SIZES[0], size=(n, ROWS))
    amount = 2 + merchant % (SIZES[1] - 2)
    hour = np.broadcast_to(rng.integers(2, SIZES[2], size=(n, 1)), (n, ROWS))
    chip = rng.integers(2, SIZES[3], size=(n, ROWS))
    ids = np.stack([merchant, amount, hour, chip], axis=-1) + np.asarray(OFFSETS)
    return [{"input_ids": window, "attention_mask": np.ones(ROWS, dtype=np.int64)} for window in ids]


@pytest.mark.parametrize("flat", [False, True])
def test_masked_field_loss_falls_below_what_field_frequencies_allow(flat):
    model = tiny_model(flat=flat, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    data = structured_windows(256)
    collator = MaskedFieldCollator(OFFSETS, SIZES, mlm_probability=0.3, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for step in range(50):
        batch = collator(data[(step % 8) * 32 : (step % 8 + 1) * 32])
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # every field is uniform over its values: knowing only that gives this loss
    marginal_entropy = np.mean(np.log(np.asarray(SIZES) - 2))
    assert np.mean(losses[:8]) > marginal_entropy
    assert np.mean(losses[-8:]) < marginal_entropy - 0.2


def settings(config: TabBertConfig) -> dict:
    return {key: value for key, value in config.to_dict().items() if key != "_name_or_path"}


@pytest.mark.parametrize("flat", [False, True])
def test_save_and_load_round_trip(tmp_path, flat):
    model = tiny_model(flat=flat)
    ids, mask = random_windows(), torch.ones(BATCH, ROWS, dtype=torch.long)
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "model.safetensors"}

    loaded = TabBertForMaskedFieldModeling.from_pretrained(tmp_path).eval()
    assert settings(loaded.config) == settings(model.config)
    with torch.no_grad():
        for a, b in zip(model(ids, mask).field_logits, loaded(ids, mask).field_logits):
            assert torch.equal(a, b)
        encoder = TabBertModel.from_pretrained(tmp_path).eval()
        assert torch.equal(encoder(ids, mask).last_hidden_state, model.tabbert(ids, mask).last_hidden_state)


def test_auto_classes_know_tabbert(tmp_path):
    tiny_model(TabBertModel).save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), TabBertConfig)
    assert isinstance(AutoModel.from_pretrained(tmp_path), TabBertModel)


def test_check_compatible_refuses_another_schema():
    config = tiny_config(schema_fingerprint="abc123")
    config.check_compatible(NAMES, SIZES, "abc123")
    fewer_fields = r"trained on fields \[.*'chip'\] but the data has \['merchant', 'amount', 'hour'\]"
    with pytest.raises(ArtifactError, match=fewer_fields):
        config.check_compatible(["merchant", "amount", "hour"], SIZES[:3])
    with pytest.raises(ArtifactError, match="'amount' has 9 tokens in the model but 11"):
        config.check_compatible(NAMES, [12, 11, 6, 4])
    with pytest.raises(ArtifactError, match="schema abc123 but the data has schema zzz"):
        config.check_compatible(NAMES, SIZES, "zzz")


def test_named_sizes_and_overrides():
    paper = TabBertConfig.from_size(
        "paper", field_names=[f"f{i}" for i in range(12)], field_offsets=list(range(5, 41, 3)),
        field_vocab_sizes=[3] * 12,
    )
    assert (paper.hidden_size, paper.num_hidden_layers, paper.intermediate_size) == (768, 12, 3072)
    small = TabBertConfig.from_size(
        "small", field_names=NAMES, field_offsets=OFFSETS, field_vocab_sizes=SIZES, num_hidden_layers=2
    )
    assert (small.hidden_size, small.num_hidden_layers, small.size) == (256, 2, "small")
    assert (small.field_hidden, small.field_num_heads, small.field_intermediate_size) == (32, 2, 32)
    assert paper.field_hidden == paper.field_intermediate_size == 64
    assert small.vocab_size == OFFSETS[-1] + SIZES[-1]


def test_rejects_windows_that_do_not_fit():
    model = tiny_model(TabBertModel)
    with pytest.raises(ValueError, match="max_rows"):
        model(random_windows(rows=ROWS + 1))
    with pytest.raises(ValueError, match="4 fields"):
        model(random_windows()[..., :3])
