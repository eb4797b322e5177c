"""The scheduler: merging, priorities, back-pressure, failures. Real tiny Qwen3 engine."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest
from test_engine_parity import engine_for

from localrank.engine.core import Engine
from localrank.errors import Overloaded, TooLarge
from localrank.serve.worker import BatchStats, ModelWorker


class Gate:
    """Wraps engine.run so a test can hold the model thread and see what each pass got."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.open = threading.Event()
        self.open.set()
        self.calls: list[list[list[int]]] = []
        self._run = engine.run

    def __enter__(self) -> Gate:
        def run(encoded):  # type: ignore[no-untyped-def]
            self.calls.append([e.ids for e in encoded])
            self.open.wait(10)
            return self._run(encoded)

        self.engine.run = run  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.engine.run = self._run  # type: ignore[method-assign]


def make_worker(engine: Engine, **kw: object) -> tuple[ModelWorker, list[BatchStats]]:
    stats: list[BatchStats] = []
    opts: dict = dict(max_batch_tokens=4096, max_batch_size=64, batch_wait_ms=20, queue_size=64)
    opts.update(kw)
    return ModelWorker(engine, on_batch=stats.append, **opts), stats


@pytest.fixture
def engine(tiny_qwen3: Path) -> Engine:
    return engine_for(str(tiny_qwen3), "cpu")


async def test_concurrent_requests_are_merged_and_exact(engine: Engine) -> None:
    worker, stats = make_worker(engine)
    texts = [f"text number {i} " * (i % 5 + 1) for i in range(16)]
    try:
        results = await asyncio.gather(*(worker.submit([t]) for t in texts))
    finally:
        worker.stop()
    want = engine.embed(texts).vectors
    got = np.stack([r.vectors[0] for r in results])
    assert np.abs(got - want).max() < 1e-5
    assert max(s.requests for s in stats) > 1  # several requests shared a forward pass
    assert sum(s.rows for s in stats) == 16


async def test_large_arrays_are_split_and_interactive_goes_first(engine: Engine) -> None:
    worker, stats = make_worker(engine, max_batch_tokens=256, batch_wait_ms=0)
    bulk_texts = [f"bulk document {i} with some words" for i in range(100)]
    with Gate(engine) as gate:
        gate.open.clear()
        bulk = asyncio.ensure_future(worker.submit(bulk_texts, bulk=True))
        await asyncio.sleep(0.2)  # the first bulk pass is now holding the model
        interactive = asyncio.ensure_future(worker.submit(["an editor's query"]))
        await asyncio.sleep(0.1)
        gate.open.set()
        first_done = (await asyncio.wait({bulk, interactive}, return_when=asyncio.FIRST_COMPLETED))[
            0
        ]
        await asyncio.gather(bulk, interactive)
    worker.stop()
    assert interactive in first_done and bulk not in first_done
    assert len(gate.calls) >= 3  # 100 inputs (~900 tokens) over a 256-token budget: several passes
    query_ids = engine.prepare(["an editor's query"])[0].ids
    # The query rode in the second pass, right after the bulk pass that was running.
    assert query_ids in gate.calls[1]
    assert np.abs(bulk.result().vectors - engine.embed(bulk_texts).vectors).max() < 1e-5


async def test_full_queue_answers_overloaded_at_once(engine: Engine) -> None:
    worker, _ = make_worker(engine, queue_size=2, batch_wait_ms=0)
    with Gate(engine) as gate:
        gate.open.clear()
        held = [asyncio.ensure_future(worker.submit([f"t{i}"])) for i in range(2)]
        await asyncio.sleep(0.1)
        with pytest.raises(Overloaded) as info:
            await asyncio.wait_for(worker.submit(["one too many"]), timeout=1)
        assert info.value.retry_after > 0
        gate.open.set()
        await asyncio.gather(*held)
    # Capacity comes back once the queue drains.
    assert (await worker.submit(["fine now"])).vectors.shape == (1, engine.dim)
    worker.stop()


async def test_bad_input_fails_only_its_own_request(engine: Engine) -> None:
    worker, _ = make_worker(engine)
    good = worker.submit(["fine"])
    bad = worker.submit(["word " * 500], truncate=False)
    results = await asyncio.gather(good, bad, return_exceptions=True)
    worker.stop()
    assert results[0].vectors.shape == (1, engine.dim)  # type: ignore[union-attr]
    assert isinstance(results[1], TooLarge)


async def test_backend_failure_reaches_the_caller(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, _ = make_worker(engine)

    def boom(encoded):  # type: ignore[no-untyped-def]
        raise RuntimeError("device lost")

    monkeypatch.setattr(engine, "run", boom)
    with pytest.raises(RuntimeError, match="device lost"):
        await worker.submit(["x"])
    monkeypatch.undo()
    assert (await worker.submit(["x"])).vectors.shape == (1, engine.dim)
    worker.stop()
