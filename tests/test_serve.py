"""Real-time scoring: the scorer and the service give predict's scores, keep state durably, refuse bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest
import torch
from fastapi.testclient import TestClient

from tabbert.data.encoders import FEW_ROWS, CategoricalEncoder
from tabbert.data.sources import read_card
from tabbert.data.synthetic import generate_transactions, write_transactions
from tabbert.data.tokenizer import row_order
from tabbert.data.preparation import prepare
from tabbert.errors import ArtifactError, DataError
from tabbert.inference import predict
from tabbert.models.classifier import TabBertForSequenceClassification, save_classifier
from tabbert.models.configuration import TabBertConfig
from tabbert.models.tabbert import TabBertModel
from tabbert.serving.app import create_app, wait_until_serving
from tabbert.serving.scorer import OutOfOrderError, Scorer

SEQ_LEN = 10


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fraud_cards):
    """A tiny (untrained) classifier saved as a fine-tuning run saves it, with a threshold."""
    config = TabBertConfig.for_tokenizer(fraud_cards.tokenizer, "tiny", seq_len=SEQ_LEN)
    torch.manual_seed(0)
    model = TabBertForSequenceClassification.from_encoder(TabBertModel(config), seq_len=SEQ_LEN, threshold=0.5)
    return save_classifier(model, fraud_cards.tokenizer, tmp_path_factory.mktemp("serve") / "run" / "model").parent


@pytest.fixture(scope="module")
def new_csv(tmp_path_factory) -> Path:
    """New transactions of three users (other merchants too: some values unseen in training)."""
    path = tmp_path_factory.mktemp("serve-input") / "new.csv"
    write_transactions(generate_transactions(3, seed=5, rows_per_user=30, fraud_rate=0.05), path)
    return path


@pytest.fixture(scope="module")
def replay(new_csv, run_dir):
    """The file's transactions in time order (ties as predict orders them) as JSON objects, and
    predict's scores of the file in that order."""
    table = read_card(new_csv)
    order = row_order(table.frame, table.schema).order
    raw = pl.read_csv(new_csv, infer_schema=False)[order]
    return raw.drop("Is Fraud?").to_dicts(), predict(run_dir, new_csv)[order]


def post(client: TestClient, body) -> httpx.Response:
    return client.post("/score", content=json.dumps(body), headers={"content-type": "application/json"})


def test_replay_through_the_service_gives_predicts_scores(run_dir, replay):
    rows, expected = replay
    with TestClient(create_app(Scorer(run_dir))) as client:
        results = [post(client, row).json() for row in rows]
    np.testing.assert_allclose([r["score"] for r in results], expected["score"].to_numpy(), atol=1e-5)
    assert [r["history_rows"] for r in results] == expected["history_rows"].to_list()
    assert [int(r["decision"]) for r in results] == expected["predicted"].to_list()
    assert results[0]["entity"] == "0" and results[0]["time"].startswith(str(expected["Year"][0]))
    assert any(r["unseen"] for r in results) and set(results[0]["unseen"]) <= {"Merchant Name", "Merchant City",
                                                                                "Merchant State", "Zip", "MCC"}


def test_warm_start_then_replay_gives_predicts_scores(run_dir, replay, tmp_path):
    rows, expected = replay
    users = [row["User"] for row in rows]
    cut = users.index(users[-1]) - 5  # the first users whole, the next in part; the last starts cold
    history = tmp_path / "history.csv"
    pl.DataFrame(rows[:cut]).with_columns(pl.lit("No").alias("Is Fraud?")).write_csv(history)
    scorer = Scorer(run_dir)
    assert scorer.warm_start(history) == len(set(users)) - 1
    with TestClient(create_app(scorer)) as client:
        results = [post(client, row).json() for row in rows[cut:]]
    np.testing.assert_allclose([r["score"] for r in results], expected["score"].to_numpy()[cut:], atol=1e-5)
    assert [r["history_rows"] for r in results] == expected["history_rows"].to_list()[cut:]


def test_a_list_is_scored_in_time_order_and_answered_in_its_own(run_dir, replay):
    rows, expected = replay
    shuffled = np.random.default_rng(0).permutation(len(rows))
    results = Scorer(run_dir).score([rows[i] for i in shuffled])
    np.testing.assert_allclose([r["score"] for r in results], expected["score"].to_numpy()[shuffled], atol=1e-5)


def test_an_earlier_transaction_is_refused_and_changes_nothing(run_dir, replay):
    rows, expected = replay
    scorer = Scorer(run_dir)
    scorer.score(rows[:5])
    with pytest.raises(OutOfOrderError, match="entity 0: a transaction at .* is earlier than its latest scored one"):
        scorer.score([rows[2]])
    with TestClient(create_app(scorer)) as client:
        refused = post(client, [rows[5], rows[3]])
        assert refused.status_code == 409 and "earlier than its latest" in refused.json()["detail"]
        assert post(client, rows[5]).json()["score"] == pytest.approx(expected["score"][5], abs=1e-5)


def test_bad_input_is_a_clear_4xx_and_the_service_keeps_serving(run_dir, replay):
    rows, expected = replay
    with TestClient(create_app(Scorer(run_dir))) as client:
        malformed = client.post("/score", content=b'{"User": 0,', headers={"content-type": "application/json"})
        assert malformed.status_code == 400 and "not JSON" in malformed.json()["detail"]
        missing = post(client, {k: v for k, v in rows[0].items() if k != "MCC"})
        assert missing.status_code == 422 and "missing fields ['MCC']" in missing.json()["detail"]
        bad = post(client, [rows[0], dict(rows[1], Month="13")])
        assert bad.status_code == 422
        assert "column 'Month', row 2: bad value '13'; expected a month from 1 to 12" in bad.json()["detail"]
        assert post(client, [1, 2]).status_code == 422
        assert client.get("/health").json() == {"status": "ok", "entities": 0}
        assert post(client, rows[0]).json()["score"] == pytest.approx(expected["score"][0], abs=1e-5)


def test_a_bad_request_batched_with_good_ones_fails_alone(run_dir, replay):
    rows, expected = replay
    users = [row["User"] for row in rows]
    entity_starts = [users.index(user) for user in dict.fromkeys(users)]  # each user's first transaction
    with TestClient(create_app(Scorer(run_dir), batch_wait_ms=200)) as client:
        bodies = [rows[i] for i in entity_starts] + [dict(rows[1], Amount="lots")]
        bad = len(entity_starts)
        answers: dict[int, httpx.Response] = {}
        threads = [threading.Thread(target=lambda i=i, body=body: answers.__setitem__(i, post(client, body)))
                   for i, body in enumerate(bodies)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert answers[bad].status_code == 422 and "'Amount'" in answers[bad].json()["detail"]
    scores = [answers[i].json()["score"] for i in range(len(entity_starts))]
    np.testing.assert_allclose(scores, expected["score"].to_numpy()[entity_starts], atol=1e-5)


def test_generic_transactions_are_read_by_the_stored_schema(tmp_path):
    rng = np.random.default_rng(0)
    n = 48
    raw = pl.DataFrame({
        "site": np.repeat(["north", "south"], n // 2),
        "ts": [f"2021-03-{1 + i // 24:02d} {i % 24:02d}:15:00" for i in range(n)],
        "shop": rng.choice(["a", "b", "c"], n),
        "amount": rng.normal(10, 3, n).round(2),
        "fraud": (np.arange(n) % 7 == 0).astype(int),
    })
    path, schema = tmp_path / "rows.csv", tmp_path / "schema.json"
    raw.write_csv(path)
    schema.write_text(json.dumps({"entity": ["site"], "time": "ts", "categorical": ["shop"], "numeric": {"amount": 4},
                                  "labels": ["fraud"], "recency": ["shop"]}))
    data = prepare("generic", path, tmp_path / "data", schema=str(schema), seq_len=4, stride=2, split="random")
    config = TabBertConfig.for_tokenizer(data.tokenizer, "tiny", seq_len=4)
    torch.manual_seed(0)
    model = TabBertForSequenceClassification.from_encoder(TabBertModel(config), seq_len=4)
    run = save_classifier(model, data.tokenizer, tmp_path / "run" / "model").parent
    expected = predict(run, path)["score"].to_numpy()
    records = raw.drop("fraud").with_columns(pl.col("amount").cast(pl.String)).to_dicts()
    scorer = Scorer(run)
    got = [scorer.score([record])[0]["score"] for record in records]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    with pytest.raises(DataError, match="column 'ts', row 1: bad value 'yesterday'"):
        scorer.score([dict(records[0], ts="yesterday")])


def test_model_endpoint(run_dir):
    with TestClient(create_app(Scorer(run_dir))) as client:
        described = client.get("/model").json()
    recorded = json.loads((run_dir / "model" / "weights.sha256.json").read_text())["sha256"]
    assert described["fingerprint"].startswith(f"sha256:{recorded}/tokenizer:")
    assert described["threshold"]["value"] == 0.5 and described["seq_len"] == SEQ_LEN
    assert "Merchant Name" in described["fields"] and "time.gap" in described["fields"]
    assert described["input_columns"][:3] == ["User", "Card", "Year"] and "Is Fraud?" not in described["input_columns"]


def test_state_survives_a_new_scorer_and_belongs_to_its_model(run_dir, replay, tmp_path, fraud_cards):
    rows, expected = replay
    Scorer(run_dir, state=tmp_path / "state").score(rows[:12])
    again = Scorer(run_dir, state=tmp_path / "state")
    assert len(again.store) == 1
    assert again.score([rows[12]])[0]["score"] == pytest.approx(expected["score"][12], abs=1e-5)
    config = TabBertConfig.for_tokenizer(fraud_cards.tokenizer, "tiny", seq_len=SEQ_LEN)
    other = save_classifier(TabBertForSequenceClassification.from_encoder(TabBertModel(config), seq_len=SEQ_LEN),
                            fraud_cards.tokenizer, tmp_path / "other" / "model")
    with pytest.raises(ArtifactError, match="holds the state of another model"):
        Scorer(other, state=tmp_path / "state")


def test_few_rows_are_encoded_like_many():
    values = pl.Series("shop", [3, 1, None, 7, 3, 3] * 20)
    encoder = CategoricalEncoder("shop", min_count=30).fit(values)
    assert values.len() > FEW_ROWS
    whole = encoder.encode(values)
    few = np.concatenate([encoder.encode(values[i:i + 4]) for i in range(0, values.len(), 4)])
    np.testing.assert_array_equal(few, whole)
    assert set(whole.tolist()) == {0, 1, 2}  # [UNK] (1 and 7 are rare), [MISSING] and 3


# ------------------------------------------------------------------------------------------ the command


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(run_dir: Path, state: Path, port: int) -> subprocess.Popen:
    """``tabbert serve`` in a subprocess, once it answers /health."""
    environment = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"), OMP_NUM_THREADS="1")
    server = subprocess.Popen([sys.executable, "-m", "tabbert.cli", "serve", "--model", str(run_dir), "--port",
                               str(port), "--state", str(state), "--threads", "1"], env=environment,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if wait_until_serving(port, server, timeout=60):
        return server
    server.kill()
    raise AssertionError(f"the server did not start: {server.communicate()[1].decode()[-2000:]}")


def test_answered_transactions_survive_kill_9(run_dir, replay, tmp_path):
    """A server killed with SIGKILL and started again on its state scores the next transaction as an
    uninterrupted scorer does."""
    rows, _ = replay
    uninterrupted = Scorer(run_dir)
    expected = [result["score"] for result in uninterrupted.score(rows[:8])] + uninterrupted.score([rows[8]])
    port = free_port()
    server = start_server(run_dir, tmp_path / "state", port)
    try:
        answered = [httpx.post(f"http://127.0.0.1:{port}/score", json=row).json()["score"] for row in rows[:8]]
        os.kill(server.pid, signal.SIGKILL)
    finally:
        server.kill()
        server.wait()
    assert server.returncode == -signal.SIGKILL
    np.testing.assert_allclose(answered, expected[:8], atol=1e-6)
    restarted = start_server(run_dir, tmp_path / "state", port)
    try:
        after = httpx.post(f"http://127.0.0.1:{port}/score", json=rows[8]).json()
    finally:
        restarted.terminate()
        restarted.wait(timeout=30)
    assert after["history_rows"] == 9
    assert after["score"] == pytest.approx(expected[8]["score"], abs=1e-6)
