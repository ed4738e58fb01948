"""The HTTP service of ``tabbert serve``: a FastAPI app around one :class:`~tabbert.serving.scorer.Scorer`.

Endpoints
---------
``POST /score``  one transaction (a JSON object of the source's columns) or a list of them; the
                 answer is one result or a list of results in the same order (see
                 :meth:`Scorer.score`). Bad JSON is a 400, a missing field or a bad value a 422
                 naming the field and value, a transaction earlier than its entity's latest
                 scored one a 409; nothing is scored or stored then.
``GET /health``  ``{"status": "ok", "entities": N}``
``GET /model``   the model's fields, threshold, training metrics and fingerprint

Micro-batching: requests that arrive within ``batch_wait_ms`` of the first waiting one are scored
together in one forward pass (by one worker, so an entity's rows are scored one after another).
When a batch fails, its requests are scored one by one, so that one bad request fails alone.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tabbert.data.sources import record_columns
from tabbert.errors import DataError, TabbertError
from tabbert.serving.scorer import OutOfOrderError, Scorer

BATCH_WAIT_MS = 2.0
MAX_BATCH_ROWS = 256


class MicroBatcher:
    """Collects the transactions of concurrent requests and scores them together."""

    def __init__(self, scorer: Scorer, *, wait_ms: float = BATCH_WAIT_MS, max_rows: int = MAX_BATCH_ROWS):
        self.scorer, self.wait, self.max_rows = scorer, wait_ms / 1000.0, max_rows
        self.queue: asyncio.Queue[tuple[list, asyncio.Future]] = asyncio.Queue()

    async def score(self, rows: list) -> list[dict]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((rows, future))
        return await future

    async def run(self) -> None:
        """Score batches until cancelled."""
        while True:
            batch = [await self.queue.get()]
            deadline = time.perf_counter() + self.wait
            rows = len(batch[0][0])
            while rows < self.max_rows:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
                rows += len(batch[-1][0])
            await asyncio.to_thread(self._score, batch)

    def _score(self, batch: list[tuple[list, asyncio.Future]]) -> None:
        """Score the requests of ``batch`` together, or one by one when that fails; answer each."""
        try:
            results = self.scorer.score([row for rows, _ in batch for row in rows])
        except Exception as exc:  # noqa: BLE001 - the request gets it as its answer
            if len(batch) == 1:
                _answer(batch[0][1], error=exc)
            else:  # each request alone: only the failing ones fail
                for request in batch:
                    self._score([request])
            return
        at = 0
        for rows, future in batch:
            _answer(future, results[at:at + len(rows)])
            at += len(rows)


def _answer(future: asyncio.Future, results: list | None = None, error: BaseException | None = None) -> None:
    """Settle ``future`` from the scoring thread, on its event loop."""

    def settle() -> None:
        if not future.done():
            future.set_result(results) if error is None else future.set_exception(error)

    future.get_loop().call_soon_threadsafe(settle)


def create_app(scorer: Scorer, *, batch_wait_ms: float = BATCH_WAIT_MS) -> FastAPI:
    """The service around ``scorer`` (see the module docstring)."""
    batcher = MicroBatcher(scorer, wait_ms=batch_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()

    app = FastAPI(title="tabbert", lifespan=lifespan)

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            return _error(400, f"the request body is not JSON ({exc})")
        rows = body if isinstance(body, list) else [body]
        if not rows or not all(isinstance(row, dict) for row in rows):
            return _error(422, "expected a transaction (a JSON object) or a non-empty list of them")
        try:
            results = await batcher.score(rows)
        except OutOfOrderError as exc:
            return _error(409, str(exc))
        except DataError as exc:
            return _error(422, str(exc))
        except TabbertError as exc:
            return _error(400, str(exc))
        return JSONResponse(results if isinstance(body, list) else results[0])

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "entities": len(scorer.store)}

    @app.get("/model")
    async def model() -> dict:
        return model_description(scorer)

    return app


def model_description(scorer: Scorer) -> dict:
    """What ``GET /model`` answers: the run, its input columns and fields, threshold, metrics and fingerprint."""
    run, tokenizer, threshold = scorer.run, scorer.tokenizer, scorer.threshold
    return {
        "run": str(run.run_dir),
        "source": scorer.source,
        "input_columns": record_columns(scorer.source, scorer.generic_schema),
        "fields": tokenizer.field_names,
        "seq_len": scorer.seq_len,
        "threshold": None if threshold is None else {"value": threshold.value, "spec": threshold.spec,
                                                     "source": threshold.source},
        "metrics": run.metrics,
        "fingerprint": scorer.fingerprint,
    }


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def wait_until_serving(port: int, process: subprocess.Popen, timeout: float) -> bool:
    """Whether a service started as ``process`` answers ``GET /health`` on 127.0.0.1:``port``
    within ``timeout`` seconds (False once the process has ended)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            time.sleep(0.1)
    return False
