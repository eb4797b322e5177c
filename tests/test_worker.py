"""The scheduler: merging, priorities, back-pressure, failures. Real tiny Qwen3 engine."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from engines import engine_for
from fake_embedder import hash_engine

from localrank.engine.core import Engine
from localrank.errors import NotReady, Overloaded, TooLarge
from localrank.ops import allocator
from localrank.serve import worker as worker_module
from localrank.serve.scheduling import PassCost
from localrank.serve.worker import SLICE_TEXTS, BatchStats, ModelWorker


class Gate:
    """Wraps engine.run so a test can hold the model thread and see what each pass got."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.open = threading.Event()
        self.open.set()
        self.calls: list[list[list[int]]] = []
        self._run = engine.run

    def __enter__(self) -> Gate:
        def run(encoded, pause=None):  # type: ignore[no-untyped-def]
            self.calls.append([e.ids for e in encoded])
            self.open.wait(10)
            return self._run(encoded, pause)

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

    def boom(encoded, pause=None):  # type: ignore[no-untyped-def]
        raise RuntimeError("device lost")

    monkeypatch.setattr(engine, "run", boom)
    with pytest.raises(RuntimeError, match="device lost"):
        await worker.submit(["x"])
    monkeypatch.undo()
    assert (await worker.submit(["x"])).vectors.shape == (1, engine.dim)
    worker.stop()


# --- fairness, tokenisation off the model thread, cancellation (hashed backend: fast) ---------


@pytest.fixture
def hashed(minilm: Path) -> Engine:
    return hash_engine(minilm)


def texts_of(tag: str, n: int, words: int = 6) -> list[str]:
    return [" ".join(f"{tag}{i}w{j}" for j in range(words)) for i in range(n)]


def owners(engine: Engine, requests: dict[str, list[str]], calls: list[list[list[int]]]):  # type: ignore[no-untyped-def]
    """For each pass, the request each row came from."""
    by_ids = {}
    for name, texts in requests.items():
        for e in engine.prepare(texts):
            by_ids[tuple(e.ids)] = name
    return [[by_ids[tuple(ids)] for ids in call] for call in calls]


async def started_passes(gate: Gate, n: int) -> None:
    for _ in range(200):
        if len(gate.calls) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the model did not start pass {n}")


async def test_one_text_requests_go_ahead_of_a_big_requests_next_pass_and_it_keeps_advancing(
    hashed: Engine,
) -> None:
    worker, _ = make_worker(hashed, max_batch_tokens=96, batch_wait_ms=0)
    requests = {
        "big": texts_of("big", 60),
        **{f"one{k}": texts_of(f"one{k}", 1, 1) for k in range(3)},
    }
    with Gate(hashed) as gate:
        gate.open.clear()
        big = asyncio.ensure_future(worker.submit(requests["big"]))
        await started_passes(gate, 1)  # the big request's first pass holds the model
        small = [asyncio.ensure_future(worker.submit(requests[f"one{k}"])) for k in range(3)]
        await asyncio.sleep(0.2)
        gate.open.set()
        await asyncio.gather(big, *small)
    worker.stop()
    passes = owners(hashed, requests, gate.calls)
    # All three one-text requests run in the pass right after the one that was running, a
    # pass of their own (not one sized for the big request's time budget); the big request
    # advances in every other pass until it is done.
    assert set(passes[1]) == {"one0", "one1", "one2"}
    assert all(set(p) == {"big"} for p in passes[:1] + passes[2:])
    assert np.abs(big.result().vectors - hashed.embed(requests["big"]).vectors).max() < 1e-6


async def test_passes_take_turns_between_requests(hashed: Engine) -> None:
    worker, _ = make_worker(hashed, max_batch_tokens=120, batch_wait_ms=0)
    requests = {name: texts_of(name, 30) for name in ("a", "b", "c")}
    with Gate(hashed) as gate:
        gate.open.clear()
        first = asyncio.ensure_future(worker.submit(requests["a"]))
        await started_passes(gate, 1)
        rest = [asyncio.ensure_future(worker.submit(requests[n])) for n in ("b", "c")]
        await asyncio.sleep(0.2)
        gate.open.set()
        await asyncio.gather(first, *rest)
    worker.stop()
    passes = owners(hashed, requests, gate.calls)
    for p in passes[1:]:
        if len(set(p)) == 3:
            counts = [p.count(n) for n in ("a", "b", "c")]
            assert max(counts) - min(counts) <= 1  # round robin: one item each per turn
    # While all three had work, every pass served all three.
    assert all(len(set(p)) == 3 for p in passes[1:4])


async def test_tokenisation_runs_off_the_model_thread(
    hashed: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    prepare = hashed.prepare
    slow = threading.Event()

    def spy(inputs, **kw):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        if inputs[0].startswith("slow"):
            slow.wait(10)
        return prepare(inputs, **kw)

    monkeypatch.setattr(hashed, "prepare", spy)
    worker, _ = make_worker(hashed, batch_wait_ms=0)
    # More texts than are tokenised on the event loop itself: the tokeniser thread.
    many = ["slow to tokenise", *["and more"] * worker_module.INLINE_TEXTS]
    blocked = asyncio.ensure_future(worker.submit(many))
    await asyncio.sleep(0.1)
    # The tokeniser is busy with the slow text; the model thread is not waiting for it:
    # it finishes work that is already tokenised. (A request tokenised before it.)
    assert not blocked.done()
    slow.set()
    assert (await blocked).vectors.shape == (len(many), hashed.dim)
    assert threads and all(name.startswith("localrank-tokenizer") for name in threads)
    # A sentence is tokenised on the event loop's thread: cheaper than the hop.
    threads.clear()
    assert (await worker.submit(["a short query"])).vectors.shape == (1, hashed.dim)
    worker.stop()
    assert threads == [threading.current_thread().name]


async def test_a_big_request_is_tokenised_in_slices_while_the_model_runs(
    hashed: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    prepare, run = hashed.prepare, hashed.run

    def spy_prepare(inputs, **kw):  # type: ignore[no-untyped-def]
        events.append("tokenise")
        time.sleep(0.05)
        return prepare(inputs, **kw)

    def spy_run(encoded, pause=None):  # type: ignore[no-untyped-def]
        events.append("model")
        return run(encoded, pause)

    monkeypatch.setattr(hashed, "prepare", spy_prepare)
    monkeypatch.setattr(hashed, "run", spy_run)
    worker, _ = make_worker(hashed, max_batch_tokens=512, batch_wait_ms=0)
    texts = texts_of("s", 4 * SLICE_TEXTS)
    result = await worker.submit(texts)
    worker.stop()
    assert events.count("tokenise") == 4
    assert events.index("model") < len(events) - 1 - events[::-1].index("tokenise")
    assert np.abs(result.vectors - hashed.embed(texts).vectors).max() < 1e-6


async def test_a_short_request_is_not_tokenised_behind_a_long_ones_slice(
    hashed: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that fits one slice has a tokeniser thread of its own: while a long request's
    slice is being tokenised (tens of ms on a busy machine), a short request is tokenised,
    embedded and answered."""
    prepare = hashed.prepare
    release = threading.Event()

    def spy(inputs, **kw):  # type: ignore[no-untyped-def]
        if inputs[0].startswith("long"):
            release.wait(10)
        return prepare(inputs, **kw)

    monkeypatch.setattr(hashed, "prepare", spy)
    worker, _ = make_worker(hashed, batch_wait_ms=0)
    try:
        long = asyncio.ensure_future(worker.submit(texts_of("long", 2 * SLICE_TEXTS)))
        await asyncio.sleep(0.1)  # its first slice holds the slices' thread
        # Five texts: tokenised on a thread, not inline on the event loop.
        five = ["a query"] * (worker_module.INLINE_TEXTS + 1)
        short = await asyncio.wait_for(worker.submit(five), 5)
        assert short.vectors.shape == (len(five), hashed.dim) and not long.done()
        release.set()
        assert (await long).vectors.shape == (2 * SLICE_TEXTS, hashed.dim)
    finally:
        release.set()
        worker.stop()


async def test_a_sliced_request_is_tokenised_only_a_few_passes_ahead_of_the_model(
    hashed: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokenising far ahead of the model only takes a core from it: with the model held, a
    request of many slices stops after LEAD_PASSES passes' tokens, and resumes as it runs."""
    monkeypatch.setattr(worker_module, "SLICE_TEXTS", 8)
    prepare = hashed.prepare
    sliced: list[int] = []

    def spy(inputs, **kw):  # type: ignore[no-untyped-def]
        sliced.append(len(inputs))
        return prepare(inputs, **kw)

    monkeypatch.setattr(hashed, "prepare", spy)
    budget = 128  # tokens a pass; a slice of 8 of these texts is ~200 tokens
    lead = worker_module.LEAD_PASSES * budget
    worker, _ = make_worker(hashed, max_batch_tokens=budget, batch_wait_ms=0)
    texts = texts_of("t", 40 * 8, words=6)
    sizes = [sum(len(e.ids) for e in prepare(texts[i : i + 8])) for i in range(0, 320, 8)]
    with Gate(hashed) as gate:
        gate.open.clear()
        done = asyncio.ensure_future(worker.submit(texts))
        await asyncio.sleep(0.5)
        # Stopped at the first slice that took it past the lead, far from all 40 slices.
        n = len(sliced)
        assert sum(sizes[: n - 1]) <= lead < sum(sizes[:n]) and n < 40
        gate.open.set()
        result = await asyncio.wait_for(done, 30)
    worker.stop()
    assert len(sliced) == 40
    assert np.abs(result.vectors - hashed.embed(texts).vectors).max() < 1e-6


async def test_a_cancelled_request_is_dropped(
    hashed: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    slices = [0]
    prepare = hashed.prepare

    def counting(inputs, **kw):  # type: ignore[no-untyped-def]
        slices[0] += 1
        time.sleep(0.05)
        return prepare(inputs, **kw)

    monkeypatch.setattr(hashed, "prepare", counting)
    worker, _ = make_worker(hashed, max_batch_tokens=64, batch_wait_ms=0)
    texts = texts_of("gone", 10 * SLICE_TEXTS)
    with Gate(hashed) as gate:
        gate.open.clear()
        task = asyncio.ensure_future(worker.submit(texts))
        await started_passes(gate, 1)
        task.cancel()
        await asyncio.sleep(0.1)
        gate.open.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)
    # The pass that was running finished; nothing of the request ran after it, and the rest of
    # its text was never tokenised.
    assert len(gate.calls) <= 2
    assert slices[0] < 10
    assert worker.depth == 0
    assert (await worker.submit(["still serving"])).vectors.shape == (1, hashed.dim)
    worker.stop()


def test_pass_cost_separates_fixed_and_per_token_time() -> None:
    cost = PassCost()
    assert cost.tokens_within(0.05) is None
    for n in (10, 400, 50, 2000, 120, 800) * 5:
        cost.add(n, 0.004 + 0.0001 * n)
    fixed, per_token = cost.fit()  # type: ignore[misc]
    assert fixed == pytest.approx(0.004, rel=1e-3) and per_token == pytest.approx(1e-4, rel=1e-3)
    assert cost.tokens_within(0.05) == pytest.approx(460, abs=2)


async def test_passes_are_sized_to_the_preemption_time(minilm: Path) -> None:
    engine = hash_engine(minilm, seconds_per_token=0.0005)  # 4 layers: 3 pauses a pass
    worker, stats = make_worker(
        engine, max_batch_tokens=100_000, max_batch_size=10_000, batch_wait_ms=0, preempt_ms=10
    )
    await worker.submit(texts_of("warm", 40))  # one pass over the whole budget: now it knows
    stats.clear()
    await worker.submit(texts_of("timed", 200))
    worker.stop()
    # 4 stretches of 10 ms: ~80 tokens at 0.5 ms a token; every text is ~26 tokens.
    assert len(stats) >= 20
    assert max(s.tokens for s in stats) <= 120
    assert max(s.seconds for s in stats) < 0.2


async def test_a_one_text_request_runs_inside_a_long_pass(minilm: Path) -> None:
    """A bulk pass of ~2 s pauses between its layers: the one-text request that arrives while
    it runs is answered long before it ends, and the bulk pass still completes."""
    engine = hash_engine(minilm, seconds_per_token=0.002)
    worker, stats = make_worker(engine, max_batch_tokens=4096, batch_wait_ms=0, preempt_ms=0)
    bulk = asyncio.ensure_future(worker.submit(texts_of("bulk", 40), bulk=True))  # ~1,000 tokens
    await asyncio.sleep(0.3)
    t0 = time.perf_counter()
    one = await worker.submit(["one query"])
    waited = time.perf_counter() - t0
    assert not bulk.done()
    await bulk
    worker.stop()
    assert one.vectors.shape == (1, engine.dim)
    assert waited < 1.0  # one stretch (~0.5 s) and its own tiny pass, not the whole ~2 s
    # The nested pass (just the query) is reported first: it ended inside the bulk pass.
    assert [s.rows for s in stats] == [1, 40]
    assert engine.embedder.pauses >= 3  # type: ignore[attr-defined]


async def test_requests_arriving_steadily_cannot_starve_a_running_pass(minilm: Path) -> None:
    """New one-text requests keep arriving while a pass runs, before the worker knows what a
    pass costs (a fresh daemon): the passes run in its pauses take at most as many tokens as
    it has, so it ends in about twice its own time and its request is answered. (Unbounded,
    every pause ran every newcomer and the first request waited until its client gave up.)"""
    engine = hash_engine(minilm, seconds_per_token=0.002)  # 4 layers: 3 pauses a pass
    worker, stats = make_worker(engine, max_batch_tokens=4096, batch_wait_ms=0, preempt_ms=25)
    stop = asyncio.Event()

    async def steady(k: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            await worker.submit(texts_of(f"s{k}x{n}x", 1, words=40))  # ~160 tokens: ~0.3 s
            await asyncio.sleep(0)

    first = asyncio.ensure_future(worker.submit(texts_of("first", 10, words=10)))  # ~0.5 s
    answered: list[float] = []
    first.add_done_callback(lambda _: answered.append(time.perf_counter()))
    await asyncio.sleep(0.05)
    others = [asyncio.ensure_future(steady(k)) for k in range(6)]
    t0 = time.perf_counter()
    try:
        done, _ = await asyncio.wait({first}, timeout=6.0)
    finally:
        stop.set()
        await asyncio.gather(*others)
        worker.stop()
    assert first in done, "the first pass was starved by the passes run in its pauses"
    assert answered[0] - t0 < 3.0
    assert first.result().vectors.shape == (10, engine.dim)


async def test_requests_in_the_running_pass_do_not_run_nested(minilm: Path) -> None:
    """Only requests with nothing in the running pass use its pauses: a big interactive
    request in the pass does not jump ahead through them."""
    engine = hash_engine(minilm, seconds_per_token=0.001)
    worker, stats = make_worker(engine, max_batch_tokens=300, batch_wait_ms=0, preempt_ms=0)
    result = await worker.submit(texts_of("big", 60))  # ~1,600 tokens over passes of <= 300
    worker.stop()
    assert all(s.tokens <= 300 for s in stats)
    assert sum(s.rows for s in stats) == 60 and all(s.requests == 1 for s in stats)
    assert np.abs(result.vectors - engine.embed(texts_of("big", 60)).vectors).max() < 1e-6


async def test_stop_answers_what_cannot_finish(hashed: Engine) -> None:
    worker, _ = make_worker(hashed, batch_wait_ms=0)
    with Gate(hashed) as gate:
        gate.open.clear()
        held = asyncio.ensure_future(worker.submit(["held"]))
        await started_passes(gate, 1)
        await asyncio.to_thread(worker.stop, 0.2)
        with pytest.raises(NotReady):
            await held
        gate.open.set()


async def test_the_idle_hook_runs_once_after_work_and_not_while_idle(
    hashed: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "IDLE_SECONDS", 0.2)
    idled: list[float] = []
    worker, _ = make_worker(hashed, on_idle=lambda: idled.append(time.monotonic()))
    try:
        await asyncio.sleep(0.5)
        assert idled == []  # nothing was done, nothing to hand back
        await worker.submit(["one text"])
        await asyncio.sleep(0.8)
        assert len(idled) == 1  # once after the work, not every IDLE_SECONDS
        await worker.submit(["another text"])
        await asyncio.sleep(0.8)
        assert len(idled) == 2
    finally:
        worker.stop()


def test_the_allocator_trim_is_available_on_glibc() -> None:
    # On this Linux/glibc machine the trim must really be wired, or the soak figure is luck.
    assert allocator.can_trim()
    assert isinstance(allocator.trim(), bool)


def test_the_background_optimisation_ends_with_a_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    """What loading left free goes back to the system once the daemon's background work ends,
    not at the first idle moment after a request; a failed optimisation too."""
    from localrank.serve import app

    order: list[str] = []
    monkeypatch.setattr(allocator, "trim", lambda: order.append("trim") or True)

    class Fake:
        def __init__(self, fail: bool) -> None:
            self.fail = fail

        def optimize(self) -> int:
            order.append("optimize")
            if self.fail:
                raise RuntimeError("no")
            return 3

    assert app._optimize(Fake(False)) == 3  # type: ignore[arg-type]
    assert app._optimize(Fake(True)) == 0  # type: ignore[arg-type]
    assert order == ["optimize", "trim"] * 2


class RecordingReranker:
    """A ForwardModel standing in for a cross-encoder: scores are the pair's token count, and each
    pass records which rows it got (plumbing only: the scores are not what is tested)."""

    dim = 1

    def __init__(self) -> None:
        self.calls: list[int] = []

    def prepare(self, part):  # type: ignore[no-untyped-def]
        from localrank.engine.tokenizer import Encoded

        return [Encoded(list(range(1, 2 + len(d) % 7)), False, None) for d in part]

    def run(self, encoded, pause=None):  # type: ignore[no-untyped-def]
        self.calls.append(len(encoded))
        return np.array([[float(len(e.ids))] for e in encoded], dtype=np.float32)


async def test_pairs_share_the_model_thread_but_never_a_pass(engine: Engine) -> None:
    """Rerank jobs (another ForwardModel) go through the same scheduler; a pass holds one model's
    items only, and interactive pairs go before a bulk embedding request."""
    worker, stats = make_worker(engine, max_batch_tokens=256, batch_wait_ms=0)
    reranker = RecordingReranker()
    bulk_texts = [f"bulk document {i} with some words" for i in range(60)]
    docs = [f"doc {i}" for i in range(5)]
    try:
        with Gate(engine) as gate:
            gate.open.clear()
            bulk = asyncio.ensure_future(worker.submit(bulk_texts, bulk=True))
            await asyncio.sleep(0.2)  # a bulk embedding pass holds the model thread
            pairs = asyncio.ensure_future(
                worker.submit(docs, runner=reranker, prepare=reranker.prepare)
            )
            await asyncio.sleep(0.1)
            gate.open.set()
            scored = await pairs
            assert not bulk.done()  # the pairs did not wait for the whole bulk request
            await bulk
    finally:
        worker.stop()
    assert scored.vectors.shape == (5, 1)
    assert [int(v) for v in scored.vectors[:, 0]] == [len(e.ids) for e in reranker.prepare(docs)]
    assert sum(reranker.calls) == 5
    # Every embedding pass held embedding items only (each row a real embedding).
    assert all(len(ids) > 0 for call in gate.calls for ids in call)
    assert sum(len(call) for call in gate.calls) == 60


async def test_model_work_off_the_model_thread_runs_in_threads_that_end(
    tmp_path: Path, minilm: Path
) -> None:
    """The model's load, the background optimisation and the reranker's load each run in a
    thread that ends with them (serve/threads.py): a thread that stays (asyncio's executor)
    would keep an OpenMP pool, and GNU OpenMP stops the model thread's workers spinning once
    pools outnumber the cores (a pass of 16 queries 300 -> 420 ms)."""
    from localrank.config import load_settings
    from localrank.errors import ModelError
    from localrank.serve.app import make_app
    from localrank.serve.reranking import CrossEncoderSlot
    from localrank.serve.state import STATE_KEY

    ran: dict[str, threading.Thread] = {}

    def loader(settings: object) -> Engine:
        ran["load"] = threading.current_thread()
        engine = hash_engine(minilm)

        def optimize() -> int:
            ran["optimize"] = threading.current_thread()
            return 0

        engine.optimize = optimize  # type: ignore[method-assign]
        return engine

    def reranker_loader(settings: object) -> object:
        ran["reranker"] = threading.current_thread()
        raise ModelError("no reranker in this test")

    settings = load_settings({"home": str(tmp_path), "reranker": "some/reranker"}, environ={})
    app = make_app(settings, loader=loader)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        state = app[STATE_KEY]
        await state.ready.wait()
        assert state.optimizing is not None
        await state.optimizing
        slot = CrossEncoderSlot(settings, reranker_loader)  # type: ignore[arg-type]
        await slot.preload()  # fails to load: logged, reported
        assert slot.last_error is not None
    finally:
        await runner.cleanup()
    assert set(ran) == {"load", "optimize", "reranker"}
    for what, thread in ran.items():
        thread.join(timeout=5)
        assert thread is not threading.main_thread(), what
        assert not thread.is_alive(), f"the {what} thread stays: {thread.name}"
