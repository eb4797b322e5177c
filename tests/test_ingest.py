"""Ingestion: validation, dedupe, the persistent cache, model binding, jobs and reindex."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import apsw
import numpy as np
import pytest
from fake_embedder import HashEmbedder

from localrank.collections import CollectionService, SearchRequest
from localrank.collections.documents import DocumentIn, parse_documents
from localrank.collections.ingest import SPECIAL_TOKENS_MARGIN, Ingestor, IngestSettings
from localrank.collections.runner import JobRunner
from localrank.errors import (
    BackendError,
    Conflict,
    InvalidInput,
    ModelMismatch,
    NotFound,
    Overloaded,
    StoreUnavailable,
    TooLarge,
)
from localrank.store import SQLiteStore
from localrank.store.sqlite.maintenance import counts, integrity_check


class PoisonEmbedder(HashEmbedder):
    """Fails on any batch containing the word POISON, like a backend producing NaNs."""

    async def embed(self, texts, *, query, instruction=None, bulk=False):  # type: ignore[override]
        if any("POISON" in t for t in texts):
            raise BackendError("non-finite vectors")
        return await super().embed(texts, query=query, instruction=instruction, bulk=bulk)


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "localrank.db")
    yield s
    s.close()


def docs(n: int, prefix: str = "d") -> list[DocumentIn]:
    return [
        DocumentIn(
            f"{prefix}{i}", f"# {prefix}{i}\n\nunique{prefix}{i} shared words here", {"n": i}
        )
        for i in range(n)
    ]


def test_validation_messages() -> None:
    ok = {"id": "a", "text": "hello"}
    cases = [
        ([{"id": "e", "text": "  \n"}], InvalidInput, "empty text"),
        ([{"id": "b", "text": "abc\x00def"}], InvalidInput, "NUL"),
        ([{"id": "s", "text": "bad \ud800 surrogate"}], InvalidInput, "Unicode"),
        ([{"id": "m", "text": "x", "metadata": [1]}], InvalidInput, "metadata"),
        ([{"text": "no id"}], InvalidInput, "id"),
        ([], InvalidInput, "non-empty"),
    ]
    for raw, exc, words in cases:
        with pytest.raises(exc, match=words):
            parse_documents(raw)
    with pytest.raises(TooLarge, match="50.0 MB"):
        parse_documents([{"id": "big", "text": "a" * 50_000_000}])
    assert parse_documents([ok])[0] == DocumentIn("a", "hello", {}, None)
    # An id given twice counts once, with its last document (as if sent one after the other);
    # a client's text with control characters is its text (binary files: test_folders).
    assert parse_documents([ok, {"id": "a", "text": "again"}]) == [DocumentIn("a", "again")]
    controls = "\x01\x02\x03\x04\x05\x06\x07\x08\x0e\x0f" * 20
    assert parse_documents([{"id": "j", "text": controls}])[0].text == controls


async def test_dedupe_and_persistent_cache(store: SQLiteStore) -> None:
    emb = HashEmbedder()
    svc = CollectionService(store, lambda: emb)
    await svc.create_collection("c")
    out = await svc.add_documents("c", docs(5), background=False)
    assert [d["status"] for d in out["documents"]] == ["created"] * 5
    embedded = emb.texts_embedded
    assert embedded > 0 and emb.bulk_calls > 0
    again = await svc.add_documents("c", docs(5), background=False)
    assert [d["status"] for d in again["documents"]] == ["unchanged"] * 5
    assert emb.texts_embedded == embedded  # same hash: nothing embedded
    # Same texts under new ids, in a new process (fresh embedder): served by the persistent cache.
    emb2 = HashEmbedder()
    svc2 = CollectionService(store, lambda: emb2)
    await svc2.create_collection("c2")
    await svc2.add_documents("c2", docs(5), background=False)
    assert emb2.texts_embedded == 0
    # Changed text is re-embedded; metadata-only change is not.
    changed = [
        DocumentIn("d0", "brand new text", {"n": 0}),
        DocumentIn("d1", docs(5)[1].text, {"n": 99}),
    ]
    res = await svc.add_documents("c", changed, background=False)
    assert [d["status"] for d in res["documents"]] == ["updated", "metadata"]
    assert emb.texts_embedded == embedded + 1
    c = counts(store.db.reader())
    assert c["chunks"] == c["vectors"] == c["codes"] and c["chunks_without_vector"] == 0
    assert c["chunks_without_code"] == 0


async def test_model_mismatch_and_unknown_collection(store: SQLiteStore) -> None:
    svc = CollectionService(store, lambda: HashEmbedder(dim=64, model_id="model-A"))
    await svc.create_collection("c")
    await svc.add_documents("c", docs(2), background=False)
    other = CollectionService(store, lambda: HashEmbedder(dim=32, model_id="model-B"))
    with pytest.raises(ModelMismatch) as err:
        await other.add_documents("c", docs(1, "x"), background=False)
    msg = err.value.message
    assert "model-A" in msg and "model-B" in msg and "localrank reindex c" in msg
    with pytest.raises(ModelMismatch):
        await other.search(SearchRequest("c", "shared", mode="vector"))
    # keyword search without rerank needs no model, so it still works
    assert (await other.search(SearchRequest("c", "shared", mode="keyword")))["results"]
    with pytest.raises(NotFound):
        await svc.add_documents("nope", docs(1), background=False)


async def test_async_job_runs_and_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    emb = HashEmbedder()
    first = SQLiteStore(path)
    svc = CollectionService(first, lambda: emb)
    await svc.create_collection("c")
    job = await svc.add_documents("c", docs(40), background=True)
    assert job["state"] == "queued" and job["total"] == 40
    # Simulate a crash after claiming: the job is 'running', owned by a dead process.
    with first.db.write() as conn:
        conn.execute(
            "UPDATE jobs SET state='running', owner='localhost-x:999999999:dead' WHERE id=?",
            (job["job_id"],),
        )
    first.close()
    second = SQLiteStore(path)
    try:
        svc2 = CollectionService(second, lambda: emb, IngestSettings(job_batch_docs=7))
        done = await svc2.runner.run_once()
        assert done is not None and done.state == "done" and done.done == 40 and done.failed == 0
        hits = await svc2.search(SearchRequest("c", "uniqued17", mode="keyword"))
        assert hits["results"][0]["document_id"] == "d17"
        assert integrity_check(second.db.reader()) == ["ok"]
        assert (await svc2.list_jobs())[0]["state"] == "done"
    finally:
        second.close()


async def test_job_records_per_document_errors(store: SQLiteStore) -> None:
    emb = PoisonEmbedder()
    svc = CollectionService(store, lambda: emb)
    await svc.create_collection("c")
    batch = docs(3) + [DocumentIn("bad", "this one is POISON text")]
    job = await svc.add_documents("c", batch, background=True)
    final = await svc.runner.run_once()
    assert final is not None
    assert (final.state, final.done, final.failed) == ("done", 3, 1)
    assert final.errors[0]["id"] == "bad" and "non-finite" in final.errors[0]["message"]
    assert (await svc.get_job(job["job_id"]))["errors"] == final.errors


async def test_runner_skips_jobs_for_another_model(store: SQLiteStore) -> None:
    svc = CollectionService(store, lambda: HashEmbedder(model_id="A"))
    await svc.create_collection("c")
    job = await svc.add_documents("c", docs(2), background=True)
    other = JobRunner(Ingestor(store, lambda: HashEmbedder(model_id="B")))
    assert await other.run_once() is None
    assert (await svc.get_job(job["job_id"]))["state"] == "queued"
    assert (await svc.runner.run_once()).state == "done"


async def test_reindex_rebinds_collection(store: SQLiteStore) -> None:
    old = HashEmbedder(dim=64, model_id="old")
    svc = CollectionService(store, lambda: old)
    await svc.create_collection("c")
    await svc.add_documents("c", docs(12), background=False)
    before = counts(store.db.reader())
    new = HashEmbedder(dim=32, model_id="new")
    svc_new = CollectionService(store, lambda: new)
    with pytest.raises(Conflict):
        await svc.reindex("c")  # same model: nothing to do (the collection's state, a 409)
    job = await svc_new.reindex("c")
    assert job["total"] == before["chunks"]
    final = await svc_new.runner.run_once()
    assert final is not None and final.state == "done" and final.done == before["chunks"]
    coll = await svc_new.get_collection("c")
    assert (coll["model"], coll["dim"]) == ("new", 32)
    hits = await svc_new.search(SearchRequest("c", docs(12)[5].text, mode="vector"))
    assert hits["results"][0]["document_id"] == "d5"
    after = counts(store.db.reader())
    assert after["vectors"] == before["vectors"]
    row = store.db.reader().execute("SELECT length(embedding) FROM vectors LIMIT 1").fetchone()
    assert row[0] == 32 * 4
    with pytest.raises(ModelMismatch):
        await svc.search(SearchRequest("c", "x", mode="vector"))
    assert store.list_jobs()[0].kind == "reindex"
    assert np.isfinite(hits["results"][0]["score"])


async def test_chunks_never_exceed_the_embedders_max_tokens(store: SQLiteStore) -> None:
    # Configured chunks (512 tokens) are larger than this model reads: they must shrink to fit.
    emb = HashEmbedder(max_tokens=40)
    svc = CollectionService(store, lambda: emb)
    await svc.create_collection("c")
    long_text = "# Title\n\n" + " ".join(f"word{i}" for i in range(600))
    await svc.add_documents("c", [DocumentIn("sync", long_text)], background=False)
    await svc.add_documents("c", [DocumentIn("job", long_text + " more")], background=True)
    assert (await svc.runner.run_once()).state == "done"  # type: ignore[union-attr]
    texts = [r[0] for r in store.db.reader().execute("SELECT text FROM chunks")]
    assert len(texts) > 2 * 600 // 40
    assert max(len(emb.token_offsets(t)) for t in texts) <= emb.max_tokens - SPECIAL_TOKENS_MARGIN
    assert 0 < emb.longest_input <= emb.max_tokens


class RecordingEmbedder(HashEmbedder):
    """Notes, as each embed call starts, how many job items are committed as done."""

    def __init__(self, store: SQLiteStore) -> None:
        super().__init__(delay=0.02)
        self.store = store
        self.done_at_start: list[int] = []

    async def embed(self, texts, *, query, instruction=None, bulk=False):  # type: ignore[override]
        row = self.store.db.reader().execute("SELECT max(done) FROM jobs").fetchone()
        self.done_at_start.append(int(row[0] or 0))
        return await super().embed(texts, query=query, instruction=instruction, bulk=bulk)


async def test_job_batches_are_pipelined_and_commit_in_order(store: SQLiteStore) -> None:
    emb = RecordingEmbedder(store)
    svc = CollectionService(store, lambda: emb, IngestSettings(job_batch_docs=5))
    await svc.create_collection("c")
    await svc.add_documents("c", docs(20), background=True)
    seen: list[int] = []
    job = store.claim_job(svc.runner.owner)
    assert job is not None
    final = await svc.ingestor.process_job(job, lambda j: seen.append(j.done))
    assert (final.state, final.done) == ("done", 20)
    assert seen == [5, 10, 15, 20]  # one commit per batch, in order
    # Batch k starts embedding before batch k-1 is written (k-2 is): writes overlap the model.
    assert emb.done_at_start == [0, 0, 5, 10]
    c = counts(store.db.reader())
    assert c["documents"] == 20 and c["chunks"] == c["vectors"]


class FlakyEmbedder(HashEmbedder):
    """The daemon's queue is full for the first call."""

    async def embed(self, texts, *, query, instruction=None, bulk=False):  # type: ignore[override]
        if self.calls == 0:
            self.calls += 1
            raise Overloaded("queue full", retry_after=1.0)
        return await super().embed(texts, query=query, instruction=instruction, bulk=bulk)


async def test_overloaded_model_requeues_the_job_without_failing_documents(
    store: SQLiteStore,
) -> None:
    emb = FlakyEmbedder()
    svc = CollectionService(store, lambda: emb)
    await svc.create_collection("c")
    job = await svc.add_documents("c", docs(3), background=True)
    assert await svc.runner.run_once() is None
    assert (await svc.get_job(job["job_id"]))["state"] == "queued"
    final = await svc.runner.run_once()
    assert final is not None and (final.state, final.done, final.failed) == ("done", 3, 0)


# --- a store whose writes keep failing ---------------------------------------------------------


class Clock:
    """The job runner's clock, moved by hand: minutes of failure without minutes of test."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class LockingEmbedder(HashEmbedder):
    """Embeds as HashEmbedder and records what it embedded. On the calls named in `lock_on`
    (call number -> documents the job must have stored first) another connection takes the
    database's write lock, as a backup tool or a `sqlite3` shell in a transaction would: from
    then on every write of the store fails (for real: SQLite's lock) until `release`."""

    def __init__(self, store: SQLiteStore, lock_on: dict[int, int]) -> None:
        super().__init__()
        self.store = store
        self.lock_on = lock_on
        self.job_id = ""
        self.holder: apsw.Connection | None = None
        self.seen: list[str] = []

    async def embed(self, texts, *, query, instruction=None, bulk=False):  # type: ignore[override]
        call = self.calls + 1
        if call in self.lock_on:
            # The write of the batch before runs meanwhile: let it commit, then lock.
            deadline = time.monotonic() + 30
            while self.store.get_job(self.job_id).done < self.lock_on[call]:
                assert time.monotonic() < deadline, "the batch before was never stored"
                await asyncio.sleep(0.01)
            self.holder = apsw.Connection(str(self.store.path))
            self.holder.execute("BEGIN IMMEDIATE")
        self.seen.extend(texts)
        return await super().embed(texts, query=query, instruction=instruction, bulk=bulk)

    def release(self) -> None:
        assert self.holder is not None
        self.holder.execute("ROLLBACK")
        self.holder.close()
        self.holder = None


async def test_a_job_whose_writes_keep_failing_fails_after_the_bound_and_resumes_on_retry(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite", busy_timeout_ms=50)
    # Batches of 2 documents, one embed call each: the lock is taken while batch 3 is embedded
    # (call 3, 4 documents stored); then, in the next run (batch 3 again is call 5), while
    # batch 4 is (call 6, 6 documents stored).
    emb = LockingEmbedder(store, lock_on={3: 4, 6: 6})
    svc = CollectionService(store, lambda: emb, IngestSettings(job_batch_docs=2))
    runner = svc.runner
    clock = runner.clock = Clock()
    runner.failure_timeout_s = 60.0
    try:
        await svc.create_collection("c")
        batch = docs(8)
        job_id = (await svc.add_documents("c", batch, background=True))["job_id"]
        emb.job_id = job_id

        # Batch 3's write fails: the job stays running (claimed), its failure is known.
        assert await runner.run_once() is None
        view = await svc.get_job(job_id)
        assert (view["state"], view["done"]) == ("running", 4)
        assert view["store_failure"]["failing_s"] == 0.0
        assert "locked by another writer" in view["store_failure"]["reason"]
        assert view["store_failure"]["fails_after_s"] == 60.0

        # 50 s later the lock is gone: batch 3 is stored, batch 4 too; batch 5's write fails.
        # The job made progress, so its failures count from then on.
        clock.now = 50.0
        emb.release()
        assert await runner.run_once() is None
        view = await svc.get_job(job_id)
        assert (view["state"], view["done"], view["store_failure"]["failing_s"]) == (
            "running",
            6,
            0.0,
        )
        clock.now = 100.0  # 50 s of failures: under the bound, tried again
        with pytest.raises(StoreUnavailable):  # the claim itself is a write
            await runner.run_once()
        assert (await svc.get_job(job_id))["state"] == "running"

        # Past the bound: failed, with the reason, although the store cannot record it yet.
        clock.now = 111.0
        with pytest.raises(StoreUnavailable):
            await runner.run_once()
        view = await svc.get_job(job_id)
        assert view["state"] == "failed" and view["store_failure"]["failing_s"] == 61.0
        message = view["errors"][-1]["message"]
        assert "kept failing for 61 s" in message and "locked by another writer" in message
        assert store.get_job(job_id).state == "running"  # what the database still says
        assert [j["state"] for j in await svc.list_jobs(state="running")] == []

        # The lock goes: the failure is recorded; the runner does not resume the job by itself.
        emb.release()
        assert await runner.run_once() is None
        stored = store.get_job(job_id)
        assert (stored.state, stored.done, stored.owner) == ("failed", 6, None)
        assert stored.errors[-1]["message"] == message
        assert await svc.get_job(job_id) == stored.to_api()

        # Retried: it resumes at its first document not stored, and completes.
        seen = len(emb.seen)
        queued = await svc.retry_job(job_id)
        assert (queued["state"], queued["done"], queued["errors"]) == ("queued", 6, [])
        final = await runner.run_once()
        assert final is not None and (final.state, final.done, final.failed) == ("done", 8, 0)
        assert emb.seen[seen:] == [d.text for d in batch[6:]]  # nothing stored is redone
        assert [c["documents"] for c in await svc.list_collections()] == [8]
        assert integrity_check(store.db.reader()) == ["ok"]
    finally:
        if emb.holder is not None:
            emb.release()
        store.close()


class GatedEmbedder(HashEmbedder):
    """Waits at its first bulk call until released (a job in flight)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def embed(self, texts, *, query, instruction=None, bulk=False):  # type: ignore[override]
        if bulk:
            self.entered.set()
            await self.release.wait()
        return await super().embed(texts, query=query, instruction=instruction, bulk=bulk)


async def test_a_job_whose_collection_is_deleted_meanwhile_ends_quietly(
    store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Deleting a collection deletes its jobs; the one running then has nothing left to record
    its end in. The runner says so and carries on (it used to raise NotFound from recording
    the failure, and its loop logged a traceback)."""
    embedder = GatedEmbedder()
    svc = CollectionService(store, lambda: embedder)
    await svc.create_collection("c")
    await svc.add_documents("c", docs(3), background=True)
    running = asyncio.create_task(svc.runner.run_once())
    await asyncio.wait_for(embedder.entered.wait(), 10)
    await svc.delete_collection("c")
    embedder.release.set()
    with caplog.at_level("INFO"):
        assert await asyncio.wait_for(running, 10) is None
    assert any("after its collection was deleted" in r.getMessage() for r in caplog.records)
    assert store.list_jobs() == []
